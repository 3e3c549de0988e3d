"""`python -m benchmarks.bench`: how fast ppo1 trains, phase by phase, and against SB3 if installed.

    python -m benchmarks.bench                       # the default config (RL Zoo CartPole), 5 seeds
    python -m benchmarks.bench env=pendulum --seeds 3
    python -m benchmarks.bench --quick               # a smoke run with tiny budgets (the tests')

Positional `key=value` arguments are the same overrides `python -m ppo1.train` takes. Every
figure is measured in this process, ppo1 and (with the `bench` extra) Stable-Baselines3 given
the same settings, interleaved seed by seed so both see the same machine load. The table is
printed, saved as Markdown and JSON under --out, and logged to an MLflow run (experiment
`ppo1-bench`) with a Plotly bar chart.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from benchmarks.budget import SOLVE_CONSECUTIVE, SOLVE_RETURN, Budget, Row
from benchmarks.phases import (
    ceiling_sps,
    end_to_end_sps,
    env_sps,
    phase_sps,
    time_to_solve,
    tracking_overhead,
    train_process_seconds,
)
from benchmarks.sb3_peer import sb3_available, sb3_kwargs
from benchmarks.table import bar_chart, log_to_mlflow, machine_info, markdown_table
from ppo1.config import (
    CONF_DIR,
    ConfigError,
    TrackingConfig,
    TrainConfig,
    register_configs,
    to_train_config,
)
from ppo1.core.envs import make_vector_env
from ppo1.tracking.store import open_client, tracking_uri
from ppo1.utils.cli import exit_with_error

# ppo1's own config tuned for time-to-solve; the bench times it on CartPole beside the rest.
TUNED = ["algo=ppo_fast"]


def compose_config(overrides: Sequence[str]) -> TrainConfig:
    """The config `python -m ppo1.train <overrides>` would train with."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return to_train_config(compose("train", overrides=list(overrides)))


def checked_configs(
    overrides: Sequence[str], tracking: TrackingConfig
) -> tuple[TrainConfig, TrainConfig]:
    """The benchmarked and the tuned config, their env and the tracking store, checked before
    any measuring: one message for what `python -m ppo1.train` would refuse, not a traceback
    (or, for the store, one after the whole benchmark)."""
    try:
        cfg = compose_config(overrides)
        tuned = compose_config([*TUNED, *overrides])
        make_vector_env(cfg.env, 1).close()
        if tracking.enabled:
            open_client(tracking_uri(tracking))
    except ConfigError as err:
        message = f"invalid config: {err}"
    except HydraException as err:
        # Hydra's message (with a group's options, without its search path), then the reason
        # from its cause ("Key 'foo' not in 'AlgoConfig'"); its hint to append with + would
        # only lead to the unknown-key error.
        text = str(err).split("Config search path:")[0]
        lines = [line for line in text.splitlines() if not line.startswith("To append")]
        if err.__cause__ is not None:
            lines.append(str(err.__cause__).splitlines()[0])
        message = " ".join(" ".join(lines).split())
    else:
        return cfg, tuned
    exit_with_error(message)


def measure(
    overrides: Sequence[str],
    cfg: TrainConfig,
    tuned: TrainConfig,
    budget: Budget,
    with_sb3: bool,
    tmp: Path,
) -> list[Row]:
    """Every row of the table; ppo1 and SB3 alternate so both see the same machine load."""
    rows = {
        "env": Row("env_sps", "raw env limit: random actions", "env-steps/s", True),
        "raw": Row("raw_sps", "raw limit: random actions + 1 batched forward", "env-steps/s", True),
        "rollout": Row("rollout_sps", "rollout only (incl. GAE)", "env-steps/s", True),
        "update": Row("update_sps", "update only", "env-steps/s", True),
        "e2e": Row("end_to_end_sps", "end-to-end", "env-steps/s", True),
        "ceiling": Row(
            "ceiling_sps",
            "ceiling: raw limit + 1 forward, and an update of only its matrix products",
            "env-steps/s",
            True,
        ),
        "rss": Row("rss_growth_mib", "RSS growth in end-to-end, update 1 to last", "MiB", False),
        "solve_s": Row("solve_seconds", "time to solve (training s)", "s", False),
        "solve_steps": Row("solve_steps", "steps to solve", "env steps", False),
        "solve_tuned": Row(
            "solve_seconds_tuned",
            f"time to solve, ppo1 {' '.join(TUNED)}"
            + (" vs the same SB3 runs" if with_sb3 else ""),
            "s",
            False,
        ),
        "tracking": Row(
            "tracking_overhead_pct",
            f"MLflow tracking on vs off, a {budget.tracking_timesteps:,}-step run (no evaluation)"
            " in a process with mlflow imported (as a sweep's)",
            "% wall time",
            False,
        ),
        "tracking_main": Row(
            "tracking_overhead_main_job_pct",
            "MLflow tracking on vs off, the main job (`python -m ppo1.train`, fresh processes)",
            "% wall time",
            False,
        ),
        "startup": Row("startup_seconds", "start-up + 1 update, tracking off", "s", False),
        "startup_tracked": Row(
            "startup_tracked_seconds", "start-up + 1 update, tracking on", "s", False
        ),
    }
    systems: dict[str, Any] = {"ppo1": _Ppo1Runner(cfg, budget)}
    if with_sb3:
        from benchmarks.sb3_peer import Sb3Runner

        systems["sb3"] = Sb3Runner(cfg, budget)
    for rep in range(budget.repeats):
        seed = 1 + rep
        for name, runner in systems.items():
            rows["env"].add(name, runner.env_sps(seed, forward=False))
            rows["raw"].add(name, runner.env_sps(seed, forward=True))
            rollout, update = runner.phase_sps(seed)
            rows["rollout"].add(name, rollout)
            rows["update"].add(name, update)
            sps, rss_growth = runner.end_to_end_sps(seed)
            rows["e2e"].add(name, sps)
            if rss_growth is not None:
                rows["rss"].add(name, rss_growth)
        rows["ceiling"].add("ppo1", ceiling_sps(cfg, seed, rows["raw"].samples["ppo1"][-1]))
    if cfg.env.id == "CartPole-v1":
        for seed in range(1, budget.seeds + 1):
            for name, runner in systems.items():
                solved = runner.time_to_solve(seed)
                rows["solve_s"].add(name, solved[1] if solved else None)
                rows["solve_steps"].add(name, solved[0] if solved else None)
            solved = time_to_solve(tuned, seed, budget)
            rows["solve_tuned"].add("ppo1", solved[1] if solved else None)
        if with_sb3:
            rows["solve_tuned"].samples["sb3"] = rows["solve_s"].samples["sb3"]
        for row in (rows["solve_s"], rows["solve_steps"], rows["solve_tuned"]):
            row.note = _unsolved_note(row, budget)
    uri = f"sqlite:///{tmp / 'tracking-overhead.db'}"
    if budget.tracking_pairs or budget.main_job_pairs or budget.startup:
        tracking_overhead(cfg, 0, cfg.batch_size, 1, uri)  # creates the store: not timed
    # Alternating which run of a pair goes first cancels drifts in the machine's load.
    for rep in range(budget.tracking_pairs):
        overhead = tracking_overhead(
            cfg, 1 + rep, budget.tracking_timesteps, 10**9, uri, rep % 2 == 0
        )
        rows["tracking"].add("ppo1", overhead)
    main_steps = budget.main_job_timesteps or cfg.total_timesteps
    for rep in range(budget.main_job_pairs):
        job = [*overrides, f"total_timesteps={main_steps}", f"seed={1 + rep}"]
        walls = {}
        for tracked in (False, True) if rep % 2 else (True, False):
            walls[tracked] = train_process_seconds(job, uri if tracked else None)
        rows["tracking_main"].add("ppo1", 100.0 * (walls[True] / walls[False] - 1.0))
    if budget.startup:
        one_update = [*overrides, f"total_timesteps={cfg.batch_size}", "save_model=false"]
        for _ in range(budget.repeats):
            rows["startup"].add("ppo1", train_process_seconds(one_update, None))
            rows["startup_tracked"].add("ppo1", train_process_seconds(one_update, uri))
    # Rows this env or budget skipped (time to solve off CartPole, 0 pairs, no start-up).
    return [row for row in rows.values() if row.samples]


def _unsolved_note(row: Row, budget: Budget) -> str:
    unsolved = [
        f"{name}: {budget.seeds - len(values)}/{budget.seeds} seeds unsolved"
        for name, values in row.samples.items()
        if len(values) < budget.seeds
    ]
    return "; ".join(unsolved)


class _Ppo1Runner:
    def __init__(self, cfg: TrainConfig, budget: Budget) -> None:
        self.cfg, self.budget = cfg, budget

    def env_sps(self, seed: int, forward: bool) -> float:
        return env_sps(self.cfg, seed, self.budget.env_steps, forward)

    def phase_sps(self, seed: int) -> tuple[float, float]:
        return phase_sps(self.cfg, seed, self.budget.phase_rollouts)

    def end_to_end_sps(self, seed: int) -> tuple[float, float | None]:
        return end_to_end_sps(self.cfg, seed, self.budget.e2e_timesteps)

    def time_to_solve(self, seed: int) -> tuple[float, float] | None:
        return time_to_solve(self.cfg, seed, self.budget)


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m benchmarks.bench` (`make bench`)."""
    run_bench(argv)


def run_bench(argv: Sequence[str] | None = None) -> list[Row]:
    """Measure, print and save the table, log the MLflow run; the rows, for callers in Python."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("overrides", nargs="*", help="config overrides, as for ppo1.train")
    parser.add_argument("--seeds", type=int, help="time-to-solve seeds (default 5)")
    parser.add_argument("--repeats", type=int, help="repeats of the throughput rows (default 3)")
    parser.add_argument("--e2e-steps", type=int, help="env steps of each end-to-end run")
    parser.add_argument(
        "--tracking-pairs", type=int, help="tracked/untracked pairs of 20k-step runs (default 6)"
    )
    parser.add_argument(
        "--main-job-pairs", type=int, help="tracked/untracked pairs of the main job (default 3)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny budgets: a smoke test")
    parser.add_argument("--no-sb3", action="store_true", help="skip SB3 even if installed")
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="output directory")
    parser.add_argument("--tracking-uri", help="MLflow store (default: as ppo1.train)")
    args = parser.parse_args(argv)
    budget = Budget.quick() if args.quick else Budget()
    chosen = {
        "seeds": args.seeds,
        "repeats": args.repeats,
        "e2e_timesteps": args.e2e_steps,
        "tracking_pairs": args.tracking_pairs,
        "main_job_pairs": args.main_job_pairs,
    }
    budget = replace(budget, **{k: v for k, v in chosen.items() if v is not None})
    tracking = TrackingConfig(uri=args.tracking_uri, experiment="ppo1-bench", run_name="bench")
    cfg, tuned = checked_configs(args.overrides, tracking)
    torch.set_num_threads(cfg.torch_threads)
    with_sb3 = sb3_available() and not args.no_sb3
    if not with_sb3 and not args.no_sb3:
        print("stable-baselines3 is not installed (pip install -e '.[bench]'): ppo1 only")
    info = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure(args.overrides, cfg, tuned, budget, with_sb3, Path(tmp))
    info["load_avg_1m_end"] = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    notes = [f"SB3 differs: {d}" for d in sb3_kwargs(cfg)[1]] if with_sb3 else []
    if any(row.key == "solve_seconds" for row in rows):
        notes.append(
            "time to solve: training seconds (evaluation excluded) until a 20-episode "
            f"deterministic evaluation mean >= {SOLVE_RETURN:g} for {SOLVE_CONSECUTIVE} "
            f"consecutive evaluations, every {budget.eval_every_updates * cfg.batch_size} steps"
        )
    table = markdown_table(rows, info, cfg, notes)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(table)
    payload = {
        "machine": info,
        "budget": dataclasses.asdict(budget),
        "rows": [dataclasses.asdict(row) for row in rows],
    }
    (args.out / "bench.json").write_text(json.dumps(payload, indent=2))
    bar_chart(rows).write_html(args.out / "bench.html", include_plotlyjs=True)
    params = {"machine": info, "budget": payload["budget"], "overrides": " ".join(args.overrides)}
    run_id = log_to_mlflow(rows, params, table, args.out, tracking)
    print(f"saved {args.out / 'bench.md'}, bench.json, bench.html; MLflow run {run_id}")
    return rows


if __name__ == "__main__":
    main()

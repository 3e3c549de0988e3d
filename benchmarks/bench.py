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
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.sb3_peer import sb3_available, sb3_kwargs
from ppo1.config import (
    CONF_DIR,
    ConfigError,
    TrackingConfig,
    TrainConfig,
    exit_with_error,
    register_configs,
    to_train_config,
)
from ppo1.core.backends import ppo_update
from ppo1.core.checkpoint import build_agent
from ppo1.core.envs import make_vector_env
from ppo1.tracking.tracker import Tracker, open_client, project_root, tracking_uri
from ppo1.train import next_batch, train, training_parts

# CartPole-v1 counts as solved at a 20-episode deterministic evaluation mean >= 475, twice in a
# row (the criterion; 475 is Gymnasium's reward_threshold for CartPole-v1).
SOLVE_RETURN = 475.0
SOLVE_CONSECUTIVE = 2
# ppo1's own config tuned for time-to-solve; the bench times it on CartPole beside the rest.
TUNED = ["algo=ppo_fast"]


@dataclass(frozen=True)
class Budget:
    """How much of each measurement to run; `quick` is for smoke tests, not for numbers."""

    repeats: int = 3
    seeds: int = 5
    phase_rollouts: int = 40
    env_steps: int = 2000
    e2e_timesteps: int = 20_000
    solve_timesteps: int = 100_000
    eval_every_updates: int = 8
    tracking_timesteps: int = 20_000
    # Tracking costs a few % of wall time against swings of 10 % here: more pairs than repeats.
    tracking_pairs: int = 6
    # The main job (`python -m ppo1.train` as configured, evaluations included); None: its
    # own total_timesteps.
    main_job_timesteps: int | None = None
    main_job_pairs: int = 3
    startup: bool = True

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            repeats=1,
            seeds=1,
            phase_rollouts=2,
            env_steps=50,
            e2e_timesteps=512,
            solve_timesteps=512,
            eval_every_updates=1,
            tracking_timesteps=512,
            tracking_pairs=1,
            main_job_timesteps=512,
            main_job_pairs=1,
            startup=False,
        )


@dataclass
class Row:
    """One measured quantity: samples per system ('ppo1', 'sb3'); higher or lower is better."""

    key: str
    name: str
    unit: str
    higher_is_better: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def add(self, system: str, value: float | None) -> None:
        self.samples.setdefault(system, [])
        if value is not None:
            self.samples[system].append(value)

    def median(self, system: str) -> float | None:
        values = self.samples.get(system)
        return statistics.median(values) if values else None

    def speedup(self) -> float | None:
        """ppo1's advantage over SB3 as a factor > 1 when ppo1 is better, from the medians."""
        ours, theirs = self.median("ppo1"), self.median("sb3")
        if ours is None or theirs is None or ours == 0 or theirs == 0:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


def machine_info() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m": f"{load[0]:.2f}",
    }


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


def bench_config(cfg: TrainConfig, seed: int, timesteps: int, eval_every: int) -> TrainConfig:
    """cfg for one measured run: quiet, untracked, no checkpoint."""
    return replace(
        cfg,
        seed=seed,
        total_timesteps=timesteps,
        eval=replace(cfg.eval, every=eval_every),
        tracking=replace(cfg.tracking, enabled=False),
        verbose=False,
        save_model=False,
    )


def env_sps(cfg: TrainConfig, seed: int, steps: int, forward: bool) -> float:
    """Random actions through the training vector env, optionally plus one batched forward."""
    envs = make_vector_env(cfg.env, cfg.env.num_envs)
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(steps)]
    obs, _ = envs.reset(seed=seed)
    with torch.inference_mode():
        policy = build_agent(cfg, envs).fused()
        start = time.perf_counter()
        for action in actions:
            if forward:
                policy(torch.as_tensor(obs, dtype=torch.float32))
            obs, *_ = envs.step(action)
        seconds = time.perf_counter() - start
    envs.close()
    return steps * cfg.env.num_envs / seconds


def phase_sps(cfg: TrainConfig, seed: int, rollouts: int) -> tuple[float, float]:
    """(rollout-only, update-only) env-steps/s; GAE counts as rollout work, as in SB3."""
    envs, agent, optimizer, collector = training_parts(cfg, seed)
    rollout_s = update_s = 0.0
    for _ in range(rollouts):
        start = time.perf_counter()
        _, batch = next_batch(collector, cfg.algo)
        middle = time.perf_counter()
        ppo_update(agent, optimizer, batch, cfg.algo, cfg.algo.clip, cfg.algo.lr)
        rollout_s += middle - start
        update_s += time.perf_counter() - middle
    envs.close()
    steps = rollouts * cfg.batch_size
    return steps / rollout_s, steps / update_s


# The matrix products of an update (`torch.mm`, `torch.addmm`; F.linear arrives as addmm).
MATMULS = ("mm", "addmm")
# (shape, strides) of a tensor: a weight enters its product as a transposed view.
Layout = tuple[tuple[int, ...], tuple[int, ...]]


def _layout(tensor: torch.Tensor) -> Layout:
    return tuple(tensor.shape), tuple(tensor.stride())


@dataclass(frozen=True)
class MatmulCall:
    """A matrix product as an update calls it: `torch.<op>(*operands, out=<out>)`."""

    op: str
    operands: tuple[Layout, ...]
    out: Layout | None


class _MatmulRecorder(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's is untyped
    """Counts every matrix product reaching ATen, by its operands' layouts."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: Counter[MatmulCall] = Counter()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        op = func.overloadpacket.__name__
        if op in MATMULS:
            out = kwargs.get("out")
            self.calls[
                MatmulCall(
                    op,
                    tuple(_layout(a) for a in args if isinstance(a, torch.Tensor)),
                    None if out is None else _layout(out),
                )
            ] += 1
        return func(*args, **kwargs)


def update_matmuls(cfg: TrainConfig, seed: int) -> Counter[MatmulCall]:
    """Every matrix product one `ppo_update` calls, and how many times."""
    envs, agent, optimizer, collector = training_parts(cfg, seed)
    _, batch = next_batch(collector, cfg.algo)
    recorder = _MatmulRecorder()
    with recorder:
        ppo_update(agent, optimizer, batch, cfg.algo, cfg.algo.clip, cfg.algo.lr)
    envs.close()
    return recorder.calls


def replay_seconds(calls: Counter[MatmulCall], repeats: int = 200) -> float:
    """Seconds `calls` take replayed back to back on random operands of the same layouts: an
    update reduced to its matrix products, with no other kernel, Python or dispatch."""

    def tensor(layout: Layout) -> torch.Tensor:
        return torch.empty_strided(*layout).normal_()

    total = 0.0
    for call, count in calls.items():
        operands = [tensor(layout) for layout in call.operands]
        out = {} if call.out is None else {"out": tensor(call.out)}
        op = getattr(torch, call.op)
        for _ in range(repeats // 10):  # warm caches and the allocator
            op(*operands, **out)
        start = time.perf_counter()
        for _ in range(repeats):
            op(*operands, **out)
        total += (time.perf_counter() - start) / repeats * count
    return total


def ceiling_sps(cfg: TrainConfig, seed: int, raw_sps: float) -> float:
    """Env-steps/s of a run whose rollout ran at its raw limit (`raw_sps`, random actions +
    one forward a step) and whose update were nothing but its matrix products: what no
    implementation calling this CPU's BLAS for the same products can pass."""
    update_s = replay_seconds(update_matmuls(cfg, seed))
    return cfg.batch_size / (cfg.batch_size / raw_sps + update_s)


def rss_mib() -> float:
    """Resident set size of this process now (Linux /proc; nan elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return float("nan")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def end_to_end_sps(cfg: TrainConfig, seed: int, timesteps: int) -> tuple[float, float | None]:
    """(env-steps/s, RSS growth in MiB from the first update to the last) of train().

    Untracked; evaluation (only after the last update) is not counted.
    """
    rss: list[float] = []

    def on_update(step: int, metrics: dict[str, float]) -> None:
        rss[1:] = [rss_mib()]

    result = train(bench_config(cfg, seed, timesteps, eval_every=10**9), on_update=on_update)
    last = result.history[-1]
    return last["step"] / last["time/train_seconds"], rss[-1] - rss[0]


class Solved(Exception):
    """Raised from the update hook to stop a time-to-solve run."""


class SolveWatch:
    """Feeds evaluation results; `done` once SOLVE_CONSECUTIVE in a row reach SOLVE_RETURN."""

    def __init__(self) -> None:
        self.streak = 0
        self.solved_at: tuple[float, float] | None = None  # (env steps, training seconds)

    def see(self, step: float, seconds: float, mean_return: float) -> bool:
        self.streak = self.streak + 1 if mean_return >= SOLVE_RETURN else 0
        if self.streak >= SOLVE_CONSECUTIVE and self.solved_at is None:
            self.solved_at = (step, seconds)
        return self.solved_at is not None


def time_to_solve(cfg: TrainConfig, seed: int, budget: Budget) -> tuple[float, float] | None:
    """(env steps, training seconds without evaluation) until solved, or None within budget."""
    watch = SolveWatch()

    def on_update(step: int, metrics: dict[str, float]) -> None:
        ret = metrics.get("eval/mean_return")
        if ret is not None and watch.see(step, metrics["time/train_seconds"], ret):
            raise Solved

    run_cfg = bench_config(cfg, seed, budget.solve_timesteps, budget.eval_every_updates)
    with contextlib.suppress(Solved):
        train(run_cfg, on_update=on_update)
    return watch.solved_at


def tracking_overhead(
    cfg: TrainConfig,
    seed: int,
    timesteps: int,
    eval_every: int,
    uri: str,
    tracked_first: bool = True,
) -> float:
    """Wall time of train() with MLflow tracking over without, minus 1, in percent.

    The tracked run does all a default run does: metrics, figures, dashboard, checkpoint.
    """
    base = bench_config(cfg, seed, timesteps, eval_every)
    tracked = replace(
        base,
        save_model=cfg.save_model,
        tracking=TrackingConfig(enabled=True, uri=uri, experiment="ppo1-bench-tracking"),
    )
    walls = {}
    for run_cfg in (tracked, base) if tracked_first else (base, tracked):
        start = time.perf_counter()
        train(run_cfg)
        walls[run_cfg.tracking.enabled] = time.perf_counter() - start
    return 100.0 * (walls[True] / walls[False] - 1.0)


def train_process_seconds(overrides: Sequence[str], tracking_uri: str | None) -> float:
    """Wall time of `python -m ppo1.train` in a fresh process, as a user runs it: imports,
    setup, training and, tracked to `tracking_uri`, everything the run writes to MLflow."""
    tracking = ["tracking.enabled=false"]
    if tracking_uri is not None:
        tracking = [f"tracking.uri={tracking_uri}", "tracking.experiment=ppo1-bench-process"]
    command = [sys.executable, "-m", "ppo1.train", *overrides, *tracking, "verbose=false"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=project_root())
    return time.perf_counter() - start


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


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def cell(row: Row, system: str) -> str:
    values = row.samples.get(system)
    if not values:
        return "-" if system in row.samples else "n/a"
    median = fmt(row.median(system))
    if len(values) == 1:
        return median
    return f"{median} ({fmt(min(values))}-{fmt(max(values))})"


def markdown_table(
    rows: list[Row], info: dict[str, str], cfg: TrainConfig, notes: list[str]
) -> str:
    has_sb3 = any("sb3" in row.samples for row in rows)
    header = (
        "| measure | unit | ppo1 | SB3 | ppo1 vs SB3 |" if has_sb3 else "| measure | unit | ppo1 |"
    )
    lines = [
        f"ppo1 benchmark: {cfg.env.id}, {cfg.env.num_envs} envs x {cfg.algo.n_steps} steps, "
        f"{cfg.algo.epochs} epochs, minibatch {cfg.algo.minibatch_size}",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "cells: median (min-max) over seeds/repeats",
        "",
        header,
        "|---|---|---:|" + ("---:|---:|" if has_sb3 else ""),
    ]
    for row in rows:
        line = f"| {row.name} | {row.unit} | {cell(row, 'ppo1')} |"
        if has_sb3:
            speedup = row.speedup()
            line += f" {cell(row, 'sb3')} | {'' if speedup is None else f'{speedup:.1f}x'} |"
        lines.append(line)
    lines += [f"note: {row.name}: {row.note}" for row in rows if row.note]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[Row]) -> Any:
    """Grouped bars of the medians with min-max error bars: env-steps/s, and seconds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sps = [r for r in rows if r.unit == "env-steps/s"]
    secs = [r for r in rows if r.unit == "s"]
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.7, 0.3], subplot_titles=("env-steps/s", "seconds")
    )
    for system, color in (("ppo1", "#1f77b4"), ("sb3", "#ff7f0e")):
        for col, group in ((1, sps), (2, secs)):
            present = [r for r in group if r.samples.get(system)]
            if not present:
                continue
            medians = [r.median(system) or 0.0 for r in present]
            fig.add_trace(
                go.Bar(
                    name=system,
                    x=[r.name for r in present],
                    y=medians,
                    marker_color=color,
                    showlegend=col == 1,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [
                            max(r.samples[system]) - m
                            for r, m in zip(present, medians, strict=True)
                        ],
                        "arrayminus": [
                            m - min(r.samples[system])
                            for r, m in zip(present, medians, strict=True)
                        ],
                    },
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group", title="ppo1 benchmark (median, min-max)")
    return fig


def log_to_mlflow(
    rows: list[Row], params: dict[str, Any], table: str, out: Path, tracking: TrackingConfig
) -> str | None:
    """One run: the medians as metrics, the table, the raw samples and the bar chart."""
    with Tracker(tracking, params, {"mlflow.source.name": "benchmarks.bench"}) as tracker:
        metrics: dict[str, float] = {}
        for row in rows:
            for system in row.samples:
                median = row.median(system)
                if median is not None:
                    metrics[f"bench/{system}/{row.key}"] = median
        tracker.log_metrics(metrics, 0)
        tracker.log_text(table, "bench.md")
        for name in ("bench.json", "bench.html"):
            tracker.log_artifact(out / name)
    return tracker.run_id


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

"""`python -m benchmarks.results`: every preset over several seeds, beside published numbers.

    python -m benchmarks.results                          # every row, 5 seeds, presets' budgets
    python -m benchmarks.results --rows pendulum,acrobot --seeds 3
    python -m benchmarks.results --rows cartpole --algo sb_ppo1   # one row of several per env
    python -m benchmarks.results --rows lunarlander --steps 200000   # below the preset's budget
    python -m benchmarks.results --quick                  # cheap rows, small budgets, thresholds
    python -m benchmarks.results --rows hopper --impl ppo1,sb3    # beside SB3, same settings

Each run is `python -m ppo1.train env=... seed=...` (or, for `--impl sb3`, SB3's PPO with the
same settings: `python -m benchmarks.sb3_run`) in its own process (torch_threads=1, at
most --jobs at once), logged to one MLflow experiment. The command writes under --out:
results.md (the table), curves.html (evaluation curves, mean +- std over seeds, offline) and
results.json (every run's numbers). docs/results.md explains the columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.markdown import markdown_rows
from benchmarks.stats import iqm, stratified_bootstrap_ci
from benchmarks.table import machine_info
from ppo1.config import TrackingConfig
from ppo1.report.compare import compare_figure
from ppo1.report.html import html_page
from ppo1.report.plots import EVAL_RETURN
from ppo1.report.runs import load_run, open_store
from ppo1.tracking.ops import get_or_create_experiment
from ppo1.tracking.store import tracking_uri
from ppo1.utils.cli import exit_with_error
from ppo1.utils.paths import project_root

EXPERIMENT = "ppo1-results"
# What --impl may train with: this project, or SB3's PPO given the same settings.
IMPLS = ("ppo1", "sb3")
ZOO = "RL Zoo benchmark.md (PPO, 1 agent, deterministic eval)"


@dataclass(frozen=True)
class Reference:
    """A published result: mean +- std of the final return at `steps` env steps."""

    mean: float
    std: float
    steps: int
    source: str


@dataclass(frozen=True)
class Row:
    env: str  # conf/env option: the preset
    algo: str = "ppo_clip"  # conf/algo option; sb_ppo1 and notebook replace the preset's algo.*
    reference: Reference | None = None
    # --quick: the budget (None: not a quick row) and the mean final return it must reach.
    quick_steps: int | None = None
    quick_threshold: float = -math.inf
    impl: str = "ppo1"  # or "sb3": SB3's PPO given the same settings (benchmarks.sb3_run)

    @property
    def name(self) -> str:
        name = self.env if self.algo == "ppo_clip" else f"{self.env} algo={self.algo}"
        return name if self.impl == "ppo1" else f"{name} ({self.impl})"


ROWS = (
    Row("cartpole", reference=Reference(500, 0, 100_000, ZOO), quick_steps=50_000,
        quick_threshold=200),
    Row("cartpole", "sb_ppo1"),
    Row("cartpole", "notebook"),
    Row("acrobot", reference=Reference(-73.5, 18.2, 1_000_000, ZOO), quick_steps=50_000,
        quick_threshold=-300),
    Row("pendulum", reference=Reference(-172, 104, 100_000, ZOO), quick_steps=100_000,
        quick_threshold=-600),
    Row("mountaincar_continuous", reference=Reference(88.3, 2.6, 20_000, ZOO)),
    Row("lunarlander", reference=Reference(242, 32, 1_000_000, f"{ZOO}; LunarLander-v2")),
    Row("hopper", reference=Reference(2410, 10, 1_000_000, f"{ZOO}; Hopper-v3")),
    Row("walker2d", reference=Reference(3479, 822, 1_000_000, f"{ZOO}; Walker2d-v3")),
    Row("halfcheetah", reference=Reference(5819, 664, 1_000_000, f"{ZOO}; HalfCheetah-v3")),
)  # fmt: skip


@dataclass
class RunResult:
    row: str
    seed: int
    run_id: str
    steps: int
    final_eval: float
    wall_seconds: float
    train_seconds: float


@dataclass
class RowResult:
    row: Row
    runs: list[RunResult] = field(default_factory=list)

    @property
    def finals(self) -> np.ndarray:
        return np.array([r.final_eval for r in self.runs])


_RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32})")


def train_command(row: Row, seed: int, uri: str, steps: int | None) -> list[str]:
    """The training process of one run: the preset as a user gets it, tracked, one thread."""
    budget = [] if steps is None else [f"total_timesteps={steps}"]
    module = "ppo1.train" if row.impl == "ppo1" else "benchmarks.sb3_run"
    run_name = re.sub(r"\W+", "-", row.name).strip("-")
    return [
        sys.executable, "-m", module, f"env={row.env}", f"algo={row.algo}",
        f"seed={seed}", "torch_threads=1", *budget, f"tracking.uri={uri}",
        f"tracking.experiment={EXPERIMENT}", f"tracking.run_name={run_name}-seed{seed}",
        # Runs share the cores (--jobs): no writer process, no figures, no checkpoints.
        "tracking.writer_process=false", "tracking.figures=none", "checkpoint_every=0",
    ]  # fmt: skip


def run_one(row: Row, seed: int, uri: str, steps: int | None) -> RunResult:
    """Train one seed in a subprocess; its numbers from the MLflow run it logged."""
    start = time.perf_counter()
    proc = subprocess.run(
        train_command(row, seed, uri, steps), capture_output=True, text=True, cwd=project_root()
    )
    wall = time.perf_counter() - start
    found = _RUN_LINE.search(proc.stdout)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{row.name} seed {seed} failed (exit {proc.returncode}): {tail}")
    client = open_store(uri)
    run_id = found.group(1)
    metrics = client.get_run(run_id).data.metrics
    evals = client.get_metric_history(run_id, EVAL_RETURN)
    last = max(evals, key=lambda m: m.step)
    return RunResult(
        row.name, seed, run_id, last.step, last.value, wall, metrics["time/train_seconds"]
    )


def run_rows(
    rows: Sequence[tuple[Row, int | None]], seeds: Sequence[int], uri: str, jobs: int
) -> list[RowResult]:
    """Every (row, its budget) for every seed, `jobs` training processes at a time."""
    results = {row.name: RowResult(row) for row, _ in rows}
    pool = ThreadPoolExecutor(max_workers=jobs)
    futures = [pool.submit(run_one, row, seed, uri, steps) for row, steps in rows for seed in seeds]
    try:
        for future in futures:
            run = future.result()
            results[run.row].runs.append(run)
            print(f"{run.row} seed {run.seed}: {run.final_eval:.1f} at {run.steps} steps "
                  f"({run.wall_seconds:.0f} s)", flush=True)  # fmt: skip
    finally:
        # A failed run (or Ctrl-C) starts no further runs; those under way finish.
        pool.shutdown(cancel_futures=True)
    return list(results.values())


def fmt_steps(steps: float) -> str:
    return f"{steps / 1e6:.3g}M" if steps >= 1e6 else f"{steps / 1e3:.4g}k"


def table_cells(result: RowResult) -> list[str]:
    row, runs, finals = result.row, result.runs, result.finals
    lo, hi = stratified_bootstrap_ci(finals)
    steps = int(np.median([r.steps for r in runs]))
    wall = float(np.mean([r.wall_seconds for r in runs]))
    sps = float(np.mean([r.steps / r.train_seconds for r in runs]))
    ref = row.reference
    published = "—" if ref is None else f"{ref.mean:g} ± {ref.std:g} at {fmt_steps(ref.steps)}"
    algo = row.algo if row.impl == "ppo1" else f"{row.algo}, SB3's PPO"
    cells = [
        row.env, algo, fmt_steps(steps), f"{finals.mean():.1f} ± {finals.std():.1f}",
        f"{iqm(finals):.1f} [{lo:.1f}, {hi:.1f}]", str(len(runs)), f"{wall:.0f} s",
        f"{sps:,.0f}", published, "—" if ref is None else ref.source,
    ]  # fmt: skip
    return cells


HEADER = [
    "env", "algo", "env steps", "final eval, mean ± std", "IQM [95% CI]", "seeds", "wall / run",
    "env-steps/s", "published", "source",
]  # fmt: skip


def markdown(results: Sequence[RowResult], commit: str) -> str:
    machine = machine_info()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"Commit {commit}, {when}; {machine['cpu']}, {machine['cores']} cores, "
            f"torch {machine['torch']}, Python {machine['python']}.",
            "",
            markdown_rows(HEADER, [table_cells(r) for r in results]),
            "",
        ]
    )


def curves_page(results: Sequence[RowResult], uri: str) -> str:
    """Each row's curves (evaluation, episode return, KL, clip fraction) over its seeds."""
    client = open_store(uri)
    figures = {}
    for result in results:
        curves = [load_run(client, client.get_run(r.run_id)).curves for r in result.runs]
        figure = compare_figure({result.row.name: curves})
        figure.update_layout(title=f"{result.row.name}: mean ± std over {len(curves)} seeds")
        figures[re.sub(r"\W+", "_", result.row.name)] = figure
    return html_page("ppo1 results: learning curves per preset", figures)


def git_commit() -> str:
    proc = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=project_root(),
    )  # fmt: skip
    return proc.stdout.strip() or "unknown"


def quick_failures(results: Sequence[RowResult]) -> list[str]:
    """The quick rows whose mean final return is below their threshold."""
    return [
        f"{r.row.name}: mean final return {r.finals.mean():.1f} < {r.row.quick_threshold:g}"
        for r in results
        if r.finals.mean() < r.row.quick_threshold
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.results",
        description="Train every preset over several seeds and tabulate the final "
        "deterministic evaluation beside published numbers (docs/results.md).",
    )
    names = sorted({row.env for row in ROWS})
    parser.add_argument("--rows", default=None, help=f"comma-separated envs of {names}")
    algos = sorted({row.algo for row in ROWS})
    parser.add_argument("--algo", choices=algos, help="only the rows of this algo")
    parser.add_argument("--seeds", type=int, help="seeds 1..N per row (default 5; --quick 3)")
    parser.add_argument(
        "--impl", default="ppo1", help=f"comma-separated implementations of {list(IMPLS)}"
    )
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="override every budget")
    parser.add_argument("--quick", action="store_true", help="cheap rows, small budgets, checks")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: ppo1's)")
    args = parser.parse_args(argv)
    if args.rows is not None:
        unknown = set(args.rows.split(",")) - set(names)
        if unknown:
            parser.error(f"--rows: unknown {sorted(unknown)}; choose from {names}")
    args.impl = args.impl.split(",")
    if unknown := set(args.impl) - set(IMPLS):
        parser.error(f"--impl: unknown {sorted(unknown)}; choose from {list(IMPLS)}")
    if (
        (args.seeds is not None and args.seeds < 1)
        or args.jobs < 1
        or (args.steps is not None and args.steps < 1)
    ):
        parser.error("--seeds, --jobs and --steps must be >= 1")
    return args


def selected_rows(args: argparse.Namespace) -> list[tuple[Row, int | None]]:
    """The rows to run and each one's budget (None: its preset's)."""
    rows = [
        row
        for row in ROWS
        if (args.rows is None or row.env in args.rows.split(",")) and args.algo in (None, row.algo)
    ]
    if args.quick:
        rows = [row for row in rows if row.quick_steps]
    return [
        (
            dataclasses.replace(row, impl=impl),
            (args.steps or row.quick_steps) if args.quick else args.steps,
        )
        for row in rows
        for impl in args.impl
    ]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    uri = args.tracking_uri or tracking_uri(TrackingConfig())
    get_or_create_experiment(open_store(uri), EXPERIMENT)  # once, before runs race to it
    seeds = range(1, (args.seeds or (3 if args.quick else 5)) + 1)
    try:
        results = run_rows(selected_rows(args), seeds, uri, args.jobs)
    except RuntimeError as err:
        exit_with_error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, git_commit())
    (args.out / "results.md").write_text(table)
    (args.out / "curves.html").write_text(curves_page(results, uri), encoding="utf-8")
    runs = [asdict(run) for result in results for run in result.runs]
    (args.out / "results.json").write_text(json.dumps(runs, indent=1))
    print(table)
    print(f"wrote {args.out}/results.md, curves.html, results.json; MLflow experiment "
          f"'{EXPERIMENT}' in {uri}")  # fmt: skip
    failures = quick_failures(results) if args.quick else []
    if failures:
        exit_with_error("quick results below threshold: " + "; ".join(failures))


if __name__ == "__main__":
    main()

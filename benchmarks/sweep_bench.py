"""`python -m benchmarks.sweep_bench`: sweeps side by side, where their wall clock goes.

    python -m benchmarks.sweep_bench                     # both measurements of docs/sweeps.md
    python -m benchmarks.sweep_bench --only jobs --repeats 2
    python -m benchmarks.sweep_bench --only pruning --pruning-trials 24

`jobs`: the default sweep (`sweep=clip_epochs_lr`, 16 trials) with `sweep.n_jobs=2` and with
`sweep.n_jobs=1`, interleaved repeat by repeat so both see the same machine load, at the same
sampler seed, into an MLflow store that exists (as `make train` leaves `./mlruns`) and into a
new one (whose tables MLflow creates first). `pruning`: a 40-trial sweep with its pruners and
with them off (`sweep.pruner=null sweep.kl=null`), at 2 jobs. Each sweep is a fresh
`python -m ppo1.train -m` process on a fresh journal in a temporary folder. Per sweep it
reports the wall clock; the CPU time of its processes, the fork server and its workers
included (which other load on the machine does not inflate, unlike the wall clock); the env
steps its trials spent; the best objective; and the fixed cost: the part of the wall clock x
jobs that is not inside a trial's training loop (`time/train_seconds`; evaluations count as
fixed cost), with the time before the first trial starts and after the last ends (the study's
report). The load average is printed with each sweep: the machine is shared. An unmeasured
2-trial parallel sweep runs first: a VM may page out files left unused for a while (ours runs
DAMON's pageout), so the first process to import torch and mlflow after an idle spell may read
them from disk, which would charge whichever sweep comes first (once, a first parallel sweep
began its trials 14.5 s in, the serial one after it 8.4 s, the next parallel one 9.8 s).

A second table splits wall clock x jobs into: the sweep's start (before its first trial) and
end (after its last), x jobs; slots left idle in between (waiting for a worker, or for the
last trials while another slot has none left to ask); per trial, what surrounds its seed runs
(launching the job, Hydra composing its config, the trial's MLflow run, telling the study),
what its seed runs spend outside their training loop and evaluations (envs and network,
figures, their MLflow writes), their evaluations (`time/eval_seconds`), and their training
loops. The two per-trial parts besides evaluations and training are the per-trial fixed cost.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from benchmarks.markdown import markdown_rows
from ppo1.sweep.study import open_storage

STUDY = "clip_epochs_lr"


@dataclass
class Sweep:
    label: str
    wall_s: float
    first_trial_s: float  # the process's start to a worker beginning the first trial
    last_trial_s: float  # the process's start to the last trial's end
    trials_s: float  # summed over trials: from asked (or a worker's start) to told
    runs_s: float  # summed over seed runs: from start to end
    train_s: float  # summed over seed runs: inside the training loop
    eval_s: float  # summed over seed runs: evaluating
    env_steps: int
    best: float
    states: str
    cpu_s: float  # user + system CPU of the sweep and its processes: what load cannot inflate
    load: str  # the 1-minute load average before and after


# prctl(2): orphaned descendants are re-parented to this process, not to init.
_PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> None:
    """Become the subreaper of the sweeps' processes: a parallel sweep's fork server (and the
    workers it forked) outlives the sweep process by a moment, and only a process that waits
    for it counts its CPU time in RUSAGE_CHILDREN."""
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(ctypes.get_errno())}")


def reap_orphans(timeout_s: float = 30.0) -> None:
    """Wait for every adopted process to end (the fork server ends with its sweep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # none left
            return
        if pid == 0:
            time.sleep(0.05)
    sys.exit("a sweep left processes running")


def run_sweep(label: str, folder: Path, overrides: list[str], store_exists: bool) -> Sweep:
    folder.mkdir(parents=True)
    if store_exists:  # its tables created, as by an earlier run
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    command = [
        sys.executable,
        "-m",
        "ppo1.train",
        "-m",
        f"sweep={STUDY}",
        f"sweep.storage={folder / 'study.journal'}",
        f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
        *overrides,
    ]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    wall = time.time() - start
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if done.returncode != 0:
        sys.exit(f"{label}: the sweep failed:\n{done.stderr[-3000:]}")
    study = optuna.load_study(study_name=STUDY, storage=open_storage(str(folder / "study.journal")))
    trials = study.get_trials(deepcopy=False)
    runs = read_runs(folder)
    began = runs.first_trial_run  # trials asked before a worker was ready waited until then
    spans = [(max(asked, began), told) for asked, told in map(span, trials)]
    states = [t.state.name for t in trials]
    return Sweep(
        label=label,
        wall_s=wall,
        first_trial_s=began - start,
        last_trial_s=max(told for _, told in spans) - start,
        trials_s=sum(told - asked for asked, told in spans),
        runs_s=runs.seed_s,
        train_s=runs.train_s,
        eval_s=runs.eval_s,
        env_steps=runs.env_steps,
        best=study.best_value,
        states=", ".join(f"{states.count(s)} {s}" for s in sorted(set(states))),
        cpu_s=cpu,
        load=f"{load:.1f} -> {os.getloadavg()[0]:.1f}",
    )


def span(trial: FrozenTrial) -> tuple[float, float]:
    """When the trial was asked and told, in seconds since the epoch."""
    assert trial.datetime_start is not None and trial.datetime_complete is not None
    return trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()


@dataclass
class Runs:
    """What the sweep's MLflow runs say."""

    env_steps: int  # over seed runs: the last update's `losses/kl` step is what each collected
    seed_s: float  # summed over seed runs: from start to end
    train_s: float  # summed over seed runs: inside the training loop
    eval_s: float  # summed over seed runs: evaluating
    first_trial_run: float  # when a worker first began a trial (its MLflow run), epoch seconds


def read_runs(folder: Path) -> Runs:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ppo1")
    assert experiment is not None

    def role(name: str) -> list[Run]:
        where = f"tags.`ppo1.role` = '{name}'"
        return client.search_runs([experiment.experiment_id], where, max_results=10000)

    seeds = role("seed")
    return Runs(
        env_steps=sum(
            max(m.step for m in client.get_metric_history(r.info.run_id, "losses/kl"))
            for r in seeds
        ),
        seed_s=sum((r.info.end_time - r.info.start_time) / 1000 for r in seeds),
        train_s=sum(r.data.metrics["time/train_seconds"] for r in seeds),
        eval_s=sum(r.data.metrics["time/eval_seconds"] for r in seeds),
        first_trial_run=min(r.info.start_time for r in role("trial")) / 1000,
    )


def table(sweeps: list[Sweep], jobs: dict[str, int]) -> str:
    header = ["sweep", "wall s", "CPU s", "first trial at s", "report s", "fixed cost"]
    header += ["env steps", "best", "trials", "load"]
    rows = []
    for s in sweeps:
        fixed = 1 - s.train_s / (s.wall_s * jobs[s.label])
        report = s.wall_s - s.last_trial_s
        rows.append(
            [
                s.label,
                f"{s.wall_s:.1f}",
                f"{s.cpu_s:.1f}",
                f"{s.first_trial_s:.1f}",
                f"{report:.1f}",
                f"{fixed:.0%}",
                str(s.env_steps),
                f"{s.best:.1f}",
                s.states,
                s.load,
            ]
        )
    return markdown_rows(header, rows)


def breakdown(sweeps: list[Sweep], jobs: dict[str, int]) -> str:
    """Where each sweep's wall clock x jobs went, in per cent (see the module's docstring)."""
    header = ["sweep", "start", "end", "idle slots", "around seed runs", "in seed runs"]
    header += ["evaluations", "training", "per-trial fixed cost"]
    rows = []
    for s in sweeps:
        n = jobs[s.label]
        total = s.wall_s * n
        start, end = s.first_trial_s * n, (s.wall_s - s.last_trial_s) * n
        idle = total - start - end - s.trials_s
        around, inside = s.trials_s - s.runs_s, s.runs_s - s.train_s - s.eval_s
        parts = [start, end, idle, around, inside, s.eval_s, s.train_s, around + inside]
        rows.append([s.label, *(f"{p / total:.0%}" for p in parts)])
    return markdown_rows(header, rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("jobs", "pruning"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--pruning-trials", type=int, default=40)
    args = parser.parse_args(argv)
    plans: list[tuple[str, int, list[str], bool]] = []
    for i in range(args.repeats):
        if args.only in (None, "jobs"):
            n = f"sweep.n_trials={args.trials}"
            for exists, store in ((True, "store exists"), (False, "new store")):
                plans += [(f"n_jobs=2, {store} #{i}", 2, [n, "sweep.n_jobs=2"], exists)]
                plans += [(f"n_jobs=1, {store} #{i}", 1, [n, "sweep.n_jobs=1"], exists)]
        if args.only in (None, "pruning"):
            n = f"sweep.n_trials={args.pruning_trials}"
            plans += [(f"pruned #{i}", 2, [n, "sweep.n_jobs=2"], True)]
            off = [n, "sweep.n_jobs=2", "sweep.pruner=null", "sweep.kl=null"]
            plans += [(f"pruners off #{i}", 2, off, True)]
    adopt_orphans()
    sweeps = []
    jobs = {label: n for label, n, _, _ in plans}
    with tempfile.TemporaryDirectory(prefix="ppo1-sweep-bench-") as tmp:
        run_sweep("warm-up", Path(tmp) / "warm-up", ["sweep.n_trials=2", "sweep.n_jobs=2"], True)
        for k, (label, _, overrides, exists) in enumerate(plans):
            sweeps.append(run_sweep(label, Path(tmp) / str(k), overrides, exists))
            print(table(sweeps[-1:], jobs).splitlines()[-1], flush=True)
    print(f"\n{os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} usable\n")
    print(table(sweeps, jobs))
    print()
    print(breakdown(sweeps, jobs))


if __name__ == "__main__":
    main()

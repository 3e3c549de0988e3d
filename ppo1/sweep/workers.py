"""The worker processes of hydra-joblib-launcher (joblib's loky pool): warmed up, and stopped.

The pool is joblib's reusable executor: it outlives each `Parallel` call the launcher makes per
job, so a worker imports torch, gymnasium and mlflow once per sweep, not once per trial.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterable
from typing import Any

# How often a worker checks for its sweep process, and how long it may take to end its runs.
_WATCH_S = 1.0
_EXIT_AFTER_S = 30.0
# The growth past its warmed-up size at which loky replaces a worker as leaking (its own: 300 MB).
_LEAK_BYTES = int(1.5e9)


def warm_up(settings: dict[str, Any], n: int, modules: Iterable[str]) -> None:
    """Start the launcher's n workers now, in the background, each importing `modules`
    (seconds), while the sweep process opens its study and MLflow run.

    `settings`: the launcher's joblib.Parallel settings; joblib reuses its pool only for the
    same ones."""
    from joblib import Parallel, delayed

    work = [delayed(prepare_worker)(list(modules), os.getpid()) for _ in range(n)]
    parallel = Parallel(**{**settings, "backend": "loky"})
    threading.Thread(target=parallel, args=(work,), name="ppo1-warm-up", daemon=True).start()


def prepare_worker(names: Iterable[str], sweep_pid: int) -> None:
    """A launcher's worker process before its first job: import `names`, and end when the
    sweep process is gone.

    joblib's workers outlive a sweep process killed by SIGKILL, or by SIGTERM before it set up
    its handler, for loky's idle timeout (5 min), training trials already given back. Once it
    is gone the worker stops itself as a scheduler would: SIGTERM (its training, if any, ends
    its MLflow runs KILLED), then exits for good if that did not end it."""

    def watch() -> None:
        while os.getppid() == sweep_pid:
            time.sleep(_WATCH_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_EXIT_AFTER_S)
        os._exit(1)

    if not any(t.name == "ppo1-watch-sweep" for t in threading.enumerate()):
        threading.Thread(target=watch, name="ppo1-watch-sweep", daemon=True).start()
    for name in names:
        importlib.import_module(name)
    # loky measures a worker after its first call (this one) and replaces it once it has grown
    # 300 MB past that. A first trial grows a warmed worker by ~300 MB (torch's and gymnasium's
    # buffers, MLflow's store: ~250 -> ~520 MB RSS on the default sweep), then it holds steady:
    # every worker was replaced mid-sweep and its successor paid the imports again (4 workers
    # started for 2 slots, ~5 CPU-s each). The worker loop reads this global at each check.
    from joblib.externals.loky import process_executor

    process_executor._MAX_MEMORY_LEAK_SIZE = max(
        process_executor._MAX_MEMORY_LEAK_SIZE, _LEAK_BYTES
    )


def stop_workers() -> None:
    """Stop the jobs still training in the workers: each ends its MLflow runs KILLED on
    SIGTERM, as a job of Hydra's basic launcher does on Ctrl-C."""
    for worker in multiprocessing.active_children():
        if worker.name.startswith("LokyProcess") and worker.pid is not None:
            os.kill(worker.pid, signal.SIGTERM)


def shut_down() -> None:
    """End the idle workers now that the sweep has no trial left for them. Left to the exit
    handler, joblib winds them down gracefully: 2.5 s of the sweep's end here (5 s under load),
    for processes that hold nothing to save."""
    from joblib.externals.loky import reusable_executor

    executor = reusable_executor._executor  # joblib's one pool; no public handle to it
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


def uses_joblib(launcher: object) -> bool:
    """Whether `launcher` is hydra-joblib-launcher's (its joblib.Parallel settings)."""
    return isinstance(getattr(launcher, "joblib", None), dict)

"""The launcher's warm workers (ppo1.sweep.workers) in joblib's real loky pool."""

from __future__ import annotations

import os
import time

from joblib import Parallel, delayed
from joblib.externals.loky import reusable_executor

from ppo1.sweep.workers import prepare_worker, shut_down

_held: list[bytes] = []


def grow(megabytes: int) -> None:
    """Hold `megabytes` more memory for good, as a trial's buffers do."""
    _held.append(b"x" * (megabytes << 20))  # written, so resident


def worker_pids() -> set[int]:
    executor = reusable_executor._executor
    assert executor is not None
    return set(executor._processes)


def test_warmed_workers_that_grow_by_a_trials_memory_are_kept() -> None:
    # Each worker grows 400-800 MB past its size after warming up: over loky's own limit of
    # 300 MB, where it would replace the worker (and the next job would import everything again).
    parallel = Parallel(n_jobs=2, backend="loky")
    try:
        parallel([delayed(prepare_worker)([], os.getpid()) for _ in range(2)])
        warmed = worker_pids()
        time.sleep(1.5)  # loky checks a worker's memory after a call, at most once a second
        parallel([delayed(grow)(400) for _ in range(2)])
        time.sleep(1.5)
        parallel([delayed(time.sleep)(0.1) for _ in range(2)])
        time.sleep(1.5)
        assert worker_pids() == warmed
    finally:
        shut_down()

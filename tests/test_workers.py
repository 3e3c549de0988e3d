"""The launcher's warm workers (ppo1.sweep.workers) in joblib's real loky pool."""

from __future__ import annotations

import json
import os
import textwrap
import time

import pytest
from joblib import Parallel, delayed
from joblib.externals.loky import reusable_executor

from ppo1.sweep.workers import SWEEP_PID_ENV, prepare_worker, shut_down
from tests.conftest import run_python

_held: list[bytes] = []


def grow(megabytes: int) -> None:
    """Hold `megabytes` more memory for good, as a trial's buffers do."""
    _held.append(b"x" * (megabytes << 20))  # written, so resident


def worker_pids() -> set[int]:
    executor = reusable_executor._executor
    assert executor is not None
    return set(executor._processes)


def test_warmed_workers_that_grow_by_a_trials_memory_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each worker grows 400-800 MB past its size after warming up: over loky's own limit of
    # 300 MB, where it would replace the worker (and the next job would start afresh). Workers
    # of this process, as warm_up makes them a sweep's.
    monkeypatch.setenv(SWEEP_PID_ENV, str(os.getpid()))
    parallel = Parallel(n_jobs=2, backend="loky")
    try:
        parallel([delayed(prepare_worker)([]) for _ in range(2)])
        warmed = worker_pids()
        time.sleep(1.5)  # loky checks a worker's memory after a call, at most once a second
        parallel([delayed(grow)(400) for _ in range(2)])
        time.sleep(1.5)
        parallel([delayed(time.sleep)(0.1) for _ in range(2)])
        time.sleep(1.5)
        assert worker_pids() == warmed
    finally:
        shut_down()


def test_warm_workers_are_forked_from_one_server_that_imported_a_trials_modules() -> None:
    # As a sweep process does: warm_up with what a trial's job imports, then a job. Each worker
    # of the pool has one parent, the fork server, which has torch loaded, where the sweep
    # process never imported it (each worker importing it again took the cores from the sweep's
    # start); and a job sees itself in a worker of a live sweep.
    script = textwrap.dedent(
        """
        import json, os, sys
        from joblib import Parallel, delayed
        from joblib.externals.loky import reusable_executor
        from hydra_plugins.ppo1_sweeper.optuna_sweeper import JOB_MODULES
        from ppo1.sweep.workers import shut_down, warm_up, worker_of_live_sweep

        def parent(pid):
            with open(f"/proc/{pid}/stat") as stat:
                return int(stat.read().rsplit(")", 1)[1].split()[1])

        def look():
            import gc
            return worker_of_live_sweep(), gc.get_freeze_count()

        warm_up({"n_jobs": 2}, 2, JOB_MODULES)
        ((live, frozen),) = Parallel(n_jobs=2, backend="loky")([delayed(look)()])
        workers = list(reusable_executor._executor._processes)
        parents = {parent(pid) for pid in workers}
        (server,) = parents
        with open(f"/proc/{server}/maps") as maps:
            torch_in_server = "libtorch_cpu.so" in maps.read()
        shut_down()
        print(json.dumps({
            "pid": os.getpid(), "workers": workers, "parents": list(parents),
            "torch_in_server": torch_in_server, "torch_here": "torch" in sys.modules,
            "live": live, "here": worker_of_live_sweep(), "frozen": frozen,
        }))
        """
    )
    done = run_python(script, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert len(seen["workers"]) == 2 and seen["parents"] != [seen["pid"]]
    assert seen["torch_in_server"] and not seen["torch_here"]
    assert seen["live"] is True and seen["here"] is None
    # What the server imported is frozen: left out of the worker's garbage collections.
    assert seen["frozen"] > 100_000


def test_the_warm_up_imports_what_a_trials_job_imports() -> None:
    # A tracked run after importing JOB_MODULES loads no new package of torch's, gymnasium's,
    # MLflow's or plotly's size (only their lazily loaded submodules): the warm-up left torch
    # and gymnasium to each worker's first trial once ppo1.train imported them lazily.
    script = textwrap.dedent(
        """
        import sys, tempfile
        from hydra_plugins.ppo1_sweeper.optuna_sweeper import JOB_MODULES
        for name in JOB_MODULES:
            __import__(name)
        warm = {name.split(".")[0] for name in sys.modules}
        from hydra import compose, initialize_config_dir
        from ppo1.config import CONF_DIR, to_train_config
        from ppo1.tracked import train
        folder = tempfile.mkdtemp()
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = to_train_config(compose("train", [
                "total_timesteps=512", f"tracking.uri=sqlite:///{folder}/mlflow.db",
                "tracking.figures=light", "tracking.writer_process=false", "eval.every=1",
            ]))
        train(cfg)
        print(sorted({name.split(".")[0] for name in sys.modules} - warm))
        """
    )
    done = run_python(script, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    new_packages = set(json.loads(done.stdout.splitlines()[-1].replace("'", '"')))
    heavy = {"torch", "gymnasium", "mlflow", "plotly", "sqlalchemy", "optuna", "numpy", "hydra"}
    assert not new_packages & heavy, new_packages


def test_a_sweep_that_exits_right_after_shutting_its_workers_down_prints_nothing_more() -> None:
    # The pool's semaphores are unlinked, each then struck off the resource tracker, by their
    # finalizers, in whichever thread a garbage collection frees them: once, the feeder thread
    # of the pool's call queue, a daemon that the exit does not wait for. An exit right after
    # shut_down (a parallel sweep's bad tracking store) cut it off in between (1 run in 30 under
    # load), and the tracker printed two warnings under the sweep's one error line. The pauses
    # and the feeder's collection make that order certain.
    script = textwrap.dedent(
        """
        import gc, sys, threading, time
        from multiprocessing import resource_tracker, synchronize
        from joblib.externals.loky.backend import queues
        from ppo1.sweep.workers import shut_down, warm_up

        def cleanup(name):
            synchronize.sem_unlink(name)
            if threading.current_thread() is not threading.main_thread():
                time.sleep(1.0)
            resource_tracker.unregister(name, "semaphore")

        def feed(*args):  # the feeder thread ends late, as under load, and collects
            fed(*args)
            time.sleep(0.3)
            gc.collect()

        synchronize.SemLock._cleanup = staticmethod(cleanup)
        fed = queues.Queue._feed
        queues.Queue._feed = staticmethod(feed)
        warm_up({"n_jobs": 2}, 2, ["json"])
        shut_down()
        time.sleep(0.5)
        print("error: the sweep's one line", file=sys.stderr)
        sys.exit(2)
        """
    )
    done = run_python(script, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == ["error: the sweep's one line"], done.stderr[-3000:]

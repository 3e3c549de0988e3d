"""The worker processes of hydra-joblib-launcher (joblib's loky pool): warmed up, and stopped.

The pool is joblib's reusable executor: it outlives each `Parallel` call the launcher makes per
job, so a worker imports torch, gymnasium and mlflow once per sweep, not once per trial. Its
workers are forked from a fork server that imported those once for all of them: n workers
importing them side by side (~2.5 CPU-s each) took the cores from the sweep process while it
opened its study and MLflow run, and its first trials waited for both.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from ppo1.sweep.hydra_state import keep_plugins
from ppo1.utils.signals import STOPS, signal_handlers

# How often a worker checks for its sweep process where it cannot wait for its end, and how long
# it may take to end its runs.
_WATCH_S = 1.0
_EXIT_AFTER_S = 30.0
# The growth past its warmed-up size at which loky replaces a worker as leaking (its own: 300 MB).
_LEAK_BYTES = int(1.5e9)
# How long shut_down waits for the warm-up's workers to have started (imports: seconds).
_WARM_UP_WAIT_S = 60.0
# How long it waits for the pool's queue to stop feeding workers that are gone (at once).
_FEEDER_WAIT_S = 5.0


class TrialInterrupted(Exception):
    """A job stopped by Ctrl-C or SIGTERM in a launcher's worker, its runs ended KILLED.

    Defined here, not with the job (ppo1.sweep.trial): the sweep process unpickles it from a
    worker's result, and that module would import torch into it on the way out."""


# Set in the fork server's environment, so in every worker's: the sweep process's pid.
SWEEP_PID_ENV = "PPO1_SWEEP_PID"

_warming: threading.Thread | None = None  # warm_up's, starting the pool


def warm_up(settings: dict[str, Any], n: int, modules: Iterable[str]) -> None:
    """Start the launcher's n workers now, in the background, while the sweep process opens
    its MLflow run: a fork server imports `modules` (seconds) once, then forks each worker.

    `settings`: the launcher's joblib.Parallel settings; joblib reuses its pool only for the
    same ones. loky's start method is process-wide (joblib passes none per call): set here, in
    a sweep process, whose only pool is the launcher's."""
    from joblib import Parallel, delayed

    if "forkserver" in multiprocessing.get_all_start_methods():  # not on Windows
        _start_fork_server(modules)
    global _warming
    work = [delayed(prepare_worker)(list(modules)) for _ in range(n)]
    parallel = Parallel(**{**settings, "backend": "loky"})
    _warming = threading.Thread(target=parallel, args=(work,), name="ppo1-warm-up", daemon=True)
    _warming.start()


def _start_fork_server(modules: Iterable[str]) -> None:
    """Make loky fork the workers from a fork server that imported `modules`, and start it."""
    import multiprocessing.forkserver

    from joblib.externals.loky.backend.context import set_start_method

    # The fork server is single-threaded and has run nothing but these imports, so forking it
    # is safe where forking the sweep process (threads, open database connections) is not.
    # Not the sweep's main module (`python -m ppo1.train`): each worker runs that itself as
    # __mp_main__, as spawned processes do, and runpy warns if it was imported already.
    main = getattr(sys.modules["__main__"].__spec__, "name", None)
    preload = [name for name in modules if name != main]
    multiprocessing.set_forkserver_preload([*preload, "ppo1.sweep.fork_server"])
    set_start_method("forkserver", force=True)
    os.environ[SWEEP_PID_ENV] = str(os.getpid())
    try:
        multiprocessing.forkserver.ensure_running()  # starts it, with this environment
    finally:
        del os.environ[SWEEP_PID_ENV]


def prepare_worker(names: Iterable[str]) -> None:
    """A launcher's worker process before its first job: import `names` (the fork server's
    preload skips a module that fails to import; here it raises) and enter_worker()."""
    for name in names:
        importlib.import_module(name)
    enter_worker()


_sweep_gone = threading.Event()  # set in a worker once its sweep process has ended
_entered = False  # enter_worker has run in this process


def enter_worker() -> None:
    """In a launcher's worker (joblib may give every warm-up job to one worker, so each trial's
    job calls this too; once per process), watch the sweep process and keep the worker.

    joblib's workers outlive a sweep process killed by SIGKILL, or by SIGTERM before it set up
    its handler, for loky's idle timeout (5 min), training trials already given back; and so
    does the fork server, their parent, since each worker holds the pipe whose closing would
    end it. Once the sweep process is gone the worker stops itself as a scheduler would:
    SIGTERM (its training, if any, ends its MLflow runs KILLED), then exits for good if that
    did not end it."""
    global _entered
    pid = os.environ.get(SWEEP_PID_ENV)
    if pid is None or _entered:
        return
    _entered = True
    keep_plugins()  # a job's Hydra state keeps the plugins the worker found (hydra_state)
    # Its stops come from the sweep process (stop_workers) or, once that is gone, from the
    # watch below: SIGTERM, once. A terminal's Ctrl-C or hang-up reaches the whole process
    # group, and with the sweep's SIGTERM after it a job saw a second stop, which stops it at
    # once, mid-update, instead of after the update (two CIs saw one of its runs FAILED).
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sweep_ended = _ended(int(pid))

    def watch() -> None:
        sweep_ended()
        _sweep_gone.set()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(_EXIT_AFTER_S)
        os._exit(1)

    threading.Thread(target=watch, name="ppo1-watch-sweep", daemon=True).start()
    # loky measures a worker after its first call and replaces it once it has grown 300 MB past
    # that. A first trial grows a worker by ~300 MB (torch's and gymnasium's buffers, MLflow's
    # store: ~250 -> ~520 MB RSS on the default sweep), then it holds steady: every worker was
    # replaced mid-sweep, its successor started afresh inside a trial. The worker loop reads
    # this global at each check.
    from joblib.externals.loky import process_executor

    process_executor._MAX_MEMORY_LEAK_SIZE = max(
        process_executor._MAX_MEMORY_LEAK_SIZE, _LEAK_BYTES
    )


def worker_of_live_sweep() -> bool | None:
    """In a launcher's worker, whether its sweep process still runs; None elsewhere."""
    if SWEEP_PID_ENV not in os.environ:
        return None
    return not _sweep_gone.is_set()


def _ended(pid: int) -> Callable[[], None]:
    """A function that returns once process `pid` has ended. Linux: a pidfd, readable when
    it ends, even unreaped, and never another process that reuses the pid. Elsewhere: polls."""
    if hasattr(os, "pidfd_open"):
        with suppress(OSError):  # a kernel before 5.3: poll
            pidfd = os.pidfd_open(pid)

            def wait() -> None:
                select.select([pidfd], [], [])

            return wait

    def poll() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(_WATCH_S)

    return poll


def _pool() -> Any:
    """joblib's one pool of workers, if started (loky's reusable executor: no public handle)."""
    from joblib.externals.loky import reusable_executor

    return reusable_executor._executor


def stop_workers() -> None:
    """Stop the jobs still training in the workers: each ends its MLflow runs KILLED on
    SIGTERM, as a job of Hydra's basic launcher does on Ctrl-C."""
    if (pool := _pool()) is None:
        return
    for pid in list(pool._processes):
        with suppress(ProcessLookupError):  # ended already
            os.kill(pid, signal.SIGTERM)


@contextmanager
def workers_stopped() -> Iterator[None]:
    """stop_workers(), then wait in the block for their jobs to end; another stop meanwhile (a
    second Ctrl-C) is passed on to them, which stops their jobs at once, and still waited for."""
    stop_workers()
    with signal_handlers(STOPS, lambda signum, frame: stop_workers()):
        yield


def shut_down() -> None:
    """End the idle workers now that the sweep has no trial left for them. Left to the exit
    handler, joblib winds them down gracefully: 2.5 s of the sweep's end here (5 s under load),
    for processes that hold nothing to save. A warm-up still starting them is waited for: a
    sweep that exits meanwhile (its tracking store refused) left each worker forked after it
    to find its semaphores gone and print a traceback under the sweep's error line."""
    if _warming is not None:
        _warming.join(_WARM_UP_WAIT_S)
    if (pool := _pool()) is None:
        return
    calls = pool._call_queue  # held here: freed by this thread, not its feeder
    pool.shutdown(wait=True, kill_workers=True)
    # The pool's semaphores are unlinked, each then struck off the resource tracker, by their
    # finalizers in whichever thread a garbage collection frees them. The call queue's feeder
    # thread is a daemon that multiprocessing does not join (the queue was made here): an exit
    # right after cut it off in between, and the tracker printed two warnings under the sweep's
    # last line. Its end is waited for.
    if calls is not None and calls._thread is not None:
        calls._thread.join(_FEEDER_WAIT_S)


def uses_joblib(launcher: object) -> bool:
    """Whether `launcher` is hydra-joblib-launcher's (its joblib.Parallel settings)."""
    return isinstance(getattr(launcher, "joblib", None), dict)

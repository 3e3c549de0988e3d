"""Keep `n` trials running: each slot asks a new trial as soon as its last one ends.

Hydra's launchers run a list of jobs and return when the slowest has ended, so asking `n`
trials, launching them together and telling them together leaves a slot idle while its
neighbour finishes (a pruned trial ends in a second, a complete one runs six): the default
sweep lost a third of its wall clock that way. Instead each slot is a thread that launches one
job at a time; the launcher's workers (joblib's loky pool) are shared by the threads and stay
warm between jobs. TPE then models every trial finished before it is asked, not only those of
earlier batches; the first `n` trials are asked before any has ended, which TPE's startup
trials (random) cover.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable

import optuna

# How often a worker checks for its sweep process, and how long it may take to end its runs.
_WATCH_S = 1.0
_EXIT_AFTER_S = 30.0


class Slots:
    """Run trials from `ask` through `run` in `n` slots until `ask` gives none and
    `running_elsewhere` says no trial of the study is running (another sweep process's trial
    may still end stale, its slot to be run again).

    `in_flight` are the trials being run now: what an interrupted sweep gives back."""

    def __init__(
        self,
        n: int,
        ask: Callable[[], optuna.Trial | None],
        run: Callable[[optuna.Trial], None],
        running_elsewhere: Callable[[], bool],
        poll_s: float,
    ) -> None:
        self._n = n
        self._ask = ask
        self._run = run
        self._running_elsewhere = running_elsewhere
        self._poll_s = poll_s
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # notified when a trial ends
        self._in_flight: dict[int, optuna.Trial] = {}
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def in_flight(self) -> list[optuna.Trial]:
        with self._lock:
            return list(self._in_flight.values())

    @property
    def stopped(self) -> bool:
        """The sweep was interrupted: trials that end now are given back, not told."""
        return self._stopped

    def stop(self, wait_s: float) -> list[optuna.Trial]:
        """Ask no more trials; wait up to `wait_s` for the running ones to end (their jobs were
        told to stop). Returns the trials that were running: the sweep gives them back."""
        with self._ended:
            self._stopped = True
            running = list(self._in_flight.values())
            self._ended.wait_for(lambda: not self._in_flight, wait_s)
        return running

    def run(self) -> None:
        """Run every trial there is to run. One slot runs in this thread (a job of Hydra's
        basic launcher runs in this process, and only the main thread gets signals); more run
        in threads, and this one waits for them, so that Ctrl-C still reaches it."""
        if self._n == 1:
            self._slot()
            return
        threads = [
            threading.Thread(target=self._guarded_slot, name=f"ppo1-slot-{i}", daemon=True)
            for i in range(self._n)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=1.0)
        if self._error is not None:
            raise self._error

    def _guarded_slot(self) -> None:
        try:
            self._slot()
        except BaseException as err:  # the sweep itself broke: stop every slot, raise it
            with self._ended:
                if not self._stopped:  # else the job's end of an interrupt
                    self._error = self._error or err
                self._ended.notify_all()

    def _slot(self) -> None:
        while self._error is None and not self._stopped:
            trial = self._ask()
            if trial is None:
                if not self._waited():
                    return
                continue
            with self._lock:
                self._in_flight[trial.number] = trial
            try:
                self._run(trial)
            finally:
                with self._ended:
                    del self._in_flight[trial.number]
                    self._ended.notify_all()

    def _waited(self) -> bool:
        """No trial to ask: wait for a running one to end (this process's, or another's that
        may go stale), True; or False when none runs anywhere, the study is done."""
        with self._ended:
            mine = bool(self._in_flight)
            if mine:
                self._ended.wait()  # a slot of this process ends, or a slot broke
                return self._error is None and not self._stopped
        if not self._running_elsewhere():
            return False
        with self._ended:
            self._ended.wait(self._poll_s)
        return True


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

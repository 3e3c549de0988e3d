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

import threading
from collections.abc import Callable

import optuna


class Slots:
    """Run trials from `ask` through `run` (which tells each its end) in `n` slots until `ask`
    gives none and `running_elsewhere` says no trial of the study is running (another sweep
    process's trial may still end stale, its slot to be run again). `drained` is work for a
    slot left idle at the end (see _drain)."""

    def __init__(
        self,
        n: int,
        ask: Callable[[], optuna.Trial | None],
        run: Callable[[optuna.Trial], None],
        running_elsewhere: Callable[[], bool],
        poll_s: float,
        drained: Callable[[], None] | None = None,
    ) -> None:
        self._n = n
        self._ask = ask
        self._run = run
        self._running_elsewhere = running_elsewhere
        self._poll_s = poll_s
        self._drained = drained
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)  # notified when a job ends
        self._busy = 0  # jobs running
        self._untold: dict[int, optuna.Trial] = {}  # asked, not told: given back if stopped
        self._error: BaseException | None = None
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """The sweep was interrupted: trials whose jobs end now are given back, not told."""
        return self._stopped

    def stop(self, wait_s: float) -> list[optuna.Trial]:
        """Ask no more trials; wait up to `wait_s` for the running jobs to end (they were told
        to stop). Returns the trials not told their end: the sweep gives them back."""
        with self._ended:
            self._stopped = True
            self._ended.wait_for(lambda: self._busy == 0, wait_s)
            return list(self._untold.values())

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
                if not self._stopped:  # else it is how a job ended on the interrupt
                    self._error = self._error or err
                self._ended.notify_all()

    def _slot(self) -> None:
        while self._error is None and not self._stopped:
            trial = self._ask()
            if trial is None:
                self._drain()
                if not self._waited():
                    return
                continue
            with self._lock:
                self._untold[trial.number] = trial
                self._busy += 1
            told = False
            try:
                self._run(trial)
                told = not self._stopped
            finally:
                with self._ended:
                    self._busy -= 1
                    if told:
                        del self._untold[trial.number]
                    self._ended.notify_all()

    def _drain(self) -> None:
        """Run `drained` once, in the first slot to find no trial left to ask while another
        slot's job still runs: on the core that slot no longer uses."""
        with self._lock:
            if self._drained is None or self._busy == 0:
                return
            drained, self._drained = self._drained, None
        drained()

    def _waited(self) -> bool:
        """No trial to ask: wait for a running one to end (this process's, or another's that
        may go stale), True; or False when none runs anywhere, the study is done."""
        with self._ended:
            if self._busy:
                self._ended.wait()  # a job of this process ends, or a slot broke
                return self._error is None and not self._stopped
        if not self._running_elsewhere():
            return False
        with self._ended:
            self._ended.wait(self._poll_s)
        return True

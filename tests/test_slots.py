"""Sweep slots: a trial asked per freed slot, and what an interrupted sweep or worker gives back."""

from __future__ import annotations

import threading
import time

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from ppo1.sweep.outcomes import tell
from ppo1.sweep.slots import Slots
from ppo1.sweep.study import FAIL_REASON_ATTR, INTERRUPTED_ATTR, counted_trials
from ppo1.sweep.workers import TrialInterrupted


def in_memory_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


def test_a_freed_slot_asks_the_next_trial_without_waiting_for_the_other() -> None:
    study = in_memory_study()
    # Trial 0 runs long; 1, 2 and 3 are short. In lockstep batches of two, trial 2 would start
    # only once trial 0 ended; a slot of its own starts it as soon as trial 1 ends.
    seconds = {0: 1.0, 1: 0.05, 2: 0.05, 3: 0.05}
    started: dict[int, float] = {}
    ended: dict[int, float] = {}
    lock = threading.Lock()

    def ask() -> optuna.Trial | None:
        with lock:
            return study.ask() if len(study.trials) < len(seconds) else None

    def run(trial: optuna.Trial) -> None:
        started[trial.number] = time.monotonic()
        time.sleep(seconds[trial.number])
        ended[trial.number] = time.monotonic()
        study.tell(trial, float(trial.number))

    Slots(2, ask, run, lambda: False, poll_s=0.1).run()

    assert sorted(ended) == [0, 1, 2, 3]
    assert started[2] >= ended[1] and started[3] >= ended[2]
    assert ended[3] < ended[0], "trials 2 and 3 should run while trial 0 still runs"


def test_an_interrupt_gives_back_the_trials_not_told() -> None:
    study = in_memory_study()
    release = threading.Event()

    def run(trial: optuna.Trial) -> None:
        release.wait(10)  # a job that ends only when told to stop

    slots = Slots(2, study.ask, run, lambda: False, poll_s=0.1)
    thread = threading.Thread(target=slots.run, daemon=True)
    thread.start()
    while len(study.trials) < 2:
        time.sleep(0.01)
    threading.Timer(0.2, release.set).start()  # the jobs end once the sweep stopped
    given_back = slots.stop(wait_s=10)
    thread.join(10)

    assert not thread.is_alive()
    assert sorted(t.number for t in given_back) == [0, 1]
    assert len(study.trials) == 2, "no trial is asked once the slots are stopped"


def test_a_broken_slot_stops_the_sweep_with_its_error() -> None:
    study = in_memory_study()

    def run(trial: optuna.Trial) -> None:
        raise RuntimeError(f"launcher broke on trial {trial.number}")

    slots = Slots(2, study.ask, run, lambda: False, poll_s=0.1)
    with pytest.raises(RuntimeError, match="launcher broke"):
        slots.run()
    assert 1 <= len(study.trials) <= 2, "no slot asks another trial once one broke"


@pytest.mark.parametrize("n", [1, 2])
def test_the_work_left_for_an_idle_slot_runs_once_beside_the_last_trial(n: int) -> None:
    # Trial 2 is the last and runs long: the slot that finds nothing left to ask while it runs
    # does `drained` then, beside it. With one slot nothing runs beside the last trial, and
    # `drained` is left to the caller, after the slots.
    study = in_memory_study()
    seconds = {0: 0.05, 1: 0.05, 2: 0.5}
    ended: dict[int, float] = {}
    drained: list[tuple[float, str]] = []
    lock = threading.Lock()

    def ask() -> optuna.Trial | None:
        with lock:
            return study.ask() if len(study.trials) < len(seconds) else None

    def run(trial: optuna.Trial) -> None:
        time.sleep(seconds[trial.number])
        ended[trial.number] = time.monotonic()
        study.tell(trial, 1.0)

    def drain() -> None:
        drained.append((time.monotonic(), threading.current_thread().name))

    Slots(n, ask, run, lambda: False, poll_s=0.1, drained=drain).run()

    assert sorted(ended) == [0, 1, 2]
    if n == 1:
        assert drained == []
    else:
        ((at, thread),) = drained
        assert at < ended[2] and thread.startswith("ppo1-slot-")


def test_a_trial_whose_worker_alone_was_stopped_is_given_back_not_counted() -> None:
    # A signal to one worker (or a Ctrl-C the sweep process ignores): the job returns
    # TrialInterrupted; the sweep goes on, and the trial's slot runs again.
    study = in_memory_study()
    trial = study.ask()
    result = JobReturn(status=JobStatus.FAILED, _return_value=TrialInterrupted("signal 2"))
    summary = tell(study, trial, result)
    assert summary == "FAIL, interrupted in its worker (signal 2); its slot runs again"
    (frozen,) = study.trials
    assert frozen.state is TrialState.FAIL and frozen.user_attrs[INTERRUPTED_ATTR]
    assert frozen.user_attrs[FAIL_REASON_ATTR] == "interrupted in its worker (signal 2)"
    assert counted_trials(study) == 0

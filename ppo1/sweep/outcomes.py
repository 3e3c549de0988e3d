"""How a trial's job ended, told to its trial: COMPLETE, PRUNED or FAIL; or given back."""

from __future__ import annotations

from typing import TYPE_CHECKING

import optuna
from hydra.core.utils import JobReturn, JobStatus
from optuna.trial import TrialState

from ppo1.config import ConfigError
from ppo1.sweep.faults import lost_service, stop_worker
from ppo1.sweep.pruning import PRUNE_REASON_ATTR
from ppo1.sweep.study import FAIL_REASON_ATTR, INTERRUPTED_ATTR, fail_stale_trials
from ppo1.sweep.workers import TrialInterrupted
from ppo1.tracking.store import StoreFailedError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def give_back(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """After an interrupt (Ctrl-C, SIGTERM): end the unfinished trials as interrupted
    FAILs, which a resumed sweep does not count, so it runs their slots again."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for trial in trials:
        if trial.number in running:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)


def tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> str:
    """Tell the trial how its job ended; returns a one-line summary."""
    # `result.return_value` would re-raise a job's exception after printing every override.
    outcome = result._return_value
    if result.status is JobStatus.COMPLETED:
        return told(study, trial, f"COMPLETE, objective {float(outcome):.2f}", float(outcome))
    if isinstance(outcome, optuna.TrialPruned):
        reason = trial.user_attrs.get(PRUNE_REASON_ATTR, outcome)
        return told(study, trial, f"PRUNED, {reason}", state=TrialState.PRUNED)
    if isinstance(outcome, TrialInterrupted):
        # Its worker alone was stopped (a signal to that process; a Ctrl-C that the sweep
        # process ignores, as a background job does): nothing evaluated the trial, so it is
        # given back, not counted, and its slot runs again.
        reason = f"interrupted in its worker ({outcome})"
        return told(
            study,
            trial,
            f"FAIL, {reason}; its slot runs again",
            state=TrialState.FAIL,
            fail_reason=reason,
            interrupted=True,
        )
    if isinstance(outcome, ConfigError):  # its sampled params make the config invalid
        reason = f"invalid config: {outcome}"
        return told(study, trial, f"FAIL, {reason}", state=TrialState.FAIL, fail_reason=reason)
    if (lost := lost_service(outcome)) is not None:
        # Every trial this worker started next would fail the same way and use up the study:
        # it stops, and the sweep gives the trial back (not counted, its slot runs again).
        trial.set_user_attr(FAIL_REASON_ATTR, lost)
        raise stop_worker(trial.number, lost, isinstance(outcome, StoreFailedError))
    reason = f"{type(outcome).__name__}: {outcome}"
    return told(study, trial, f"FAIL, {reason}", state=TrialState.FAIL, fail_reason=reason)


def stale(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether another process failed the trial as stale while this one was stopped past the
    grace period (Ctrl-Z, a sleeping laptop) and has run its slot again."""
    return bool(study._storage.get_trial(trial._trial_id).user_attrs.get(INTERRUPTED_ATTR))


def told(
    study: optuna.Study,
    trial: optuna.Trial,
    summary: str,
    value: float | None = None,
    state: TrialState | None = None,
    fail_reason: str | None = None,
    interrupted: bool = False,
) -> str:
    """Tell the trial its end, unless it was failed as stale meanwhile: that end stays.
    `interrupted`: a FAIL that is given back (not counted)."""
    if stale(study, trial):
        return f"{summary}; dropped, another sweep process had failed the trial as stale"
    if fail_reason is not None:
        trial.set_user_attr(FAIL_REASON_ATTR, fail_reason)
    if interrupted:
        trial.set_user_attr(INTERRUPTED_ATTR, True)
    study.tell(trial, value, state=state)
    return summary


def end_study_run(parent: tuple[MlflowClient, str] | None, status: str) -> None:
    """End the study's MLflow run, if tracking: FINISHED, FAILED or KILLED."""
    if parent is not None:
        parent[0].set_terminated(parent[1], status)


def fail_stale(
    study: optuna.Study, grace_s: float, parent: tuple[MlflowClient, str] | None
) -> None:
    """Fail the study's stale trials and end their MLflow runs FAILED, saying why."""
    for trial in fail_stale_trials(study, grace_s):
        reason = trial.user_attrs[FAIL_REASON_ATTR]
        print(f"trial {trial.number}: FAIL, {reason}; its slot runs again", flush=True)
        if parent is not None:
            from ppo1.sweep.parent_run import end_stale_runs  # imports mlflow: only when tracking

            end_stale_runs(parent, trial.number, f"the sweep process died ({reason})")

"""Faults at scale: a service every trial of a worker needs (the study's database, the MLflow
tracking server) failing under it.

Such a failure is no verdict on the trial's hyperparameters: every trial the worker started
next would fail the same way and use up the study's n_trials. So the worker stops, with one
line saying why, and gives the trial's slot back: told FAIL with the reason and as interrupted
(not counted, see counted_trials) when the database still answers; failed as stale by the
other workers once its heartbeat is older than sweep.grace_s when it does not.
"""

from __future__ import annotations

from optuna.exceptions import StorageInternalError

from ppo1.tracking.store import StoreFailedError
from ppo1.utils.redact import redact


class WorkerStoppedError(RuntimeError):
    """This sweep worker cannot run trials any more; the message says why, on one line."""

    def __init__(self, message: str, tracking_lost: bool) -> None:
        super().__init__(message)
        # Then nothing more goes to MLflow: its client would retry for minutes first.
        self.tracking_lost = tracking_lost


def stop_worker(number: int, lost: str, tracking_lost: bool) -> WorkerStoppedError:
    return WorkerStoppedError(
        f"trial {number}: FAIL, {lost}; this worker stops, and the trial's slot runs again in "
        f"another worker (or when this command runs again)",
        tracking_lost,
    )


def _database_error(err: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(err, StorageInternalError | OperationalError)


def database_failure(err: BaseException) -> str:
    """What the driver said, behind Optuna's generic "an exception is raised during the
    commit": on one line, without a password."""
    cause = err.__cause__ if isinstance(err, StorageInternalError) and err.__cause__ else err
    said = getattr(cause, "orig", None) or cause
    return redact(" ".join(f"the study's database failed: {said}".split()))


def lost_service(err: BaseException) -> str | None:
    """Why no trial can run in this worker now, if `err` (a job's) says a shared service failed."""
    if isinstance(err, StoreFailedError):
        return redact(str(err))
    if _database_error(err):
        return database_failure(err)
    return None


def stopped_by(err: BaseException) -> str | None:
    """The one line a worker ends with when `err` stopped it, if it is such a failure."""
    if isinstance(err, WorkerStoppedError):
        return str(err)
    if _database_error(err):
        return (
            f"{database_failure(err)}; this worker stops, and its running trials go back to "
            f"the study once their heartbeat is older than sweep.grace_s"
        )
    return None

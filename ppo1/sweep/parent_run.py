"""The parent MLflow run of a study: one per (study, storage), shared by every sweep process."""

from __future__ import annotations

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from ppo1.config import SweepConfig, TrackingConfig
from ppo1.tracking.ops import get_or_create_experiment
from ppo1.tracking.store import open_client, tracking_uri
from ppo1.utils.redact import without_password


def _filter(tags: dict[str, str]) -> str:
    """Tags equal to values that hold no quote: a validated study name, a role, a run id."""
    return " and ".join(f"tags.\"{k}\" = '{v}'" for k, v in tags.items())


def _study_tags(sweep: SweepConfig) -> dict[str, str]:
    return {"ppo1.role": "study", "optuna.study_name": sweep.study_name}


def _find(client: MlflowClient, experiment_id: str, sweep: SweepConfig, storage: str) -> str | None:
    """The id of the study's first parent run in the experiment, if any."""
    # The storage is a path or URL, which may hold a quote that MLflow's filter grammar cannot
    # escape: it is compared here instead.
    for run in client.search_runs(
        [experiment_id], _filter(_study_tags(sweep)), order_by=["attributes.start_time ASC"]
    ):
        if run.data.tags.get("optuna.storage") == without_password(storage):
            return str(run.info.run_id)
    return None


def find_study_run(
    tracking: TrackingConfig, sweep: SweepConfig, storage: str
) -> tuple[MlflowClient, str] | None:
    """The study's parent run as it is, or None if tracking is off or the study has none: for a
    report, which must not create a run that nothing would end."""
    if not tracking.enabled:
        return None
    client = open_client(tracking_uri(tracking))  # a bad store: one ConfigError
    experiment = client.get_experiment_by_name(tracking.experiment)
    run_id = experiment and _find(client, experiment.experiment_id, sweep, storage)
    return (client, run_id) if run_id else None


def open_study_run(
    tracking: TrackingConfig, sweep: SweepConfig, storage: str
) -> tuple[MlflowClient, str] | None:
    """Find the study's parent run (resuming, or another process's) and mark it RUNNING, or
    create it; None if tracking is off.

    Call it under the study lock: the lookup and the creation must not interleave between two
    sweep processes, or the study would get two parents.
    """
    if not tracking.enabled:
        return None
    client = open_client(tracking_uri(tracking))  # a bad store: one ConfigError
    experiment_id = get_or_create_experiment(client, tracking.experiment)
    if run_id := _find(client, experiment_id, sweep, storage):
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return client, run_id
    tags = {**_study_tags(sweep), "optuna.storage": without_password(storage)}
    run = client.create_run(experiment_id, run_name=f"{sweep.study_name}-study", tags=tags)
    return client, run.info.run_id


def end_stale_runs(parent: tuple[MlflowClient, str], number: int, reason: str) -> None:
    """End FAILED, tagged with `reason`, the runs of stale trial `number` still RUNNING: its
    run under the study's and the seed runs under that. Their sweep process died (kill -9)
    before it could end them, and nothing else would."""
    client, parent_id = parent
    experiment_id = client.get_run(parent_id).info.experiment_id
    trial_tags = {
        "ppo1.role": "trial",
        "mlflow.parentRunId": parent_id,
        "optuna.trial_number": str(number),
    }
    for trial_run in client.search_runs([experiment_id], _filter(trial_tags)):
        client.set_tag(trial_run.info.run_id, "optuna.state", "FAIL")
        seeds = _filter({"mlflow.parentRunId": trial_run.info.run_id})
        for run in [trial_run, *client.search_runs([experiment_id], seeds)]:
            if run.info.status == RunStatus.to_string(RunStatus.RUNNING):
                client.set_tag(run.info.run_id, "ppo1.error", reason)
                client.set_terminated(run.info.run_id, "FAILED")

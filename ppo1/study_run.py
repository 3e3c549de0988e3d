"""The parent MLflow run of a study: one per (study, storage), shared by every sweep process."""

from __future__ import annotations

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from ppo1.config import SweepConfig, TrackingConfig
from ppo1.run_writer import get_or_create_experiment
from ppo1.tracking import open_client, tracking_uri


def _filter(tags: dict[str, str]) -> str:
    return " and ".join(f"tags.\"{k}\" = '{v}'" for k, v in tags.items())


def open_study_run(
    tracking: TrackingConfig, sweep: SweepConfig, storage: str, reopen: bool = True
) -> tuple[MlflowClient, str] | None:
    """Find the study's parent run (resuming, or another process's) or create it; None if off.

    `reopen` marks a found run RUNNING again, as a sweep process working on the study does.

    Call it under the study lock: the lookup and the creation must not interleave between two
    sweep processes, or the study would get two parents.
    """
    if not tracking.enabled:
        return None
    client = open_client(tracking_uri(tracking))  # a bad store: one ConfigError
    experiment_id = get_or_create_experiment(client, tracking.experiment)
    tags = {"ppo1.role": "study", "optuna.study_name": sweep.study_name, "optuna.storage": storage}
    found = client.search_runs(
        [experiment_id], _filter(tags), order_by=["attributes.start_time ASC"], max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        if reopen:
            client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return client, run_id
    run = client.create_run(experiment_id, run_name=f"{sweep.study_name}-study", tags=tags)
    return client, run.info.run_id

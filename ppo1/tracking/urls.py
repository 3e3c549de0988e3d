"""Links into the MLflow UI that land on the page they name, and the command that serves it.

MLflow 3.17's UI keeps its GenAI / Model training toggle in the browser's localStorage
(`mlflow.workflowType_v1`, GenAI until a user flips it) and ignores an experiment's kind tag:
opening experiment `ppo1` from the list lands on a traces overview. A link straight to a run
(`#/experiments/ID/runs/RUN`) or to the runs table (`#/experiments/ID/runs`) skips that page,
and `?workflowType=machine_learning` (which the UI reads before localStorage) shows the
Model training sidebar and breadcrumbs around it instead of GenAI's "Evaluations".
"""

from __future__ import annotations

import shlex
from urllib.parse import quote

from ppo1.config import TrackingConfig
from ppo1.tracking.store import is_server, tracking_uri

# Where `mlflow ui` serves a local store (its defaults, said explicitly in the command).
UI_HOST = "127.0.0.1"
UI_PORT = 5000
MODEL_TRAINING = "?workflowType=machine_learning"


def ui_command(uri: str) -> str | None:
    """The command that serves the UI for a store; None for a server, which serves its own."""
    if is_server(uri):
        return None
    return (
        f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host {UI_HOST} --port {UI_PORT} "
        "--workers 1"
    )


def ui_address(uri: str) -> str:
    """Where the UI answers: a server's own address, else that of `ui_command(uri)`."""
    return uri.rstrip("/") if is_server(uri) else f"http://{UI_HOST}:{UI_PORT}"


def runs_table_url(uri: str, experiment_id: str) -> str:
    """The experiment's runs table (with its Chart view and Compare), not its overview."""
    return f"{ui_address(uri)}/#/experiments/{experiment_id}/runs{MODEL_TRAINING}"


def run_url(uri: str, experiment_id: str, run_id: str, artifact: str | None = None) -> str:
    """A run's page: its metrics and params, or with `artifact` that file in its Artifacts tab."""
    page = f"{ui_address(uri)}/#/experiments/{experiment_id}/runs/{run_id}"
    if artifact is not None:
        page += f"/artifacts/{quote(artifact)}"
    return page + MODEL_TRAINING


def ui_lines(
    uri: str,
    experiment_id: str,
    run_id: str | None = None,
    what: str = "this run",
    artifact: str | None = None,
) -> list[str]:
    """Where to see a run (if any; with `artifact`, that file of it) and its experiment's runs:
    for a local store, after the command that serves its UI."""
    command = ui_command(uri)
    lines = ["in the MLflow UI:" if command is None else f"open the MLflow UI: {command}"]
    if run_id is not None:
        lines.append(f"  {what}: {run_url(uri, experiment_id, run_id, artifact)}")
    lines.append(f"  all runs: {runs_table_url(uri, experiment_id)}")
    return lines


def run_hint(tracking: TrackingConfig, run_id: str, experiment_id: str | None) -> list[str]:
    """Where a run is and how to open it: the closing summary's lines, and the first ones a
    run prints (ppo1.report.progress)."""
    uri = tracking_uri(tracking)
    lines = [f"MLflow run {run_id} in experiment '{tracking.experiment}' ({uri})"]
    if experiment_id is not None:
        lines += ui_lines(uri, experiment_id, run_id)
    return lines

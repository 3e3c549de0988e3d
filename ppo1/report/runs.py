"""A run's logged data (metric curves, params, ratio snapshots), from memory or from MLflow."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ppo1.config import ConfigError, TrackingConfig
from ppo1.core.rollout import Episode
from ppo1.report.plots import EPISODIC_RETURN, Curves, Series
from ppo1.report.ratios import RatioSnapshot, from_json
from ppo1.tracking.store import open_client, tracking_uri
from ppo1.utils.cli import exit_with_error

if TYPE_CHECKING:
    # Imported where used instead: training imports this module, and `import mlflow` takes
    # ~2 s that untracked runs should not pay.
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

# The run's figures and their ratio data live under this artifact folder.
FIGURES_DIR = "figures"
SNAPSHOTS_FILE = "ratio_snapshots.json"
_RUN_ID = re.compile(r"[0-9a-f]{32}")
# Logged by every PPO update: what tells a training run from a sweep's study or trial run.
TRAINING_METRIC = "losses/kl"
# What a sweep tags its runs with (ppo1/sweep/trial.py, parent_run.py): the study's parent run,
# a run per trial and, under it, a training run per seed.
ROLE_TAG = "ppo1.role"
SWEEP_ROLES = ("study", "trial", "seed")


@dataclass
class RunData:
    label: str
    curves: Curves
    params: dict[str, str] = field(default_factory=dict)
    snapshots: list[RatioSnapshot] = field(default_factory=list)


def curves_from_history(history: Sequence[dict[str, float]], episodes: Sequence[Episode]) -> Curves:
    """Per-update metric dicts (each with its 'step') and the episodes, as curves by name."""
    curves: dict[str, Series] = {}
    for key in {k for row in history for k in row} - {"step"}:
        rows = [row for row in history if key in row]
        curves[key] = (np.array([r["step"] for r in rows]), np.array([r[key] for r in rows]))
    curves[EPISODIC_RETURN] = (
        np.array([e.step for e in episodes]),
        np.array([e.ret for e in episodes], dtype=np.float64),
    )
    return curves


def open_store(uri: str | None) -> MlflowClient:
    """A client on `uri` or the default store, for the command-line tools."""
    try:
        return open_client(uri or tracking_uri(TrackingConfig()))
    except ConfigError as err:
        exit_with_error(str(err))


def label(run_id: str, run_name: str) -> str:
    """A run as figures' legends name it: its name, and its id's first characters."""
    return f"{run_name} ({run_id[:8]})"


def load_run(client: MlflowClient, run: Run) -> RunData:
    """Every metric's full history, the params and, when logged, the ratio snapshots."""
    from mlflow.exceptions import MlflowException

    run_id = run.info.run_id
    curves: dict[str, Series] = {}
    for key in run.data.metrics:
        # Metrics at one step keep the order they were logged in (several episodes can end
        # on the same vector-env step).
        history = sorted(
            client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
        )
        curves[key] = (np.array([m.step for m in history]), np.array([m.value for m in history]))
    snapshots: list[RatioSnapshot] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, f"{FIGURES_DIR}/{SNAPSHOTS_FILE}", tmp)
            snapshots = from_json(json.loads(Path(path).read_text()))
        except (MlflowException, OSError):
            pass  # logged with tracking.figures=none, or before the run's first snapshot
    return RunData(label(run_id, run.info.run_name), curves, dict(run.data.params), snapshots)


def get_run(client: MlflowClient, run_id: str) -> Run:
    """The run with this id, or one readable error."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        exit_with_error(f"no run {run_id!r} in {client.tracking_uri}")


def _of_study(client: MlflowClient, experiment_id: str, study: str, runs: list[Run]) -> list[Run]:
    """The runs that train a seed of one of the study's trials (nested under its trial run)."""
    trials = client.search_runs([experiment_id], f"tags.`{ROLE_TAG}` = 'trial'")
    ids = {t.info.run_id for t in trials if t.data.tags.get("optuna.study_name") == study}
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") in ids]


def resolve_runs(
    client: MlflowClient,
    targets: Sequence[str],
    filter_string: str,
    *,
    include_sweeps: bool = False,
    study: str | None = None,
    left_out: list[Run] | None = None,
) -> list[Run]:
    """Run ids and experiment names -> runs; an experiment stands for its finished training
    runs, narrowed by `filter_string` (MLflow search syntax), without the sweeps' unless
    `include_sweeps` (those left out are added to `left_out`), or only study `study`'s.
    A run id is taken as it is. Fails with one message naming what matched nothing."""
    # Sweeps put study and multi-seed trial runs (no training curves) into the experiment, and
    # a running or failed run would draw as a short curve among the finished ones.
    from mlflow.exceptions import MlflowException

    finished = "attributes.status = 'FINISHED'"
    search = f"{filter_string} and {finished}" if filter_string.strip() else finished
    runs: list[Run] = []
    for target in targets:
        experiment = client.get_experiment_by_name(target)
        if experiment is not None:
            try:
                searched = client.search_runs(
                    [experiment.experiment_id], search, order_by=["attributes.start_time ASC"]
                )
            except MlflowException as err:
                exit_with_error(f"--filter {filter_string!r}: {err.message}")
            found = [run for run in searched if TRAINING_METRIC in run.data.metrics]
            swept = [run for run in found if run.data.tags.get(ROLE_TAG) in SWEEP_ROLES]
            if study is not None:
                found = _of_study(client, experiment.experiment_id, study, found)
            elif not include_sweeps:
                found = [run for run in found if run.data.tags.get(ROLE_TAG) not in SWEEP_ROLES]
                if left_out is not None:
                    left_out += swept
            if not found:
                exit_with_error(_nothing_in(target, filter_string, study, len(swept)))
            runs += found
        elif _RUN_ID.fullmatch(target):
            runs.append(get_run(client, target))
        else:
            exit_with_error(f"{target!r} is neither a run id nor an experiment name")
    return runs


def _nothing_in(experiment: str, filter_string: str, study: str | None, swept: int) -> str:
    """Why an experiment gave no runs to compare, and what would."""
    of_study = "" if study is None else f" of study {study!r}"
    message = f"no finished training runs{of_study} in experiment {experiment!r}"
    if filter_string.strip():
        message += f" match {filter_string!r}"
    if study is None and swept:
        message += f"; {swept} sweep runs left out (--include-sweeps, or --study NAME)"
    return message

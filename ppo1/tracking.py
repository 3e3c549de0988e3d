"""MLflow tracking: one run per training run, batched metrics, and an honest final status."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ppo1.config import TrackingConfig

if TYPE_CHECKING:
    # Imported where used instead: `import mlflow` takes ~2 s, which untracked runs skip.
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

# MLflow rejects larger batches (its documented log_batch limits).
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
# A log_batch round trip costs ~20 ms on SQLite plus ~0.1 ms a metric, about a CartPole
# update: writing at most this often keeps a tracked run within a few % of an untracked one.
_FLUSH_EVERY_S = 5.0


def project_root() -> Path:
    """The checkout holding `conf/` and `mlruns/`; PPO1_HOME overrides it."""
    return Path(os.environ.get("PPO1_HOME", Path(__file__).resolve().parents[1]))


def tracking_uri(cfg: TrackingConfig) -> str:
    """cfg.uri, else $MLFLOW_TRACKING_URI, else SQLite under mlruns/."""
    default = f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store; MLflow would otherwise root them in the current cwd."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()


def get_or_create_experiment(client: MlflowClient, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(
            client.create_experiment(
                name,
                artifact_location=artifact_location(client.tracking_uri),
                # Without this tag the MLflow 3 UI opens the experiment in its GenAI view.
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        )
    except MlflowException:
        # Another process created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None
        return str(experiment.experiment_id)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'algo': {'clip': 0.2}} -> {'algo.clip': '0.2'}, the keys users type on the command line."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Tracker:
    """A context manager around one MLflow run; a no-op when tracking is disabled.

    Metrics are buffered and written with `log_batch` by `flush()`: one `log_metric` call costs
    ~9 ms on SQLite, longer than a whole PPO update on CartPole. On exit the run is marked
    FINISHED, KILLED (Ctrl-C) or FAILED (any exception), keeping everything logged so far.
    """

    def __init__(
        self, cfg: TrackingConfig, params: dict[str, Any], tags: dict[str, str] | None = None
    ) -> None:
        self.cfg = cfg
        self.params = flatten(params)
        self.tags = dict(tags or {})
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._metrics: list[Metric] = []
        self._last_flush = time.monotonic()

    def __enter__(self) -> Tracker:
        if not self.cfg.enabled:
            return self
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri(self.cfg))
        self.experiment_id = get_or_create_experiment(self.client, self.cfg.experiment)
        commit = git_commit()
        if commit:
            self.tags["mlflow.source.git.commit"] = commit
        run = self.client.create_run(self.experiment_id, run_name=self.cfg.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        items = [Param(k, v) for k, v in self.params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._metrics += [Metric(k, float(v), now, step) for k, v in metrics.items()]

    def flush(self, force: bool = False) -> None:
        """Write the buffered metrics if _FLUSH_EVERY_S has passed since the last write, or now."""
        if self.client is None or self.run_id is None:
            return
        if not force and time.monotonic() - self._last_flush < _FLUSH_EVERY_S:
            return
        self._last_flush = time.monotonic()
        for i in range(0, len(self._metrics), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(
                self.run_id, metrics=self._metrics[i : i + _MAX_METRICS_PER_BATCH]
            )
        self._metrics.clear()

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        if self.client is None or self.run_id is None:
            return
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.client is None or self.run_id is None:
            return
        self.client.log_text(self.run_id, text, artifact_file)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.client is None or self.run_id is None:
            return
        from mlflow.entities import RunStatus
        from optuna import TrialPruned

        self.flush(force=True)
        if exc is None:
            status = RunStatus.FINISHED
        elif isinstance(exc, TrialPruned):
            # A sweep stopped this run on purpose (KL divergence, poor returns): not a failure.
            status = RunStatus.KILLED
            self.set_tags({"ppo1.pruned": str(exc)[:5000]})
        else:
            status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
            self.set_tags({"ppo1.error": f"{type(exc).__name__}: {exc}"[:5000]})
        self.client.set_terminated(self.run_id, RunStatus.to_string(status))

"""MLflow tracking: one run per training run, batched metrics, and an honest final status."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from ppo1.config import ConfigError, TrackingConfig
from ppo1.metric_writer import MetricWriter, Row, write_rows

if TYPE_CHECKING:
    # Imported where used instead: `import mlflow` takes ~2 s, which untracked runs skip.
    from mlflow.tracking import MlflowClient

# MLflow rejects larger batches (its documented log_batch limit).
_MAX_PARAMS_PER_BATCH = 100
# A log_batch round trip costs ~10 ms on SQLite plus ~0.17 ms a metric (MLflow's ORM), ~5% of a
# CartPole run: a run that lasts this long starts a `MetricWriter` process to pay it, and
# shorter ones (sweep trials, tests) write their rows at the end.
_WRITER_AFTER_S = 5.0
# How often rows go to the writer: a pipe write, so often enough that the backlog the run's
# end waits for stays small, and the MLflow UI follows the run closely.
_FLUSH_EVERY_S = 1.0
# Without a writer process, how often the training process writes them itself.
_WRITE_EVERY_S = 5.0
# The one request that tells a dead tracking server from a live one; MLflow's own client
# retries a refused connection for ~4 minutes before it fails.
_HEALTH_TIMEOUT_S = 5.0


def usable_cpus() -> int:
    """CPUs this process may run on (a scheduler's allocation, taskset), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def project_root() -> Path:
    """The checkout holding `conf/` and `mlruns/`; PPO1_HOME overrides it."""
    return Path(os.environ.get("PPO1_HOME", Path(__file__).resolve().parents[1]))


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def tracking_uri(cfg: TrackingConfig) -> str:
    """cfg.uri, else $MLFLOW_TRACKING_URI, else SQLite under mlruns/."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _server_problem(uri: str) -> str | None:
    """Why nothing answers at an http(s) tracking URI, or None if something does."""
    url = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=_HEALTH_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # a server answered (a proxy or a path prefix may not route /health)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        return f"no server answers at {url} ({reason})"


def _sqlite_problem(uri: str) -> str | None:
    """A SQLite store's directory must exist, except the default mlruns/, which is created.

    MLflow creates any missing parents (`sqlite:////nonexistent/dir/x.db` made /nonexistent),
    so a typo in the path, or three slashes meant as four, would grow a tree silently.
    """
    if not uri.startswith("sqlite:///") or uri == default_tracking_uri():
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if path.name in ("", ":memory:") or path.parent.is_dir():
        return None
    slashes = (
        ""
        if path.is_absolute()
        else " (sqlite:/// takes a relative path; sqlite://// an absolute one)"
    )
    return f"directory {path.parent} does not exist{slashes}; create it first"


def open_client(uri: str) -> MlflowClient:
    """A client on a store that answers, or one ConfigError naming the URI and the cause.

    MLflow otherwise fails deep in its stack (a filesystem path, an unknown scheme) or, for
    a server that is down, only after minutes of retries; a live server keeps those retries.
    """
    from mlflow.tracking import MlflowClient

    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    problem = _server_problem(uri) if scheme in ("http", "https") else _sqlite_problem(uri)
    if problem is None:
        try:
            client = MlflowClient(uri)
            client.search_experiments(max_results=1)
            return client
        except Exception as err:  # whatever the store's backend raises: report, not traceback
            problem = " ".join(str(err).split()) or type(err).__name__
    raise ConfigError(f"tracking.uri {uri!r}: {problem}")


@contextmanager
def _signal_handlers(
    signums: tuple[int, ...], handler: Callable[[int, FrameType | None], object]
) -> Iterator[None]:
    """`handler` for `signums` inside the block, the previous handlers restored after it.

    Only the main thread receives signals (and may set handlers): elsewhere, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [signal.signal(signum, handler) for signum in signums]
    try:
        yield
    finally:
        for signum, restored in zip(signums, previous, strict=True):
            signal.signal(signum, restored)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold a Ctrl-C or SIGTERM that arrives inside the block until it ends.

    Used around `create_run`: interrupted after the store wrote the run but before it
    returned, we would never learn the run's id to mark it KILLED.
    """
    caught: list[int] = []
    with _signal_handlers((signal.SIGINT, signal.SIGTERM), lambda signum, _: caught.append(signum)):
        yield
    if caught:
        raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM inside the block raises KeyboardInterrupt, as Ctrl-C does.

    A cluster scheduler or `kill` stops a job with SIGTERM, whose default action ends the
    process on the spot: its run would stay RUNNING, its buffered metrics unwritten.
    """

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    with _signal_handlers((signal.SIGTERM,), interrupt):
        yield


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


def _failed_status(exc: BaseException) -> int:
    """KILLED for Ctrl-C, FAILED for anything else that ends a run early."""
    from mlflow.entities import RunStatus

    return int(RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED)


class Tracker:
    """A context manager around one MLflow run; a no-op when tracking is disabled.

    Metrics are buffered and written in batches by `flush()`: one `log_metric` call costs ~9 ms
    on SQLite, longer than a whole PPO update on CartPole. A run still going after
    _WRITER_AFTER_S starts a `MetricWriter` process that writes them from then on; a shorter
    one (sweep trials, tests) writes them itself at the end. The writer would only compete
    for the CPU a job is confined to, so with one usable CPU (or `tracking.writer_process=
    false`, or off POSIX: it polls a non-blocking pipe) the training process writes them.
    On exit every row is written and the run marked FINISHED, KILLED (Ctrl-C) or FAILED.
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
        self._metrics: list[Row] = []
        self._started = self._last_flush = time.monotonic()
        self._writer: MetricWriter | None = None
        self._last_ms = 0
        self._writes_inline = not cfg.writer_process or os.name != "posix" or usable_cpus() < 2

    def __enter__(self) -> Tracker:
        if not self.cfg.enabled:
            return self
        from mlflow.entities import Param

        self.client = open_client(tracking_uri(self.cfg))
        self.experiment_id = get_or_create_experiment(self.client, self.cfg.experiment)
        commit = git_commit()
        if commit:
            self.tags["mlflow.source.git.commit"] = commit
        # From here a run exists: whatever stops the setup (Ctrl-C included) must end it, and
        # `with` calls __exit__ only once __enter__ has returned.
        try:
            with _interrupts_deferred():
                run = self.client.create_run(
                    self.experiment_id, run_name=self.cfg.run_name, tags=self.tags
                )
                self.run_id = run.info.run_id
            items = [Param(k, v) for k, v in self.params.items()]
            for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        # A millisecond of its own for every call: MLflow keeps one row per (key, timestamp,
        # step, value), so equal episodes ending on one vector step would otherwise store as
        # one (2 of the default run's 424). Calls are far fewer than 1 a ms.
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._metrics += [(k, float(v), self._last_ms, step) for k, v in metrics.items()]

    def flush(self) -> None:
        """Hand the buffered metrics to the writer process (or write them) if it is time."""
        if self.client is None or self.run_id is None:
            return
        now = time.monotonic()
        if self._writes_inline:
            if now - self._last_flush >= _WRITE_EVERY_S:
                self._last_flush = now
                self._write_all()
            return
        if now - self._started < _WRITER_AFTER_S or now - self._last_flush < _FLUSH_EVERY_S:
            return
        self._last_flush = now
        if self._writer is None:
            self._writer = MetricWriter(self.client.tracking_uri, self.run_id)
        self._writer.submit(self._metrics)
        self._metrics = []

    def _write_all(self) -> None:
        """Every row not yet in the store, written: the writer's backlog, then the rest here."""
        assert self.client is not None and self.run_id is not None
        if self._writer is not None:
            self._metrics = self._writer.close() + self._metrics
            self._writer = None
        write_rows(self.client, self.run_id, self._metrics)
        self._metrics = []

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

        status = RunStatus.FINISHED
        tags: dict[str, str] = {}
        if isinstance(exc, TrialPruned):
            # A sweep stopped this run on purpose (KL divergence, poor returns): not a failure.
            status = RunStatus.KILLED
            tags["ppo1.pruned"] = str(exc)[:5000]
        elif exc is not None:
            status = _failed_status(exc)
            tags["ppo1.error"] = f"{type(exc).__name__}: {exc}"[:5000]
        try:
            self._write_all()
            if tags:
                self.set_tags(tags)
        except BaseException as err:
            # The last writes failed, or a second Ctrl-C hit them: the run still gets an end.
            if exc is None:
                status = _failed_status(err)
            raise
        finally:
            self.client.set_terminated(self.run_id, RunStatus.to_string(status))
            if exc is not None:
                # For whoever reports the exception: only this object knows a run exists.
                exc.add_note(
                    f"the MLflow run {self.run_id} is marked {RunStatus.to_string(status)}"
                )

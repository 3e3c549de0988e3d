"""MLflow tracking: one run per training run, batched metrics, and an honest final status."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ppo1.config import TrackingConfig
from ppo1.tracking.ops import Op, Row, apply, create_run, process_tags
from ppo1.tracking.store import (
    StoreFailedError,
    connect,
    is_server,
    store_error,
    store_failed,
    store_problem,
    tracking_uri,
)
from ppo1.tracking.writer import RunWriter
from ppo1.utils.cli import one_line
from ppo1.utils.params import flatten
from ppo1.utils.paths import git_commit, usable_cpus
from ppo1.utils.signals import interrupts_deferred

if TYPE_CHECKING:
    # Imported where used instead: `import mlflow` takes ~2 s, which untracked runs skip.
    from mlflow.tracking import MlflowClient

# A write of metric rows costs ~10 ms on SQLite plus ~0.03 ms a row (metric_rows.py), a few % of
# a CartPole run: a process that has its own client (a sweep's) starts a `RunWriter` for a run
# that lasts this long, and shorter ones (sweep trials, tests) write their rows at the end.
_WRITER_AFTER_S = 5.0
# How often rows go to the writer: a pipe write, so often enough that the backlog the run's
# end waits for stays small, and the MLflow UI follows the run closely.
_FLUSH_EVERY_S = 1.0
# Without a writer process, how often the training process writes them itself.
_WRITE_EVERY_S = 5.0


def _failed_status(exc: BaseException) -> str:
    """KILLED for Ctrl-C, FAILED for anything else that ends a run early."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


def _ending(exc: BaseException | None) -> tuple[str, dict[str, str]]:
    """The status a run ends with, and the tags that say why it ended early."""
    from optuna import TrialPruned

    if exc is None:
        return "FINISHED", {}
    if isinstance(exc, TrialPruned):
        # A sweep stopped this run on purpose (KL divergence, poor returns): not a failure.
        return "KILLED", {"ppo1.pruned": str(exc)[:5000]}
    return _failed_status(exc), {"ppo1.error": f"{type(exc).__name__}: {exc}"[:5000]}


class Tracker:
    """A context manager around one MLflow run; a no-op when tracking is disabled.

    Where the job may use a second CPU, a `RunWriter` process makes the run's writes. In a
    process that has not imported mlflow (`python -m ppo1.train`) it is the run's only client
    from the start: it creates the run, and training never waits for `import mlflow` or the
    store. In one that has a client already (a sweep's), it takes the metric rows of a run
    lasting over _WRITER_AFTER_S. Rows are buffered and handed over every _FLUSH_EVERY_S (one
    `log_metric` call costs ~9 ms on SQLite, longer than a whole CartPole update); whatever
    the writer leaves undone (it died, or hung), this process does itself. With one usable CPU
    (the writer would compete for it), `tracking.writer_process=false` or off POSIX (it polls
    non-blocking pipes), this process writes everything, the rows every _WRITE_EVERY_S.
    On exit every row is written and the run marked FINISHED, KILLED (Ctrl-C) or FAILED.
    """

    def __init__(
        self,
        cfg: TrackingConfig,
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        *,
        writer_client: bool | None = None,
        run_id: str | None = None,
    ) -> None:
        """`writer_client`: whether the writer process is the run's only client (by default,
        when mlflow is not imported here: importing it would cost what the writer saves).
        `run_id`: continue this existing run (a resumed training) instead of creating one;
        its params stay as they are and it is RUNNING again."""
        self.cfg = cfg
        self._resumes = run_id
        self.uri = tracking_uri(cfg)
        self.params = flatten(params)
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self.run_name: str | None = None
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._writer: RunWriter | None = None
        # The store has worked: a server answered, or a run was created. What fails after
        # that is the store failing, not a bad URI.
        self._answered = False
        self._failed = False  # the store failed once training ran
        self._rows: list[Row] = []
        self._staging: tempfile.TemporaryDirectory[str] | None = None
        self._started = self._last_flush = time.monotonic()
        self._last_ms = 0
        self._start_ms = 0  # set by __enter__
        self._writes_inline = not cfg.writer_process or os.name != "posix" or usable_cpus() < 2
        if writer_client is None:
            writer_client = "mlflow" not in sys.modules
        self._writer_client = writer_client and not self._writes_inline and run_id is None

    @property
    def active(self) -> bool:
        """A run is tracked: created, or being created by the writer."""
        return self.run_id is not None or self._writer_owns_run()

    def _writer_owns_run(self) -> bool:
        return self._writer is not None and self._writer.creates_run

    def __enter__(self) -> Tracker:
        if not self.cfg.enabled:
            return self
        self._start_ms = int(time.time() * 1000)
        commit = git_commit()
        if commit:
            self.tags["mlflow.source.git.commit"] = commit
        self.tags.update(process_tags())
        if self._writer_client:
            problem = store_problem(self.uri)  # the rest the writer finds, and then this process
            if problem is not None:
                raise store_error(self.uri, problem)
            self._answered = is_server(self.uri)
        # Once a run exists (or the writer is creating it), whatever stops the setup (Ctrl-C
        # included) must end it, and `with` calls __exit__ only once __enter__ has returned.
        try:
            if self._resumes is not None:
                self.run_id = self._resumes
                client, _ = self._own_client()
                info = client.get_run(self.run_id).info
                self.run_name, self.experiment_id = info.run_name, info.experiment_id
                # This process's tags first: a RUNNING run with a dead pid is ended by others.
                self._do(("tags", self.tags))
                self._do(("reopen",))
                return self
            if self._writer_client:
                run = ["create", self.cfg.experiment, self.cfg.run_name, self.tags, self._start_ms]
                self._writer = RunWriter(self.uri, run)
            self._do(("params", self.params))
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _own_client(self) -> tuple[MlflowClient, str]:
        """This process's client, and the run: created here unless the writer created it."""
        if self._client is None:
            client = connect(self.uri)
            if isinstance(client, str):
                if not (self._answered or self.run_id is not None):
                    raise store_error(self.uri, client)
                raise self._store_failed(client)
            self._client = client
        if self.run_id is None:
            with interrupts_deferred():
                self.run_id, self.run_name, self.experiment_id = create_run(
                    self._client, self.cfg.experiment, self.cfg.run_name, self.tags, self._start_ms
                )
        return self._client, self.run_id

    def _store_failed(self, cause: str) -> StoreFailedError:
        self._failed = True  # the run's end is not written then: it would fail the same way
        return store_failed(self.uri, cause)

    def _apply(self, op: Op) -> None:
        """One write by this process's client."""
        client, run_id = self._own_client()
        # A server's write is not cut by a stop (the server makes it whole, or not at all),
        # and one that hangs, MLflow retrying, must stay stoppable.
        whole = nullcontext() if is_server(self.uri) else interrupts_deferred()
        try:
            with whole:
                apply(client, run_id, op)
        except Exception as err:  # whatever the store's backend raises
            if op[0] in ("artifact", "text"):
                # A file the store could not take (a full disk): its runs table may still
                # answer, so the run's end is still written.
                name = op[1] if op[0] == "artifact" else op[2]
                raise StoreFailedError(
                    f"the tracking store failed storing {name}: {type(err).__name__}: "
                    f"{one_line(err)}"
                ) from err
            raise self._store_failed(one_line(err)) from err

    def _do(self, op: Op) -> None:
        """One write to the run: by the writer if it is the run's client, else here."""
        if not self._writer_owns_run():
            self._apply(op)
            return
        assert self._writer is not None
        if op[0] == "artifact":
            # The caller may delete its file as soon as log_artifact returns.
            if self._staging is None:
                self._staging = tempfile.TemporaryDirectory(prefix="ppo1-artifacts-")
            staged = tempfile.mkdtemp(dir=self._staging.name)  # a file name may recur
            op = ("artifact", shutil.copy(op[1], staged), *op[2:])
        self._writer.submit(op)

    def _learn_run(self, writer: RunWriter) -> None:
        if writer.run is not None and self.run_id is None:
            self.run_id, self.run_name = writer.run
            self.experiment_id = writer.experiment_id

    def _take_over(self) -> None:
        """The writer exited or hung: this process does what it left undone, and what follows."""
        assert self._writer is not None
        writer, self._writer = self._writer, None
        self._writes_inline = True
        left = writer.close()
        self._learn_run(writer)
        for op in left:
            self._apply(op)

    def wait_for_run(self) -> tuple[str, str] | None:
        """The run's id and name, once it exists (the writer may still be creating it)."""
        if not self.active:
            return None
        if self.run_id is None:
            assert self._writer is not None
            if self._writer.wait_ready():
                self._learn_run(self._writer)
            else:
                self._take_over()
        assert self.run_id is not None and self.run_name is not None
        return self.run_id, self.run_name

    def known_run(self) -> str | None:
        """The run's id if this process knows it yet. Unlike `wait_for_run` it never waits:
        the writer's reply that it has the run is read at the next flush."""
        if self._writer is not None:
            self._learn_run(self._writer)
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active:
            return
        # A millisecond of its own for every call: MLflow keeps one row per (key, timestamp,
        # step, value), so equal episodes ending on one vector step would otherwise store as
        # one (2 of the default run's 424). Calls are far fewer than 1 a ms.
        self._last_ms = max(int(time.time() * 1000), self._last_ms + 1)
        self._rows += [(k, float(v), self._last_ms, step) for k, v in metrics.items()]

    def flush(self) -> None:
        """Hand the buffered metrics to the writer process (or write them) if it is time."""
        if not self.active:
            return
        if self._writer is not None and not self._writer.alive:
            self._take_over()
        now = time.monotonic()
        if self._writes_inline:
            if now - self._last_flush >= _WRITE_EVERY_S:
                self._last_flush = now
                self._do(("metrics", self._rows))
                self._rows = []
            return
        if now - self._last_flush < _FLUSH_EVERY_S:
            return
        if self._writer is None:
            if now - self._started < _WRITER_AFTER_S:
                return
            self._writer = RunWriter(self.uri, ["attach", self.run_id])
        self._last_flush = now
        self._writer.submit(("metrics", self._rows))
        self._rows = []

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.active:
            self._do(("tags", tags))

    def log_artifact(self, local_path: Path, artifact_path: str | None = None) -> None:
        if self.active:
            self._do(("artifact", str(local_path), artifact_path))

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.active:
            self._do(("text", text, artifact_file))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.active:
                self._end(exc)
        finally:
            if self._staging is not None:
                self._staging.cleanup()

    def _end(self, exc: BaseException | None) -> None:
        """Every write done (by the writer, or here what it left) and the run's status set."""
        status, tags = _ending(exc)
        ops: list[Op] = [("metrics", self._rows)] if self._rows else []
        ops += [("tags", tags)] if tags else []
        self._rows = []
        terminate = ("terminate", status)
        left = [*ops, terminate]
        writer, self._writer = self._writer, None
        if writer is not None and writer.creates_run:
            for op in left:
                writer.submit(op)
            left = writer.close()
        elif writer is not None:
            # A writer still importing mlflow is slower than this process's own client.
            left = writer.close(only_if_ready=True) + left
        if writer is not None:
            self._learn_run(writer)
        why: dict[str, str] = {}
        try:
            for op in left:
                if op[0] != "terminate" and not self._failed:
                    self._apply(op)
        except BaseException as err:
            # The last writes failed, or a second Ctrl-C hit them: the run still gets an end.
            if exc is None:
                status, why = _ending(err)
            if self.run_id is not None:
                err.add_note(self._fate(status))
            raise
        finally:
            # A store that failed once would fail this too, after minutes of MLflow's retries.
            if terminate in left and not self._failed:
                if why:
                    self._apply(("tags", why))
                self._apply(("terminate", status))
            if exc is not None and self.run_id is not None:
                # For whoever reports the exception: only this object knows a run exists.
                exc.add_note(self._fate(status))

    def _fate(self, status: str) -> str:
        """How the run was left, for the message that reports why it ended."""
        if self._failed:
            return f"the MLflow run {self.run_id} stays RUNNING (its end could not be stored)"
        return f"the MLflow run {self.run_id} is marked {status}"

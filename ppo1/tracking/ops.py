"""A run's MLflow writes as operations (`Op`), applied by the tracker itself or its writer
process; creating runs and experiments, and ending runs whose processes are gone."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ppo1.utils.redact import redact

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


# (key, value, timestamp in ms, step): one metric row, as MLflow stores it.
Row = tuple[str, float, int, int]
# One write to a run: ("params", {name: value}), ("metrics", [Row, ...]), ("tags", {name:
# value}), ("artifact", local path, artifact folder or None), ("text", text, artifact file),
# ("reopen",) (a resumed run) or ("terminate", "FINISHED" | "KILLED" | "FAILED").
Op = tuple[Any, ...]
T = TypeVar("T")
# MLflow rejects larger batches (its documented log_batch limits).
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_PER_BATCH = 100
# Set on a run whose training process went away without ending it (killed, crashed hard).
ORPHANED = "the training process exited without ending its run (killed?)"
# Set on a RUNNING run whose training process and writer both died (a whole process group
# killed, the machine rebooted): nobody was left to end it, so the next client of the store does.
DIED = "the training process and its writer died without ending the run (killed together?)"
# Tags every run gets: the machine and the training process, so that a later client can tell a
# run in progress from one whose process is gone. The start time tells a reused pid apart.
HOST_TAG, PID_TAG, PID_START_TAG = "ppo1.host", "ppo1.pid", "ppo1.pid_start"


def process_start(pid: int) -> str | None:
    """When a live process started (clock ticks since boot, Linux), None if it is not running;
    "" where /proc cannot tell (another OS) and the process exists."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # it exists, owned by someone else
        return ""
    # fields[0] is the state (field 3 of stat), fields[19] the start time (field 22).
    return None if fields[0] in ("Z", "X") else fields[19]


def process_tags() -> dict[str, str]:
    """This process, as a run's tags; see `end_dead_runs`."""
    pid = os.getpid()
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(pid),
        PID_START_TAG: process_start(pid) or "",
    }


def end_dead_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """End FAILED the experiment's RUNNING runs that this host trained and whose training
    process is gone (one search, filtered on status and host); returns their ids."""
    host = socket.gethostname().replace("'", "")
    runs = client.search_runs(
        [experiment_id],
        f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
        max_results=1000,
    )
    dead = []
    for run in runs:
        tags = run.data.tags
        pid = tags.get(PID_TAG, "")
        started = process_start(int(pid)) if pid.isdigit() else ""
        if started is None or started not in ("", tags.get(PID_START_TAG, "")):
            apply(client, run.info.run_id, ("tags", {"ppo1.error": DIED}))
            apply(client, run.info.run_id, ("terminate", "FAILED"))
            dead.append(run.info.run_id)
    return dead


def batches(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def artifact_folder(database: Path) -> Path:
    """Where the artifacts of a SQLite store's experiments go: beside the database."""
    return database.parent / "artifacts"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a SQLite store's URI; None for another store or one in memory."""
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    return None if path.name in ("", ":memory:") else path


def create_whole(uri: str) -> None:
    """Create a SQLite store that does not exist yet in a file of its own, then link it
    into place: whole, or not at all.

    MLflow creates a new store's tables in place (~1 s of migrations): a process stopped
    meanwhile (Ctrl-C in a sweep's first second, `kill -9`, a closed terminal) left a half-made
    database that every later command failed on. `os.link` fails if another process linked
    its store first; theirs is as good. Files left by creations killed on this host go too.
    """
    path = sqlite_path(uri)
    if path is None or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)  # the default mlruns/ (others are checked)
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    prefix = f".{path.name}.{socket.gethostname()}."
    for left in path.parent.glob(f"{prefix}*.new*"):  # with SQLite's -journal beside it
        pid = left.name.removeprefix(prefix).split(".new", 1)[0]
        if pid.isdigit() and process_start(int(pid)) is None:
            left.unlink(missing_ok=True)
    made = path.with_name(f"{prefix}{os.getpid()}.new")
    try:
        root = artifact_location(uri)  # the Default experiment's too, not the cwd's mlruns/
        store = SqlAlchemyStore(f"sqlite:///{made}", root)  # type: ignore[no-untyped-call]
        store.engine.dispose()
        try:
            os.link(made, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: the small race of a rename
            if not path.exists():
                made.rename(path)
    finally:
        made.unlink(missing_ok=True)
        made.with_name(f"{made.name}-journal").unlink(missing_ok=True)  # cut mid-transaction


def artifact_location(uri: str) -> str | None:
    """Artifacts beside a SQLite store; MLflow would otherwise root them in the current cwd."""
    path = sqlite_path(uri)
    return None if path is None else artifact_folder(path).resolve().as_uri()


def quiet_mlflow() -> None:
    """MLflow's own output off, here and in the processes this one starts (the environment
    carries it): we print one line of our own per event.

    Its INFO lines (a new store's table creation) would land amid the progress lines; with a
    server it prints "View run ... at" when a run ends, and the commands' downloads draw a
    progress bar. Its warnings still show.
    """
    from mlflow.environment_variables import (
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR,
        MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT,
    )

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.set(True)  # type: ignore[no-untyped-call]
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)  # type: ignore[no-untyped-call]


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


def create_run(
    client: MlflowClient,
    experiment: str,
    run_name: str | None,
    tags: dict[str, str],
    start_ms: int,
) -> tuple[str, str, str]:
    """A new RUNNING run in the experiment (created if need be): its id, name and experiment.

    `start_ms` is when training started: a writer creates the run seconds later, and the UI's
    duration is end minus start. A top-level run ends the experiment's dead runs first; a
    nested one (a sweep's trial and seed runs) does not: its sweep ends its own dead trials'
    runs (ppo1.sweep.parent_run.end_stale_runs), and the search, which grows with the store,
    was the largest part of creating a trial's two runs.
    """
    experiment_id = get_or_create_experiment(client, experiment)
    if "mlflow.parentRunId" not in tags:
        end_dead_runs(client, experiment_id)
    shown = {key: redact(value) for key, value in tags.items()}
    run = client.create_run(experiment_id, start_time=start_ms, tags=shown, run_name=run_name)
    return run.info.run_id, run.info.run_name, experiment_id


def apply(client: MlflowClient, run_id: str, op: Op) -> None:
    """One operation on the run, with as few store round trips as MLflow allows; passwords in
    the values and texts are masked (ppo1.utils.redact)."""
    from mlflow.entities import Metric, Param, RunTag

    match op:
        case ("params", dict(params)):
            for some in batches(
                [Param(k, redact(v)) for k, v in params.items()], MAX_PARAMS_PER_BATCH
            ):
                client.log_batch(run_id, params=some)
        case ("metrics", list(rows)):
            from ppo1.tracking.metric_rows import insert_rows, sqlite_store

            if (store := sqlite_store(client)) is not None:
                insert_rows(store, run_id, rows)
            else:
                for chunk in batches([Metric(*row) for row in rows], MAX_METRICS_PER_BATCH):
                    client.log_batch(run_id, metrics=chunk)
        case ("tags", dict(tags)):
            client.log_batch(run_id, tags=[RunTag(k, redact(v)) for k, v in tags.items()])
        case ("artifact", str(path), folder):
            client.log_artifact(run_id, path, folder)
        case ("text", str(text), str(file)):
            client.log_text(run_id, redact(text), file)
        case ("terminate", str(status)):
            client.set_terminated(run_id, status)
        case ("reopen",):
            # A resumed run: RUNNING again, without the error of the attempt that stopped.
            client.update_run(run_id, "RUNNING")
            if "ppo1.error" in client.get_run(run_id).data.tags:
                client.delete_tag(run_id, "ppo1.error")
        case _:
            raise ValueError(f"unknown run operation {op[:1]!r}")

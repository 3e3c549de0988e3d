"""The tracking store: which one a run uses, whether it works, and a client on it."""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.error
import urllib.request
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from ppo1.config import ConfigError, TrackingConfig
from ppo1.tracking.ops import artifact_folder, create_whole, quiet_mlflow, sqlite_path
from ppo1.utils.cli import one_line
from ppo1.utils.paths import project_root
from ppo1.utils.redact import redact

if TYPE_CHECKING:
    # Imported where used instead: `import mlflow` takes ~2 s, which untracked runs skip.
    from mlflow.tracking import MlflowClient

# The one request that tells a dead tracking server from a live one; MLflow's own client
# retries a refused connection for ~4 minutes before it fails.
_HEALTH_TIMEOUT_S = 5.0
# Clients on the SQLite stores that answered this process, by URI. A sweep's worker opens two
# runs per trial, and building a client and checking its store (~10 ms) once is enough: MLflow
# keeps one database engine per URI for the process's life anyway. A server or database
# server may go away between two runs, when the check still turns that into one clear line.
_answered: dict[str, MlflowClient] = {}


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlruns' / 'mlflow.db'}"


def tracking_uri(cfg: TrackingConfig) -> str:
    """cfg.uri, else $MLFLOW_TRACKING_URI, else SQLite under mlruns/."""
    return cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def is_server(uri: str) -> bool:
    """A tracking server's URI, rather than a store's."""
    return uri.startswith(("http://", "https://"))


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


def _unwritable(directory: Path) -> str | None:
    """Why no file can be created in `directory`, or None.

    Tried, not read off the permissions: root ignores those, not a read-only mount, and
    /proc grants them yet takes no file. SQLite writes its journal beside the database.
    """
    try:
        with tempfile.TemporaryFile(dir=directory):
            return None
    except OSError as err:
        return f"cannot write in {directory} ({err.strerror or err})"


def _sqlite_problem(uri: str) -> str | None:
    """A SQLite store's directory must exist (except the default mlruns/, which is created)
    and take writes, as must the artifacts folder beside it.

    MLflow creates any missing parents (`sqlite:////nonexistent/dir/x.db` made /nonexistent),
    so a typo in the path, or three slashes meant as four, would grow a tree silently; and it
    finds an unwritable store only at the run's first write, after minutes of retries.
    """
    path = sqlite_path(uri)
    if path is None:
        return None
    if not path.parent.is_dir():
        if uri == default_tracking_uri():
            return _unwritable(next(p for p in path.parents if p.is_dir()))
        slashes = (
            ""
            if path.is_absolute()
            else " (sqlite:/// takes a relative path; sqlite://// an absolute one)"
        )
        return f"directory {path.parent} does not exist{slashes}; create it first"
    if path.exists() and not os.access(path, os.W_OK):  # False on a read-only mount, even for root
        return f"{path} is read-only"
    folders = [path.parent, artifact_folder(path)]
    return next(filter(None, (_unwritable(f) for f in folders if f.is_dir())), None)


def _file_store_problem() -> str | None:
    """A plain path (or a typo: any text without a scheme) means MLflow's file store, which
    MLflow 3 refuses with a page about its maintenance unless MLFLOW_ALLOW_FILE_STORE is set."""
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("true", "1"):
        return None
    return (
        "not a store ppo1 can use: give sqlite:///PATH/mlflow.db (a SQLite file) "
        "or http://HOST:PORT (a tracking server)"
    )


# What MLflow's tracking store registry takes besides files and servers; a database URL may
# name its driver (`postgresql+psycopg`). Plugins add theirs as `mlflow.tracking_store` entry
# points.
_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def _scheme_problem(scheme: str) -> str | None:
    """MLflow refuses a scheme it has no store for only once the run's writer opens it, a
    few seconds into training: said before training instead."""
    if scheme.split("+", 1)[0].lower() in _SCHEMES:
        return None
    if scheme in {plugin.name for plugin in entry_points(group="mlflow.tracking_store")}:
        return None
    return (
        f"unsupported URI scheme {scheme!r}: give sqlite:///PATH/mlflow.db, a database URL "
        "(postgresql://...) or http://HOST:PORT (a tracking server)"
    )


def store_problem(uri: str) -> str | None:
    """What is wrong with a tracking URI that can be told without MLflow, or None."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme in ("", "file"):
        return _file_store_problem()
    if is_server(uri):
        return _server_problem(uri)
    return _scheme_problem(scheme) or _sqlite_problem(uri)


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """The commands' `--tracking-uri`."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the project's mlruns/mlflow.db)",
    )


def store_error(uri: str, problem: str) -> ConfigError:
    """The bad-input error for a store, naming where its URI came from (its password masked)."""
    shown, problem = redact(uri), redact(problem)
    if uri == os.environ.get("MLFLOW_TRACKING_URI"):
        return ConfigError(f"$MLFLOW_TRACKING_URI {shown!r}: {problem}")
    if uri == default_tracking_uri():
        return ConfigError(f"the default store {shown!r}: {problem}; set tracking.uri to another")
    return ConfigError(f"tracking.uri {shown!r}: {problem}")


def connect(uri: str) -> MlflowClient | str:
    """A client on a store that answers, or why there is none.

    MLflow otherwise fails deep in its stack (a filesystem path, an unknown scheme) or, for
    a server that is down, only after minutes of retries; a live server keeps those retries.
    """
    from mlflow.tracking import MlflowClient

    if uri in _answered:
        return _answered[uri]
    quiet_mlflow()
    problem = store_problem(uri)
    if problem is not None:
        return problem
    try:
        create_whole(uri)
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    except Exception as err:  # whatever the store's backend raises: report, not traceback
        return one_line(err)
    if sqlite_path(uri) is not None:
        _answered[uri] = client
    return client


def open_client(uri: str) -> MlflowClient:
    """A client on a store that answers, or one ConfigError naming the URI and the cause."""
    client = connect(uri)
    if isinstance(client, str):
        raise store_error(uri, client)
    return client


class StoreFailedError(RuntimeError):
    """The tracking store failed after the run began: a failure (exit 1), not bad input."""


def store_failed(uri: str, cause: str) -> StoreFailedError:
    """The error for a store that worked when the run began and fails now."""
    if is_server(uri):
        # Refused or timed out, MLflow's error is its last retry's; the health check is plainer.
        problem = _server_problem(uri)
        if problem is not None:
            return StoreFailedError(f"the tracking server at {uri} stopped answering: {problem}")
    return StoreFailedError(f"the tracking store {uri} failed: {cause}")

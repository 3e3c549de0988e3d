"""A study in a database (PostgreSQL across machines, SQLite on one): opening it, and the lock
that makes count-then-ask one step for every sweep process on the study.

PostgreSQL gives the lock itself: `pg_advisory_xact_lock`, held by a transaction on a
connection of its own and released when that transaction ends, however the process ends
(a `kill -9` closes the connection, and the server ends the transaction). SQLite lives in one
file on one machine, so a lock file beside it does the same. Other dialects are refused: two
processes could both see one trial left and both ask it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from typing import IO, TYPE_CHECKING, Any

from ppo1.config import ConfigError
from ppo1.utils.redact import redact

if TYPE_CHECKING:
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import Engine

# Seconds to wait for the server to answer a connection: an unreachable host (a firewall that
# drops packets) would otherwise hang the sweep for minutes before its one error line.
CONNECT_TIMEOUT_S = 10
# Lock key of the one-time creation of Optuna's tables: concurrent `CREATE TABLE`s of two
# workers starting on a fresh database collide in PostgreSQL's catalog.
_SCHEMA_KEY = "ppo1/optuna-schema"
_DIALECTS = ("postgresql", "sqlite")


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("postgresql"):
        return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {}


@functools.cache
def _lock_engine(url: str) -> Engine:
    """One engine per database for the lock's connections; NullPool: a connection lives as
    long as one lock, so none is left open, or broken, between asks."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    return create_engine(url, poolclass=NullPool, **_engine_kwargs(url))


def lock_id(key: str) -> int:
    """A signed 64-bit advisory-lock id from a name (pg_advisory_xact_lock takes a bigint)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


@contextmanager
def file_lock(path: str, stale_after_s: float | None = None) -> Iterator[None]:
    """An exclusive lock on the file `path` for processes on one machine; released when the
    file closes, however the process ends (a `kill -9` too).

    `stale_after_s`: a holder that keeps it that long is alive (the kernel frees a dead one's
    lock) but stopped, by Ctrl-Z, SIGSTOP or a debugger; waiting for it would hang every
    other process. Its lock file is then replaced by a new one, which this process locks (as
    Optuna breaks its own journal lock after a grace period); the stopped holder, resumed,
    finishes with the old file."""
    while True:
        with ExitStack() as stack:
            handle = stack.enter_context(open(path, "a"))
            if stale_after_s is None:
                fcntl.flock(handle, fcntl.LOCK_EX)
            elif not _flock_within(handle, stale_after_s):
                if _same_file(handle, path):  # nobody replaced it meanwhile
                    fresh = f"{path}.{os.getpid()}.{threading.get_ident()}"
                    open(fresh, "a").close()
                    os.replace(fresh, path)
                continue
            if not _same_file(handle, path):  # another process has just replaced it
                continue
            held = stack.pop_all()
            break
    with held:
        yield


def _flock_within(handle: IO[str], seconds: float) -> bool:
    """Lock the open file unless another process holds it for `seconds`."""
    deadline = time.monotonic() + seconds
    pause = 0.001  # appends take ~1 ms: most waits end within a few
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(2 * pause, 0.05)


def _same_file(handle: IO[str], path: str) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


@contextmanager
def database_lock(url: str, key: str) -> Iterator[None]:
    """Hold the lock named `key` in the database at `url` while the block runs."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    if make_url(url).get_backend_name() == "sqlite":
        database = make_url(url).database
        if not database or database == ":memory:":
            yield  # a database of this process alone
            return
        with file_lock(f"{database}.ask.lock"):
            yield
        return
    with _lock_engine(url).connect() as connection, connection.begin():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": lock_id(key)})
        yield


def study_key(study_name: str) -> str:
    return f"ppo1/study/{study_name}"


def _problem(err: Exception) -> str:
    """The driver's own words, on one line and without a password."""
    return redact(" ".join(str(getattr(err, "orig", None) or err).split()))


def open_rdb(url: str) -> RDBStorage:
    """RDBStorage(url), its tables created under the schema lock; or one ConfigError naming a
    bad URL, a dialect without a study lock, a missing driver or an unreachable database."""
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"sweep.storage {redact(url)!r} is not a database URL") from None
    shown = parsed.render_as_string(hide_password=True)
    try:
        parsed.get_dialect()  # an unknown scheme raises here
        if parsed.get_backend_name() not in _DIALECTS:
            raise ConfigError(
                f"sweep.storage {shown}: no study lock for database scheme "
                f"{parsed.get_backend_name()!r}; use postgresql+psycopg://... (across machines) "
                f"or sqlite:///path/optuna.db"
            )
        # SQLite serialises its writers itself; PostgreSQL's catalog does not.
        postgres = parsed.get_backend_name() == "postgresql"
        with database_lock(url, _SCHEMA_KEY) if postgres else nullcontext():
            return RDBStorage(url, engine_kwargs=_engine_kwargs(url))
    except NoSuchModuleError:
        scheme = url.split("://", 1)[0]
        problem = f"no database scheme {scheme!r}; e.g. sqlite:///path/optuna.db, postgresql+psycopg://..."
    except ImportError as err:
        # Optuna and SQLAlchemy hide which driver is missing in the chained error.
        missing = getattr(err.__cause__, "name", None) or getattr(err, "name", None) or "?"
        problem = f"its database driver, the Python module {missing!r}, is not installed"
        if missing == "psycopg":
            problem += " (pip install 'ppo1[cluster]')"
    except SQLAlchemyError as err:
        problem = f"cannot use the database: {_problem(err)}"
    raise ConfigError(f"sweep.storage {shown}: {problem}")

"""A local cluster stack on 127.0.0.1 for trying multi-worker sweeps: PostgreSQL (the Optuna
study) and an `mlflow server` on it (the runs, artifacts served); stopped by pid.

    python -m ppo1.sweep.cluster up [DIR]     # or: make cluster-up   (DIR: .cluster/)
    . DIR/cluster.env                         # PGPASSFILE, MLFLOW_TRACKING_URI, PPO1_STORAGE
    python -m ppo1.sweep.cluster down [DIR]   # or: make cluster-down

The database password is random and lives only in DIR/pgpass (mode 0600), which libpq reads
through PGPASSFILE: no URL, command line or log holds it. PostgreSQL refuses to run as root;
run as root (a container, CI), the server runs as `nobody`. docs/cluster.md has the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

USER = "ppo1"
_HOST = "127.0.0.1"
_READY_S = 120.0


@dataclass(frozen=True)
class Cluster:
    folder: Path
    pg_port: int
    mlflow_port: int
    password: str = field(repr=False)  # for tests that look for it where it must not be

    @property
    def pgpass(self) -> Path:
        return self.folder / "pgpass"

    def database_url(self, database: str, with_password: bool = False) -> str:
        secret = f":{self.password}" if with_password else ""
        return f"postgresql+psycopg://{USER}{secret}@{_HOST}:{self.pg_port}/{database}"

    @property
    def tracking_uri(self) -> str:
        return f"http://{_HOST}:{self.mlflow_port}"

    def env(self) -> dict[str, str]:
        """What a worker needs: the password file, the tracking server, the study storage."""
        return {
            "PGPASSFILE": str(self.pgpass),
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "PPO1_STORAGE": self.database_url("optuna"),
        }


def postgres_bindir() -> Path | None:
    """Where `initdb` and `postgres` are: on PATH, or Debian's /usr/lib/postgresql/<v>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _as_server_user(command: list[str]) -> list[str]:
    """`command` as `nobody` when run as root (PostgreSQL refuses root), else as is."""
    return ["runuser", "-u", "nobody", "--", *command] if os.geteuid() == 0 else command


def _give_to_server_user(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam("nobody")
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _wait(
    ready: Callable[[], bool], what: str, log: Path, process: subprocess.Popen[bytes]
) -> None:
    """Poll `ready()` until it holds; fail with the log's tail if the process exits first."""
    deadline = time.monotonic() + _READY_S
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{what} did not start (see {log}):\n{tail}")
        time.sleep(0.3)


def _connect(cluster: Cluster, database: str = "postgres") -> psycopg.Connection[Any]:
    import psycopg

    return psycopg.connect(
        host=_HOST,
        port=cluster.pg_port,
        user=USER,
        dbname=database,
        passfile=str(cluster.pgpass),
        connect_timeout=2,
        autocommit=True,
    )


def _answers(cluster: Cluster) -> bool:
    import psycopg

    try:
        _connect(cluster).close()
        return True
    except psycopg.OperationalError:
        return False


def _start_postgres(cluster: Cluster) -> None:
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError("no PostgreSQL server binaries: apt-get install postgresql")
    folder = cluster.folder
    data = folder / "pg"
    data.mkdir()
    _give_to_server_user(data)
    pwfile = folder / "pg-password"  # initdb's, read by the server user; gone after initdb
    pwfile.touch(mode=0o600)
    pwfile.write_text(cluster.password + "\n")
    _give_to_server_user(pwfile)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "scram-sha-256"]
    done = subprocess.run(
        _as_server_user([*initdb, f"--pwfile={pwfile}"]), capture_output=True, text=True
    )
    pwfile.unlink()
    if done.returncode != 0:
        raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
    # TCP on 127.0.0.1 only, no Unix socket (its default folder is not ours to write).
    settings = ["-c", f"listen_addresses={_HOST}", "-c", "unix_socket_directories=", "-p"]
    command = [str(bindir / "postgres"), "-D", str(data), *settings, str(cluster.pg_port)]
    log = folder / "postgres.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            _as_server_user(command), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _wait(lambda: _answers(cluster), "PostgreSQL", log, server)
    # The server's own pid (runuser stays its parent): the one to stop it by.
    pid = (data / "postmaster.pid").read_text().split()[0]
    (folder / "postgres.pid").write_text(pid + "\n")
    with _connect(cluster) as connection:
        for database in ("optuna", "mlflow"):
            connection.execute(f"CREATE DATABASE {database}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _start_mlflow(cluster: Cluster) -> None:
    """`mlflow server` on the `mlflow` database, serving artifacts from DIR/artifacts to every
    worker (workers upload through it: they need no shared disk)."""
    folder = cluster.folder
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [
        mlflow, "server",
        "--backend-store-uri", cluster.database_url("mlflow"),
        "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts"),
        "--host", _HOST, "--port", str(cluster.mlflow_port), "--workers", "1",
    ]  # fmt: skip
    log = folder / "mlflow.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            command,
            cwd=folder,
            env={**os.environ, "PGPASSFILE": str(cluster.pgpass)},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers form its process group, stopped with it
        )
    (folder / "mlflow.pid").write_text(f"{server.pid}\n")
    _wait(lambda: _healthy(cluster.tracking_uri), "mlflow server", log, server)


def up(folder: Path) -> Cluster:
    """Start PostgreSQL and an MLflow server in `folder` (created; it must not hold a running
    cluster), with empty databases; write DIR/cluster.env. Whatever started is stopped again if
    the rest fails."""
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if any((folder / name).exists() for name in ("postgres.pid", "mlflow.pid")):
        raise RuntimeError(f"{folder} holds a running cluster: stop it first (down {folder})")
    for stale in ("pg", "artifacts"):  # a stopped cluster's: each up starts afresh
        shutil.rmtree(folder / stale, ignore_errors=True)
    folder.chmod(0o755)  # the server user reaches its data folder through it
    cluster = Cluster(folder, _free_port(), _free_port(), secrets.token_urlsafe(18))
    cluster.pgpass.touch(mode=0o600)  # libpq ignores a password file others may read
    cluster.pgpass.write_text(f"{_HOST}:{cluster.pg_port}:*:{USER}:{cluster.password}\n")
    try:
        _start_postgres(cluster)
        _start_mlflow(cluster)
    except BaseException:
        down(folder)
        raise
    exports = "".join(f"export {key}={value}\n" for key, value in cluster.env().items())
    (folder / "cluster.env").write_text(exports)
    return cluster


def _stop(pid_file: Path, signum: signal.Signals, group: bool) -> None:
    """Signal the pid (or its process group) in `pid_file`, wait until it is gone."""
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    with contextlib.suppress(ProcessLookupError):
        (os.killpg if group else os.kill)(pid, signum)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            os.kill(pid, 0)  # raises ProcessLookupError once it is gone
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap it if it is this process's child
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
    pid_file.unlink()


def down(folder: Path) -> None:
    """Stop the MLflow server, then PostgreSQL (a fast shutdown: SIGINT), by their pids."""
    _stop(folder / "mlflow.pid", signal.SIGTERM, group=True)
    _stop(folder / "postgres.pid", signal.SIGINT, group=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ppo1.sweep.cluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("folder", nargs="?", type=Path, default=Path(".cluster"))
    args = parser.parse_args(argv)
    if args.action == "down":
        down(args.folder)
        print(f"stopped the cluster in {args.folder}")
        return
    try:
        cluster = up(args.folder)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"PostgreSQL on {_HOST}:{cluster.pg_port}, MLflow on {cluster.tracking_uri}")
    print(f"workers: . {args.folder}/cluster.env; then see docs/cluster.md")


if __name__ == "__main__":
    main()

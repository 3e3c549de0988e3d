"""A new SQLite store is created whole or not at all: a process killed while MLflow creates
its tables, or two processes creating it at once, leave a store every later command opens."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ppo1.tracking.store import connect

from .conftest import TINY, wait_until


def train_command(uri: str) -> list[str]:
    return [sys.executable, "-m", "ppo1.train", *TINY, f"tracking.uri={uri}"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT], ids=["kill -9", "Ctrl-C"])
def test_a_process_stopped_while_it_creates_a_store_leaves_no_broken_one(
    tmp_path: Path, signum: int
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # What every command does first (a sweep process itself, a run's writer process), stopped
    # the moment a database file appears: MLflow is then creating its tables (~1 s).
    script = "import sys\nfrom ppo1.tracking.store import connect\nconnect(sys.argv[1])\n"
    first = subprocess.Popen([sys.executable, "-c", script, uri], stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: any(tmp_path.glob("*mlflow.db*")), timeout=120, process=first)
    finally:
        first.send_signal(signum)
        first.wait(timeout=30)
    assert first.returncode != 0, "stopped before the store was made"
    assert not (tmp_path / "mlflow.db").exists(), "a half-made store under the store's name"

    again = subprocess.run(train_command(uri), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = MlflowClient(uri).search_runs(["1"])
    assert run.info.status == "FINISHED"
    assert not list(tmp_path.glob(".mlflow.db.*")), "the stopped creation's file is gone"


def test_two_processes_creating_one_store_at_once_both_use_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = (
        "import sys\n"
        "from ppo1.tracking.store import open_client\n"
        "client = open_client(sys.argv[1])\n"
        "run = client.create_run(client.get_experiment_by_name('Default').experiment_id)\n"
        "print(run.info.run_id)\n"
    )
    both = [
        subprocess.Popen([sys.executable, "-c", script, uri], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    ids = []
    for proc in both:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        ids.append(out.strip())
    client = MlflowClient(uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
    assert sorted(r.info.run_id for r in client.search_runs(["0"])) == sorted(ids)
    assert not list(tmp_path.glob(".mlflow.db.*"))


def test_a_sqlite_store_is_checked_once_per_process(tmp_path: Path) -> None:
    """A sweep's worker opens two runs per trial; the store is checked at the first."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert isinstance(connect(f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"), str)
    first = connect(uri)
    assert isinstance(first, MlflowClient)
    assert connect(uri) is first
    other = connect(f"sqlite:///{tmp_path / 'other.db'}")
    assert isinstance(other, MlflowClient) and other is not first

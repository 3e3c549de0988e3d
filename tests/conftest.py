"""Shared fixtures: compose the real `conf/` with Hydra, and a throwaway MLflow store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir

from ppo1.config import CONF_DIR, TrainConfig, register_configs, to_train_config

# The tests' own configs (tests/conf/sweep), added with hydra.searchpath.
TEST_CONF = Path(__file__).resolve().parent / "conf"

# A budget small enough for unit-level training runs.
TINY = ["total_timesteps=512", "eval.episodes=2", "eval.every=1", "verbose=false"]


def pytest_configure() -> None:
    """Tests stop the processes they start with Ctrl-C and SIGHUP, which a process started
    ignoring them rightly keeps ignoring (ppo1.utils.signals): a suite run in the background
    of a script (SIGINT ignored) or under nohup must not pass that on to every one of them."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGHUP: signal.SIG_DFL}
    for signum, default in defaults.items():
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, default)


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[[list[str]], TrainConfig]:
    """Compose conf/train.yaml with overrides exactly as the command line would."""
    register_configs()

    def _compose(overrides: list[str]) -> TrainConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return to_train_config(compose(config_name="train", overrides=overrides))

    return _compose


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread, as training runs (`torch_threads=1`): small tensor ops on a busy
    2-core machine run many times slower on two threads that wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@contextmanager
def refused(capsys: pytest.CaptureFixture[str], message: str) -> Iterator[None]:
    """The block exits 2 with one `error: ...` line containing `message` (exit_with_error)."""
    with pytest.raises(SystemExit) as exited:
        yield
    assert exited.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after any INFO lines MLflow logs opening a store
    assert last.startswith("error: ") and message in last, err


def wait_until(
    condition: Callable[[], bool],
    timeout: float,
    process: subprocess.Popen[Any] | None = None,
) -> None:
    """Poll `condition` until it holds; fail after `timeout` s, or as soon as `process` (what
    should make it hold) has exited."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before the condition")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s")
        time.sleep(0.2)


def run_python(
    script: str, timeout: float, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`python -c script` in a fresh interpreter: for what is process-wide (imports, signals,
    handlers a library keeps), which a test in this process would see already set."""
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=check, timeout=timeout
    )


def run_module(
    module: str, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`python -m module args` with `env` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def one_error_line(proc: subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The only line on stderr, once the exit code and the absence of tracebacks are checked."""
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` on a read-only bind mount: as root, permissions would not stop a write."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True, text=True
    )
    if mount.returncode != 0:
        pytest.skip(f"a read-only bind mount is not permitted here: {mount.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def free_port() -> int:
    """A port nothing listens on (for now): for a server to start on, or to be refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...); None once the
    process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):  # gone, or not a process
        return None


def running(pid: int | str) -> bool:
    """Whether `pid` runs (an exited process not yet reaped, a zombie, does not)."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def dashboard_study(storage: str, name: str, timeout: float = 60) -> dict[str, Any]:
    """Study `name` as optuna-dashboard serves it from `storage` (its REST API, trials
    included), the server started on 127.0.0.1 for this and stopped after, workers and all."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), storage]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    api = f"http://127.0.0.1:{port}/api/studies"

    def get(url: str) -> Any:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)

    def answers() -> bool:
        with contextlib.suppress(OSError):
            return bool(get(api))
        return False

    try:
        wait_until(answers, timeout, process=server)
        (study_id,) = [
            s["study_id"] for s in get(api)["study_summaries"] if s["study_name"] == name
        ]
        study: dict[str, Any] = get(f"{api}/{study_id}?after=0")
        return study
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@contextmanager
def mlflow_serving(
    command: list[str], folder: Path
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`mlflow COMMAND --host 127.0.0.1 --port P`, its URL once it answers, and the process;
    shut down by its process group afterwards (its workers go down with it)."""
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    log = folder / "mlflow-server.log"
    server = subprocess.Popen(
        [mlflow, *command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),  # noqa: SIM115 (closed with the process)
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"mlflow {command[0]} did not answer within 120 s"
            time.sleep(0.5)
        yield url, server
    finally:
        with contextlib.suppress(ProcessLookupError):  # a test may have killed it
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)

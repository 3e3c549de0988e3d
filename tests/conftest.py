"""Shared fixtures: compose the real `conf/` with Hydra, and a throwaway MLflow store."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir

from ppo1.config import CONF_DIR, TrainConfig, register_configs, to_train_config

# A budget small enough for unit-level training runs.
TINY = ["total_timesteps=512", "eval.episodes=2", "eval.every=1", "verbose=false"]


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[[list[str]], TrainConfig]:
    """Compose conf/train.yaml with overrides exactly as the command line would."""
    register_configs()

    def _compose(overrides: list[str]) -> TrainConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return to_train_config(compose(config_name="train", overrides=overrides))

    return _compose


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

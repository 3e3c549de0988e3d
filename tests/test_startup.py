"""Commands that only answer (`--help`, `--cfg job`, TAB completion) import neither torch nor
MLflow nor Gymnasium: those imports are most of a command's start-up (docs/speed.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("torch", "mlflow", "gymnasium")


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages `python -X importtime -m ARGS` imported (it lists them on stderr)."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|") for line in proc.stderr.splitlines() if line.startswith("import time:")]
    return {row[-1].strip().split(".")[0] for row in rows if len(row) == 3}


@pytest.mark.parametrize(
    "args",
    [
        ("ppo1.train", "--help"),
        ("ppo1.train", "--cfg", "job", "algo.clip=0.1"),
        ("ppo1.evaluate", "--help"),
        ("ppo1.compare", "--help"),
        ("ppo1.dashboard", "--help"),
        ("ppo1.sweep_report", "--help"),
    ],
    ids=" ".join,
)
def test_answering_imports_no_heavy_package(args: tuple[str, ...]) -> None:
    packages = imported(*args)
    assert "hydra" in packages or "argparse" in packages  # the listing is read right
    assert not packages & set(HEAVY)


def test_tab_completion_imports_no_heavy_package() -> None:
    line = "ppo1-train algo.cl"
    packages = imported(
        "ppo1.train", "-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))}
    )
    assert "hydra" in packages and not packages & set(HEAVY)


def test_training_does_import_them() -> None:
    """The check can fail: training imports them, once its config is composed."""
    packages = imported("ppo1.train", "total_timesteps=256", "tracking.enabled=false")
    assert {"torch", "gymnasium"} <= packages

"""What training prints while it runs: a live bar on a terminal, with the run id first; a
line every `log_every` updates elsewhere; a line per update with `verbose=true`."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from ppo1.config import TrainConfig
from ppo1.report.progress import bar_postfix, progress_line

from .conftest import run_module

Compose = Callable[[list[str]], TrainConfig]

# 8 updates of 256 steps, tracked to a store in tmp_path; the run's own process writes it, so
# that the run exists (and its id prints) before the first update.
SHORT = [
    "total_timesteps=2048",
    "eval.every=2",
    "eval.episodes=2",
    "tracking.figures=none",
    "tracking.writer_process=false",
]
UPDATE_LINE = re.compile(r"^update +(\d+)/8 \| step +\d+ \| return .* \| SPS +\d+$")


def store(tmp_path: Path) -> str:
    return f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"


def the_run_id(tmp_path: Path) -> str:
    (run,) = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(["1"])
    return str(run.info.run_id)


def on_a_terminal(*overrides: str) -> tuple[int, str]:
    """`python -m ppo1.train` with stdout on a pseudo-terminal 160 columns wide (a pty opens
    0 x 0, where a bar has no room); its exit code and everything it wrote there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppo1.train", *overrides],
        stdout=follower,
        stderr=subprocess.DEVNULL,
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    return proc.wait(timeout=120), out.decode()


def test_a_terminal_gets_the_run_id_first_then_one_live_bar(tmp_path: Path) -> None:
    code, out = on_a_terminal(*SHORT, store(tmp_path))
    assert code == 0, out
    run_id = the_run_id(tmp_path)
    lines = out.split("\r\n")
    assert lines[0] == f"MLflow run {run_id} in experiment 'ppo1' (sqlite:///{tmp_path}/mlflow.db)"
    assert lines[1].startswith("open the MLflow UI: mlflow ui --backend-store-uri")
    assert lines[2].startswith("  this run: http://127.0.0.1:5000/#/experiments/")
    assert run_id in lines[2] and lines[3].startswith("  all runs: ")
    # One line redrawn in place (carriage returns, no newline) from the first update to 100%.
    states = [s for s in lines[4].split("\r") if s]
    assert len(states) >= 2, out
    last = states[-1]
    assert last.startswith("100% |") and "| 2048/2048 steps [" in last, last
    for shown in ("SPS ", "| return ", "| eval ", "| kl 0.", "| clipfrac 0."):
        assert shown in last, last
    assert not any(UPDATE_LINE.match(line) for line in lines)  # no line per update
    assert lines[5].startswith("final evaluation: ")


def test_elsewhere_a_line_every_log_every_updates(tmp_path: Path) -> None:
    done = run_module("ppo1.train", *SHORT, store(tmp_path), "log_every=3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    run_id = the_run_id(tmp_path)
    assert lines[0].startswith(f"MLflow run {run_id} in experiment 'ppo1'")
    assert lines[1].startswith("open the MLflow UI: ") and run_id in lines[2]
    progress = [m for line in lines if (m := UPDATE_LINE.match(line))]
    assert [int(m.group(1)) for m in progress] == [3, 6, 8]  # and the last update's
    # Each shows the last evaluation (every 2 updates), wherever it ran.
    assert all("| eval " in m.group(0) for m in progress)
    assert "\r" not in done.stdout  # no bar off a terminal
    assert lines[len(progress) + 4].startswith("final evaluation: ")  # after 4 header lines


def test_verbose_prints_a_line_per_update_and_log_every_0_none(tmp_path: Path) -> None:
    verbose = run_module("ppo1.train", *SHORT, store(tmp_path), "verbose=true")
    assert verbose.returncode == 0, verbose.stderr
    lines = verbose.stdout.splitlines()
    # As it always printed: the update lines first, the evaluation only where one ran.
    assert [int(m.group(1)) for line in lines[:8] if (m := UPDATE_LINE.match(line))] == list(
        range(1, 9)
    )
    assert ["| eval " in line for line in lines[:8]] == [False, True] * 4
    quiet = run_module("ppo1.train", *SHORT, "tracking.enabled=false", "log_every=0")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.startswith("final evaluation: ")


def test_the_lines_show_what_they_name(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["total_timesteps=2048"])
    m = {
        "losses/kl": 0.01234,
        "losses/clipfrac": 0.1,
        "charts/SPS": 4999.6,
        "rollout/ep_rew_mean": 42.25,
    }
    assert progress_line(3, cfg, 768, m, 61.04) == (
        "update    3/8 | step      768 | return     42.2 | eval     61.0 | kl 0.0123"
        " | clipfrac 0.100 | SPS   5000"
    )
    assert bar_postfix(m, None) == "SPS 5000 | return 42.2 | eval - | kl 0.0123 | clipfrac 0.100"

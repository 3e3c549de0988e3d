"""Where the project lives, what it runs on, and which commit it is."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


def project_root() -> Path:
    """The checkout holding `conf/` and `mlruns/`; PPO1_HOME overrides it."""
    return Path(os.environ.get("PPO1_HOME", Path(__file__).resolve().parents[2]))


def usable_cpus() -> int:
    """CPUs this process may run on (a scheduler's allocation, taskset), not the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this process's code came from: asked once (a `git` process
    per run was a sweep trial's ~6 ms)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None

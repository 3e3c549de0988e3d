"""Hydra's global state in a sweep's jobs: restored for every job, its plugins found once.

Hydra's launchers hand each job Hydra's global state (`Singleton.get_state`) and restore it
where the job runs (`Singleton.set_state`). The Plugins singleton is left out of that state
(it does not pickle), so every job scanned the installed Hydra plugins anew (~23 ms a job,
the largest part of a job's set-up in the worker). The plugins a process found serve all its
jobs: nothing installs a Hydra plugin while a sweep runs.
"""

from __future__ import annotations

from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton

_restore = Singleton.set_state


def _restore_keeping_plugins(state: Any) -> None:
    plugins = Singleton._instances.get(Plugins)
    if plugins is not None and Plugins not in state["instances"]:
        state = {**state, "instances": {**state["instances"], Plugins: plugins}}
    _restore(state)


def keep_plugins() -> None:
    """In this process, jobs restoring Hydra's state keep the plugins it found already."""
    Singleton.set_state = staticmethod(_restore_keeping_plugins)  # type: ignore[method-assign]

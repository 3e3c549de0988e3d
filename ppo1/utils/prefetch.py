"""Import modules in a background thread while the process waits on other work."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterable
from contextlib import suppress


def import_in_background(names: Iterable[str]) -> threading.Thread:
    """Start importing `names`, one after the other, in a daemon thread.

    The `import` where a module is used then finds it done, or waits for this thread to finish
    it (Python locks each module while it is imported). An import that fails here is left to
    fail again there, where its error is raised and reported."""

    def run() -> None:
        for name in names:
            with suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="ppo1-prefetch", daemon=True)
    thread.start()
    return thread

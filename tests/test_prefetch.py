"""ppo1.utils.prefetch: modules imported in a background thread."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from ppo1.utils.prefetch import import_in_background


def test_imports_in_the_background_and_leaves_a_broken_import_to_fail_where_it_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "ppo1_probe_broken.py").write_text("raise RuntimeError('broken on import')\n")
    (tmp_path / "ppo1_probe_fine.py").write_text(
        "import threading\nBY = threading.current_thread().name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("ppo1_probe_broken", "ppo1_probe_fine"):
        monkeypatch.delitem(sys.modules, name, raising=False)

    import_in_background(["ppo1_probe_broken", "ppo1_probe_fine"]).join(timeout=30)

    # The broken module did not stop the next one, which the background thread imported.
    assert sys.modules["ppo1_probe_fine"].BY == "ppo1-prefetch"
    assert "ppo1_probe_broken" not in sys.modules
    with pytest.raises(RuntimeError, match="broken on import"):
        importlib.import_module("ppo1_probe_broken")

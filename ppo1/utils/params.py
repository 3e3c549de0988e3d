"""Nested settings as the dotted keys users type on the command line."""

from __future__ import annotations

from typing import Any


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'algo': {'clip': 0.2}} -> {'algo.clip': '0.2'}, the keys users type on the command line."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat

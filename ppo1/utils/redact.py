"""Passwords out of what is logged or printed: `scheme://user:secret@host` -> `user:***@host`.

A database URL may carry its password (`sweep.storage=postgresql+psycopg://ppo1:secret@db/x`);
the config holding it becomes MLflow params, the command line a tag, the config a YAML artifact.
Everything a run writes passes through `redact` first (ppo1.tracking.writer.apply), so the
password stays with the processes that connect. docs/cluster.md shows the better way: no
password in the URL at all, libpq reads it from PGPASSWORD or a ~/.pgpass file the user owns.
"""

from __future__ import annotations

import re
from typing import Any

# The userinfo of any URL: scheme, user, `:`, then the password up to the `@` before the host.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@]*):[^\s@]+@")

MASK = "***"


def redact(text: str) -> str:
    """`text` with the password of every URL in it replaced by ***."""
    return _USERINFO.sub(rf"\g<scheme>\g<user>:{MASK}@", text)


def without_password(url: str) -> str:
    """A URL as a label: the same for every worker however it passes the password (in the URL,
    PGPASSWORD or ~/.pgpass), and safe to show."""
    return _USERINFO.sub(r"\g<scheme>\g<user>@", url)


def redact_tree(tree: Any) -> Any:
    """A config (nested dicts and lists) with every string redacted."""
    if isinstance(tree, dict):
        return {key: redact_tree(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [redact_tree(value) for value in tree]
    return redact(tree) if isinstance(tree, str) else tree

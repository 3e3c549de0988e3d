"""How every command answers bad input: one line, exit 2."""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable
from typing import NoReturn

# How both Hydra's refusal of `algo.cilp=0.5` and our own of `+algo.cilp=0.5` begin.
UNKNOWN_KEYS = "unknown key(s), not in the schema (ppo1/config/schema.py)"


def exit_with_error(message: str) -> NoReturn:
    """Exit 2 with one `error: ...` line on stderr: every entrypoint's answer to bad input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a store's may run over many), or its type."""
    return " ".join(str(err).split()) or type(err).__name__


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The valid choice nearest to a mistyped `word` (difflib's ratio), if any is near."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def unknown_key(path: str, siblings: Iterable[str]) -> str:
    """'algo.cilp (did you mean algo.clip?)': a dotted key its schema lacks, and the nearest
    of the names beside it; said the same whether Hydra or our own check refused it."""
    parent, dot, key = path.rpartition(".")
    near = closest(key, siblings)
    return f"{path} (did you mean {parent}{dot}{near}?)" if near else path

"""How every command answers bad input: one line, exit 2."""

from __future__ import annotations

import sys
from typing import NoReturn


def exit_with_error(message: str) -> NoReturn:
    """Exit 2 with one `error: ...` line on stderr: every entrypoint's answer to bad input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a store's may run over many), or its type."""
    return " ".join(str(err).split()) or type(err).__name__

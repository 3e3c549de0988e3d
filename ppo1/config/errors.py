"""DOCERR"""

from __future__ import annotations


class ConfigError(ValueError):
    """A composed config that type-checks but cannot be trained; one message lists every problem."""


def raise_if(problems: list[tuple[bool, str]]) -> None:
    failed = [message for bad, message in problems if bad]
    if failed:
        raise ConfigError("; ".join(failed))

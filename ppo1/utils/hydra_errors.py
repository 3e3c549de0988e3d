"""Hydra's refusals of a command line answered as ours are: one `error: ...` line, exit 2.

Hydra reports a bad override (a key the schema lacks, a value of the wrong type, a missing
group option, a syntax error) through `hydra._internal.utils.run_and_report`: lines of advice,
a hint at HYDRA_FULL_ERROR, exit 1. `one_line_errors` wraps a `hydra.main` entrypoint so that
these read like our own checks' (ppo1.utils.cli), with the nearest valid choice. With
HYDRA_FULL_ERROR=1 Hydra reports them in full, as it always did.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from enum import Enum
from typing import Any, TypeVar

import hydra._internal.utils as hydra_utils
from hydra.errors import CompactHydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from ppo1.utils.cli import UNKNOWN_KEYS, closest, exit_with_error, one_line, unknown_key

T = TypeVar("T")


def override_text(value: Any) -> str:
    """A config value as an override spells it: true, null, [64, 64], 0.2."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def bad_value(cause: OmegaConfBaseException, parent: DictConfig) -> str:
    """`algo.clip: Value 'abc' ... could not be converted to Float; e.g. algo.clip=0.2`: the
    key, OmegaConf's reason, and the enum member nearest the typo or the value it replaced."""
    key, full_key = str(cause.key), str(cause.full_key)
    problem = str(cause.msg).splitlines()[0].rstrip(".")
    if not isinstance(cause, ValidationError):  # e.g. a deletion (~algo.clip): no value helps
        return f"{full_key}: {problem}"
    try:
        current = parent[key]  # the override failed: the node still holds a valid value
    except OmegaConfBaseException:  # an interpolation or a missing value: no example then
        current = None
    hint = ""
    if isinstance(current, Enum):
        typed = re.search(r"'([^']*)'", problem)  # "Invalid value 'asinc', expected one of ..."
        near = closest(typed.group(1), type(current).__members__) if typed else None
        hint = f"did you mean {full_key}={near}?" if near else ""
    elif current is not None and not isinstance(current, DictConfig):
        plain = OmegaConf.to_container(current) if isinstance(current, ListConfig) else current
        hint = f"e.g. {full_key}={override_text(plain)}"
    return f"{full_key}: {problem}" + (f"; {hint}" if hint else "")


def describe(err: CompactHydraException) -> str:
    """The one line for a Hydra refusal: the key, what is wrong, the nearest valid choice."""
    cause = err.__cause__
    if isinstance(err, OverrideParseException):
        # Hydra's message: "Error parsing override 'X'", the parser's complaint, a link.
        lines = err.message.splitlines()
        why = lines[1] if len(lines) > 1 else lines[0]
        return (
            f"cannot parse override {err.override!r}: {why}; "
            "an override reads KEY=VALUE, +KEY=VALUE (a new key) or ~KEY (remove it)"
        )
    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        near = closest(option, err.options)
        hint = f"did you mean {group}={near}? " if near else ""
        return (
            f"invalid config: {group}={option}: no such option; "
            f"{hint}{group} is one of {', '.join(err.options)}"
        )
    if isinstance(cause, OmegaConfBaseException) and isinstance(cause.parent_node, DictConfig):
        parent, full_key = cause.parent_node, str(cause.full_key)
        if isinstance(cause, ConfigAttributeError | ConfigKeyError) and cause.key not in parent:
            hydras = full_key.startswith("hydra.")
            where = "unknown key(s) of Hydra's own config" if hydras else UNKNOWN_KEYS
            return f"invalid config: {where}: {unknown_key(full_key, map(str, parent))}"
        return f"invalid config: {bad_value(cause, parent)}"
    return f"invalid config: {one_line(err)}"


def briefly(func: Callable[[], T]) -> T:
    """`func()`, a Hydra refusal of the command line ending the process with one line, exit 2."""
    try:
        return func()
    except CompactHydraException as err:  # Hydra's errors that need no traceback: bad input
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # Hydra's own test (_is_env_set)
            raise
        exit_with_error(describe(err))


def one_line_errors(entry: Callable[..., T]) -> Callable[..., T]:
    """A `hydra.main` entrypoint whose bad command lines get one line and exit 2.

    Hydra's `_run_hydra` runs composition (for a run, a multirun, --cfg, completion) inside
    `run_and_report`, which prints and exits before an exception could reach us: for the
    entrypoint's duration that function runs its work through `briefly` first. Refusals
    outside it (composing the config `--help` shows) reach `briefly` around the entrypoint.
    """

    @functools.wraps(entry)
    def run(*args: Any, **kwargs: Any) -> T:
        report = hydra_utils.run_and_report

        def report_briefly(func: Callable[[], Any]) -> Any:
            return report(lambda: briefly(func))

        setattr(hydra_utils, "run_and_report", report_briefly)  # noqa: B010 (mypy: a function)
        try:
            return briefly(lambda: entry(*args, **kwargs))
        finally:
            setattr(hydra_utils, "run_and_report", report)  # noqa: B010

    return run

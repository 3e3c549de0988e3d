"""Search spaces written in Hydra's sweep syntax, as Optuna distributions, and back to overrides.

`choice(a, b)` is categorical; `range(a, b, s)` is Python's range (b excluded, as in Hydra's
basic sweeper); `interval(a, b)` is continuous, `int(interval(a, b))` integer, both inclusive;
`tag(log, ...)` samples on a log scale.
"""

from __future__ import annotations

import math
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import HydraException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from ppo1.config import ConfigError


def _range(key: str, sweep: RangeSweep) -> BaseDistribution:
    assert sweep.start is not None and sweep.stop is not None
    count = math.ceil((sweep.stop - sweep.start) / sweep.step)
    if count < 1:
        raise ConfigError(f"sweep.params.{key}: range({sweep.start}, {sweep.stop}) is empty")
    last = sweep.start + (count - 1) * sweep.step
    if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        return IntDistribution(int(sweep.start), int(last), step=int(sweep.step))
    return FloatDistribution(float(sweep.start), float(last), step=float(sweep.step))


def _interval(sweep: IntervalSweep) -> BaseDistribution:
    assert sweep.start is not None and sweep.end is not None
    log = "log" in sweep.tags
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return IntDistribution(sweep.start, sweep.end, log=log)
    return FloatDistribution(float(sweep.start), float(sweep.end), log=log)


def distribution(key: str, spec: str) -> BaseDistribution:
    """One search dimension from its Hydra sweep syntax, e.g. `tag(log, interval(1e-4, 1e-2))`."""
    try:
        value = OverridesParser.create().parse_override(f"{key}={spec}").value()
    except HydraException as err:
        raise ConfigError(f"sweep.params.{key}: cannot parse {spec!r}: {err}") from err
    try:
        if isinstance(value, ChoiceSweep):
            return CategoricalDistribution(value.list)  # type: ignore[arg-type]
        if isinstance(value, RangeSweep):
            return _range(key, value)
        if isinstance(value, IntervalSweep):
            return _interval(value)
    except ValueError as err:  # Optuna's own checks: low > high, log with low <= 0, ...
        raise ConfigError(f"sweep.params.{key}: {spec!r}: {err}") from err
    raise ConfigError(
        f"sweep.params.{key}: {spec!r} is not a sweep; use choice(...), range(...) or interval(...)"
    )


def search_space(params: dict[str, str]) -> dict[str, BaseDistribution]:
    return {key: distribution(key, spec) for key, spec in params.items()}


def _ends(dist: BaseDistribution) -> tuple[Any, Any]:
    if isinstance(dist, CategoricalDistribution):
        return dist.choices[0], dist.choices[-1]
    assert isinstance(dist, FloatDistribution | IntDistribution)
    return dist.low, dist.high


def end_points(space: dict[str, BaseDistribution]) -> list[dict[str, Any]]:
    """Two points of the space: every key at its first value, then every key at its last."""
    ends = {key: _ends(dist) for key, dist in space.items()}
    return [{key: end[i] for key, end in ends.items()} for i in (0, 1)]


def format_value(value: Any) -> str:
    """A sampled value as Hydra override syntax (booleans lower-case, floats round-trip)."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


def overrides(params: dict[str, Any]) -> list[str]:
    """A trial's params as command-line overrides: {'algo.lr': 0.001} -> ['algo.lr=0.001']."""
    return [f"{key}={format_value(value)}" for key, value in params.items()]

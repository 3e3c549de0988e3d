"""From composed Hydra config to the typed TrainConfig: registration, unknown and non-finite
keys refused with the nearest valid key, and the plain-dict form runs and checkpoints keep."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from ppo1.config.errors import ConfigError, raise_if
from ppo1.config.schema import TrainConfig
from ppo1.utils.cli import UNKNOWN_KEYS, exit_with_error, unknown_key

# conf/ by absolute path: Hydra resolves a relative config_path against the module's package
# when the entrypoint is imported (a console script) rather than run as a file, and conf/ is no
# package.
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register_configs() -> None:
    """Register the schemas so Hydra type-checks `conf/` and every command-line override."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@dataclass
class _Leaf:
    path: str  # the dotted key, as typed on the command line
    value: Any
    siblings: list[str]  # the schema's field names beside it
    known: bool


def _leaves(node: DictConfig, prefix: str = "") -> Iterator[_Leaf]:
    """Every leaf under a node typed by a schema dataclass, nested dataclasses walked into;
    free-form dict fields (sweep.params) count as leaves."""
    schema = OmegaConf.get_type(node)
    assert schema is not None and is_dataclass(schema)
    names = [f.name for f in fields(schema)]
    for key in map(str, node):
        path = f"{prefix}{key}"
        if key not in names:
            yield _Leaf(path, None, names, known=False)
        elif is_dataclass(OmegaConf.get_type(node, key)):
            yield from _leaves(node[key], f"{path}.")
        else:
            yield _Leaf(path, node[key], names, known=True)


def schema_problems(cfg: DictConfig) -> list[tuple[bool, str]]:
    """Keys the schema lacks and non-finite floats, both of which `to_object` lets through.

    Hydra refuses `algo.cilp=0.5` but appends `+algo.cilp=0.5` (as its own error suggests),
    and `OmegaConf.to_object` sets such a key as a stray attribute that training never reads.
    NaN passes the range checks in `__post_init__` (`nan < 0` is False), so every float field
    is checked for finiteness here, before them.
    """
    leaves = list(_leaves(cfg))
    unknown = [unknown_key(leaf.path, leaf.siblings) for leaf in leaves if not leaf.known]
    non_finite = [
        f"{leaf.path}={leaf.value}"
        for leaf in leaves
        if isinstance(leaf.value, float) and not math.isfinite(leaf.value)
    ]
    return [
        (
            bool(unknown),
            f"{UNKNOWN_KEYS}: {', '.join(unknown)}",
        ),
        (bool(non_finite), f"{', '.join(non_finite)}: settings must be finite numbers"),
    ]


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Turn a composed DictConfig into the typed config, refusing keys outside the schema and
    non-finite numbers, then running every `__post_init__` check."""
    raise_if(schema_problems(cfg))
    train_cfg = OmegaConf.to_object(cfg)
    assert isinstance(train_cfg, TrainConfig)
    return train_cfg


def to_train_config_or_exit(cfg: DictConfig) -> TrainConfig:
    """`to_train_config` for command-line entrypoints: a ConfigError exits 2 with one message."""
    try:
        return to_train_config(cfg)
    except ConfigError as err:
        exit_with_error(f"invalid config: {err}")


# Settings (dotted-key prefixes) that do not change what a run learns: runs differing only in
# them are seeds of one configuration (compare), and a sweep may resume with other values.
NOT_LEARNING = (
    "seed",
    "tracking.",
    "verbose",
    "log_every",
    "save_model",
    "torch_threads",
    "checkpoint_every",
    "checkpoint_dir",
    "resume",
    # Both backends take the same update to float precision (tests/test_backends.py).
    "algo.backend",
)


def to_plain_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers (enums as their names), e.g. for
    checkpoints and a run's params: what `OmegaConf.to_container(OmegaConf.structured(cfg),
    enum_to_str=True)` gives (tests/test_config.py), without building OmegaConf's tree of the
    config (~10 ms, several times per sweep trial)."""
    plain = _plain(cfg)
    assert isinstance(plain, dict)
    return plain


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value

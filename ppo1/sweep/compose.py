"""Each trial's config from one composition: Hydra's config loader, composing a sweep's fixed
overrides once per process and setting each trial's sampled values on a copy.

Hydra's launchers compose every job's config from scratch: the defaults list, every YAML file,
the structured schema (~60 ms a job, more than the first updates of a pruned trial). A sweep's
jobs differ only in what its sampler drew and their trial number, plain `key=value` overrides of
keys the fixed config has. Those are set on a copy of the config composed once, by the function
Hydra itself applies command-line values with; any other (a config group's choice, `+key`,
`~key`, a key the config lacks, a whole node) goes to Hydra's composition, whose answer, or
error, the job gets. tests/test_compose.py holds the two equal.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Collection
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.config_loader import ConfigLoader
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.plugins.config_source import ConfigSource
from hydra.types import RunMode
from omegaconf import Container, DictConfig, OmegaConf

# This process's one composition: (sweep, fixed overrides, cwd) -> its config. A job arrives
# in a launcher's worker as a pickled copy of the loader, so the cache cannot live on it.
_composed: dict[tuple[str, tuple[str, ...], str], DictConfig] = {}
_ABSENT = object()


class ComposeOnce(ConfigLoader):
    """`loader`, except that a sweep job's config is the fixed overrides' composition with the
    trailing overrides of `varying` keys set on a copy (see the module's docstring).

    `sweep` names the sweep whose composition a process may reuse: a new sweep (or another
    sweep's config) composes afresh."""

    def __init__(self, loader: ConfigLoader, sweep: str, varying: Collection[str] = ()) -> None:
        self.loader = loader
        self.sweep = sweep
        self.varying = frozenset(varying)

    def load_sweep_config(
        self, master_config: DictConfig, sweep_overrides: list[str]
    ) -> DictConfig:
        n = len(sweep_overrides)
        while n > 0 and _key(sweep_overrides[n - 1]) in self.varying:
            n -= 1
        fixed, values = sweep_overrides[:n], sweep_overrides[n:]
        if not values:
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        key = (self.sweep, tuple(fixed), os.getcwd())
        if key not in _composed:
            _composed.clear()
            _composed[key] = self.loader.load_sweep_config(master_config, fixed)
        cfg = copy.deepcopy(_composed[key])
        parser = OverridesParser.create()
        parsed = parser.parse_overrides(values)
        if not all(_plain_value(o, cfg) for o in parsed):
            return self.loader.load_sweep_config(master_config, sweep_overrides)
        ConfigLoaderImpl._apply_overrides_to_config(parsed, cfg)
        # What Hydra records of a job's overrides, as its own composition would.
        cfg.hydra.overrides.task.extend(values)
        job = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=parser.parse_overrides(list(cfg.hydra.overrides.task)),
            kv_sep=job.kv_sep,
            item_sep=job.item_sep,
            exclude_keys=job.exclude_keys,
        )
        OmegaConf.copy_cache(from_config=master_config, to_config=cfg)
        return cfg

    def load_configuration(
        self,
        config_name: str | None,
        overrides: list[str],
        run_mode: RunMode,
        from_shell: bool = True,
        validate_sweep_overrides: bool = True,
    ) -> DictConfig:
        return self.loader.load_configuration(
            config_name, overrides, run_mode, from_shell, validate_sweep_overrides
        )

    def get_search_path(self) -> ConfigSearchPath:
        return self.loader.get_search_path()

    def get_sources(self) -> list[ConfigSource]:
        return self.loader.get_sources()

    def list_groups(self, parent_name: str) -> list[str]:
        return self.loader.list_groups(parent_name)

    def get_group_options(
        self,
        group_name: str,
        results_filter: ObjectType | None = ObjectType.CONFIG,
        config_name: str | None = None,
        overrides: list[str] | None = None,
    ) -> list[str]:
        return self.loader.get_group_options(group_name, results_filter, config_name, overrides)

    def compute_defaults_list(
        self, config_name: str | None, overrides: list[str], run_mode: RunMode
    ) -> Any:
        return self.loader.compute_defaults_list(config_name, overrides, run_mode)


def _key(line: str) -> str:
    """An override's key as written (`algo.clip` of `algo.clip=0.2`), without parsing it."""
    return line.split("=", 1)[0]


def _plain_value(override: Override, cfg: DictConfig) -> bool:
    """A new value for a leaf the config has, as Hydra would set it after composing."""
    key = override.key_or_group
    if (
        override.type != OverrideType.CHANGE
        or override.package is not None
        or override.value_type != ValueType.ELEMENT
        or override.is_hydra_override()
        or key in cfg.hydra.runtime.choices  # a config group: its choice changes the defaults
    ):
        return False
    node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    return node is not _ABSENT and not isinstance(node, Container)

"""A sweep job's config from one composition (ppo1.sweep.compose) is Hydra's own, in every case."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from hydra import initialize_config_dir
from hydra.core.config_loader import ConfigLoader
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.errors import ConfigCompositionException
from hydra.plugins.launcher import Launcher
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ppo1.config import CONF_DIR, register_configs
from ppo1.sweep.compose import ComposeOnce
from ppo1.sweep.hydra_state import keep_plugins

# As the sweeper launches a trial: the command line's plain overrides, then what it sets.
FIXED = ["sweep=clip_epochs_lr", "algo.ent_coef=0.01", "total_timesteps=4096"]
VARYING = ["algo.clip", "algo.epochs", "algo.lr", "sweep.trial"]


@pytest.fixture
def hydra_loader() -> Iterator[tuple[ConfigLoader, DictConfig]]:
    """Hydra's config loader on conf/, and a multirun's master config."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        yield loader, loader.load_configuration("train", FIXED, RunMode.MULTIRUN)


def trial(number: int, clip: float, epochs: int, lr: float) -> list[str]:
    return [*FIXED, f"algo.clip={clip}", f"algo.epochs={epochs}", f"algo.lr={lr}",
            f"sweep.trial={number}"]  # fmt: skip


def same(ours: DictConfig, hydras: DictConfig) -> None:
    """Equal as a whole, `hydra` included (its overrides, override_dirname, runtime), and the
    trial's values typed as Hydra types them."""
    assert OmegaConf.to_yaml(ours) == OmegaConf.to_yaml(hydras)
    assert OmegaConf.to_container(ours) == OmegaConf.to_container(hydras)
    assert OmegaConf.is_struct(ours) and OmegaConf.is_struct(hydras)


def test_trials_get_hydras_config_from_one_composition(
    hydra_loader: tuple[ConfigLoader, DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    loader, master = hydra_loader
    composed: list[list[str]] = []
    compose = loader.load_sweep_config

    def counted(master_config: DictConfig, overrides: list[str]) -> DictConfig:
        composed.append(list(overrides))
        return compose(master_config, overrides)

    ours = ComposeOnce(loader, "sweep-a", VARYING)
    trials = [trial(0, 0.123, 7, 0.00031), trial(1, 0.3, 30, 0.01), trial(2, 0.05, 1, 1e-4)]
    with monkeypatch.context() as patch:
        patch.setattr(loader, "load_sweep_config", counted)
        configs = [ours.load_sweep_config(master, job) for job in trials]
    assert composed == [FIXED]  # the fixed overrides, once, for every trial
    for cfg, job in zip(configs, trials, strict=True):
        same(cfg, loader.load_sweep_config(master, job))
    # Each trial has a copy: the third trial's values did not reach the first's config.
    assert (configs[0].algo.clip, configs[0].algo.epochs, configs[0].sweep.trial) == (0.123, 7, 0)
    assert isinstance(configs[0].algo.epochs, int) and isinstance(configs[0].algo.lr, float)
    assert configs[2].hydra.job.override_dirname.startswith("algo.clip=0.05,algo.ent_coef=0.01")


@pytest.mark.parametrize(
    "value",
    [
        "schedule=cosine",  # a config group's choice: the defaults list changes
        "+algo.extra=1",  # adds a key
        "algo.clip=choice(0.1,0.2)",  # a sweep, not a value
        "sweep.params={}",  # a whole node
    ],
)
def test_what_is_not_a_plain_value_is_composed_by_hydra(
    hydra_loader: tuple[ConfigLoader, DictConfig], value: str
) -> None:
    loader, master = hydra_loader
    key = value.split("=", 1)[0]
    ours = ComposeOnce(loader, "sweep-b", [*VARYING, key])
    job = [*trial(3, 0.2, 4, 0.001), value]
    if value.startswith("algo.clip=choice"):  # Hydra refuses a sweep in a job's overrides
        with pytest.raises(ConfigCompositionException) as theirs:
            loader.load_sweep_config(master, job)
        with pytest.raises(ConfigCompositionException) as mine:
            ours.load_sweep_config(master, job)
        assert str(mine.value) == str(theirs.value)
        return
    same(ours.load_sweep_config(master, job), loader.load_sweep_config(master, job))


@pytest.mark.parametrize("value", ["algo.clip=abc", "algo.no_such_key=1", "algo.epochs=2.5"])
def test_a_bad_value_gets_hydras_error(
    hydra_loader: tuple[ConfigLoader, DictConfig], value: str
) -> None:
    loader, master = hydra_loader
    ours = ComposeOnce(loader, "sweep-c", [*VARYING, value.split("=", 1)[0]])
    job = [*FIXED, value]
    errors: list[str] = []
    attempts: list[Callable[[DictConfig, list[str]], DictConfig]] = [
        loader.load_sweep_config,
        ours.load_sweep_config,
    ]
    for load in attempts:
        with pytest.raises(ConfigCompositionException) as err:
            load(master, job)
        errors.append(str(err.value))
    assert errors[0] == errors[1] and value in errors[0]


def test_another_sweep_composes_afresh(hydra_loader: tuple[ConfigLoader, DictConfig]) -> None:
    """A process may run several sweeps (the basic launcher runs jobs in the sweep's process;
    tests run many): the same overrides of another sweep's master config are not reused."""
    loader, master = hydra_loader
    job = trial(0, 0.1, 3, 1e-3)
    first = ComposeOnce(loader, "sweep-d", VARYING).load_sweep_config(master, job)
    hydra = ["hydra.job.config.override_dirname.item_sep=_"]
    other = loader.load_configuration("train", [*FIXED, *hydra], RunMode.MULTIRUN)
    second = ComposeOnce(loader, "sweep-e", VARYING).load_sweep_config(other, job)
    same(second, loader.load_sweep_config(other, job))
    assert "_algo.ent_coef=0.01_" in second.hydra.job.override_dirname
    assert "," in first.hydra.job.override_dirname


def test_a_jobs_hydra_state_keeps_the_plugins_this_process_found() -> None:
    """Hydra's launchers restore their global state for every job, which leaves the plugins
    out and so scanned them anew each job; keep_plugins keeps the ones found."""
    restore = Singleton.__dict__["set_state"]
    found = Plugins.instance()
    try:
        Singleton.set_state(Singleton.get_state())
        assert Plugins.instance() is not found, "Hydra's own restore scans the plugins again"
        found = Plugins.instance()
        keep_plugins()
        state = Singleton.get_state()
        assert Plugins not in state["instances"]
        Singleton.set_state(state)
        assert Plugins.instance() is found
        launchers = {c.__name__ for c in Plugins.instance().discover(Launcher)}
        assert {"BasicLauncher", "JoblibLauncher", "LocalLauncher"} <= launchers
    finally:
        Singleton.set_state = restore  # type: ignore[method-assign]

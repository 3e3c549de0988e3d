"""Every shipped config composes; bad input fails before training with a readable message."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
from hydra.errors import ConfigCompositionException, HydraException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from ppo1.config import CONF_DIR, ConfigError, TrainConfig, to_plain_dict

from .conftest import one_error_line, run_module

Compose = Callable[[list[str]], TrainConfig]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    ("env", "algo", "schedule"),
    list(itertools.product(options("env"), options("algo"), options("schedule"))),
)
def test_every_combination_composes(
    compose_cfg: Compose, env: str, algo: str, schedule: str
) -> None:
    cfg = compose_cfg([f"env={env}", f"algo={algo}", f"schedule={schedule}"])
    assert cfg.schedule.kind.value == schedule
    assert cfg.algo.minibatch_size <= cfg.batch_size
    same_plain_dict(cfg)


def same_plain_dict(cfg: TrainConfig) -> None:
    """to_plain_dict is OmegaConf's plain form of the config, types and order included."""
    theirs = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    assert repr(to_plain_dict(cfg)) == repr(theirs)


@pytest.mark.parametrize("sweep", options("sweep"))
def test_a_sweeps_plain_dict_is_omegaconfs(compose_cfg: Compose, sweep: str) -> None:
    cfg = compose_cfg([f"sweep={sweep}", "sweep.trial=3", "checkpoint_every=2"])
    same_plain_dict(cfg)
    assert to_plain_dict(cfg)["sweep"]["kl"]["metric"] == "kl"  # an enum, by name


def test_overrides_reach_the_typed_config(compose_cfg: Compose) -> None:
    cfg = compose_cfg(
        ["algo.clip=0.1", "env=acrobot", "schedule=linear", "seed=3", "total_timesteps=50000"]
    )
    assert (cfg.algo.clip, cfg.env.id, cfg.seed, cfg.total_timesteps) == (
        0.1,
        "Acrobot-v1",
        3,
        50000,
    )


def test_sb_ppo1_has_the_stable_baselines_defaults(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["algo=sb_ppo1"])
    a = cfg.algo
    assert (a.gamma, a.n_steps, a.clip, a.ent_coef, a.epochs, a.lr, a.minibatch_size) == (
        0.99,
        256,
        0.2,
        0.01,
        4,
        1e-3,
        64,
    )
    assert (a.gae_lambda, a.adam_eps, cfg.schedule.kind.value, cfg.schedule.end) == (
        0.95,
        1e-5,
        "linear",
        0.0,
    )
    # Semantics: clip annealed, vf coefficient 1 (no 1/2 in value_loss), nothing clipped,
    # per-batch advantage normalisation, partial minibatch dropped, time limits terminal.
    assert a.anneal_clip and a.vf_coef == 1.0
    assert a.clip_vf is None and a.max_grad_norm is None and a.target_kl is None
    assert a.adv_norm.value == "per_env" and a.adv_norm_eps == 0.0 and a.minibatch_per_env
    assert a.drop_last and not a.bootstrap_truncation
    assert (a.net.pi_gain, a.net.v_gain) == (0.01, 1.0) and a.adam_eps_uncorrected
    assert not a.net.shared and a.net.hidden == [64, 64] and a.net.activation.value == "tanh"
    assert cfg.env.num_envs == 1


def test_notebook_preset(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["algo=notebook"])
    a = cfg.algo
    assert (cfg.env.num_envs, a.n_steps, a.epochs, a.minibatch_size, a.lr) == (1, 512, 4, 128, 3e-4)
    assert (a.clip, a.vf_coef, a.ent_coef, a.max_grad_norm, cfg.seed) == (0.2, 0.5, 0.0, 0.5, 7)
    assert cfg.num_updates == 40 and cfg.schedule.kind.value == "constant"
    assert (a.adam_eps, a.adv_norm.value, a.adv_norm_eps) == (1e-5, "batch", 1e-8)
    assert not a.bootstrap_truncation and not a.anneal_clip and not a.drop_last
    assert a.net.shared and (a.net.pi_gain, a.net.v_gain) == (0.01, math.sqrt(2))
    assert cfg.env.vectorization.name == "sync" and not cfg.env.normalize_obs


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.clip=0", "algo.clip must be > 0"),
        ("algo.clip=-0.1", "algo.clip must be > 0"),
        ("algo.lr=-1", "algo.lr must be > 0"),
        ("algo.epochs=0", "algo.epochs must be >= 1"),
        ("algo.minibatch_size=1000", "algo.minibatch_size=1000 is larger than the batch"),
        (
            "algo.minibatch_per_env=true",  # 256 of each env's 32 steps
            "algo.minibatch_size=256 is larger than an env's segment algo.n_steps=32",
        ),
        ("algo.adv_norm_eps=-1e-8", "algo.adv_norm_eps must be >= 0"),
        ("env.id=CartPol-v1", "did you mean one of ['CartPole-v1'"),
        ("algo.gamma=1.5", "algo.gamma must be in (0, 1]"),
        ("env.num_envs=0", "env.num_envs must be >= 1"),
        ("seed=-1", "seed must be >= 0, got -1"),
        ("log_every=-1", "log_every must be >= 0, got -1"),
        ("tracking.experiment=", "tracking.experiment must not be empty"),
        # Hydra appends keys given with + or ++ (it even suggests +algo.cilp for algo.cilp).
        (
            "+algo.cilp=0.5",
            "not in the schema (ppo1/config/schema.py): algo.cilp (did you mean algo.clip?)",
        ),
        ("++algo.cilp=0.5", "algo.cilp (did you mean algo.clip?)"),
        ("+cilp=0.5", "not in the schema (ppo1/config/schema.py): cilp"),
        ("+algo.net.hiden=[8]", "algo.net.hiden (did you mean algo.net.hidden?)"),
        ("algo.ent_coef=nan", "algo.ent_coef=nan: settings must be finite"),
        ("algo.lr=inf", "algo.lr=inf: settings must be finite"),
        ("env.clip_obs=nan", "env.clip_obs=nan: settings must be finite"),
        ("algo.max_grad_norm=-inf", "algo.max_grad_norm=-inf: settings must be finite"),
    ],
)
def test_invalid_values_are_rejected(compose_cfg: Compose, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        compose_cfg([override])
    assert message in str(err.value)


def test_every_non_finite_setting_is_named_in_one_message(compose_cfg: Compose) -> None:
    with pytest.raises(ConfigError) as err:
        compose_cfg(["algo.vf_coef=nan", "algo.net.log_std_init=inf", "+algo.foo=1"])
    assert str(err.value) == (
        "unknown key(s), not in the schema (ppo1/config/schema.py): algo.foo; "
        "algo.vf_coef=nan, algo.net.log_std_init=inf: settings must be finite numbers"
    )


def test_sweep_and_free_form_dicts_are_in_the_schema(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["sweep=clip_epochs_lr", "sweep.trial=0", "+sweep.sampler.multivariate=true"])
    assert cfg.sweep is not None and cfg.sweep.trial == 0
    assert cfg.sweep.sampler["multivariate"] is True and "algo.clip" in cfg.sweep.params


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.clip=abc", "could not be converted to Float"),
        ("algo.foo=1", "Key 'foo' not in 'AlgoConfig'"),
        ("algo.adv_norm=bogus", "expected one of [batch, per_env, minibatch, none]"),
    ],
)
def test_bad_types_and_unknown_keys_fail_composition(
    compose_cfg: Compose, override: str, message: str
) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError, HydraException)) as err:
        compose_cfg([override])
    text = f"{err.value} {err.value.__cause__}"
    assert message in text


def test_unknown_group_option_lists_the_choices(compose_cfg: Compose) -> None:
    with pytest.raises(HydraException) as err:
        compose_cfg(["env=foo"])
    assert "Could not find 'env/foo'" in str(err.value) and "cartpole" in str(err.value)


# Hydra's refusals and ours alike: one line naming the key, what is wrong, what would do.
UNKNOWN = "error: invalid config: unknown key(s), not in the schema (ppo1/config/schema.py): "
BAD_INPUT = [
    (["algo.clip=0"], "error: invalid config: algo.clip must be > 0, got 0.0"),
    (["algo.cilp=0.5"], f"{UNKNOWN}algo.cilp (did you mean algo.clip?)"),
    (["+algo.cilp=0.5"], f"{UNKNOWN}algo.cilp (did you mean algo.clip?)"),
    (["algo.net.hiden=[8]"], f"{UNKNOWN}algo.net.hiden (did you mean algo.net.hidden?)"),
    (
        ["algo.clip=abc"],
        "error: invalid config: algo.clip: Value 'abc' of type 'str' could not be converted "
        "to Float; e.g. algo.clip=0.2",
    ),
    (
        ["env.vectorization=asinc"],
        "error: invalid config: env.vectorization: Invalid value 'asinc', expected one of "
        "[auto, sync, async]; did you mean env.vectorization=async?",
    ),
    (
        ["env=cartpol"],
        "error: invalid config: env=cartpol: no such option; did you mean env=cartpole? env is "
        "one of acrobot, cartpole, halfcheetah, hopper, lunarlander, mountaincar_continuous, "
        "pendulum, walker2d",
    ),
    (
        ["algo=nope"],
        "error: invalid config: algo=nope: no such option; algo is one of notebook, ppo_clip, "
        "ppo_fast, sb_ppo1",
    ),
    (
        ["algo.clip=0.1)"],
        "error: cannot parse override 'algo.clip=0.1)': extraneous input ')' expecting <EOF>; "
        "an override reads KEY=VALUE, +KEY=VALUE (a new key) or ~KEY (remove it)",
    ),
    (["algo.ent_coef=nan"], "error: invalid config: algo.ent_coef=nan: settings must be finite"),
    # A sweep, composed by Hydra's multirun, and the command reporting on one.
    (["-m", "sweep=nope"], "error: invalid config: sweep=nope: no such option; sweep is one of"),
    (["-m", "sweep=clip_epochs_lr", "algo.cilp=1"], f"{UNKNOWN}algo.cilp (did you mean algo."),
    (["--cfg", "job", "seed=1.5"], "error: invalid config: seed: Value '1.5' of type 'float'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=lambda a: " ".join(a))
def test_bad_input_gets_one_line_and_exit_2_before_training(args: list[str], message: str) -> None:
    proc = run_module("ppo1.train", *args, "tracking.enabled=false")
    assert one_error_line(proc).startswith(message)
    assert "update" not in proc.stdout  # no training step ran


def test_sweep_report_answers_bad_input_as_train_does() -> None:
    proc = run_module("ppo1.sweep_report", "sweep=clip_epochs_lr", "algo.cilp=1")
    assert one_error_line(proc) == f"{UNKNOWN}algo.cilp (did you mean algo.clip?)"


def test_hydra_full_error_still_shows_hydras_report() -> None:
    proc = run_module("ppo1.train", "algo.cilp=0.5", env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ConfigCompositionException" in proc.stderr


def test_help_config_and_completion_still_answer() -> None:
    shown = run_module("ppo1.train", "--cfg", "job", "algo.clip=0.3")
    assert shown.returncode == 0 and "clip: 0.3" in shown.stdout, shown.stderr
    line = "ppo1-train env=cart"  # Hydra strips a console script's name, not `python -m`
    completed = run_module(
        "ppo1.train", "-sc", "query=bash", env={"COMP_LINE": line, "COMP_POINT": str(len(line))}
    )
    assert completed.returncode == 0 and completed.stdout.split() == ["env=cartpole"]


def test_an_env_choice_brings_its_tuned_preset(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["env=pendulum"])
    a = cfg.algo
    # RL Zoo's Pendulum-v1 settings (conf/env/pendulum.yaml), not the CartPole ones.
    assert (cfg.env.num_envs, a.n_steps, a.gamma, a.gae_lambda, a.epochs, a.minibatch_size) == (
        4,
        1024,
        0.9,
        0.95,
        10,
        64,
    )
    assert (a.lr, a.anneal_clip, cfg.schedule.kind.value) == (1e-3, False, "constant")
    assert (cfg.total_timesteps, cfg.eval.every) == (100_000, 5)
    hopper = compose_cfg(["env=hopper"])
    assert hopper.env.normalize_obs and hopper.env.normalize_reward
    assert hopper.algo.net.hidden == [64, 64] and hopper.algo.net.activation.value == "tanh"
    assert (hopper.algo.n_steps, hopper.algo.clip_vf, hopper.schedule.kind.value) == (
        2048,
        0.2,
        "linear",
    )


def test_the_command_line_overrides_the_preset(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["env=pendulum", "algo.lr=3e-4", "schedule=linear", "total_timesteps=5000"])
    assert (cfg.algo.lr, cfg.schedule.kind.value, cfg.total_timesteps) == (3e-4, "linear", 5000)
    assert cfg.algo.n_steps == 1024  # the rest of the preset stays


def test_sb_ppo1_replaces_the_presets_hyperparameters_but_keeps_its_env_and_budget(
    compose_cfg: Compose,
) -> None:
    cfg = compose_cfg(["algo=sb_ppo1", "env=pendulum"])
    assert (cfg.algo.n_steps, cfg.algo.gamma, cfg.schedule.kind.value) == (256, 0.99, "linear")
    assert (cfg.env.id, cfg.total_timesteps, cfg.eval.every) == ("Pendulum-v1", 100_000, 5)


@pytest.mark.parametrize("env", options("env"))
def test_every_preset_says_where_its_settings_come_from(env: str) -> None:
    text = (CONF_DIR / "env" / f"{env}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    # RL Zoo's tuned settings, or CleanRL's MuJoCo defaults where those did better; and the
    # published number the results table compares with.
    assert "hyperparams/ppo.yml" in text or "CleanRL's ppo_continuous_action.py" in text
    assert "RL Zoo benchmark: " in text

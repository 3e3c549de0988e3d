"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore.

Hydra validates types and unknown keys against these schemas when it composes `conf/`;
the `__post_init__` checks below catch values that are well-typed but meaningless (clip <= 0,
a minibatch larger than the batch) once `OmegaConf.to_object` builds the typed objects.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import gymnasium as gym
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A composed config that type-checks but cannot be trained; one message lists every problem."""


def _raise_if(problems: list[tuple[bool, str]]) -> None:
    failed = [message for bad, message in problems if bad]
    if failed:
        raise ConfigError("; ".join(failed))


# How `num_envs` copies are stepped: `auto` takes a natively vectorized env if there is one,
# `sync` steps them in a loop in this process, `async` in subprocesses (AsyncVectorEnv).
# Functional syntax because OmegaConf matches overrides to member *names* and `async` is a
# Python keyword: `env.vectorization=async` must find a member called `async`.
Vectorization = Enum("Vectorization", [("auto", "auto"), ("sync", "sync"), ("async", "async")])


class AdvNorm(Enum):
    """Advantage standardisation: per rollout batch (SB PPO1), per minibatch (SB3), or none."""

    batch = "batch"
    minibatch = "minibatch"
    none = "none"


class Activation(Enum):
    tanh = "tanh"
    relu = "relu"
    # No hand-derived backward (networks.ACTIVATION_BACKWARDS): algo.backend=autograd only.
    elu = "elu"


class Backend(Enum):
    """How the update gets its gradients (docs/backends.md): hand-derived, or `backward()`."""

    fast = "fast"  # analytic gradients and FlatAdam (ppo1/core/fast/); refuses what it lacks
    autograd = (
        "autograd"  # loss.backward() and torch.optim.Adam (ppo1/core/update.py); trains any loss
    )


class FiguresMode(Enum):
    """What a run logs of its Plotly diagnostics (see ppo1/report/figure_logger.py)."""

    full = "full"  # dashboard.html (plotly.js inlined once, ~5 MB) + figure JSON + ratio data
    light = "light"  # figure JSON + ratio data (~0.5 MB); `python -m ppo1.dashboard` renders it
    none = "none"


class ScheduleKind(Enum):
    constant = "constant"
    linear = "linear"
    cosine = "cosine"


@dataclass
class EnvConfig:
    id: str = "CartPole-v1"
    num_envs: int = 8
    vectorization: Vectorization = Vectorization.auto
    # None keeps the registered TimeLimit of the env.
    max_episode_steps: int | None = None
    # Feed the policy (obs - running mean) / running std, clipped to +-clip_obs: SB3's
    # VecNormalize for observations. The statistics are saved with the policy.
    normalize_obs: bool = False
    clip_obs: float = 10.0
    # Train on r_t / sqrt(Var[R_t] + 1e-8), clipped to +-clip_reward, where R_t is each env's
    # running discounted return (gamma = algo.gamma): SB3 VecNormalize's reward scaling, which
    # RL Zoo turns on with `normalize: true`. Episode returns and evaluation stay raw.
    normalize_reward: bool = False
    clip_reward: float = 10.0

    def __post_init__(self) -> None:
        _raise_if(
            [
                (self.num_envs < 1, f"env.num_envs must be >= 1, got {self.num_envs}"),
                (self.clip_obs <= 0, f"env.clip_obs must be > 0, got {self.clip_obs}"),
                (self.clip_reward <= 0, f"env.clip_reward must be > 0, got {self.clip_reward}"),
                (
                    self.max_episode_steps is not None and self.max_episode_steps < 1,
                    f"env.max_episode_steps must be >= 1 or null, got {self.max_episode_steps}",
                ),
            ]
        )
        if self.id not in gym.registry:
            close = difflib.get_close_matches(self.id, list(gym.registry), n=5, cutoff=0.5)
            hint = f"did you mean one of {close}?" if close else "see gymnasium.pprint_registry()"
            raise ConfigError(f"env.id {self.id!r} is not a registered Gymnasium env; {hint}")


@dataclass
class NetworkConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: Activation = Activation.tanh
    # Separate policy and value towers (SB PPO1's MlpPolicy) or one shared trunk.
    shared: bool = False
    # Orthogonal init: sqrt(2) hidden, 0.01 policy head, 1.0 value head (Andrychowicz et al. 2021).
    ortho_init: bool = True
    # Initial log std of the diagonal Gaussian policy (continuous actions only).
    log_std_init: float = 0.0

    def __post_init__(self) -> None:
        _raise_if(
            [
                (
                    not self.hidden or min(self.hidden) < 1,
                    f"algo.net.hidden needs positive layer sizes, got {list(self.hidden)}",
                ),
            ]
        )


@dataclass
class AlgoConfig:
    """PPO-Clip hyperparameters; names follow the PPO paper and CleanRL."""

    # Steps each env contributes per rollout (SB: timesteps_per_actorbatch; batch = n_steps x envs).
    n_steps: int = 32
    gamma: float = 0.98
    gae_lambda: float = 0.8
    # epsilon of the clipped surrogate, eq. (7) of Schulman et al. 2017.
    clip: float = 0.2
    # Multiply clip by the schedule too (SB PPO1 does; OpenAI baselines dropped it, issue #710).
    anneal_clip: bool = True
    # Clip the value prediction around the old one by this much (null: no value clipping).
    clip_vf: float | None = None
    ent_coef: float = 0.0
    # Value loss is mean((V - R)^2) without 1/2, as in SB PPO1 and SB3.
    vf_coef: float = 0.5
    # Clip the global gradient norm (null: no clipping).
    max_grad_norm: float | None = 0.5
    epochs: int = 20
    minibatch_size: int = 256
    # Drop the last partial minibatch of an epoch (SB PPO1's Dataset does).
    drop_last: bool = False
    lr: float = 1e-3
    adam_eps: float = 1e-5
    adv_norm: AdvNorm = AdvNorm.minibatch
    # Stop the epochs of an update once approx KL exceeds 1.5 x target_kl (SB3 rule; null: never).
    target_kl: float | None = None
    # On a time-limit truncation, bootstrap from V(final observation) (SB3 #633); off = terminal.
    bootstrap_truncation: bool = True
    backend: Backend = Backend.fast
    net: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        _raise_if(
            [
                (self.n_steps < 1, f"algo.n_steps must be >= 1, got {self.n_steps}"),
                (not 0 < self.gamma <= 1, f"algo.gamma must be in (0, 1], got {self.gamma}"),
                (
                    not 0 <= self.gae_lambda <= 1,
                    f"algo.gae_lambda must be in [0, 1], got {self.gae_lambda}",
                ),
                (not self.clip > 0, f"algo.clip must be > 0, got {self.clip}"),
                (
                    self.clip_vf is not None and not self.clip_vf > 0,
                    f"algo.clip_vf must be > 0 or null, got {self.clip_vf}",
                ),
                (self.ent_coef < 0, f"algo.ent_coef must be >= 0, got {self.ent_coef}"),
                (self.vf_coef < 0, f"algo.vf_coef must be >= 0, got {self.vf_coef}"),
                (
                    self.max_grad_norm is not None and not self.max_grad_norm > 0,
                    f"algo.max_grad_norm must be > 0 or null, got {self.max_grad_norm}",
                ),
                (self.epochs < 1, f"algo.epochs must be >= 1, got {self.epochs}"),
                (
                    self.minibatch_size < 1,
                    f"algo.minibatch_size must be >= 1, got {self.minibatch_size}",
                ),
                (not self.lr > 0, f"algo.lr must be > 0, got {self.lr}"),
                (not self.adam_eps > 0, f"algo.adam_eps must be > 0, got {self.adam_eps}"),
                (
                    self.target_kl is not None and not self.target_kl > 0,
                    f"algo.target_kl must be > 0 or null, got {self.target_kl}",
                ),
            ]
        )


@dataclass
class ScheduleConfig:
    """Multiplier on lr (and clip, with algo.anneal_clip) as a function of training progress."""

    kind: ScheduleKind = ScheduleKind.linear
    # Multiplier reached at the end of training (linear, cosine); SB PPO1's linear ends at 0.
    end: float = 0.0

    def __post_init__(self) -> None:
        _raise_if([(not 0 <= self.end <= 1, f"schedule.end must be in [0, 1], got {self.end}")])


@dataclass
class EvalConfig:
    # Evaluate the deterministic policy every this many updates (and always after the last).
    every: int = 10
    episodes: int = 20
    # Episodes run in parallel (capped at `episodes`): fewer policy calls per evaluation.
    num_envs: int = 20

    def __post_init__(self) -> None:
        _raise_if(
            [
                (self.every < 1, f"eval.every must be >= 1, got {self.every}"),
                (self.episodes < 1, f"eval.episodes must be >= 1, got {self.episodes}"),
                (self.num_envs < 1, f"eval.num_envs must be >= 1, got {self.num_envs}"),
            ]
        )


@dataclass
class TrackingConfig:
    enabled: bool = True
    # null: MLFLOW_TRACKING_URI if set, else the SQLite store under the project's mlruns/.
    uri: str | None = None
    experiment: str = "ppo1"
    run_name: str | None = None
    figures: FiguresMode = FiguresMode.full
    # Also log the figures every this many updates (0: only at the end of the run).
    figures_every: int = 0
    # MLflow writes made by a second process (ppo1.tracking.writer) when the job may use 2+ CPUs;
    # false: by the training process itself, e.g. where every core already runs a job.
    writer_process: bool = True

    def __post_init__(self) -> None:
        _raise_if(
            [
                (
                    self.figures_every < 0,
                    f"tracking.figures_every must be >= 0, got {self.figures_every}",
                ),
                (not self.experiment.strip(), "tracking.experiment must not be empty"),
            ]
        )


class Objective(Enum):
    """What a sweep trial maximises, per seed, then averaged over `sweep.seeds` seeds."""

    final = "final"  # the last evaluation's mean return
    best = "best"  # the best evaluation's mean return
    auc = "auc"  # area under the evaluation curve / steps: the mean return over training


class KLMetric(Enum):
    """The KL the KL pruner watches: exact analytic KL(old||new) or the k3 estimate."""

    kl = "losses/kl"
    approx_kl = "losses/approx_kl"


@dataclass
class KLPrunerConfig:
    """Prune a trial whose update KL exceeds `threshold` for `patience` updates in a row."""

    metric: KLMetric = KLMetric.kl
    threshold: float = 0.1
    patience: int = 3
    # Updates at the start of each seed's training that the rule ignores.
    warmup_updates: int = 2

    def __post_init__(self) -> None:
        _raise_if(
            [
                (not self.threshold > 0, f"sweep.kl.threshold must be > 0, got {self.threshold}"),
                (self.patience < 1, f"sweep.kl.patience must be >= 1, got {self.patience}"),
                (
                    self.warmup_updates < 0,
                    f"sweep.kl.warmup_updates must be >= 0, got {self.warmup_updates}",
                ),
            ]
        )


# A study name names a journal file under mlruns/optuna/ and an MLflow tag value: no folders,
# no `..`, no quotes that would end an MLflow filter's string.
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class SweepConfig:
    """An Optuna study run as a Hydra multirun; filled in by `sweeps/<name>.yaml`."""

    study_name: str = "ppo1"
    # A journal file (any number of processes on one machine) or an RDB URL such as
    # postgresql+psycopg://... (across machines); null: mlruns/optuna/<study_name>.journal.
    storage: str | None = None
    # Total trials of the study: re-running the command resumes up to this many.
    n_trials: int = 20
    # Trials asked per launcher batch (a parallel launcher runs them at once).
    n_jobs: int = 1
    seeds: int = 1
    objective: Objective = Objective.auc
    # Search space: config key -> Hydra sweep syntax, e.g. tag(log, interval(1e-4, 1e-2)).
    params: dict[str, str] = field(default_factory=dict)
    # Built with hydra.utils.instantiate.
    sampler: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0}
    )
    # The conventional pruner on the evaluation returns; null: none.
    pruner: dict[str, Any] | None = None
    # The KL rule, checked before `pruner`; null: no KL pruning.
    kl: KLPrunerConfig | None = None
    # A sweep process writes the time on its running trials every heartbeat_s seconds; a
    # RUNNING trial silent for grace_s (its process was killed, its machine lost) is failed
    # by the next sweep process on the study, which runs its slot again.
    heartbeat_s: float = 30.0
    grace_s: float = 120.0
    # Set by the sweeper for each job it launches: the number of the trial the job runs.
    trial: int | None = None

    def __post_init__(self) -> None:
        _raise_if(
            [
                (
                    not _STUDY_NAME.fullmatch(self.study_name),
                    f"sweep.study_name={self.study_name!r}: use up to 100 letters, digits, "
                    f"'.', '_' and '-', starting with a letter or digit",
                ),
                (self.n_trials < 1, f"sweep.n_trials must be >= 1, got {self.n_trials}"),
                (self.n_jobs < 1, f"sweep.n_jobs must be >= 1, got {self.n_jobs}"),
                (self.seeds < 1, f"sweep.seeds must be >= 1, got {self.seeds}"),
                (self.heartbeat_s <= 0, f"sweep.heartbeat_s must be > 0, got {self.heartbeat_s}"),
                (
                    self.grace_s <= self.heartbeat_s,
                    f"sweep.grace_s={self.grace_s} must be longer than sweep.heartbeat_s="
                    f"{self.heartbeat_s}, or live trials would be failed as stale",
                ),
                (not self.params, "sweep.params is empty: name at least one key to search"),
            ]
        )


@dataclass
class TrainConfig:
    env: EnvConfig = field(default_factory=EnvConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 1
    total_timesteps: int = 100_000
    # One thread is fastest for these small MLPs here, and far steadier than two.
    torch_threads: int = 1
    # Print one progress line per update.
    verbose: bool = True
    save_model: bool = True
    # Write a resumable checkpoint every this many updates (and on Ctrl-C/SIGTERM and at the
    # end); 0: only on Ctrl-C/SIGTERM and at the end. See docs/resume.md.
    checkpoint_every: int = 10
    # Where runs' checkpoint folders go; null: beside the SQLite store (<its dir>/checkpoints),
    # else the project's mlruns/checkpoints; an untracked run writes them only if this is set.
    checkpoint_dir: str | None = None
    # Continue a run: its MLflow run id, or the path of its checkpoint folder or resume.pt.
    resume: str | None = None
    # Set by `sweep=<name>` (an Optuna sweep, run with -m); null for a plain training run.
    sweep: SweepConfig | None = None

    @property
    def batch_size(self) -> int:
        return self.env.num_envs * self.algo.n_steps

    @property
    def num_updates(self) -> int:
        """Whole batches until at least total_timesteps steps, as SB PPO1 and SB3 train
        (`while timesteps_so_far < total_timesteps`): 1000 steps of 256 make 4 updates."""
        return -(-self.total_timesteps // self.batch_size)

    def __post_init__(self) -> None:
        _raise_if(
            [
                (
                    self.total_timesteps < 1,
                    f"total_timesteps must be >= 1, got {self.total_timesteps}",
                ),
                (self.torch_threads < 1, f"torch_threads must be >= 1, got {self.torch_threads}"),
                (
                    self.checkpoint_every < 0,
                    f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
                ),
                # Gymnasium and NumPy seeding take only non-negative integers.
                (self.seed < 0, f"seed must be >= 0, got {self.seed}"),
                (
                    self.algo.minibatch_size > self.batch_size,
                    f"algo.minibatch_size={self.algo.minibatch_size} is larger than the batch "
                    f"env.num_envs x algo.n_steps = {self.env.num_envs} x {self.algo.n_steps} "
                    f"= {self.batch_size}",
                ),
            ]
        )


# conf/ by absolute path: Hydra resolves a relative config_path against the module's package
# when the entrypoint is imported (a console script) rather than run as a file, and conf/ is no
# package.
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


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
    unknown = []
    for leaf in leaves:
        if not leaf.known:
            parent, dot, key = leaf.path.rpartition(".")
            close = difflib.get_close_matches(key, leaf.siblings, n=1)
            unknown.append(
                f"{leaf.path} (did you mean {parent}{dot}{close[0]}?)" if close else leaf.path
            )
    non_finite = [
        f"{leaf.path}={leaf.value}"
        for leaf in leaves
        if isinstance(leaf.value, float) and not math.isfinite(leaf.value)
    ]
    return [
        (
            bool(unknown),
            f"unknown key(s), not in the schema (ppo1/config.py): {', '.join(unknown)}",
        ),
        (bool(non_finite), f"{', '.join(non_finite)}: settings must be finite numbers"),
    ]


def to_train_config(cfg: DictConfig) -> TrainConfig:
    """Turn a composed DictConfig into the typed config, refusing keys outside the schema and
    non-finite numbers, then running every `__post_init__` check."""
    _raise_if(schema_problems(cfg))
    train_cfg = OmegaConf.to_object(cfg)
    assert isinstance(train_cfg, TrainConfig)
    return train_cfg


def exit_with_error(message: str) -> NoReturn:
    """Exit 2 with one `error: ...` line on stderr: every entrypoint's answer to bad input."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


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
    "save_model",
    "torch_threads",
    "checkpoint_every",
    "checkpoint_dir",
    "resume",
)


def to_plain_dict(cfg: TrainConfig) -> dict[str, Any]:
    """The resolved config as plain Python containers (enums as strings), e.g. for checkpoints."""
    container = OmegaConf.to_container(OmegaConf.structured(cfg), enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}

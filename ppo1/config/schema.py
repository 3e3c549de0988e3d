"""The training schemas: env, network, algo, schedule, evaluation, tracking and the whole run.

Each `__post_init__` refuses values that are well-typed but meaningless (clip <= 0, a
minibatch larger than the batch), all of a section's problems in one ConfigError.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from enum import Enum

from ppo1.config.errors import ConfigError, raise_if
from ppo1.config.sweep import SweepConfig

# How `num_envs` copies are stepped: `auto` takes a natively vectorized env if there is one,
# `sync` steps them in a loop in this process, `async` in subprocesses (AsyncVectorEnv).
# Functional syntax because OmegaConf matches overrides to member *names* and `async` is a
# Python keyword: `env.vectorization=async` must find a member called `async`.
Vectorization = Enum("Vectorization", [("auto", "auto"), ("sync", "sync"), ("async", "async")])


class AdvNorm(Enum):
    """Advantage standardisation, (A - mean) / (std + algo.adv_norm_eps), over what."""

    # The whole rollout, population std (SB PPO1 with one worker; the seed notebook).
    batch = "batch"
    # Each env's segment of the rollout on its own, population std (SB PPO1's MPI workers).
    per_env = "per_env"
    # Each minibatch, sample std (SB3, CleanRL).
    minibatch = "minibatch"
    none = "none"


class Activation(Enum):
    tanh = "tanh"
    relu = "relu"
    # No hand-derived backward (fast.backward.ACTIVATION_BACKWARDS): algo.backend=autograd only.
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
        raise_if(
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


def unregistered_env(env_id: str) -> str | None:
    """Why `env.id` names no Gymnasium env, with the nearest ids; None if it names one.

    Gymnasium is imported here, once a config is built, not at the top: `--help`, `--cfg job`
    and TAB completion only compose configs, and should not wait for it (tests/test_startup.py).
    """
    import gymnasium as gym

    if env_id in gym.registry:
        return None
    close = difflib.get_close_matches(env_id, list(gym.registry), n=5, cutoff=0.5)
    hint = f"did you mean one of {close}?" if close else "see gymnasium.pprint_registry()"
    return f"env.id {env_id!r} is not a registered Gymnasium env; {hint}"


@dataclass
class NetworkConfig:
    hidden: list[int] = field(default_factory=lambda: [64, 64])
    activation: Activation = Activation.tanh
    # Separate policy and value towers (SB PPO1's MlpPolicy) or one shared trunk.
    shared: bool = False
    # Orthogonal init, zero biases: gain sqrt(2) hidden, pi_gain and v_gain the heads.
    ortho_init: bool = True
    # 0.01 and 1.0 as OpenAI baselines, SB and SB3 (Andrychowicz et al. 2021 on the 0.01); the
    # seed notebook gives the value head sqrt(2).
    pi_gain: float = 0.01
    v_gain: float = 1.0
    # Initial log std of the diagonal Gaussian policy (continuous actions only).
    log_std_init: float = 0.0

    def __post_init__(self) -> None:
        raise_if(
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
    # A minibatch takes minibatch_size samples from each env's segment, each segment shuffled
    # on its own: SB PPO1's N MPI workers, whose 64-sample gradients MpiAdam averages into one
    # step, take the step of one gradient over those 64 N samples (docs/sb_ppo1.md).
    minibatch_per_env: bool = False
    lr: float = 1e-3
    adam_eps: float = 1e-5
    # Add adam_eps to the uncorrected sqrt(v_t), as OpenAI baselines' MpiAdam (SB PPO1) does:
    # Kingma & Ba's step with eps / sqrt(1 - beta2^t), 31.6 eps at t = 1 (update.adam_eps_at).
    adam_eps_uncorrected: bool = False
    adv_norm: AdvNorm = AdvNorm.minibatch
    # Added to the std (SB3 and the seed notebook: 1e-8; SB PPO1: none, 0).
    adv_norm_eps: float = 1e-8
    # Stop the epochs of an update once approx KL exceeds 1.5 x target_kl (SB3 rule; null: never).
    target_kl: float | None = None
    # On a time-limit truncation, bootstrap from V(final observation) (SB3 #633); off = terminal.
    bootstrap_truncation: bool = True
    backend: Backend = Backend.fast
    net: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        raise_if(
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
                    self.adv_norm_eps < 0,
                    f"algo.adv_norm_eps must be >= 0, got {self.adv_norm_eps}",
                ),
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
        raise_if([(not 0 <= self.end <= 1, f"schedule.end must be in [0, 1], got {self.end}")])


@dataclass
class EvalConfig:
    # Evaluate the deterministic policy every this many updates (and always after the last).
    every: int = 10
    episodes: int = 20
    # Episodes run in parallel (capped at `episodes`): fewer policy calls per evaluation.
    num_envs: int = 20

    def __post_init__(self) -> None:
        raise_if(
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
    # Every episode's return and length as metric rows (charts/episodic_*), besides the
    # per-update means (rollout/ep_*_mean). The sweep presets turn them off: they are most of
    # the rows a short trial writes, and its figures still draw every episode.
    episode_rows: bool = True

    def __post_init__(self) -> None:
        raise_if(
            [
                (
                    self.figures_every < 0,
                    f"tracking.figures_every must be >= 0, got {self.figures_every}",
                ),
                (not self.experiment.strip(), "tracking.experiment must not be empty"),
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
    # Print a line after every update, instead of the progress bar (on a terminal) or a
    # line every `log_every` updates (elsewhere: CI, logs, sweeps' jobs).
    verbose: bool = False
    # Without `verbose` and off a terminal: a progress line every this many updates (and
    # after the last); 0: no progress output. The default run (391 updates) prints 16.
    log_every: int = 25
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
        raise_if(
            [
                (
                    self.total_timesteps < 1,
                    f"total_timesteps must be >= 1, got {self.total_timesteps}",
                ),
                (self.torch_threads < 1, f"torch_threads must be >= 1, got {self.torch_threads}"),
                (self.log_every < 0, f"log_every must be >= 0, got {self.log_every}"),
                (
                    self.checkpoint_every < 0,
                    f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
                ),
                # Gymnasium and NumPy seeding take only non-negative integers.
                (self.seed < 0, f"seed must be >= 0, got {self.seed}"),
                (
                    not self.algo.minibatch_per_env and self.algo.minibatch_size > self.batch_size,
                    f"algo.minibatch_size={self.algo.minibatch_size} is larger than the batch "
                    f"env.num_envs x algo.n_steps = {self.env.num_envs} x {self.algo.n_steps} "
                    f"= {self.batch_size}",
                ),
                (
                    self.algo.minibatch_per_env and self.algo.minibatch_size > self.algo.n_steps,
                    f"algo.minibatch_size={self.algo.minibatch_size} is larger than an env's "
                    f"segment algo.n_steps={self.algo.n_steps} (algo.minibatch_per_env=true)",
                ),
            ]
        )
        # Not in EnvConfig: registering the schema builds an EnvConfig (its default), and
        # registering is all that `--help` does.
        unregistered = unregistered_env(self.env.id)
        if unregistered is not None:
            raise ConfigError(unregistered)

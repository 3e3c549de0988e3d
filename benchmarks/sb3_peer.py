"""Stable-Baselines3 PPO given a ppo1 config's settings: the peer the benchmark measures against.

Needs the optional `bench` extra (`pip install -e '.[bench]'`); nothing here imports
stable_baselines3 until a runner is built. SB3 gets its own standard environment stack
(`make_vec_env`: a DummyVecEnv of Monitor-wrapped envs), as an SB3 user would run it; the
evaluations that decide time-to-solve use ppo1's evaluation code and envs for both.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ppo1.config import Activation, AdvNorm, TrainConfig
from ppo1.core.envs import make_vector_env
from ppo1.core.evaluation import run_episodes
from ppo1.core.schedules import multiplier

if TYPE_CHECKING:
    from benchmarks.budget import Budget


def sb3_available() -> bool:
    return importlib.util.find_spec("stable_baselines3") is not None


def sb3_kwargs(cfg: TrainConfig) -> tuple[dict[str, Any], list[str]]:
    """SB3 PPO keyword arguments for cfg, and the settings SB3 cannot express (for the notes)."""
    algo, net = cfg.algo, cfg.algo.net

    def lr(progress_remaining: float) -> float:
        return algo.lr * multiplier(cfg.schedule, 1.0 - progress_remaining)

    def clip(progress_remaining: float) -> float:
        mult = multiplier(cfg.schedule, 1.0 - progress_remaining) if algo.anneal_clip else 1.0
        return algo.clip * mult

    arch = list(net.hidden) if net.shared else {"pi": list(net.hidden), "vf": list(net.hidden)}
    kwargs: dict[str, Any] = {
        "n_steps": algo.n_steps,
        "batch_size": algo.minibatch_size,
        "n_epochs": algo.epochs,
        "gamma": algo.gamma,
        "gae_lambda": algo.gae_lambda,
        "learning_rate": lr,
        "clip_range": clip,
        "clip_range_vf": algo.clip_vf,
        "ent_coef": algo.ent_coef,
        "vf_coef": algo.vf_coef,
        "max_grad_norm": algo.max_grad_norm if algo.max_grad_norm is not None else float("inf"),
        "target_kl": algo.target_kl,
        "normalize_advantage": algo.adv_norm is not AdvNorm.none,
        "policy_kwargs": {
            "net_arch": arch,
            "activation_fn": nn.Tanh if net.activation is Activation.tanh else nn.ReLU,
            "ortho_init": net.ortho_init,
            "log_std_init": net.log_std_init,
            "optimizer_kwargs": {"eps": algo.adam_eps},
        },
        "device": "cpu",
        "verbose": 0,
    }
    differences = [
        message
        for differs, message in [
            (
                algo.adv_norm in (AdvNorm.batch, AdvNorm.per_env),
                "SB3 normalises advantages per minibatch",
            ),
            (algo.adv_norm_eps != 1e-8, "SB3 adds 1e-8 to the advantages' std"),
            (
                algo.minibatch_per_env and cfg.env.num_envs > 1,
                "SB3 draws minibatches from the whole batch",
            ),
            (algo.adam_eps_uncorrected, "SB3's Adam adds eps to the bias-corrected sqrt(v)"),
            (
                (net.pi_gain, net.v_gain) != (0.01, 1.0),
                "SB3 initialises the policy and value heads with gains 0.01 and 1",
            ),
            (algo.drop_last, "SB3 keeps the last partial minibatch"),
            (not algo.bootstrap_truncation, "SB3 bootstraps time-limit truncations"),
            (cfg.env.max_episode_steps is not None, "SB3 uses the registered time limit"),
        ]
        if differs
    ]
    return kwargs, differences


def sb3_model(cfg: TrainConfig, seed: int) -> Any:
    """SB3 PPO on its own vector env (VecNormalize where cfg normalises), with cfg's settings."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    env = make_vec_env(cfg.env.id, n_envs=cfg.env.num_envs, seed=seed)
    env_cfg = cfg.env
    if env_cfg.normalize_obs or env_cfg.normalize_reward:
        from stable_baselines3.common.vec_env import VecNormalize

        # SB3's counterpart of env.normalize_obs and env.normalize_reward.
        env = VecNormalize(
            env,
            norm_obs=env_cfg.normalize_obs,
            norm_reward=env_cfg.normalize_reward,
            clip_obs=env_cfg.clip_obs,
            clip_reward=env_cfg.clip_reward,
            gamma=cfg.algo.gamma,
        )
    kwargs, _ = sb3_kwargs(cfg)
    model = PPO("MlpPolicy", env, seed=seed, **kwargs)
    # learn() would configure its own, which writes nothing at verbose=0 but leaves an empty
    # SB3-<time> directory in the temp dir every call: this one writes nowhere, no folder.
    model.set_logger(Logger(folder=None, output_formats=[]))
    return model


def sb3_policy(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The deterministic SB3 policy on raw observations (normalised with VecNormalize's
    statistics as they stand, when it has them)."""
    normalize = getattr(model.get_env(), "normalize_obs", lambda obs: obs)
    return lambda obs: model.predict(normalize(obs), deterministic=True)[0]


class Sb3Runner:
    """The benchmark's measurements for SB3 PPO, mirroring benchmarks.bench's functions."""

    def __init__(self, cfg: TrainConfig, budget: Budget) -> None:
        self.cfg, self.budget = cfg, budget

    def model(self, seed: int) -> Any:
        return sb3_model(self.cfg, seed)

    def env_sps(self, seed: int, forward: bool) -> float:
        """Random actions through SB3's vector env, optionally plus one policy forward."""
        from stable_baselines3.common.utils import obs_as_tensor

        model = self.model(seed)
        env = model.env
        env.action_space.seed(seed)
        steps = self.budget.env_steps
        actions = [
            np.stack([env.action_space.sample() for _ in range(env.num_envs)]) for _ in range(steps)
        ]
        obs = env.reset()
        with torch.no_grad():
            start = time.perf_counter()
            for action in actions:
                if forward:
                    model.policy(obs_as_tensor(obs, model.device))
                obs, *_ = env.step(action)
            seconds = time.perf_counter() - start
        env.close()
        n_envs: int = env.num_envs
        return steps * n_envs / seconds

    def phase_sps(self, seed: int) -> tuple[float, float]:
        """(rollout-only, update-only): SB3's collect_rollouts (incl. GAE) and train()."""
        model = self.model(seed)
        rollouts = self.budget.phase_rollouts
        total = rollouts * self.cfg.batch_size
        # The steps of SB3's learn(), timed separately (private API, pinned SB3 version).
        total, callback = model._setup_learn(total, None)
        callback.on_training_start(locals(), globals())
        rollout_s = update_s = 0.0
        for _ in range(rollouts):
            start = time.perf_counter()
            model.collect_rollouts(model.env, callback, model.rollout_buffer, model.n_steps)
            model._update_current_progress_remaining(model.num_timesteps, total)
            middle = time.perf_counter()
            model.train()
            rollout_s += middle - start
            update_s += time.perf_counter() - middle
        model.env.close()
        return total / rollout_s, total / update_s

    def end_to_end_sps(self, seed: int) -> tuple[float, None]:
        """(env-steps/s of learn(), no RSS figure)."""
        model = self.model(seed)
        start = time.perf_counter()
        model.learn(total_timesteps=self.budget.e2e_timesteps)
        seconds = time.perf_counter() - start
        model.env.close()
        steps: int = model.num_timesteps
        return steps / seconds, None

    def time_to_solve(self, seed: int) -> tuple[float, float] | None:
        """As benchmarks.bench.time_to_solve: same evaluation envs, episodes, frequency and rule."""
        from stable_baselines3.common.callbacks import BaseCallback

        from benchmarks.budget import SolveWatch

        cfg = self.cfg
        eval_env = make_vector_env(cfg.env, cfg.eval.num_envs)
        every = self.budget.eval_every_updates * cfg.batch_size
        watch = SolveWatch()

        class SolveCallback(BaseCallback):
            """Evaluates between updates (ppo1 evaluates after an update too), off the clock."""

            start = eval_seconds = 0.0

            def _on_training_start(self) -> None:
                self.start = time.perf_counter()

            def _on_rollout_start(self) -> None:
                if self.num_timesteps == 0 or self.num_timesteps % every:
                    return
                seconds = time.perf_counter() - self.start - self.eval_seconds
                eval_start = time.perf_counter()
                returns = run_episodes(
                    sb3_policy(self.model), eval_env, cfg.eval.episodes, seed + 10_000
                )
                self.eval_seconds += time.perf_counter() - eval_start
                watch.see(self.num_timesteps, seconds, float(returns.mean()))

            def _on_step(self) -> bool:
                return watch.solved_at is None

        model = self.model(seed)
        model.learn(total_timesteps=self.budget.solve_timesteps, callback=SolveCallback())
        model.env.close()
        eval_env.close()
        return watch.solved_at

"""Vector environments with same-step autoreset, whatever their vectorization.

The rollout code relies on one contract: when an env's episode ends at step t, `step` returns
the *reset* observation of the next episode and puts the episode's final observation in
`info["final_obs"]` (masked by `info["_final_obs"]`). That is Gymnasium's
`AutoresetMode.SAME_STEP`; it keeps every step a real transition and gives the truncation
bootstrap its V(final observation).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from ppo1.config import ConfigError, EnvConfig, Vectorization


class SameStepCartPole(VectorWrapper):
    """Gymnasium's natively vectorized CartPole, switched from next-step to same-step autoreset.

    The native env is ~2x faster than a SyncVectorEnv of CartPoles but only autoresets on the
    *next* step, which would waste a step per episode and feed a bogus (final obs -> reset obs)
    transition to PPO. We reset finished envs in the same call, drawing the new state exactly
    as the native `step` would one call later.
    """

    def __init__(self, env: CartPoleVectorEnv) -> None:
        super().__init__(env)
        self.metadata = {**env.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.cartpole = env

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        done = terminated | truncated
        if done.any():
            cp = self.cartpole
            assert cp.state is not None
            info = {**info, "final_obs": obs.copy(), "_final_obs": done}
            cp.state[:, done] = cp.np_random.uniform(low=cp.low, high=cp.high, size=(4, done.sum()))
            cp.steps[done] = 0
            # The native env would otherwise reset these envs again on the next step.
            cp.prev_done[:] = False
            obs = cp.state.T.astype(np.float32)
        return obs, rewards, terminated, truncated, info


def make_vector_env(cfg: EnvConfig, num_envs: int) -> VectorEnv:
    """`num_envs` copies of `cfg.id` with same-step autoreset (see the module docstring)."""
    limit: dict[str, Any] = (
        {} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}
    )
    if cfg.vectorization is Vectorization.auto and gym.spec(cfg.id).vector_entry_point:
        native = gym.make_vec(cfg.id, num_envs, vectorization_mode="vector_entry_point", **limit)
        if isinstance(native, CartPoleVectorEnv):
            return check_spaces(SameStepCartPole(native), cfg.id)
        native.close()
    vector_cls = (
        gym.vector.AsyncVectorEnv
        if cfg.vectorization is Vectorization.async_
        else (gym.vector.SyncVectorEnv)
    )
    try:
        env = vector_cls(
            [lambda: gym.make(cfg.id, **limit) for _ in range(num_envs)],
            autoreset_mode=AutoresetMode.SAME_STEP,
        )
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"env.id {cfg.id!r} needs an optional dependency: {err}") from err
    return check_spaces(env, cfg.id)


def check_spaces(env: VectorEnv, env_id: str) -> VectorEnv:
    """PPO here handles flat Box observations and Discrete or Box actions; say so otherwise."""
    obs_space, act_space = env.single_observation_space, env.single_action_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        env.close()
        raise ConfigError(f"env.id {env_id!r}: observations must be a flat Box, got {obs_space}")
    if not isinstance(act_space, gym.spaces.Discrete | gym.spaces.Box):
        env.close()
        raise ConfigError(f"env.id {env_id!r}: actions must be Discrete or Box, got {act_space}")
    return env

"""Vector environments with same-step autoreset, whatever their vectorization.

The rollout code relies on one contract: when an env's episode ends at step t, `step` returns
the *reset* observation of the next episode and puts the episode's final observation in
`info["final_obs"]` (masked by `info["_final_obs"]`). That is Gymnasium's
`AutoresetMode.SAME_STEP`; it keeps every step a real transition and gives the truncation
bootstrap its V(final observation).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

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


class SameStepSyncEnv(VectorEnv):
    """`num_envs` envs stepped in a loop with same-step autoreset: `SyncVectorEnv`'s contract
    for this module (batched obs, rewards, terminated, truncated; `final_obs` / `_final_obs`),
    without its per-step generality (space-generic batching, per-env info merging), which
    costs ~20% of a Pendulum or MuJoCo vector step here. Flat Box observations only.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env[Any, Any]]]) -> None:
        self.envs = [fn() for fn in env_fns]
        env = self.envs[0]
        self.num_envs = len(self.envs)
        self.single_observation_space = env.observation_space
        self.single_action_space = env.action_space
        self.observation_space = batch_space(env.observation_space, self.num_envs)
        self.action_space = batch_space(env.action_space, self.num_envs)
        self.metadata = {**env.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.spec = env.spec
        shape = (self.num_envs, *(env.observation_space.shape or ()))
        self._obs = np.zeros(shape, dtype=env.observation_space.dtype)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Resets env i with seed + i, as SyncVectorEnv does."""
        if isinstance(seed, list):
            seeds = seed
        else:
            seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        for i, (env, env_seed) in enumerate(zip(self.envs, seeds, strict=True)):
            self._obs[i], _ = env.reset(seed=env_seed, options=options)
        return self._obs.copy(), {}

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        final_obs: np.ndarray | None = None
        for i, env in enumerate(self.envs):
            obs, rewards[i], terminated[i], truncated[i], _ = env.step(actions[i])
            if terminated[i] or truncated[i]:
                if final_obs is None:
                    final_obs = np.zeros_like(self._obs)
                final_obs[i] = obs
                obs, _ = env.reset()
            self._obs[i] = obs
        info: dict[str, Any] = {}
        if final_obs is not None:
            info = {"final_obs": final_obs, "_final_obs": terminated | truncated}
        return self._obs.copy(), rewards, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()


def make_vector_env(cfg: EnvConfig, num_envs: int) -> VectorEnv:
    """`num_envs` copies of `cfg.id` with same-step autoreset (see the module docstring)."""
    limit: dict[str, Any] = (
        {} if cfg.max_episode_steps is None else {"max_episode_steps": cfg.max_episode_steps}
    )
    spec = gym.spec(cfg.id)
    if cfg.vectorization is Vectorization.auto and spec.vector_entry_point:
        native = gym.make_vec(cfg.id, num_envs, vectorization_mode="vector_entry_point", **limit)
        if isinstance(native, CartPoleVectorEnv):
            return check_spaces(SameStepCartPole(native), cfg.id)
        native.close()
    if str(spec.entry_point).startswith("gymnasium.envs.mujoco"):
        _mujoco_warnings_once()
    env_fns = [lambda: gym.make(cfg.id, **limit) for _ in range(num_envs)]
    try:
        env: VectorEnv = (
            gym.vector.AsyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.SAME_STEP)
            if cfg.vectorization is Vectorization["async"]
            else SameStepSyncEnv(env_fns)
        )
    except gym.error.DependencyNotInstalled as err:
        raise ConfigError(f"env.id {cfg.id!r} needs an optional dependency: {err}") from err
    return check_spaces(env, cfg.id)


def _mujoco_warnings_once() -> None:
    """Print each distinct MuJoCo warning once per process, not once per env built.

    MuJoCo warns while compiling every model: Gymnasium 1.4's HalfCheetah sets a compiler
    attribute MuJoCo 4 deprecates, which made 28 identical warnings for a run's 8 + 20 envs.
    A handler the process installed itself is left alone.
    """
    import mujoco

    if mujoco.get_mju_user_warning() is not None:
        return
    seen: set[str] = set()

    def warn(message: str) -> None:
        if message not in seen:
            seen.add(message)
            print(f"WARNING: {message}", file=sys.stderr, flush=True)

    mujoco.set_mju_user_warning(warn)


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

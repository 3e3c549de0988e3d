"""Deterministic evaluation of a policy on its own vector env."""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from ppo1.core.fast.inference import FusedActorCritic
from ppo1.core.networks import ActorCritic

# Batched observations -> batched env actions.
Policy = Callable[[np.ndarray], np.ndarray]


def evaluate(agent: ActorCritic, env: VectorEnv, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes of the greedy policy (argmax, or the Gaussian mean)."""
    with torch.inference_mode():
        policy = FusedActorCritic(agent)

        def act(obs: np.ndarray) -> np.ndarray:
            params, _ = policy(torch.as_tensor(obs, dtype=torch.float32))
            action: np.ndarray = agent.dist.mode(params).numpy()
            return action

        return run_episodes(act, env, episodes, seed)


def run_episodes(act: Policy, env: VectorEnv, episodes: int, seed: int) -> np.ndarray:
    """Returns of `episodes` episodes of `act` (any policy, e.g. a baseline's, for the benchmark).

    Each env runs a fixed quota of episodes: counting whichever finish first would bias the
    mean towards short episodes (the SB3 `evaluate_policy` fix).
    """
    n = env.num_envs
    quotas = np.array([(episodes + i) // n for i in range(n)])
    counts = np.zeros(n, dtype=np.int64)
    running = np.zeros(n)
    returns: list[float] = []
    act_space = env.single_action_space
    obs, _ = env.reset(seed=seed)
    while (counts < quotas).any():
        env_action = act(obs)
        if isinstance(act_space, gym.spaces.Box):
            env_action = np.clip(env_action, act_space.low, act_space.high)
        obs, reward, terminated, truncated, _ = env.step(env_action)
        running += reward
        for i in np.flatnonzero(terminated | truncated):
            if counts[i] < quotas[i]:
                returns.append(float(running[i]))
                counts[i] += 1
            running[i] = 0.0
    return np.asarray(returns)

"""Rollout collection into preallocated storage, and GAE(gamma, lambda)."""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import Tensor

from ppo1.core.fast.inference import FusedActorCritic
from ppo1.core.networks import ActorCritic


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    dones: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE, eqs. (11)-(16) of Schulman et al. 2016: A_t = sum_l (gamma lam)^l delta_{t+l}.

    All inputs are [T, N]. `next_values[t]` is V(s_{t+1}), or V(final observation) where the
    episode was truncated at t; `terminated[t]` drops that bootstrap (a true terminal state),
    `dones[t]` (terminated or truncated) stops the sum at the episode end. Returns the
    advantages and the lambda-returns A_t + V(s_t) that the value function regresses on.
    """
    deltas = rewards + gamma * next_values * (~terminated) - values
    decay = gamma * lam * (~dones)
    advantages = torch.empty_like(deltas)
    running = torch.zeros_like(deltas[0])
    for t in range(deltas.shape[0] - 1, -1, -1):
        running = deltas[t] + decay[t] * running
        advantages[t] = running
    return advantages, advantages + values


@dataclass
class Episode:
    """One finished training episode, for the episodic-return curves."""

    step: int
    ret: float
    length: int


class Rollout:
    """Storage for one rollout of `n_steps` x `num_envs` transitions, allocated once.

    The env-facing fields also have NumPy views (`*_np`, sharing memory) so each step's
    arrays are copied straight in, without building a tensor per field per step.
    """

    def __init__(
        self,
        n_steps: int,
        num_envs: int,
        obs_dim: int,
        agent: ActorCritic,
        action_shape: tuple[int, ...],
        discrete: bool,
    ) -> None:
        shape = (n_steps, num_envs)
        with torch.no_grad():
            param_dim = agent.dist_params(torch.zeros(1, obs_dim)).shape[-1]
        self.obs = torch.zeros(*shape, obs_dim)
        self.actions = torch.zeros(*shape, *action_shape, dtype=torch.long if discrete else None)
        self.log_probs = torch.zeros(shape)
        self.values = torch.zeros(shape)
        self.dist_params = torch.zeros(*shape, param_dim)
        self.rewards = torch.zeros(shape)
        self.terminated = torch.zeros(shape, dtype=torch.bool)
        self.dones = torch.zeros(shape, dtype=torch.bool)
        self.truncated = torch.zeros(shape, dtype=torch.bool)
        self.final_values = torch.zeros(shape)
        self.next_values = torch.zeros(shape)
        self.obs_np = self.obs.numpy()
        self.rewards_np = self.rewards.numpy()
        self.terminated_np = self.terminated.numpy()
        self.dones_np = self.dones.numpy()
        self.truncated_np = self.truncated.numpy()

    def advantages(self, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
        """GAE(gamma, lambda) advantages and lambda-returns of the stored rollout (see `gae`)."""
        return gae(
            self.rewards, self.values, self.next_values, self.terminated, self.dones, gamma, lam
        )


class RolloutCollector:
    """Steps a same-step-autoreset vector env with the policy: one batched forward per step."""

    def __init__(
        self,
        env: VectorEnv,
        agent: ActorCritic,
        n_steps: int,
        bootstrap_truncation: bool,
        seed: int,
    ) -> None:
        self.env, self.agent = env, agent
        self.bootstrap_truncation = bootstrap_truncation
        self.num_envs = env.num_envs
        obs_space, act_space = env.single_observation_space, env.single_action_space
        assert obs_space.shape is not None and act_space.shape is not None
        self.discrete = isinstance(act_space, gym.spaces.Discrete)
        self.low = self.high = None
        if isinstance(act_space, gym.spaces.Box):
            self.low, self.high = act_space.low, act_space.high
        self.buffer = Rollout(
            n_steps, self.num_envs, obs_space.shape[0], agent, act_space.shape, self.discrete
        )
        obs, _ = env.reset(seed=seed)
        # The observation the next rollout starts from (a row of buffer.obs once it starts).
        self.next_obs = np.asarray(obs, dtype=np.float32)
        self.ep_returns = np.zeros(self.num_envs)
        self.ep_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.global_step = 0

    def collect(self) -> list[Episode]:
        """Fill the buffer with one rollout; return the episodes that ended during it."""
        buf, dist, episodes = self.buffer, self.agent.dist, []
        n_steps = buf.obs.shape[0]
        buf.obs_np[0] = self.next_obs
        buf.truncated_np[:] = False
        # Inference mode: no autograd bookkeeping; weights fused once per rollout.
        with torch.inference_mode():
            policy = FusedActorCritic(self.agent)
            for t in range(n_steps):
                params, value = policy(buf.obs[t])
                action = dist.sample(params)
                buf.actions[t] = action
                buf.values[t] = value
                buf.dist_params[t] = params
                # The Gaussian sample is stored unclipped so log pi(a|s) stays exact;
                # only the env sees it clipped to the action bounds.
                env_action = action.numpy()
                if self.low is not None:
                    env_action = np.clip(env_action, self.low, self.high)
                obs, reward, terminated, truncated, info = self.env.step(env_action)
                self.global_step += self.num_envs
                buf.terminated_np[t] = terminated
                done = np.logical_or(terminated, truncated, out=buf.dones_np[t])
                norm = self.agent.reward_norm
                buf.rewards_np[t] = reward if norm is None else norm.scale(reward, done)
                if t + 1 < n_steps:
                    buf.obs_np[t + 1] = obs
                else:
                    self.next_obs = np.asarray(obs, dtype=np.float32)
                self.ep_returns += reward
                self.ep_lengths += 1
                # Most steps end no episode: the bookkeeping below runs only on those that do.
                if done.any():
                    np.logical_and(truncated, ~terminated, out=buf.truncated_np[t])
                    if self.bootstrap_truncation and buf.truncated_np[t].any():
                        self._bootstrap_final_values(t, info, policy)
                    episodes += self._end_episodes(done)
            last_value = policy(torch.from_numpy(self.next_obs))[1]
            # One batched call instead of one per step: the same numbers.
            buf.log_probs.copy_(dist.log_prob(buf.dist_params, buf.actions))
        buf.next_values[:-1] = buf.values[1:]
        buf.next_values[-1] = last_value
        if self.bootstrap_truncation:
            buf.next_values = torch.where(buf.truncated, buf.final_values, buf.next_values)
        else:
            # Time-limit ends count as terminal, as in SB PPO1.
            buf.terminated |= buf.truncated
        return episodes

    def _bootstrap_final_values(
        self, t: int, info: dict[str, np.ndarray], policy: FusedActorCritic
    ) -> None:
        """V(final observation) of the envs truncated at step t (step returned a reset obs)."""
        idx = np.flatnonzero(self.buffer.truncated_np[t])
        final_obs = np.stack([info["final_obs"][i] for i in idx]).astype(np.float32)
        self.buffer.final_values[t, torch.from_numpy(idx)] = policy(torch.from_numpy(final_obs))[1]

    def _end_episodes(self, done: np.ndarray) -> list[Episode]:
        ended = [
            Episode(self.global_step, float(self.ep_returns[i]), int(self.ep_lengths[i]))
            for i in np.flatnonzero(done)
        ]
        self.ep_returns[done] = 0.0
        self.ep_lengths[done] = 0
        return ended

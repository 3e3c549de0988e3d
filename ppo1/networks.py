"""Actor-critic MLPs: a policy head (Categorical or diagonal Gaussian) and a value head."""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import Tensor, nn

from ppo1.config import Activation, NetworkConfig
from ppo1.distributions import ActionDistribution, Categorical, DiagGaussian

_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.tanh: nn.Tanh,
    Activation.relu: nn.ReLU,
}


def mlp(in_dim: int, hidden: list[int], activation: Activation) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_dim, size), _ACTIVATIONS[activation]()]
        in_dim = size
    return nn.Sequential(*layers)


def ortho_init_(module: nn.Module, gain: float) -> None:
    """Orthogonal weights with `gain`, zero biases (the OpenAI baselines / SB initialisation)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)


class ActorCritic(nn.Module):
    """pi(a|s) and V(s); separate towers by default, as SB PPO1's MlpPolicy has."""

    def __init__(
        self, obs_dim: int, action_space: gym.spaces.Discrete | gym.spaces.Box, cfg: NetworkConfig
    ) -> None:
        super().__init__()
        self.pi_body = mlp(obs_dim, cfg.hidden, cfg.activation)
        self.v_body = self.pi_body if cfg.shared else mlp(obs_dim, cfg.hidden, cfg.activation)
        self.dist: ActionDistribution
        if isinstance(action_space, gym.spaces.Discrete):
            self.dist = Categorical()
            self.pi_head = nn.Linear(cfg.hidden[-1], int(action_space.n))
            self.log_std: nn.Parameter | None = None
        else:
            self.dist = DiagGaussian()
            action_dim = math.prod(action_space.shape)
            self.pi_head = nn.Linear(cfg.hidden[-1], action_dim)
            self.log_std = nn.Parameter(torch.full((action_dim,), cfg.log_std_init))
        self.v_head = nn.Linear(cfg.hidden[-1], 1)
        if cfg.ortho_init:
            ortho_init_(self.pi_body, math.sqrt(2))
            ortho_init_(self.v_body, math.sqrt(2))
            ortho_init_(self.pi_head, 0.01)
            ortho_init_(self.v_head, 1.0)

    def dist_params(self, obs: Tensor) -> Tensor:
        """Flat parameters of pi(.|s): log-probabilities, or [mean, log_std]."""
        out = self.pi_head(self.pi_body(obs))
        if self.log_std is None:
            return torch.log_softmax(out, dim=-1)
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)

    def value(self, obs: Tensor) -> Tensor:
        v: Tensor = self.v_head(self.v_body(obs)).squeeze(-1)
        return v

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.dist_params(obs), self.value(obs)

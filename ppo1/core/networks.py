"""Actor-critic MLPs: a policy head (Categorical or diagonal Gaussian) and a value head."""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppo1.config import Activation, NetworkConfig
from ppo1.core.distributions import ActionDistribution, Categorical, DiagGaussian

_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.tanh: nn.Tanh,
    Activation.relu: nn.ReLU,
    Activation.elu: nn.ELU,
}
_ACTIVATION_FNS: dict[Activation, Callable[[Tensor], Tensor]] = {
    Activation.tanh: torch.tanh,
    Activation.relu: torch.relu,
    Activation.elu: F.elu,
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


def linears(body: nn.Module) -> list[nn.Linear]:
    return [layer for layer in body.modules() if isinstance(layer, nn.Linear)]


class ObsNormalizer(nn.Module):
    """clip((obs - mean) / sqrt(var + 1e-8), +-clip) with a running mean and variance.

    The statistics change only through `update`, which training calls after each PPO update
    with the rollout just used: a rollout and its update see the same normalisation, so r_t
    starts at exactly 1. Initial mean 0, variance 1 and count 1e-4, as SB3's RunningMeanStd.
    """

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, obs_dim: int, clip: float) -> None:
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(obs_dim))
        self.register_buffer("var", torch.ones(obs_dim))
        self.register_buffer("count", torch.tensor(1e-4, dtype=torch.float64))

    def forward(self, obs: Tensor) -> Tensor:
        return ((obs - self.mean) * torch.rsqrt(self.var + 1e-8)).clamp_(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, obs: Tensor) -> None:
        """Merge a [B, obs_dim] batch into the statistics (Chan et al.'s parallel algorithm)."""
        n = obs.shape[0]
        batch_mean, batch_var = obs.mean(0), obs.var(0, correction=0)
        count = float(self.count)
        total = count + n
        delta = batch_mean - self.mean
        m2 = self.var * count + batch_var * n + delta.square() * (count * n / total)
        self.mean += delta * (n / total)
        self.var.copy_(m2 / total)
        self.count.fill_(total)


class RewardNormalizer(nn.Module):
    """SB3 VecNormalize's reward scaling: r_t / sqrt(Var[R] + 1e-8), clipped to +-clip.

    R_t = gamma R_{t-1} + r_t is each env's discounted return so far (zero at an episode's
    start); Var[R] is its running variance over every env and step (an `ObsNormalizer` of one
    feature keeps it). Dividing by the return's scale, not the reward's, keeps the value
    targets near unit size whatever the horizon. Only training sees scaled rewards.
    """

    returns: Tensor

    def __init__(self, num_envs: int, gamma: float, clip: float) -> None:
        super().__init__()
        self.gamma, self.clip = gamma, clip
        self.stats = ObsNormalizer(1, clip)
        # Not persistent: a resumed run restarts its episodes, so R restarts at zero too.
        self.register_buffer("returns", torch.zeros(num_envs, dtype=torch.float64), False)

    @torch.no_grad()
    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """One vector step's rewards, scaled; the statistics first take this step's R_t."""
        r = torch.as_tensor(rewards, dtype=torch.float64)
        self.returns.mul_(self.gamma).add_(r)
        self.stats.update(self.returns.unsqueeze(-1).float())
        scaled = (r * torch.rsqrt(self.stats.var.double() + 1e-8)).clamp_(-self.clip, self.clip)
        self.returns[torch.as_tensor(dones)] = 0.0
        return scaled.numpy()


class ActorCritic(nn.Module):
    """pi(a|s) and V(s); separate towers by default, as SB PPO1's MlpPolicy has, or one shared
    trunk under both heads (`algo.net.shared`, the seed notebook's network).

    The towers are `nn.Sequential`s (so parameters, initialisation and checkpoints read as
    usual), but the forward passes call `F.linear` on their weights directly: on a 2x64 MLP
    the `Module.__call__` machinery costs as much as the arithmetic. `algo.backend=autograd`
    trains through this forward; the fast backend's hand-derived backward and the fused
    inference MLP are in ppo1/core/fast/.
    """

    def __init__(
        self,
        obs_dim: int,
        action_space: gym.spaces.Discrete | gym.spaces.Box,
        cfg: NetworkConfig,
        obs_norm: ObsNormalizer | None = None,
        reward_norm: RewardNormalizer | None = None,
    ) -> None:
        super().__init__()
        # Submodules, so their running statistics live in state_dict and checkpoints.
        self.obs_norm = obs_norm
        self.reward_norm = reward_norm
        self.shared = cfg.shared
        self.activation = _ACTIVATION_FNS[cfg.activation]
        self.activation_kind = cfg.activation
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
            if not cfg.shared:  # a shared trunk is initialised once
                ortho_init_(self.v_body, math.sqrt(2))
            ortho_init_(self.pi_head, cfg.pi_gain)
            ortho_init_(self.v_head, cfg.v_gain)
        # Plain lists (not registered twice as submodules) for the functional forward.
        self.pi_layers, self.v_layers = linears(self.pi_body), linears(self.v_body)

    def activations(self, obs: Tensor, layers: list[nn.Linear]) -> list[Tensor]:
        """[obs, h_1, ..., h_L]: the input and every hidden layer's output of a tower."""
        outputs = [obs]
        for layer in layers:
            outputs.append(self.activation(F.linear(outputs[-1], layer.weight, layer.bias)))
        return outputs

    def tower(self, obs: Tensor, layers: list[nn.Linear]) -> Tensor:
        return self.activations(obs, layers)[-1]

    def head_params(self, out: Tensor) -> Tensor:
        """pi(.|s) as flat parameters from the policy head's output (see `dist_params`)."""
        if self.log_std is None:
            return torch.log_softmax(out, dim=-1)
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)

    def normalize(self, obs: Tensor) -> Tensor:
        """The network's input: `obs` through the observation normaliser, if there is one."""
        return obs if self.obs_norm is None else self.obs_norm(obs)

    def dist_params(self, obs: Tensor) -> Tensor:
        """Flat parameters of pi(.|s): log-probabilities, or [mean, log_std]."""
        hidden = self.tower(self.normalize(obs), self.pi_layers)
        return self.head_params(F.linear(hidden, self.pi_head.weight, self.pi_head.bias))

    def value(self, obs: Tensor) -> Tensor:
        hidden = self.tower(self.normalize(obs), self.v_layers)
        return F.linear(hidden, self.v_head.weight, self.v_head.bias).squeeze(-1)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(flat parameters of pi(.|s), V(s))."""
        obs = self.normalize(obs)
        pi = self.tower(obs, self.pi_layers)
        v = pi if self.shared else self.tower(obs, self.v_layers)
        params = self.head_params(F.linear(pi, self.pi_head.weight, self.pi_head.bias))
        return params, F.linear(v, self.v_head.weight, self.v_head.bias).squeeze(-1)

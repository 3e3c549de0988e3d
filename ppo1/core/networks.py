"""Actor-critic MLPs: a policy head (Categorical or diagonal Gaussian) and a value head."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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


def _tanh_backward(grad: Tensor, out: Tensor) -> Tensor:
    """dL/dx from dL/dy where y = tanh(x): grad (1 - y^2), from the saved output."""
    return torch.addcmul(grad, grad * out, out, value=-1.0)


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    """dL/dx from dL/dy where y = relu(x): grad where y > 0 (torch's rule, 0 at x = 0)."""
    return grad * (out > 0)


# Each activation's derivative is written in terms of its output, which the tape keeps. An
# activation missing here trains only with algo.backend=autograd (ppo.fast_backend_problems).
ACTIVATION_BACKWARDS: dict[Activation, Callable[[Tensor, Tensor], Tensor]] = {
    Activation.tanh: _tanh_backward,
    Activation.relu: _relu_backward,
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


@dataclass
class Tape:
    """What the analytic backward needs from a forward: [obs, h_1, ..., h_L] of each tower."""

    pi: list[Tensor]
    v: list[Tensor]
    params: Tensor


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
    """pi(a|s) and V(s); separate towers by default, as SB PPO1's MlpPolicy has.

    The towers are `nn.Sequential`s (so parameters, initialisation and checkpoints read as
    usual), but the forward passes call `F.linear` on their weights directly: on a 2x64 MLP
    the `Module.__call__` machinery costs as much as the arithmetic. For the same reason the
    fast backend's update does not use autograd: `forward_tape` keeps each layer's output and
    `backward` applies the chain rule by hand, writing every parameter's `.grad` in place.
    The forward is differentiable as well, which `algo.backend=autograd` trains through.
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
            ortho_init_(self.v_body, math.sqrt(2))
            ortho_init_(self.pi_head, 0.01)
            ortho_init_(self.v_head, 1.0)
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
        params, value, _ = self.forward_tape(obs)
        return params, value

    def forward_tape(self, obs: Tensor) -> tuple[Tensor, Tensor, Tape]:
        """(dist params, V) and the tape `backward` needs (under `torch.no_grad` for that)."""
        obs = self.normalize(obs)
        pi = self.activations(obs, self.pi_layers)
        v = pi if self.shared else self.activations(obs, self.v_layers)
        params = self.head_params(F.linear(pi[-1], self.pi_head.weight, self.pi_head.bias))
        value = F.linear(v[-1], self.v_head.weight, self.v_head.bias).squeeze(-1)
        return params, value, Tape(pi, v, params)

    def backward(self, tape: Tape, d_params: Tensor, d_value: Tensor) -> None:
        """Chain rule from dL/d(dist params) and dL/dV to every `.grad`, overwriting it.

        The same gradients autograd would give (tests/test_fast_path.py) without building a
        graph: each weight gradient is one `mm` written straight into its `.grad` slot.
        """
        d_pi_out = self._head_backward(tape.params, d_params)
        d_v_out = d_value.unsqueeze(-1)
        write_linear_grads(self.pi_head, tape.pi[-1], d_pi_out)
        write_linear_grads(self.v_head, tape.v[-1], d_v_out)
        d_pi = d_pi_out @ self.pi_head.weight
        d_v = d_v_out @ self.v_head.weight
        if self.shared:
            self._tower_backward(self.pi_layers, tape.pi, d_pi + d_v)
        else:
            self._tower_backward(self.pi_layers, tape.pi, d_pi)
            self._tower_backward(self.v_layers, tape.v, d_v)

    def _head_backward(self, params: Tensor, d_params: Tensor) -> Tensor:
        """dL/d(policy head output): back through log_softmax, or split off log_std's share."""
        if self.log_std is None:
            return d_params - params.exp() * d_params.sum(-1, keepdim=True)
        d_mean, d_log_std = d_params.chunk(2, dim=-1)
        assert self.log_std.grad is not None
        torch.sum(d_log_std, 0, out=self.log_std.grad)
        return d_mean

    def _tower_backward(self, layers: list[nn.Linear], outputs: list[Tensor], d_h: Tensor) -> None:
        activation_backward = ACTIVATION_BACKWARDS[self.activation_kind]
        for i in range(len(layers) - 1, -1, -1):
            d_pre = activation_backward(d_h, outputs[i + 1])
            write_linear_grads(layers[i], outputs[i], d_pre)
            if i > 0:  # the observations need no gradient
                d_h = d_pre @ layers[i].weight

    def fused(self) -> FusedActorCritic:
        """A frozen single-MLP copy of the current weights, for acting (see FusedActorCritic)."""
        return FusedActorCritic(self)


def write_linear_grads(layer: nn.Linear, x: Tensor, d_out: Tensor) -> None:
    """dL/dW = d_out^T x and dL/db = sum_i d_out_i for y = x W^T + b, into the `.grad`s."""
    assert layer.weight.grad is not None and layer.bias.grad is not None
    torch.mm(d_out.T, x, out=layer.weight.grad)
    torch.sum(d_out, 0, out=layer.bias.grad)


class FusedActorCritic:
    """Both towers of an ActorCritic as one MLP, for inference: the same function, fewer calls.

    Separate towers become one MLP whose first layer stacks both towers' weights and whose
    later layers (and the two heads) are block-diagonal, so a forward is L + 1 `addmm`s instead
    of 2 (L + 1); the output is [policy head | value]. The extra terms are exact zeros, so
    the result equals ActorCritic.forward up to float summation order. It is a snapshot of the
    weights: build a new one after every update.
    """

    def __init__(self, agent: ActorCritic) -> None:
        self.agent = agent
        pairs = list(zip(agent.pi_layers, agent.v_layers, strict=True))
        pairs.append((agent.pi_head, agent.v_head))
        self.layers: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            for i, (pi, v) in enumerate(pairs):
                is_head = i == len(pairs) - 1
                if agent.shared and not is_head:
                    weight = pi.weight
                elif agent.shared or i == 0:
                    weight = torch.cat([pi.weight, v.weight])
                else:
                    weight = torch.block_diag(pi.weight, v.weight)  # type: ignore[no-untyped-call]
                bias = pi.bias if agent.shared and not is_head else torch.cat([pi.bias, v.bias])
                # Stored as [in, out] so each layer is one addmm(bias, x, weight).
                self.layers.append((weight.T.contiguous(), bias.detach().clone()))

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(dist params, value) of a [B, obs_dim] batch, as ActorCritic.forward returns them."""
        x = self.agent.normalize(obs)
        for weight, bias in self.layers[:-1]:
            x = self.agent.activation(torch.addmm(bias, x, weight))
        weight, bias = self.layers[-1]
        out = torch.addmm(bias, x, weight)
        return self.agent.head_params(out[:, :-1]), out[:, -1]

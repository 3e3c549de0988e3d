"""The fast backend's backward: the chain rule by hand through ActorCritic's heads and towers
and the action distributions, each weight gradient one `mm` written straight into its `.grad`.

No graph is built: `forward_tape` keeps what the backward needs. tests/test_fast_path.py and
tests/test_backends.py hold these gradients equal to autograd's through ppo1/core/losses.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppo1.config import Activation
from ppo1.core.distributions import ActionDistribution, Categorical, DiagGaussian
from ppo1.core.networks import ActorCritic


def _tanh_backward(grad: Tensor, out: Tensor) -> Tensor:
    """dL/dx from dL/dy where y = tanh(x): grad (1 - y^2), from the saved output."""
    return torch.addcmul(grad, grad * out, out, value=-1.0)


def _relu_backward(grad: Tensor, out: Tensor) -> Tensor:
    """dL/dx from dL/dy where y = relu(x): grad where y > 0 (torch's rule, 0 at x = 0)."""
    return grad * (out > 0)


# Each activation's derivative is written in terms of its output, which the tape keeps. An
# activation missing here trains only with algo.backend=autograd (fast_backend_problems).
ACTIVATION_BACKWARDS: dict[Activation, Callable[[Tensor, Tensor], Tensor]] = {
    Activation.tanh: _tanh_backward,
    Activation.relu: _relu_backward,
}


@dataclass
class Tape:
    """What the analytic backward needs from a forward: [obs, h_1, ..., h_L] of each tower."""

    pi: list[Tensor]
    v: list[Tensor]
    params: Tensor


def _categorical_grad(
    params: Tensor, actions: Tensor, d_log_prob: Tensor, d_entropy: float
) -> Tensor:
    """dL/dparams for L = sum_i d_log_prob_i log pi(a_i|s_i) + d_entropy sum_i H_i.

    d log pi(a) / d log pi(j) = [j = a];  dH / d log pi(j) = -pi(j) (1 + log pi(j)).
    """
    if d_entropy == 0.0:  # no entropy bonus (the default): skip its three ops
        grad = torch.zeros_like(params)
    else:
        grad = params.exp().mul_(params + 1.0).mul_(-d_entropy)
    return grad.scatter_add_(-1, actions.long().unsqueeze(-1), d_log_prob.unsqueeze(-1))


def _gaussian_grad(params: Tensor, actions: Tensor, d_log_prob: Tensor, d_entropy: float) -> Tensor:
    """dL/d[mean, log_std] for L = sum_i d_log_prob_i log pi(a_i|s_i) + d_entropy sum_i H_i.

    With z = (a - mean) / std: d log pi / d mean = z / std, d log pi / d log_std = z^2 - 1,
    dH / d log_std = 1.
    """
    mean, log_std = params.chunk(2, dim=-1)
    inv_std = torch.exp(-log_std)
    z = (actions - mean) * inv_std
    d = d_log_prob.unsqueeze(-1)
    return torch.cat([d * z * inv_std, (d * (z.square() - 1.0)).add_(d_entropy)], dim=-1)


def dist_grad(
    dist: ActionDistribution, params: Tensor, actions: Tensor, d_log_prob: Tensor, d_entropy: float
) -> Tensor:
    """dL/dparams for L = sum_i d_log_prob_i log pi(a_i|s_i) + d_entropy sum_i H_i."""
    if isinstance(dist, Categorical):
        return _categorical_grad(params, actions, d_log_prob, d_entropy)
    assert isinstance(dist, DiagGaussian)
    return _gaussian_grad(params, actions, d_log_prob, d_entropy)


def forward_tape(agent: ActorCritic, obs: Tensor) -> tuple[Tensor, Tensor, Tape]:
    """(dist params, V) and the tape `backward` needs (under `torch.no_grad` for that)."""
    obs = agent.normalize(obs)
    pi = agent.activations(obs, agent.pi_layers)
    v = pi if agent.shared else agent.activations(obs, agent.v_layers)
    params = agent.head_params(F.linear(pi[-1], agent.pi_head.weight, agent.pi_head.bias))
    value = F.linear(v[-1], agent.v_head.weight, agent.v_head.bias).squeeze(-1)
    return params, value, Tape(pi, v, params)


def backward(agent: ActorCritic, tape: Tape, d_params: Tensor, d_value: Tensor) -> None:
    """Chain rule from dL/d(dist params) and dL/dV to every `.grad`, overwriting it.

    The same gradients autograd would give (tests/test_fast_path.py) without building a
    graph: each weight gradient is one `mm` written straight into its `.grad` slot.
    """
    d_pi_out = _head_backward(agent, tape.params, d_params)
    d_v_out = d_value.unsqueeze(-1)
    write_linear_grads(agent.pi_head, tape.pi[-1], d_pi_out)
    write_linear_grads(agent.v_head, tape.v[-1], d_v_out)
    d_pi = d_pi_out @ agent.pi_head.weight
    d_v = d_v_out @ agent.v_head.weight
    if agent.shared:
        _tower_backward(agent, agent.pi_layers, tape.pi, d_pi + d_v)
    else:
        _tower_backward(agent, agent.pi_layers, tape.pi, d_pi)
        _tower_backward(agent, agent.v_layers, tape.v, d_v)


def _head_backward(agent: ActorCritic, params: Tensor, d_params: Tensor) -> Tensor:
    """dL/d(policy head output): back through log_softmax, or split off log_std's share."""
    if agent.log_std is None:
        return d_params - params.exp() * d_params.sum(-1, keepdim=True)
    d_mean, d_log_std = d_params.chunk(2, dim=-1)
    assert agent.log_std.grad is not None
    torch.sum(d_log_std, 0, out=agent.log_std.grad)
    return d_mean


def _tower_backward(
    agent: ActorCritic, layers: list[nn.Linear], outputs: list[Tensor], d_h: Tensor
) -> None:
    activation_backward = ACTIVATION_BACKWARDS[agent.activation_kind]
    for i in range(len(layers) - 1, -1, -1):
        d_pre = activation_backward(d_h, outputs[i + 1])
        write_linear_grads(layers[i], outputs[i], d_pre)
        if i > 0:  # the observations need no gradient
            d_h = d_pre @ layers[i].weight


def write_linear_grads(layer: nn.Linear, x: Tensor, d_out: Tensor) -> None:
    """dL/dW = d_out^T x and dL/db = sum_i d_out_i for y = x W^T + b, into the `.grad`s."""
    assert layer.weight.grad is not None and layer.bias.grad is not None
    torch.mm(d_out.T, x, out=layer.weight.grad)
    torch.sum(d_out, 0, out=layer.bias.grad)

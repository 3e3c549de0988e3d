"""`algo.backend=fast`: the update of ppo1/core/update.py with hand-derived gradients.

On a 2x64 MLP autograd's bookkeeping costs more than the arithmetic, so this backend writes
d(-L)/d log pi and d(-L)/dV of `losses.ppo_loss` by hand, then the chain rule of backward.py, under
`torch.no_grad()`. It implements the loss and network options `fast_backend_problems` does not
refuse; tests/test_backends.py checks, field by field of the schema, that it gives the same
update as `algo.backend=autograd` or refuses the setting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ppo1.config import AlgoConfig, ConfigError
from ppo1.core.fast.backward import ACTIVATION_BACKWARDS, backward, dist_grad, forward_tape
from ppo1.core.fast.optim import FlatAdam
from ppo1.core.networks import ActorCritic
from ppo1.core.update import Batch, Step, UpdateStats, adam_eps_at, run_update


def fast_backend_problems(cfg: AlgoConfig) -> list[tuple[bool, str]]:
    """The settings whose gradient this backend lacks, each with its one-line refusal."""

    def refusal(key: str, value: object) -> str:
        return (
            f"algo.{key}={value} is not implemented by algo.backend=fast; use algo.backend=autograd"
        )

    activation = cfg.net.activation
    return [
        (
            activation not in ACTIVATION_BACKWARDS,
            refusal("net.activation", activation.name),
        ),
    ]


def check_fast_backend(cfg: AlgoConfig) -> None:
    """Raise ConfigError naming every setting of `cfg` the fast backend cannot train."""
    failed = [message for bad, message in fast_backend_problems(cfg) if bad]
    if failed:
        raise ConfigError("; ".join(failed))


def clipped_surrogate_grad(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """d(-L^CLIP)/d log r_t of eq. (7): -r_t A_t / B where min() takes the unclipped term.

    min(r A, clip(r) A) takes r A exactly where the clip is not active (`clip_active`), ties
    included, so comparing the two terms is the same mask in fewer ops than `clip_active`'s.
    """
    unclipped = ratio * advantages
    taken = unclipped <= torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return torch.where(taken, unclipped, 0.0).mul_(-1.0 / ratio.numel())


def value_loss_grad(
    values: Tensor, returns: Tensor, old_values: Tensor, clip_vf: float | None, coef: float = 1.0
) -> Tensor:
    """coef * d value_loss / dV_t: 2 coef (V - R) / B, through the branch of the max taken."""
    error = values - returns
    if clip_vf is not None:
        delta = values - old_values
        clipped_error = old_values + torch.clamp(delta, -clip_vf, clip_vf) - returns
        # The clipped branch only carries gradient inside the clip range, where it equals V - R.
        error = torch.where(clipped_error.square() > error.square(), 0.0, error)
    return error.mul_(2.0 * coef / values.numel())


def ppo_loss_grad(agent: ActorCritic, mb: Batch, cfg: AlgoConfig, clip: float) -> Step:
    """The gradient of `losses.ppo_loss` (-L^{CLIP+VF+S}, eq. 9) of a minibatch, written into
    every `.grad`: d(-L)/d log pi and d(-L)/dV from the loss terms' derivatives, then
    `backward` through the network. The loss itself is computed later (`update.step_losses`)."""
    dist = agent.dist
    dist_params, values, tape = forward_tape(agent, mb.obs)
    log_ratio = dist.log_prob(dist_params, mb.actions) - mb.log_probs
    # d(-L)/d log pi = d(-L)/d log r; the entropy term of eq. (9) is -c2 mean_t H_t.
    d_log_prob = clipped_surrogate_grad(log_ratio.exp(), mb.advantages, clip)
    d_params = dist_grad(dist, dist_params, mb.actions, d_log_prob, -cfg.ent_coef / len(mb))
    d_value = value_loss_grad(values, mb.returns, mb.values, cfg.clip_vf, cfg.vf_coef)
    backward(agent, tape, d_params, d_value)
    return Step(mb, dist_params, values, log_ratio)


def fast_update(
    agent: ActorCritic, optimizer: FlatAdam, batch: Batch, cfg: AlgoConfig, clip: float
) -> UpdateStats:
    """`update.run_update` with the analytic gradient and FlatAdam, without autograd."""

    def gradient(mb: Batch) -> Step:
        return ppo_loss_grad(agent, mb, cfg, clip)

    def clip_grad_norm(max_norm: float) -> float:
        # A Python float: the finite check needs it on the host anyway, and `.item()` is
        # ~1 us against ~15 us for torch.isfinite on a 0-d tensor.
        return optimizer.clip_grad_norm(max_norm).item()

    def optimizer_step() -> None:
        if cfg.adam_eps_uncorrected:
            optimizer.eps = adam_eps_at(cfg, optimizer.steps + 1, optimizer.betas[1])
        optimizer.step()

    with torch.no_grad():
        return run_update(agent, batch, cfg, clip, gradient, clip_grad_norm, optimizer_step)

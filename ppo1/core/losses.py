"""The PPO-Clip loss, defined once: every backend trains and logs these functions.

Notation of Schulman et al. 2017: r_t = pi(a_t|s_t) / pi_old(a_t|s_t) the probability ratio,
A_t the advantage estimate, eps the clip range, V(s_t) the value and R_t its target.
`algo.backend=autograd` differentiates `ppo_loss` with `loss.backward()`; `algo.backend=fast`
follows hand-derived gradients of the same terms (ppo1/core/fast/) and logs these functions'
values, so a new term here trains at once with autograd and the fast backend refuses it until
its gradient is written (docs/adding-a-loss-term.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ppo1.config import AlgoConfig


def clipped_surrogate_loss(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """-L^CLIP, eq. (7): -E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(
    values: Tensor, returns: Tensor, old_values: Tensor, clip_vf: float | None
) -> Tensor:
    """L^VF = E_t[(V - R)^2]; with clip_vf c, E_t[max((V - R)^2, (V_old + clip(V - V_old, +-c)
    - R)^2)] (OpenAI baselines' ppo2). No 1/2, as in SB PPO1 and SB3."""
    loss = (values - returns).square()
    if clip_vf is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip_vf, clip_vf)
        loss = torch.max(loss, (clipped - returns).square())
    return loss.mean()


def entropy_bonus(entropy: Tensor) -> Tensor:
    """S = E_t[H(pi(.|s_t))], the exploration bonus of eq. (9)."""
    return entropy.mean()


class LossTerms(NamedTuple):
    """The loss a backend minimises (`total`) and the terms it logs."""

    total: Tensor
    policy_loss: Tensor
    value_loss: Tensor
    entropy: Tensor


def ppo_loss(
    ratio: Tensor,
    advantages: Tensor,
    values: Tensor,
    returns: Tensor,
    old_values: Tensor,
    entropy: Tensor,
    cfg: AlgoConfig,
    clip: float,
) -> LossTerms:
    """-L^{CLIP+VF+S}, eq. (9): -(L^CLIP - c1 L^VF + c2 S) with c1 = vf_coef, c2 = ent_coef."""
    pg_loss = clipped_surrogate_loss(ratio, advantages, clip)
    v_loss = value_loss(values, returns, old_values, cfg.clip_vf)
    bonus = entropy_bonus(entropy)
    total = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * bonus
    return LossTerms(total, pg_loss, v_loss, bonus)


def clip_active(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """Where L^CLIP takes the clipped branch (zero gradient): A>=0, r>1+eps or A<0, r<1-eps."""
    return ((advantages >= 0) & (ratio > 1.0 + clip)) | ((advantages < 0) & (ratio < 1.0 - clip))


def approx_kl(log_ratio: Tensor) -> Tensor:
    """k3 estimator of KL(old || new): E[(r - 1) - log r] (Schulman, "Approximating KL", 2020)."""
    return (torch.expm1(log_ratio) - log_ratio).mean()


def clip_fraction(ratio: Tensor, clip: float) -> Tensor:
    """Fraction of samples whose ratio lies outside [1 - eps, 1 + eps]."""
    return ((ratio - 1.0).abs() > clip).float().mean()

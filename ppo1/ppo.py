"""The PPO-Clip objective, its diagnostics, and the update over epochs x minibatches."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ppo1.config import AdvNorm, AlgoConfig
from ppo1.distributions import ActionDistribution
from ppo1.networks import ActorCritic
from ppo1.optim import FlatAdam
from ppo1.rollout import Rollout


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; raised before it can reach the weights."""


def clipped_surrogate_loss(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """-L^CLIP, eq. (7) of Schulman et al. 2017: -E[min(r A, clip(r, 1 - eps, 1 + eps) A)]."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return -torch.min(unclipped, clipped).mean()


def clipped_surrogate_grad(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """d(-L^CLIP)/d log r_t of eq. (7): -r_t A_t / B where min() takes the unclipped term.

    min(r A, clip(r) A) takes r A exactly where the clip is not active (`clip_active`), ties
    included, so comparing the two terms is the same mask in fewer ops than `clip_active`'s.
    """
    unclipped = ratio * advantages
    taken = unclipped <= torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return torch.where(taken, unclipped, 0.0).mul_(-1.0 / ratio.numel())


def clip_active(ratio: Tensor, advantages: Tensor, clip: float) -> Tensor:
    """Where L^CLIP takes the clipped branch (zero gradient): A>=0, r>1+eps or A<0, r<1-eps."""
    return ((advantages >= 0) & (ratio > 1.0 + clip)) | ((advantages < 0) & (ratio < 1.0 - clip))


def value_loss(
    values: Tensor, returns: Tensor, old_values: Tensor, clip_vf: float | None
) -> Tensor:
    """E[(V - R)^2]; with clip_vf c, E[max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2)]."""
    loss = (values - returns).square()
    if clip_vf is not None:
        clipped = old_values + torch.clamp(values - old_values, -clip_vf, clip_vf)
        loss = torch.max(loss, (clipped - returns).square())
    return loss.mean()


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


def approx_kl(log_ratio: Tensor) -> Tensor:
    """k3 estimator of KL(old || new): E[(r - 1) - log r] (Schulman, "Approximating KL", 2020)."""
    return (torch.expm1(log_ratio) - log_ratio).mean()


def clip_fraction(ratio: Tensor, clip: float) -> Tensor:
    """Fraction of samples whose ratio lies outside [1 - eps, 1 + eps]."""
    return ((ratio - 1.0).abs() > clip).float().mean()


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var[R - V] / Var[R]: 1 is a perfect value function, <= 0 no better than a constant."""
    var_returns = returns.var()
    return float("nan") if var_returns == 0 else float(1.0 - (returns - values).var() / var_returns)


def normalize_advantages(advantages: Tensor, mode: AdvNorm) -> Tensor:
    """Per-batch: population std, no epsilon (SB PPO1); per-minibatch: sample std + 1e-8 (SB3)."""
    if mode is AdvNorm.batch:
        return (advantages - advantages.mean()) / advantages.std(correction=0)
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def ppo_loss(
    ratio: Tensor,
    advantages: Tensor,
    values: Tensor,
    returns: Tensor,
    old_values: Tensor,
    entropy: Tensor,
    cfg: AlgoConfig,
    clip: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-L^{CLIP+VF+S}, eq. (9) of Schulman et al. 2017: L^CLIP - c1 L^VF + c2 H, negated.

    Returns (total, policy loss, value loss, mean entropy).
    """
    pg_loss = clipped_surrogate_loss(ratio, advantages, clip)
    v_loss = value_loss(values, returns, old_values, cfg.clip_vf)
    mean_entropy = entropy.mean()
    total = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * mean_entropy
    return total, pg_loss, v_loss, mean_entropy


@dataclass
class Batch:
    """A rollout flattened to [T * N, ...] with its advantages and lambda-returns."""

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    dist_params: Tensor
    advantages: Tensor
    returns: Tensor

    @classmethod
    def from_rollout(cls, buf: Rollout, advantages: Tensor, returns: Tensor) -> Batch:
        def flat(x: Tensor) -> Tensor:
            return x.reshape(-1, *x.shape[2:])

        return cls(
            flat(buf.obs),
            flat(buf.actions),
            flat(buf.log_probs),
            flat(buf.values),
            flat(buf.dist_params),
            flat(advantages),
            flat(returns),
        )

    def __len__(self) -> int:
        return self.obs.shape[0]

    def take(self, idx: Tensor) -> Batch:
        """The samples at `idx` (a minibatch)."""
        return Batch(*(getattr(self, f.name)[idx] for f in fields(self)))


@dataclass
class UpdateStats:
    """Per-update diagnostics; loss terms are means over the minibatch steps taken."""

    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clipfrac: float
    grad_norm: float
    # Exact KL(pi_old || pi_new) over the whole batch after the update (SB PPO1's `meankl`).
    kl: float
    explained_variance: float
    epochs: int
    # r_t of every sample under the updated policy, and the advantages it was trained on.
    ratio: Tensor
    advantages: Tensor


@dataclass
class Step:
    """What one minibatch step saw; the update's diagnostics are computed from all of them
    at once after the last step, which keeps ~30 small tensor ops out of every step."""

    mb: Batch
    dist_params: Tensor
    values: Tensor
    log_ratio: Tensor


def ppo_loss_grad(agent: ActorCritic, mb: Batch, cfg: AlgoConfig, clip: float) -> Step:
    """The gradient of -L^{CLIP+VF+S} (eq. 9) of a minibatch, written into every `.grad`.

    The gradient is analytic, not autograd's: d(-L)/d log pi and d(-L)/dV from the loss
    terms' derivatives, then `ActorCritic.backward`; on a 2x64 MLP autograd's bookkeeping
    costs more than the arithmetic. The loss itself is computed later (`step_losses`).
    """
    dist = agent.dist
    dist_params, values, tape = agent.forward_tape(mb.obs)
    log_ratio = dist.log_prob(dist_params, mb.actions) - mb.log_probs
    # d(-L)/d log pi = d(-L)/d log r; the entropy term of eq. (9) is -c2 mean_t H_t.
    d_log_prob = clipped_surrogate_grad(log_ratio.exp(), mb.advantages, clip)
    d_params = dist.grad(dist_params, mb.actions, d_log_prob, -cfg.ent_coef / len(mb))
    d_value = value_loss_grad(values, mb.returns, mb.values, cfg.clip_vf, cfg.vf_coef)
    agent.backward(tape, d_params, d_value)
    return Step(mb, dist_params, values, log_ratio)


def step_losses(
    steps: list[Step], dist: ActionDistribution, cfg: AlgoConfig, clip: float
) -> Tensor:
    """[total, policy loss, value loss, entropy, approx KL, clip fraction]: means over every
    sample of every step in `steps`."""

    def cat(field: Callable[[Step], Tensor]) -> Tensor:
        return torch.cat([field(step) for step in steps])

    dist_params, log_ratio = cat(lambda s: s.dist_params), cat(lambda s: s.log_ratio)
    ratio = log_ratio.exp()
    losses = ppo_loss(
        ratio,
        cat(lambda s: s.mb.advantages),
        cat(lambda s: s.values),
        cat(lambda s: s.mb.returns),
        cat(lambda s: s.mb.values),
        dist.entropy(dist_params),
        cfg,
        clip,
    )
    return torch.stack([*losses, approx_kl(log_ratio), clip_fraction(ratio, clip)])


def minibatches(batch: Batch, cfg: AlgoConfig) -> Iterator[Batch]:
    """One epoch of shuffled minibatches, advantages normalised per minibatch if configured.

    SB PPO1 drops the last partial minibatch (256 / 64 -> 4 steps an epoch); SB3 keeps it.
    """
    n, size = len(batch), cfg.minibatch_size
    perm = torch.randperm(n)
    for start in range(0, n - size + 1 if cfg.drop_last else n, size):
        mb = batch.take(perm[start : start + size])
        if cfg.adv_norm is AdvNorm.minibatch and len(mb) > 1:
            mb.advantages = normalize_advantages(mb.advantages, AdvNorm.minibatch)
        yield mb


def ppo_update(
    agent: ActorCritic, optimizer: FlatAdam, batch: Batch, cfg: AlgoConfig, clip: float
) -> UpdateStats:
    """cfg.epochs passes of Adam over shuffled minibatches of the clipped surrogate loss.

    Raises NonFiniteLossError, before the step that would apply it, on a NaN/inf gradient.
    """
    advantages = batch.advantages
    if cfg.adv_norm is AdvNorm.batch:
        advantages = normalize_advantages(advantages, AdvNorm.batch)
    batch = replace(batch, advantages=advantages)
    # A minibatch as large as the batch is the batch in every epoch: a full-batch gradient
    # does not depend on the order, so skip the shuffle and the gathers (the RL Zoo default).
    whole = [next(minibatches(batch, cfg))] if cfg.minibatch_size >= len(batch) else None
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
    steps: list[Step] = []
    grad_norms: list[float] = []
    epochs_done = 0
    with torch.no_grad():
        for _ in range(cfg.epochs):
            stop = False
            for mb in whole or minibatches(batch, cfg):
                step = ppo_loss_grad(agent, mb, cfg, clip)
                # SB3's early stop: approx KL of this minibatch, before its step.
                if cfg.target_kl is not None and approx_kl(step.log_ratio) > 1.5 * cfg.target_kl:
                    stop = True
                    break
                # A Python float: the check needs it on the host anyway, and `.item()` is
                # ~1 us against ~15 us for torch.isfinite on a 0-d tensor.
                grad_norm = optimizer.clip_grad_norm(max_norm).item()
                if not math.isfinite(grad_norm):
                    # A NaN/inf loss makes a NaN/inf gradient: name the culprit, keep the weights.
                    total, pg, vf, ent = step_losses([step], agent.dist, cfg, clip)[:4].tolist()
                    raise NonFiniteLossError(
                        f"non-finite loss {total} (policy {pg}, value {vf}, entropy {ent}) or "
                        f"gradient (norm {grad_norm}); lower algo.lr or algo.clip"
                    )
                optimizer.step()
                steps.append(step)
                grad_norms.append(grad_norm)
            if stop:
                break
            epochs_done += 1
        new_params = agent.dist_params(batch.obs)
        kl = agent.dist.kl(batch.dist_params, new_params).mean().item()
        ratio = (agent.dist.log_prob(new_params, batch.actions) - batch.log_probs).exp()
        nan = float("nan")
        _, pg, vf, ent, mean_kl_est, clipfrac = (
            step_losses(steps, agent.dist, cfg, clip).tolist() if steps else [nan] * 6
        )
        grad = sum(grad_norms) / len(grad_norms) if steps else nan
    return UpdateStats(
        policy_loss=pg,
        value_loss=vf,
        entropy=ent,
        approx_kl=mean_kl_est,
        clipfrac=clipfrac,
        grad_norm=grad,
        kl=kl,
        explained_variance=explained_variance(batch.values, batch.returns),
        epochs=epochs_done,
        ratio=ratio,
        advantages=advantages,
    )

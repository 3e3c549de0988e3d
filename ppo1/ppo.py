"""The PPO-Clip objective, its diagnostics, and the update over epochs x minibatches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ppo1.config import AdvNorm, AlgoConfig
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


def ppo_update(
    agent: ActorCritic, optimizer: FlatAdam, batch: Batch, cfg: AlgoConfig, clip: float
) -> UpdateStats:
    """cfg.epochs passes of Adam over shuffled minibatches of the clipped surrogate loss."""
    advantages = batch.advantages
    if cfg.adv_norm is AdvNorm.batch:
        advantages = normalize_advantages(advantages, AdvNorm.batch)
    n, mb = len(batch), cfg.minibatch_size
    # SB PPO1 drops the last partial minibatch (256 / 64 -> 4 steps an epoch); SB3 keeps it.
    starts = range(0, n - mb + 1 if cfg.drop_last else n, mb)
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
    terms: list[Tensor] = []
    epochs_done, stop = 0, False
    for _ in range(cfg.epochs):
        perm = torch.randperm(n)
        for start in starts:
            idx = perm[start : start + mb]
            dist_params, values = agent(batch.obs[idx])
            log_ratio = agent.dist.log_prob(dist_params, batch.actions[idx]) - batch.log_probs[idx]
            ratio = log_ratio.exp()
            kl_est = approx_kl(log_ratio.detach())
            if cfg.target_kl is not None and kl_est.item() > 1.5 * cfg.target_kl:
                stop = True
                break
            adv = advantages[idx]
            if cfg.adv_norm is AdvNorm.minibatch and len(idx) > 1:
                adv = normalize_advantages(adv, AdvNorm.minibatch)
            loss, pg_loss, v_loss, entropy = ppo_loss(
                ratio,
                adv,
                values,
                batch.returns[idx],
                batch.values[idx],
                agent.dist.entropy(dist_params),
                cfg,
                clip,
            )
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite loss {loss.item()} (policy {pg_loss.item()}, value "
                    f"{v_loss.item()}, entropy {entropy.item()}); lower algo.lr or algo.clip"
                )
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            grad_norm = optimizer.clip_grad_norm(max_norm)
            optimizer.step()
            terms.append(
                torch.stack(
                    [
                        pg_loss.detach(),
                        v_loss.detach(),
                        entropy.detach(),
                        kl_est,
                        clip_fraction(ratio.detach(), clip),
                        grad_norm,
                    ]
                )
            )
        if stop:
            break
        epochs_done += 1
    means: list[float] = torch.stack(terms).mean(0).tolist() if terms else [float("nan")] * 6
    pg, vf, ent, mean_kl_est, clipfrac, grad = means
    with torch.no_grad():
        new_params = agent.dist_params(batch.obs)
        kl = agent.dist.kl(batch.dist_params, new_params).mean().item()
        ratio = (agent.dist.log_prob(new_params, batch.actions) - batch.log_probs).exp()
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

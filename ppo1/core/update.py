"""The PPO update: epochs x minibatches of the loss of ppo1/core/losses.py, and its diagnostics.

`run_update` holds the rules every backend follows (advantage normalisation, minibatches, the
target-KL stop, gradient clipping, the non-finite guard, the logged statistics); a backend only
says how it gets a minibatch's gradient and steps its optimizer. `autograd_update` is the
readable one (`loss.backward()` and `torch.optim.Adam`, as CleanRL's ppo.py); the analytic
`fast_update` of ppo1/core/fast/update.py is the same update with hand-derived gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ppo1.config import AdvNorm, AlgoConfig
from ppo1.core.distributions import ActionDistribution
from ppo1.core.losses import approx_kl, clip_fraction, ppo_loss
from ppo1.core.networks import ActorCritic
from ppo1.core.rollout import Rollout


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; raised before it can reach the weights."""


def explained_variance(values: Tensor, returns: Tensor) -> float:
    """1 - Var[R - V] / Var[R]: 1 is a perfect value function, <= 0 no better than a constant."""
    var_returns = returns.var()
    return float("nan") if var_returns == 0 else float(1.0 - (returns - values).var() / var_returns)


def normalize_advantages(
    advantages: Tensor, mode: AdvNorm, eps: float = 1e-8, num_envs: int = 1
) -> Tensor:
    """(A - mean) / (std + eps): over the whole batch or each env's segment with the population
    std (numpy's, as SB PPO1 and the seed notebook compute it), over a minibatch with the sample
    std (torch's, as SB3). `per_env` takes a t-major batch of `num_envs` interleaved segments,
    the layout of `Batch.from_rollout`."""
    if mode is AdvNorm.none:
        return advantages
    if mode is AdvNorm.minibatch:
        return (advantages - advantages.mean()) / (advantages.std() + eps)
    # [T, N]: one column per env segment; `batch` is one segment.
    segments = advantages.reshape(-1, num_envs if mode is AdvNorm.per_env else 1)
    std = segments.std(0, correction=0)
    return ((segments - segments.mean(0)) / (std + eps)).reshape(advantages.shape)


def adam_eps_at(cfg: AlgoConfig, t: int, beta2: float) -> float:
    """The epsilon of Kingma & Ba's Adam step t: `algo.adam_eps`, or with adam_eps_uncorrected
    eps / sqrt(1 - beta2^t), which makes the step MpiAdam's (OpenAI baselines, SB PPO1),
    lr sqrt(1 - beta2^t) / (1 - beta1^t) m_t / (sqrt(v_t) + eps)."""
    if not cfg.adam_eps_uncorrected:
        return cfg.adam_eps
    return cfg.adam_eps / math.sqrt(1.0 - beta2**t)


@dataclass
class Batch:
    """A rollout flattened to [T * N, ...] with its advantages and lambda-returns: sample
    t * num_envs + e is env e's step t."""

    obs: Tensor
    actions: Tensor
    log_probs: Tensor
    values: Tensor
    dist_params: Tensor
    advantages: Tensor
    returns: Tensor
    num_envs: int = 1

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
            buf.obs.shape[1],
        )

    def __len__(self) -> int:
        return self.obs.shape[0]

    def take(self, idx: Tensor) -> Batch:
        """The samples at `idx` (a minibatch, one segment whatever envs it drew from)."""
        return Batch(*(getattr(self, f.name)[idx] for f in fields(self) if f.name != "num_envs"))

    def segments(self, cfg: AlgoConfig) -> int:
        """How many segments minibatches are drawn from: one per env with minibatch_per_env."""
        return self.num_envs if cfg.minibatch_per_env else 1


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
    """What one minibatch step saw (no autograd history); the update's diagnostics are
    computed from all of them at once after the last step, which keeps ~30 small tensor ops
    out of every step."""

    mb: Batch
    dist_params: Tensor
    values: Tensor
    log_ratio: Tensor


def step_losses(
    steps: list[Step], dist: ActionDistribution, cfg: AlgoConfig, clip: float
) -> Tensor:
    """[total, policy loss, value loss, entropy, approx KL, clip fraction]: means over every
    sample of every step in `steps`, from `ppo_loss` itself whatever the backend."""

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
    With `minibatch_per_env` each env's segment is shuffled on its own (one `randperm` per
    env, in env order) and a minibatch takes the next `minibatch_size` samples of each, as
    SB PPO1's MPI workers each take the next minibatch of their own Dataset.
    """
    envs, size = batch.segments(cfg), cfg.minibatch_size
    n = len(batch) // envs
    # order[e, i]: the flat index of env e's i-th sample this epoch (see Batch).
    perms = torch.stack([torch.randperm(n) for _ in range(envs)])
    order = perms * envs + torch.arange(envs).unsqueeze(1) if envs > 1 else perms
    for start in range(0, n - size + 1 if cfg.drop_last else n, size):
        mb = batch.take(order[:, start : start + size].reshape(-1))
        if cfg.adv_norm is AdvNorm.minibatch and len(mb) > 1:
            mb.advantages = normalize_advantages(mb.advantages, AdvNorm.minibatch, cfg.adv_norm_eps)
        yield mb


# A backend's part of a minibatch step: the gradient of the loss on a minibatch, left in every
# parameter's `.grad`, with what the step saw; the global gradient norm, clipped to at most
# the given norm (inf: only measured); the optimizer step.
Gradient = Callable[[Batch], Step]
ClipGradNorm = Callable[[float], float]
OptimizerStep = Callable[[], object]


def run_update(
    agent: ActorCritic,
    batch: Batch,
    cfg: AlgoConfig,
    clip: float,
    gradient: Gradient,
    clip_grad_norm: ClipGradNorm,
    optimizer_step: OptimizerStep,
) -> UpdateStats:
    """cfg.epochs passes of the optimizer over shuffled minibatches of `ppo_loss`.

    Raises NonFiniteLossError, before the step that would apply it, on a NaN/inf gradient.
    """
    if cfg.adv_norm in (AdvNorm.batch, AdvNorm.per_env):
        advantages = normalize_advantages(
            batch.advantages, cfg.adv_norm, cfg.adv_norm_eps, batch.num_envs
        )
        batch = replace(batch, advantages=advantages)
    # A minibatch as large as the batch is the batch in every epoch: a full-batch gradient
    # does not depend on the order, so skip the shuffle and the gathers (the RL Zoo default).
    is_whole = cfg.minibatch_size * batch.segments(cfg) >= len(batch)
    whole = [next(minibatches(batch, cfg))] if is_whole else None
    max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
    steps: list[Step] = []
    grad_norms: list[float] = []
    epochs_done = 0
    for _ in range(cfg.epochs):
        stop = False
        for mb in whole or minibatches(batch, cfg):
            step = gradient(mb)
            # SB3's early stop: approx KL of this minibatch, before its step.
            if cfg.target_kl is not None and approx_kl(step.log_ratio) > 1.5 * cfg.target_kl:
                stop = True
                break
            grad_norm = clip_grad_norm(max_norm)
            if not math.isfinite(grad_norm):
                # A NaN/inf loss makes a NaN/inf gradient: name the culprit, keep the weights.
                total, pg, vf, ent = step_losses([step], agent.dist, cfg, clip)[:4].tolist()
                raise NonFiniteLossError(
                    f"non-finite loss {total} (policy {pg}, value {vf}, entropy {ent}) or "
                    f"gradient (norm {grad_norm}); lower algo.lr or algo.clip"
                )
            optimizer_step()
            steps.append(step)
            grad_norms.append(grad_norm)
        if stop:
            break
        epochs_done += 1
    with torch.no_grad():
        return update_stats(agent, batch, steps, grad_norms, epochs_done, cfg, clip)


def update_stats(
    agent: ActorCritic,
    batch: Batch,
    steps: list[Step],
    grad_norms: list[float],
    epochs: int,
    cfg: AlgoConfig,
    clip: float,
) -> UpdateStats:
    """The update's diagnostics: loss terms over the steps taken, and the whole batch's KL and
    ratios under the updated policy."""
    new_params = agent.dist_params(batch.obs)
    kl = agent.dist.kl(batch.dist_params, new_params).mean().item()
    ratio = (agent.dist.log_prob(new_params, batch.actions) - batch.log_probs).exp()
    nan = float("nan")
    _, pg, vf, ent, mean_kl_est, clipfrac = (
        step_losses(steps, agent.dist, cfg, clip).tolist() if steps else [nan] * 6
    )
    return UpdateStats(
        policy_loss=pg,
        value_loss=vf,
        entropy=ent,
        approx_kl=mean_kl_est,
        clipfrac=clipfrac,
        grad_norm=sum(grad_norms) / len(grad_norms) if steps else nan,
        kl=kl,
        explained_variance=explained_variance(batch.values, batch.returns),
        epochs=epochs,
        ratio=ratio,
        advantages=batch.advantages,
    )


def autograd_update(
    agent: ActorCritic,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    cfg: AlgoConfig,
    clip: float,
) -> UpdateStats:
    """`algo.backend=autograd`: each minibatch's `ppo_loss` through `loss.backward()`."""

    def gradient(mb: Batch) -> Step:
        dist_params, values = agent(mb.obs)
        log_ratio = agent.dist.log_prob(dist_params, mb.actions) - mb.log_probs
        entropy = agent.dist.entropy(dist_params)
        loss = ppo_loss(
            log_ratio.exp(), mb.advantages, values, mb.returns, mb.values, entropy, cfg, clip
        ).total
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        return Step(mb, dist_params.detach(), values.detach(), log_ratio.detach())

    def clip_grad_norm(max_norm: float) -> float:
        return torch.nn.utils.clip_grad_norm_(agent.parameters(), max_norm).item()

    def optimizer_step() -> None:
        if cfg.adam_eps_uncorrected:
            state = optimizer.state[next(agent.parameters())]
            t = int(state["step"]) + 1 if "step" in state else 1
            for group in optimizer.param_groups:
                group["eps"] = adam_eps_at(cfg, t, group["betas"][1])
        optimizer.step()

    return run_update(agent, batch, cfg, clip, gradient, clip_grad_norm, optimizer_step)

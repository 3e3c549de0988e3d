"""`algo=sb_ppo1` with `env.num_envs=N` is SB PPO1 with N MPI workers (docs/sb_ppo1.md).

In `pposgd_simple.py` each worker standardises the advantages of its own segment (numpy's
population std, no epsilon) and walks its own shuffled Dataset in minibatches of 64; MpiAdam
sums the workers' gradients and divides by N before each Adam step. Both are checked here
against computations by hand, through the composed preset and both backends, as is MpiAdam's
epsilon, added to the uncorrected sqrt(v).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import gymnasium as gym
import pytest
import torch
from torch import Tensor

from ppo1.config import AdvNorm, AlgoConfig, Backend, TrainConfig
from ppo1.core.backends import make_optimizer, ppo_update
from ppo1.core.fast.optim import FlatAdam
from ppo1.core.networks import ActorCritic
from ppo1.core.update import Batch

Compose = Callable[[list[str]], TrainConfig]
pytestmark = pytest.mark.usefixtures("one_torch_thread")
OBS_DIM, SPACE = 5, gym.spaces.Discrete(3)
# float64: the two sides differ in summation order only.
RTOL, ATOL = 1e-9, 1e-12


def sb_ppo1(compose_cfg: Compose, num_envs: int, backend: str) -> AlgoConfig:
    cfg = compose_cfg(["algo=sb_ppo1", f"env.num_envs={num_envs}", f"algo.backend={backend}"])
    return cfg.algo


def make_agent(algo: AlgoConfig) -> ActorCritic:
    torch.manual_seed(0)
    return ActorCritic(OBS_DIM, SPACE, algo.net).double()


def rollout_batch(agent: ActorCritic, n_steps: int, num_envs: int, advantages: Tensor) -> Batch:
    """A [n_steps, num_envs] rollout, flattened t-major as Batch.from_rollout does, whose old
    policy is off the agent's so that the clip binds."""
    n = n_steps * num_envs
    obs = torch.randn(n, OBS_DIM, dtype=torch.float64)
    with torch.no_grad():
        params, values = agent(obs)
    actions = agent.dist.sample(params)
    log_probs = agent.dist.log_prob(params, actions) + 0.3 * torch.randn_like(values)
    returns = values + torch.randn_like(values)
    return Batch(obs, actions, log_probs, values, params, advantages, returns, num_envs)


def update(agent: ActorCritic, batch: Batch, algo: AlgoConfig) -> tuple[ActorCritic, int]:
    """One update of `agent` (a copy) with the backend's optimizer: the agent and Adam steps."""
    agent = copy.deepcopy(agent)
    optimizer = make_optimizer(agent, algo)
    torch.manual_seed(1)
    ppo_update(agent, optimizer, batch, algo, algo.clip, algo.lr)
    if isinstance(optimizer, FlatAdam):
        return agent, optimizer.steps
    return agent, int(optimizer.state[next(agent.parameters())]["step"])


def assert_same_weights(a: ActorCritic, b: ActorCritic) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL, msg=name)


def segments_advantages(n_steps: int, num_envs: int) -> tuple[Tensor, Tensor]:
    """Advantages m_e + d_e s_t per env e, with s_t = +-1 alternating, and their hand-worked
    standardisation s_t: each segment has mean m_e and population std d_e. Every value is
    exact in float64 (d_e a power of two), so `(A - mean) / std` is exactly s_t: the sample
    std would scale it by sqrt(n / (n - 1)), an epsilon of 1e-8 by d_e / (d_e + 1e-8) ~ 0.99,
    and one normalisation over all segments would mix their means."""
    s = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(n_steps // 2)
    offsets = torch.tensor([3.0, -5.0, 0.5, 12.0], dtype=torch.float64)[:num_envs]
    scales = 2.0 ** -torch.arange(20, 20 + 2 * num_envs, 2, dtype=torch.float64)
    raw = offsets + scales * s.unsqueeze(1)  # [T, N]
    return raw.reshape(-1), s.unsqueeze(1).expand(n_steps, num_envs).reshape(-1)


@pytest.mark.parametrize("backend", ["fast", "autograd"])
@pytest.mark.parametrize("num_envs", [1, 2])
def test_each_workers_advantages_are_standardised_before_training(
    compose_cfg: Compose, num_envs: int, backend: str
) -> None:
    algo = sb_ppo1(compose_cfg, num_envs, backend)
    agent = make_agent(algo)
    raw, standardised = segments_advantages(algo.n_steps, num_envs)
    batch = rollout_batch(agent, algo.n_steps, num_envs, raw)
    trained, _ = update(agent, batch, algo)
    # The same update on advantages standardised by hand, with the update's own normalisation
    # off: equal weights only if the preset's update standardised exactly so.
    by_hand, _ = update(
        agent, replace(batch, advantages=standardised), replace(algo, adv_norm=AdvNorm.none)
    )
    assert_same_weights(trained, by_hand)
    # And the raw advantages would have trained something else.
    unnormalised, _ = update(agent, batch, replace(algo, adv_norm=AdvNorm.none))
    assert not torch.allclose(unnormalised.pi_head.weight, trained.pi_head.weight, rtol=1e-3)


class MpiAdam:
    """OpenAI baselines' MpiAdam step on the workers' mean gradient: epsilon added to the
    uncorrected sqrt(v), the bias corrections folded into the step size."""

    def __init__(self, params: list[Tensor], lr: float, eps: float) -> None:
        self.params, self.lr, self.eps, self.t = params, lr, eps, 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, grads: list[Tensor]) -> None:
        beta1, beta2 = 0.9, 0.999
        self.t += 1
        a = self.lr * (1 - beta2**self.t) ** 0.5 / (1 - beta1**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.mul_(beta1).add_((1 - beta1) * g)
            v.mul_(beta2).add_((1 - beta2) * g * g)
            p.sub_(a * m / (v.sqrt() + self.eps))


def workers_update(agent: ActorCritic, batch: Batch, algo: AlgoConfig) -> ActorCritic:
    """SB PPO1's N workers by hand: each standardises its own segment, shuffles it each epoch
    and takes its next 64 samples; MpiAdam steps on the mean of the workers' gradients (of
    pol_surr + pol_entpen + vf_loss, each a mean over the worker's 64)."""
    agent = copy.deepcopy(agent)
    params = list(agent.parameters())
    optimizer = MpiAdam(params, algo.lr, algo.adam_eps)
    n_envs, size = batch.num_envs, algo.minibatch_size

    def segment(x: Tensor, e: int) -> Tensor:  # worker e's own data, in time order
        return x.reshape(-1, n_envs, *x.shape[1:])[:, e]

    workers = []
    for e in range(n_envs):
        adv = segment(batch.advantages, e)
        adv = (adv - adv.mean()) / adv.std(correction=0)
        workers.append((segment(batch.obs, e), segment(batch.actions, e), adv, e))
    steps_per_epoch = len(workers[0][0]) // size  # the last partial minibatch dropped
    torch.manual_seed(1)
    for _ in range(algo.epochs):
        perms = [torch.randperm(len(workers[0][0])) for _ in workers]
        for k in range(steps_per_epoch):
            grads = []
            for (obs, actions, adv, e), perm in zip(workers, perms, strict=True):
                idx = perm[k * size : (k + 1) * size]
                log_pi, values = agent(obs[idx])
                log_prob = log_pi.gather(-1, actions[idx].unsqueeze(-1)).squeeze(-1)
                ratio = (log_prob - segment(batch.log_probs, e)[idx]).exp()
                clipped = ratio.clamp(1.0 - algo.clip, 1.0 + algo.clip)
                pol_surr = -torch.min(ratio * adv[idx], clipped * adv[idx]).mean()
                pol_entpen = -algo.ent_coef * (-(log_pi.exp() * log_pi).sum(-1)).mean()
                vf_loss = (values - segment(batch.returns, e)[idx]).square().mean()
                grads.append(torch.autograd.grad(pol_surr + pol_entpen + vf_loss, params))
            # MpiAdam: allreduce sum / N
            optimizer.step([torch.stack(g).mean(0) for g in zip(*grads, strict=True)])
    return agent


@pytest.mark.parametrize("backend", ["fast", "autograd"])
def test_n_envs_take_the_steps_of_n_mpi_workers(compose_cfg: Compose, backend: str) -> None:
    num_envs = 3
    algo = sb_ppo1(compose_cfg, num_envs, backend)
    assert algo.backend is Backend[backend]
    agent = make_agent(algo)
    advantages = torch.randn(algo.n_steps * num_envs, dtype=torch.float64) * 2.0 + 1.0
    batch = rollout_batch(agent, algo.n_steps, num_envs, advantages)
    trained, steps = update(agent, batch, algo)
    # 4 epochs of 256 / 64 = 4 steps, each over 64 samples of every worker: 16, not 48.
    assert steps == algo.epochs * algo.n_steps // algo.minibatch_size == 16
    assert_same_weights(trained, workers_update(agent, batch, algo))
    # Kingma & Ba's epsilon placement (torch's) would have stepped otherwise.
    kingma_ba, _ = update(agent, batch, replace(algo, adam_eps_uncorrected=False))
    assert not torch.allclose(kingma_ba.pi_head.weight, trained.pi_head.weight, rtol=1e-6)

"""`algo=notebook` is the seed notebook (../shared/seed/ppo1_notebook.txt), checked against a
transcription of its update written here in our own words.

One rollout and one update of ours (the composed `algo=notebook`, through the project's env,
collector and backend) and of the transcription start from the same weights, see the same
transitions (the notebook's env replayed with our actions) and shuffle with the same
permutations; the advantages they train on and the weights they end with must agree. The
transcription's settings are the notebook's constants written out below, not read from the
preset, so a preset that drifts from the notebook fails here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ppo1.config import TrainConfig
from ppo1.core.backends import make_optimizer, ppo_update
from ppo1.core.checkpoint import build_agent
from ppo1.core.envs import make_vector_env
from ppo1.core.networks import ActorCritic
from ppo1.core.rollout import RolloutCollector
from ppo1.core.update import Batch, UpdateStats

pytestmark = pytest.mark.usefixtures("one_torch_thread")
Compose = Callable[[list[str]], TrainConfig]

# The notebook's run configuration, as it states it (FAST_RUN).
SEED, ROLLOUT_STEPS, UPDATE_EPOCHS, MINIBATCH_SIZE = 7, 512, 4, 128
GAMMA, GAE_LAMBDA, CLIP_EPS, LEARNING_RATE, ADAM_EPS = 0.99, 0.95, 0.2, 3e-4, 1e-5
ENT_COEF, VF_COEF, MAX_GRAD_NORM = 0.0, 0.5, 0.5
# A time limit short enough that a 512-step rollout holds truncated episodes: the notebook
# treats them as terminal, a bootstrapping preset would not.
LIMIT = 30
# float32 throughout; the two sides differ in summation order only.
TOL = {"rtol": 1e-6, "atol": 1e-7}


class SeedActorCritic(nn.Module):
    """The notebook's network: one tanh backbone, a logits head and a value head; orthogonal
    init with gain sqrt(2) everywhere, zero biases, then the policy head again at 0.01."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.policy_head = nn.Linear(hidden, n_actions)
        self.value_head = nn.Linear(hidden, 1)
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.orthogonal_(layer.weight, gain=math.sqrt(2))
                nn.init.zeros_(layer.bias)
        nn.init.orthogonal_(self.policy_head.weight, gain=0.01)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        x = self.backbone(obs)
        return self.policy_head(x), self.value_head(x).squeeze(-1)

    def load_from(self, agent: ActorCritic) -> None:
        """Our agent's weights, layer for layer (its trunk is shared: pi_body is v_body)."""
        first, second = agent.pi_layers
        pairs = [(self.backbone[0], first), (self.backbone[2], second)]
        pairs += [(self.policy_head, agent.pi_head), (self.value_head, agent.v_head)]
        with torch.no_grad():
            for mine, theirs in pairs:
                mine.weight.copy_(theirs.weight)
                mine.bias.copy_(theirs.bias)


@dataclass
class Transitions:
    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    last_obs: np.ndarray


def replay(actions: np.ndarray) -> Transitions:
    """The notebook's rollout loop with given actions: one gym.make env reset with the seed,
    `done = terminated or truncated`, an unseeded reset after each episode."""
    env = gym.make("CartPole-v1", max_episode_steps=LIMIT)
    obs, _ = env.reset(seed=SEED)
    seen, rewards, dones = [], [], []
    for action in actions:
        next_obs, reward, terminated, truncated, _ = env.step(int(action))
        done = bool(terminated or truncated)
        seen.append(obs)
        rewards.append(float(reward))
        dones.append(done)
        obs = env.reset()[0] if done else next_obs
    return Transitions(
        np.asarray(seen, dtype=np.float32),
        actions,
        np.asarray(rewards, dtype=np.float32),
        np.asarray(dones),
        np.asarray(obs, dtype=np.float32),
    )


def seed_gae(
    rewards: np.ndarray, values: np.ndarray, dones: np.ndarray, last_value: float
) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's single-env GAE: an episode end cuts both the bootstrap and the sum."""
    advantages = np.zeros(len(rewards), dtype=np.float32)
    running = 0.0
    for t in reversed(range(len(rewards))):
        alive = 1.0 - float(dones[t])
        next_value = last_value if t == len(rewards) - 1 else values[t + 1]
        delta = rewards[t] + GAMMA * next_value * alive - values[t]
        running = delta + GAMMA * GAE_LAMBDA * alive * running
        advantages[t] = running
    return advantages, advantages + values


def seed_update(
    net: SeedActorCritic, data: Transitions, perms: list[Tensor]
) -> tuple[np.ndarray, np.ndarray]:
    """The notebook's advantages and update: GAE, whole-rollout normalisation with numpy's std
    + 1e-8, then epochs of minibatches of the clipped loss, each step's gradient clipped to
    norm 0.5, through Adam(eps 1e-5). `perms` stand in for its np.random.shuffle."""
    obs = torch.from_numpy(data.obs)
    actions = torch.from_numpy(data.actions)
    with torch.no_grad():
        logits, values = net(obs)
        old_log_probs = torch.distributions.Categorical(logits=logits).log_prob(actions)
        last_value = float(net(torch.from_numpy(data.last_obs).unsqueeze(0))[1].item())
    adv, ret = seed_gae(data.rewards, values.numpy(), data.dones, last_value)
    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    advantages, returns = torch.from_numpy(adv), torch.from_numpy(ret)
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, eps=ADAM_EPS)
    for perm in perms:
        for start in range(0, ROLLOUT_STEPS, MINIBATCH_SIZE):
            idx = perm[start : start + MINIBATCH_SIZE]
            logits, value = net(obs[idx])
            dist = torch.distributions.Categorical(logits=logits)
            ratio = (dist.log_prob(actions[idx]) - old_log_probs[idx]).exp()
            surrogate = torch.minimum(
                ratio * advantages[idx],
                ratio.clamp(1.0 - CLIP_EPS, 1.0 + CLIP_EPS) * advantages[idx],
            )
            loss = (
                -surrogate.mean()
                + VF_COEF * F.mse_loss(value, returns[idx])
                - ENT_COEF * dist.entropy().mean()
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            nn.utils.clip_grad_norm_(net.parameters(), MAX_GRAD_NORM)
            optimizer.step()
    return adv, ret


@dataclass
class Ours:
    seed_net: SeedActorCritic  # the notebook's network with our initial weights
    after: ActorCritic
    batch: Batch
    stats: UpdateStats
    rewards: Tensor
    dones: Tensor  # terminated or truncated
    truncated: Tensor
    perms: list[Tensor]


def our_update(cfg: TrainConfig) -> Ours:
    """One rollout and one update as training runs them, with the permutations it drew."""
    torch.manual_seed(cfg.seed)
    envs = make_vector_env(cfg.env, cfg.env.num_envs)
    agent = build_agent(cfg, envs)
    seed_net = SeedActorCritic(4, 2)
    seed_net.load_from(agent)
    optimizer = make_optimizer(agent, cfg.algo)
    collector = RolloutCollector(
        envs, agent, cfg.algo.n_steps, cfg.algo.bootstrap_truncation, cfg.seed
    )
    collector.collect()
    buf = collector.buffer
    batch = Batch.from_rollout(buf, *buf.advantages(cfg.algo.gamma, cfg.algo.gae_lambda))
    rng = torch.get_rng_state()
    stats = ppo_update(agent, optimizer, batch, cfg.algo, cfg.algo.clip, cfg.algo.lr)
    torch.set_rng_state(rng)  # the update's shuffles: one randperm per epoch
    perms = [torch.randperm(len(batch)) for _ in range(UPDATE_EPOCHS)]
    envs.close()
    flat = [x.flatten().clone() for x in (buf.rewards, buf.dones, buf.truncated)]
    return Ours(seed_net, agent, batch, stats, *flat, perms)


def weight_gap(ours: Ours, seed_net: SeedActorCritic) -> float:
    """The largest difference, over tolerance, between our updated weights and the seed's."""
    mine = SeedActorCritic(4, 2)
    mine.load_from(ours.after)
    gaps = [
        ((a - b).abs() / (TOL["atol"] + TOL["rtol"] * b.abs())).max().item()
        for a, b in zip(mine.parameters(), seed_net.parameters(), strict=True)
    ]
    return max(gaps)


NOTEBOOK = ["algo=notebook", f"env.max_episode_steps={LIMIT}", "tracking.enabled=false"]


def compare(compose_cfg: Compose, overrides: list[str]) -> tuple[Ours, float]:
    """Our update under `algo=notebook` + `overrides`, the notebook's on the same data, and
    their weight gap (<= 1: within TOL)."""
    ours = our_update(compose_cfg([*NOTEBOOK, *overrides]))
    data = replay(ours.batch.actions.numpy())
    # The same env, seed and resets: the notebook's transitions are ours.
    assert np.array_equal(data.obs, ours.batch.obs.numpy())
    assert np.array_equal(data.rewards, ours.rewards.numpy())
    assert np.array_equal(data.dones, ours.dones.numpy())
    adv, ret = seed_update(ours.seed_net, data, ours.perms)
    torch.testing.assert_close(ours.batch.returns, torch.from_numpy(ret), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.stats.advantages, torch.from_numpy(adv), rtol=1e-5, atol=1e-5)
    return ours, weight_gap(ours, ours.seed_net)


@pytest.mark.parametrize("backend", ["fast", "autograd"])
def test_one_update_matches_the_notebooks(compose_cfg: Compose, backend: str) -> None:
    ours, gap = compare(compose_cfg, [f"algo.backend={backend}"])
    # Both kinds of episode end occurred, so time-limit handling was exercised.
    assert ours.truncated.any() and (ours.dones & ~ours.truncated).any()
    assert gap <= 1.0, f"weights differ by {gap:.1f}x the tolerance"


@pytest.mark.parametrize(
    "departure",
    ["algo.adam_eps=1e-8", "algo.max_grad_norm=null"],  # 1e-8: the preset's before it read the seed
)
def test_the_weight_comparison_sees_a_departure(compose_cfg: Compose, departure: str) -> None:
    assert compare(compose_cfg, [departure])[1] > 10.0


@pytest.mark.parametrize("departure", ["algo.bootstrap_truncation=true", "algo.adv_norm=minibatch"])
def test_the_advantage_comparison_sees_a_departure(compose_cfg: Compose, departure: str) -> None:
    with pytest.raises(AssertionError, match="not close"):
        compare(compose_cfg, [departure])


def test_initialisation_has_the_notebooks_gains(compose_cfg: Compose) -> None:
    """Orthogonal weights of gain g have every singular value equal to g: sqrt(2) in the
    backbone and the value head, 0.01 in the policy head; biases zero; one shared trunk."""
    cfg = compose_cfg(NOTEBOOK)
    torch.manual_seed(cfg.seed)
    envs = make_vector_env(cfg.env, 1)
    agent = build_agent(cfg, envs)
    envs.close()
    assert agent.v_layers == agent.pi_layers
    reference = SeedActorCritic(4, 2)
    layers = [*agent.pi_layers, agent.pi_head, agent.v_head]
    seed_layers = [reference.backbone[0], reference.backbone[2]]
    seed_layers += [reference.policy_head, reference.value_head]
    gains = [math.sqrt(2), math.sqrt(2), 0.01, math.sqrt(2)]
    for ours, seed, gain in zip(layers, seed_layers, gains, strict=True):
        for weight in (ours.weight, seed.weight):
            singular = torch.linalg.svdvals(weight.detach())
            torch.testing.assert_close(singular, torch.full_like(singular, gain))
        assert not ours.bias.any()

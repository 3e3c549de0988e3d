"""The fast rollout/update path computes the same numbers as a straightforward implementation.

The reference below is written the obvious way: module calls, `torch.no_grad`, Python lists,
`torch.optim.Adam` and `clip_grad_norm_`. Run on the same seed, the fast path must agree with
it to float tolerance (the fused forward and flat optimizer only change summation order).
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch import Tensor

from ppo1.config import Activation, AlgoConfig, EnvConfig, NetworkConfig, TrainConfig
from ppo1.core.checkpoint import build_agent, load_checkpoint, save_checkpoint
from ppo1.core.envs import make_vector_env
from ppo1.core.fast.inference import FusedActorCritic
from ppo1.core.fast.optim import FlatAdam
from ppo1.core.fast.update import fast_update, ppo_loss_grad
from ppo1.core.losses import approx_kl, clip_active, ppo_loss
from ppo1.core.networks import ActorCritic, ObsNormalizer
from ppo1.core.rollout import RolloutCollector, gae
from ppo1.core.update import Batch, normalize_advantages, step_losses

TOL = {"rtol": 1e-5, "atol": 1e-6}
ROLLOUT_KEYS = (
    "obs",
    "actions",
    "log_probs",
    "values",
    "dist_params",
    "rewards",
    "terminated",
    "dones",
    "next_values",
)


def module_forward(agent: ActorCritic, obs: Tensor) -> tuple[Tensor, Tensor]:
    """pi and V through the registered modules, one `Module.__call__` per layer."""
    if agent.obs_norm is not None:
        obs = agent.obs_norm(obs)
    pi_out = agent.pi_head(agent.pi_body(obs))
    if agent.log_std is None:
        params = torch.log_softmax(pi_out, dim=-1)
    else:
        params = torch.cat([pi_out, agent.log_std.expand_as(pi_out)], dim=-1)
    return params, agent.v_head(agent.v_body(obs)).squeeze(-1)


def reference_rollout(
    agent: ActorCritic, env: gym.vector.VectorEnv, obs: np.ndarray, n_steps: int
) -> tuple[dict[str, Tensor], np.ndarray]:
    """One rollout with per-step tensors in Python lists; truncations bootstrap V(final obs)."""
    low = high = None
    if isinstance(env.single_action_space, gym.spaces.Box):
        low, high = env.single_action_space.low, env.single_action_space.high
    steps: dict[str, list[Tensor]] = {k: [] for k in ROLLOUT_KEYS}
    with torch.no_grad():
        for _ in range(n_steps):
            obs_t = torch.as_tensor(obs, dtype=torch.float32)
            params, value = module_forward(agent, obs_t)
            action = agent.dist.sample(params)
            env_action = action.numpy() if low is None else np.clip(action.numpy(), low, high)
            obs, reward, terminated, truncated, info = env.step(env_action)
            next_value = module_forward(agent, torch.as_tensor(obs, dtype=torch.float32))[1]
            for i in np.flatnonzero(truncated & ~terminated):
                final = torch.as_tensor(info["final_obs"][i], dtype=torch.float32)
                next_value[i] = module_forward(agent, final[None])[1][0]
            for key, value_ in (
                ("obs", obs_t),
                ("actions", action),
                ("log_probs", agent.dist.log_prob(params, action)),
                ("values", value),
                ("dist_params", params),
                ("rewards", torch.as_tensor(reward, dtype=torch.float32)),
                ("terminated", torch.as_tensor(terminated)),
                ("dones", torch.as_tensor(terminated | truncated)),
                ("next_values", next_value),
            ):
                steps[key].append(value_)
    return {k: torch.stack(v) for k, v in steps.items()}, obs


def reference_update(
    agent: ActorCritic, optimizer: torch.optim.Optimizer, batch: Batch, cfg: AlgoConfig
) -> None:
    """cfg.epochs of shuffled minibatches; per-minibatch advantage normalisation (the default)."""
    n, mb = len(batch), cfg.minibatch_size
    for _ in range(cfg.epochs):
        perm = torch.randperm(n)
        for start in range(0, n, mb):
            idx = perm[start : start + mb]
            params, values = module_forward(agent, batch.obs[idx])
            log_ratio = agent.dist.log_prob(params, batch.actions[idx]) - batch.log_probs[idx]
            approx_kl(log_ratio.detach())
            adv = normalize_advantages(batch.advantages[idx], cfg.adv_norm)
            loss = ppo_loss(
                log_ratio.exp(),
                adv,
                values,
                batch.returns[idx],
                batch.values[idx],
                agent.dist.entropy(params),
                cfg,
                cfg.clip,
            )[0]
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            assert cfg.max_grad_norm is not None
            torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()


def flat(x: Tensor) -> Tensor:
    return x.reshape(-1, *x.shape[2:])


def small_config(env_id: str, shared: bool = False) -> TrainConfig:
    # A short time limit so that rollouts contain terminations, truncations and resets.
    return TrainConfig(
        env=EnvConfig(id=env_id, num_envs=4, max_episode_steps=12),
        algo=AlgoConfig(n_steps=16, epochs=3, minibatch_size=24, net=NetworkConfig(shared=shared)),
    )


@pytest.mark.parametrize(
    ("env_id", "shared"),
    [("CartPole-v1", False), ("CartPole-v1", True), ("Pendulum-v1", False)],
)
def test_rollouts_and_updates_match_reference(env_id: str, shared: bool) -> None:
    cfg = small_config(env_id, shared)
    algo = cfg.algo
    fast_env, ref_env = (make_vector_env(cfg.env, cfg.env.num_envs) for _ in range(2))
    torch.manual_seed(0)
    fast = build_agent(cfg, fast_env)
    ref = build_agent(cfg, ref_env)
    ref.load_state_dict(fast.state_dict())
    fast_opt = FlatAdam(fast.parameters(), lr=algo.lr, eps=algo.adam_eps)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=algo.lr, eps=algo.adam_eps, foreach=False)
    collector = RolloutCollector(fast_env, fast, algo.n_steps, True, seed=3)
    ref_obs, _ = ref_env.reset(seed=3)
    saw_truncation = saw_termination = False
    for iteration in range(3):
        torch.manual_seed(100 + iteration)
        collector.collect()
        buf = collector.buffer
        advantages, returns = gae(
            buf.rewards,
            buf.values,
            buf.next_values,
            buf.terminated,
            buf.dones,
            algo.gamma,
            algo.gae_lambda,
        )
        fast_update(fast, fast_opt, Batch.from_rollout(buf, advantages, returns), algo, algo.clip)

        torch.manual_seed(100 + iteration)
        expected, ref_obs = reference_rollout(ref, ref_env, ref_obs, algo.n_steps)
        torch.testing.assert_close(buf.obs, expected["obs"], **TOL)
        for key in ("actions", "log_probs", "values", "dist_params", "rewards", "next_values"):
            torch.testing.assert_close(getattr(buf, key), expected[key], **TOL, msg=key)
        assert torch.equal(buf.dones, expected["dones"])
        saw_truncation |= bool((buf.dones & ~expected["terminated"]).any())
        saw_termination |= bool(expected["terminated"].any())
        ref_adv, ref_ret = gae(
            expected["rewards"],
            expected["values"],
            expected["next_values"],
            expected["terminated"],
            expected["dones"],
            algo.gamma,
            algo.gae_lambda,
        )
        ref_batch = Batch(
            *(flat(expected[k]) for k in ("obs", "actions", "log_probs", "values")),
            flat(expected["dist_params"]),
            flat(ref_adv),
            flat(ref_ret),
        )
        reference_update(ref, ref_opt, ref_batch, algo)
        for (name, p_fast), p_ref in zip(fast.named_parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p_fast, p_ref, rtol=1e-4, atol=1e-5, msg=name)
    assert saw_truncation
    assert saw_termination or env_id == "Pendulum-v1"


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,))])
def test_forward_paths_match_module_calls(
    space: gym.spaces.Discrete | gym.spaces.Box, shared: bool
) -> None:
    torch.manual_seed(0)
    norm = ObsNormalizer(5, clip=1.5)
    norm.update(torch.randn(20, 5) * 2.0 - 1.0)
    agent = ActorCritic(5, space, NetworkConfig(hidden=[16, 8, 4], shared=shared), norm)
    obs = torch.randn(7, 5)
    expected_params, expected_value = module_forward(agent, obs)
    params, value = agent(obs)
    # F.linear on the same weights is what nn.Linear runs: bit-identical.
    assert torch.equal(params, expected_params) and torch.equal(value, expected_value)
    assert torch.equal(agent.dist_params(obs), expected_params)
    assert torch.equal(agent.value(obs), expected_value)
    fused_params, fused_value = FusedActorCritic(agent)(obs)
    torch.testing.assert_close(fused_params, expected_params, **TOL)
    torch.testing.assert_close(fused_value, expected_value, **TOL)


@pytest.mark.parametrize(
    ("activation", "shared", "clip_vf", "ent_coef"),
    [
        (Activation.tanh, False, None, 0.0),
        (Activation.tanh, True, 0.2, 0.01),
        (Activation.relu, False, 0.2, 0.05),
        (Activation.relu, True, None, 0.01),
    ],
)
@pytest.mark.parametrize("space", [gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (2,))])
def test_analytic_gradient_matches_autograd(
    space: gym.spaces.Discrete | gym.spaces.Box,
    activation: Activation,
    shared: bool,
    clip_vf: float | None,
    ent_coef: float,
) -> None:
    torch.manual_seed(0)
    net = NetworkConfig(hidden=[16, 8], activation=activation, shared=shared, log_std_init=-0.3)
    cfg = AlgoConfig(clip_vf=clip_vf, ent_coef=ent_coef, net=net)
    # With shared towers, also through an observation normaliser with non-trivial statistics.
    agent = ActorCritic(5, space, net, ObsNormalizer(5, clip=2.0) if shared else None)
    ref = ActorCritic(5, space, net, ObsNormalizer(5, clip=2.0) if shared else None)
    n = 64
    obs = torch.randn(n, 5) * 3.0 + 1.0
    if agent.obs_norm is not None:
        agent.obs_norm.update(obs[:40] * 0.5)
    ref.load_state_dict(agent.state_dict())
    FlatAdam(agent.parameters(), lr=1e-3)  # gives every parameter its .grad slot
    with torch.no_grad():
        params, values = agent(obs)
    actions = agent.dist.sample(params)
    # An old policy and old values off the current ones, so that both clips bind somewhere.
    old_log_probs = agent.dist.log_prob(params, actions) + 0.4 * torch.randn(n)
    old_values = values + 0.3 * torch.randn(n)
    mb = Batch(obs, actions, old_log_probs, old_values, params, torch.randn(n), torch.randn(n))

    with torch.no_grad():
        terms = step_losses([ppo_loss_grad(agent, mb, cfg, clip=0.2)], agent.dist, cfg, 0.2)

    ref_params, ref_values = module_forward(ref, obs)
    log_ratio = ref.dist.log_prob(ref_params, actions) - old_log_probs
    ratio = log_ratio.exp()
    total, pg, vf, ent = ppo_loss(
        ratio,
        mb.advantages,
        ref_values,
        mb.returns,
        old_values,
        ref.dist.entropy(ref_params),
        cfg,
        0.2,
    )
    total.backward()  # type: ignore[no-untyped-call]
    active = clip_active(ratio.detach(), mb.advantages, 0.2)
    assert active.any() and not active.all()
    if clip_vf is not None:
        assert ((ref_values - old_values).abs() > clip_vf).any()
    torch.testing.assert_close(terms[:4], torch.stack([total, pg, vf, ent]).detach(), **TOL)
    torch.testing.assert_close(terms[4], approx_kl(log_ratio.detach()), **TOL)
    for (name, p), p_ref in zip(agent.named_parameters(), ref.parameters(), strict=True):
        assert p_ref.grad is not None and p.grad is not None
        assert p_ref.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_obs_normalizer_keeps_running_moments_and_clips() -> None:
    torch.manual_seed(0)
    norm = ObsNormalizer(3, clip=2.5)
    batches = [torch.randn(n, 3) * torch.tensor([1.0, 5.0, 0.1]) + 4.0 for n in (1, 7, 50, 200)]
    for batch in batches:
        norm.update(batch)
    seen = torch.cat(batches).double()
    torch.testing.assert_close(norm.mean.double(), seen.mean(0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.var.double(), seen.var(0, correction=0), rtol=1e-3, atol=1e-4)
    assert float(norm.count) == pytest.approx(258 + 1e-4)
    mean, std = norm.mean, (norm.var + 1e-8).sqrt()
    out = norm(torch.stack([mean, torch.tensor([100.0, -100.0, float(mean[2] + 2 * std[2])])]))
    assert out[0].abs().max() < 1e-6  # the mean maps to 0
    assert out[1].tolist()[:2] == [2.5, -2.5]  # clipped
    assert float(out[1, 2]) == pytest.approx(2.0, rel=1e-4)  # two standard deviations


# Adam's eps sits outside the square root, m / (sqrt(v) + eps): at eps=1 a convention of
# sqrt(v + eps) would show at once (the backends compare the two optimizers at algo.adam_eps).
@pytest.mark.parametrize("eps", [1e-5, 1.0])
def test_flat_adam_matches_torch_adam_and_keeps_the_module_usable(
    tmp_path: Path, eps: float
) -> None:
    cfg = TrainConfig()
    env = make_vector_env(cfg.env, 1)
    torch.manual_seed(0)
    fast, ref = build_agent(cfg, env), build_agent(cfg, env)
    ref.load_state_dict(fast.state_dict())
    keys = list(fast.state_dict())
    fast_opt = FlatAdam(fast.parameters(), lr=0.01, eps=eps)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01, eps=eps, foreach=False)
    obs = torch.randn(64, 4)
    for step in range(5):
        losses = []
        for agent in (fast, ref):
            params, value = agent(obs)
            losses.append(params[:, 0].mean() + (value - step).square().mean())
        fast_opt.zero_grad()
        ref_opt.zero_grad()
        losses[0].backward()  # type: ignore[no-untyped-call]
        losses[1].backward()  # type: ignore[no-untyped-call]
        norm = fast_opt.clip_grad_norm(0.5)
        ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
        torch.testing.assert_close(norm, ref_norm, **TOL)
        fast_opt.step()
        ref_opt.step()
    for p_fast, p_ref in zip(fast.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p_fast, p_ref, **TOL)
    # The parameters now live in the flat buffer; checkpoints still read and write them.
    assert list(fast.state_dict()) == keys
    path = tmp_path / "policy.pt"
    save_checkpoint(path, fast, cfg)
    loaded, _ = load_checkpoint(path)
    for p_loaded, p_fast in zip(loaded.parameters(), fast.parameters(), strict=True):
        assert torch.equal(p_loaded, p_fast)
    fast.load_state_dict({k: torch.zeros_like(v) for k, v in fast.state_dict().items()})
    assert not fast_opt.params.any()

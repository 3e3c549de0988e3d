"""The clipped objective, its gradient, the KL terms and the loss composition, by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical as TorchCategorical
from torch.distributions import Normal, kl_divergence

from ppo1.config import AdvNorm, AlgoConfig
from ppo1.core.distributions import Categorical, DiagGaussian
from ppo1.core.fast.update import clipped_surrogate_grad
from ppo1.core.losses import (
    approx_kl,
    clip_active,
    clip_fraction,
    clipped_surrogate_loss,
    ppo_loss,
    value_loss,
)
from ppo1.core.update import explained_variance, normalize_advantages

EPS = 0.2


def test_clipped_surrogate_value_by_hand() -> None:
    ratio = torch.tensor([0.5, 1.1, 1.5, 0.5, 1.5])
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -2.0])
    # min(rA, clip(r)A): 0.5 (unclipped is smaller), 1.1, 1.2 (clipped), -0.8 (clipped), -3.0
    expected = -(0.5 + 1.1 + 1.2 - 0.8 - 3.0) / 5
    assert clipped_surrogate_loss(ratio, adv, EPS).item() == pytest.approx(expected)


def test_gradient_is_zero_exactly_where_clipping_is_active() -> None:
    ratio = torch.tensor([1.3, 0.7, 1.1, 0.9, 0.7, 1.3], requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    clipped_surrogate_loss(ratio, adv, EPS).backward()
    assert ratio.grad is not None
    active = clip_active(ratio.detach(), adv, EPS)
    # A>0 with r>1+eps and A<0 with r<1-eps are clipped; the last two are outside the band on
    # the side where min() keeps the unclipped term, so they still get gradient -A/n.
    assert active.tolist() == [True, True, False, False, False, False]
    assert (ratio.grad[active] == 0).all()
    torch.testing.assert_close(ratio.grad[~active], -adv[~active] / 6)
    # The analytic form the update uses, d(-L)/d log r = r d(-L)/dr, by hand: 0 where clipped,
    # -r A / 6 elsewhere (r = 1.1, 0.9, 0.7, 1.3 with A = 1, -1, 1, -1).
    by_hand = torch.tensor([0.0, 0.0, -1.1, 0.9, -0.7, 1.3]) / 6
    torch.testing.assert_close(clipped_surrogate_grad(ratio.detach(), adv, EPS), by_hand)


def test_clip_fraction_counts_outside_band() -> None:
    ratio = torch.tensor([0.7, 0.85, 1.0, 1.15, 1.3])
    assert clip_fraction(ratio, EPS).item() == pytest.approx(2 / 5)


def test_categorical_exact_kl_matches_torch() -> None:
    torch.manual_seed(0)
    old = torch.log_softmax(torch.randn(16, 5), -1)
    new = torch.log_softmax(torch.randn(16, 5), -1)
    expected = kl_divergence(TorchCategorical(logits=old), TorchCategorical(logits=new))
    torch.testing.assert_close(Categorical().kl(old, new), expected)


def test_gaussian_exact_kl_matches_torch() -> None:
    torch.manual_seed(0)
    m0, m1, s0, s1 = torch.randn(4, 8, 3).unbind(0)
    expected = kl_divergence(Normal(m0, s0.exp()), Normal(m1, s1.exp())).sum(-1)
    got = DiagGaussian().kl(torch.cat([m0, s0], -1), torch.cat([m1, s1], -1))
    torch.testing.assert_close(got, expected)


def test_log_prob_and_entropy_match_torch() -> None:
    torch.manual_seed(0)
    mean, log_std = torch.randn(8, 2), torch.randn(8, 2)
    actions = torch.randn(8, 2)
    params = torch.cat([mean, log_std], -1)
    ref = Normal(mean, log_std.exp())
    torch.testing.assert_close(
        DiagGaussian().log_prob(params, actions), ref.log_prob(actions).sum(-1)
    )
    torch.testing.assert_close(DiagGaussian().entropy(params), ref.entropy().sum(-1))
    logp = torch.log_softmax(torch.randn(8, 4), -1)
    acts = torch.randint(0, 4, (8,))
    ref_c = TorchCategorical(logits=logp)
    torch.testing.assert_close(Categorical().log_prob(logp, acts), ref_c.log_prob(acts))
    torch.testing.assert_close(Categorical().entropy(logp), ref_c.entropy())


def test_samples_follow_the_distribution() -> None:
    torch.manual_seed(0)
    n = 200_000
    probs = torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.7, 0.1, 0.1, 0.1]])
    actions = Categorical().sample(probs.log().repeat_interleave(n, 0)).view(2, n)
    freqs = torch.stack([torch.bincount(row, minlength=4) for row in actions]) / n
    # Binomial standard error is <= 0.0012 here: 0.005 is > 4 of them.
    torch.testing.assert_close(freqs, probs, rtol=0, atol=0.005)
    params = torch.tensor([[1.0, -2.0, math.log(0.5), 0.0]]).expand(n, 4)
    draws = DiagGaussian().sample(params)
    torch.testing.assert_close(draws.mean(0), torch.tensor([1.0, -2.0]), rtol=0, atol=0.01)
    torch.testing.assert_close(draws.std(0), torch.tensor([0.5, 1.0]), rtol=0, atol=0.01)


def test_approx_kl_k3_is_unbiased_for_kl() -> None:
    # Samples from p = N(0, 1), q = N(0.1, 1): E_p[(q/p - 1) - log(q/p)] = KL(p || q) = 0.005.
    torch.manual_seed(0)
    x = torch.randn(400_000)
    log_ratio = Normal(0.1, 1.0).log_prob(x) - Normal(0.0, 1.0).log_prob(x)
    assert approx_kl(log_ratio).item() == pytest.approx(0.005, rel=0.05)


def test_value_loss_has_no_half_and_clips_like_ppo2() -> None:
    values, returns, old = (
        torch.tensor([2.0, 0.0]),
        torch.tensor([0.0, 0.0]),
        torch.tensor([1.0, 1.0]),
    )
    assert value_loss(values, returns, old, None).item() == pytest.approx((4.0 + 0.0) / 2)
    # clipped: V_old + clip(V - V_old, +-0.5) = 1.5 and 0.5 -> max(4, 2.25) and max(0, 0.25)
    assert value_loss(values, returns, old, 0.5).item() == pytest.approx((4.0 + 0.25) / 2)


def test_explained_variance() -> None:
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(returns, returns) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)


def test_batch_normalisation_uses_population_std_without_epsilon() -> None:
    adv = torch.tensor([1.0, 3.0])
    # mean 2, population std 1 -> exactly [-1, 1]; the sample std would give +-0.7071
    batch = normalize_advantages(adv, AdvNorm.batch, eps=0.0)
    torch.testing.assert_close(batch, torch.tensor([-1.0, 1.0]), rtol=0, atol=0)
    mb = normalize_advantages(adv, AdvNorm.minibatch)
    assert mb[1].item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)


def test_per_env_normalisation_standardises_each_segment_on_its_own() -> None:
    # t-major, as Batch.from_rollout lays out 2 envs x 2 steps: env 0 saw [1, 3], env 1 [10, 30]
    adv = torch.tensor([1.0, 10.0, 3.0, 30.0])
    per_env = normalize_advantages(adv, AdvNorm.per_env, eps=0.0, num_envs=2)
    torch.testing.assert_close(per_env, torch.tensor([-1.0, -1.0, 1.0, 1.0]), rtol=0, atol=0)
    # eps is added to the std: [0, 2] has mean 1 and population std 1 -> +-1 / (1 + 1)
    eps = normalize_advantages(torch.tensor([0.0, 2.0]), AdvNorm.batch, eps=1.0)
    torch.testing.assert_close(eps, torch.tensor([-0.5, 0.5]), rtol=0, atol=0)


def test_loss_composition_follows_the_coefficients() -> None:
    cfg = AlgoConfig(vf_coef=1.0, ent_coef=0.01)
    ratio, adv = torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])
    values, returns = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.0])
    entropy = torch.tensor([0.5, 0.7])
    total, pg, vf, ent = ppo_loss(ratio, adv, values, returns, values, entropy, cfg, EPS)
    assert pg.item() == pytest.approx(0.0)
    assert vf.item() == pytest.approx(2.5)  # mean((V - R)^2), no 1/2
    assert ent.item() == pytest.approx(0.6)
    assert total.item() == pytest.approx(0.0 + 1.0 * 2.5 - 0.01 * 0.6)

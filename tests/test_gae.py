"""GAE against values worked by hand."""

from __future__ import annotations

import torch

from ppo1.core.rollout import gae

GAMMA, LAM = 0.9, 0.5


def col(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32).unsqueeze(-1)


def flags(*xs: bool) -> torch.Tensor:
    return torch.tensor(xs).unsqueeze(-1)


def test_rollout_cut_mid_episode_bootstraps_from_last_value() -> None:
    # Three steps of one episode that goes on past the rollout: V(s_3) = 4 bootstraps.
    values = col(1.0, 2.0, 3.0)
    next_values = col(2.0, 3.0, 4.0)
    no = flags(False, False, False)
    adv, ret = gae(col(1.0, 1.0, 1.0), values, next_values, no, no, GAMMA, LAM)
    # delta_2 = 1 + 0.9*4 - 3 = 1.6; delta_1 = 1 + 0.9*3 - 2 = 1.7; delta_0 = 1 + 0.9*2 - 1 = 1.8
    # A_2 = 1.6; A_1 = 1.7 + 0.45*1.6 = 2.42; A_0 = 1.8 + 0.45*2.42 = 2.889
    torch.testing.assert_close(adv, col(2.889, 2.42, 1.6))
    torch.testing.assert_close(ret, col(3.889, 4.42, 4.6))


def test_termination_drops_bootstrap_and_stops_the_sum() -> None:
    # Episode terminates at t=1; t=2 starts a new episode.
    values = col(1.0, 2.0, 3.0)
    next_values = col(2.0, 10.0, 4.0)  # V(s_2) belongs to the next episode: must not leak
    term = flags(False, True, False)
    adv, _ = gae(col(1.0, 1.0, 1.0), values, next_values, term, term, GAMMA, LAM)
    # delta_2 = 1 + 3.6 - 3 = 1.6; delta_1 = 1 - 2 = -1 (no bootstrap); delta_0 = 1.8
    # A_2 = 1.6; A_1 = -1 (sum stops); A_0 = 1.8 + 0.45 * -1 = 1.35
    torch.testing.assert_close(adv, col(1.35, -1.0, 1.6))


def test_truncation_bootstraps_from_final_observation_value() -> None:
    # Time limit at t=1: next_values[1] holds V(final obs) = 5, the sum still stops there.
    values = col(1.0, 2.0, 3.0)
    next_values = col(2.0, 5.0, 4.0)
    term = flags(False, False, False)
    done = flags(False, True, False)
    adv, _ = gae(col(1.0, 1.0, 1.0), values, next_values, term, done, GAMMA, LAM)
    # delta_1 = 1 + 0.9*5 - 2 = 3.5; A_1 = 3.5; A_0 = 1.8 + 0.45*3.5 = 3.375
    torch.testing.assert_close(adv, col(3.375, 3.5, 1.6))


def test_envs_are_independent_columns() -> None:
    rewards = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    values = torch.zeros(2, 2)
    next_values = torch.zeros(2, 2)
    no = torch.zeros(2, 2, dtype=torch.bool)
    adv, _ = gae(rewards, values, next_values, no, no, GAMMA, 1.0)
    # env 0: A_1 = 0, A_0 = 1; env 1: A_1 = 1, A_0 = 0 + 0.9 * 1
    torch.testing.assert_close(adv, torch.tensor([[1.0, 0.9], [0.0, 1.0]]))


def test_lambda_one_gives_discounted_return_minus_value() -> None:
    rewards = col(1.0, 2.0, 3.0)
    values = col(0.5, 0.5, 0.5)
    no = flags(False, False, False)
    _, ret = gae(rewards, values, col(0.5, 0.5, 0.0), no, no, GAMMA, 1.0)
    # lambda = 1: returns are Monte-Carlo discounted sums (bootstrap 0 at the end)
    torch.testing.assert_close(ret, col(1 + 0.9 * 2 + 0.81 * 3, 2 + 0.9 * 3, 3.0))

"""SB3 VecNormalize-style reward scaling (env.normalize_reward), against numbers by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ppo1.core.networks import RewardNormalizer


def test_rewards_are_divided_by_the_running_std_of_the_discounted_return() -> None:
    norm = RewardNormalizer(num_envs=2, gamma=0.5, clip=10.0)
    # Step 1: R = r = [1, 2]; the returns seen so far are {1, 2}: variance 0.25, std 0.5.
    # (The statistics start from a prior of weight 1e-4, mean 0, variance 1, as SB3's
    # RunningMeanStd: the exact pooled variance is (1e-4 + 1 + 4) / 2.0001 - (3 / 2.0001)^2.)
    scaled = norm.scale(np.array([1.0, 2.0]), np.array([True, False]))
    var1 = (1e-4 + 1 + 4) / 2.0001 - (3 / 2.0001) ** 2
    np.testing.assert_allclose(scaled, np.array([1.0, 2.0]) / np.sqrt(var1 + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(scaled, [2.0, 4.0], rtol=1e-3)
    # Env 0's episode ended: its return restarts at 0. Step 2: R = [0 * 0.5 + 3, 2 * 0.5 - 1]
    # = [3, 0]; the returns seen are {1, 2, 3, 0}: variance 1.25.
    scaled = norm.scale(np.array([3.0, -1.0]), np.array([False, False]))
    var2 = (1e-4 + 1 + 4 + 9 + 0) / 4.0001 - (6 / 4.0001) ** 2
    np.testing.assert_allclose(scaled, np.array([3.0, -1.0]) / np.sqrt(var2 + 1e-8), rtol=1e-6)
    np.testing.assert_allclose(scaled, [3 / np.sqrt(1.25), -1 / np.sqrt(1.25)], rtol=1e-3)
    np.testing.assert_allclose(norm.returns.numpy(), [3.0, 0.0])


def test_scaled_rewards_are_clipped() -> None:
    norm = RewardNormalizer(num_envs=2, gamma=0.5, clip=2.5)
    norm.scale(np.array([1.0, 2.0]), np.array([True, False]))
    # As above, 3 / sqrt(1.25) = 2.68 is clipped to 2.5; -0.89 is left alone.
    scaled = norm.scale(np.array([3.0, -1.0]), np.array([False, False]))
    assert scaled[0] == 2.5 and scaled[1] == pytest.approx(-1 / np.sqrt(1.25), rel=1e-3)


def test_the_running_return_is_not_saved_but_the_statistics_are() -> None:
    # A resumed run restarts its episodes, so its discounted returns restart at zero.
    norm = RewardNormalizer(num_envs=3, gamma=0.9, clip=10.0)
    assert set(norm.state_dict()) == {"stats.mean", "stats.var", "stats.count"}

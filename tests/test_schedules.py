from __future__ import annotations

import pytest

from ppo1.config import ScheduleConfig, ScheduleKind
from ppo1.core.schedules import multiplier, progress


def test_constant() -> None:
    assert multiplier(ScheduleConfig(ScheduleKind.constant), 0.7) == 1.0


def test_linear_is_sb_ppo1_max_one_minus_t_over_t() -> None:
    cfg = ScheduleConfig(ScheduleKind.linear, end=0.0)
    for t in (0, 250, 500, 999, 1000, 1200):
        assert multiplier(cfg, progress(t, 1000)) == pytest.approx(max(1 - t / 1000, 0))


def test_linear_and_cosine_end_at_end() -> None:
    for kind in (ScheduleKind.linear, ScheduleKind.cosine):
        cfg = ScheduleConfig(kind, end=0.1)
        assert multiplier(cfg, 0.0) == pytest.approx(1.0)
        assert multiplier(cfg, 1.0) == pytest.approx(0.1)
    assert multiplier(ScheduleConfig(ScheduleKind.cosine, end=0.0), 0.5) == pytest.approx(0.5)

"""Schedules: training progress in [0, 1] -> multiplier on the learning rate (and clip range)."""

from __future__ import annotations

import math

from ppo1.config import ScheduleConfig, ScheduleKind


def progress(timesteps_so_far: int, total_timesteps: int) -> float:
    """Fraction of the budget spent, taken before each rollout as SB PPO1 does."""
    return min(timesteps_so_far / total_timesteps, 1.0)


def multiplier(cfg: ScheduleConfig, frac: float) -> float:
    """constant: 1; linear: 1 -> end (SB PPO1's `max(1 - t/T, 0)` at end=0); cosine: 1 -> end."""
    if cfg.kind is ScheduleKind.constant:
        return 1.0
    if cfg.kind is ScheduleKind.linear:
        return max(1.0 - (1.0 - cfg.end) * frac, cfg.end)
    return cfg.end + (1.0 - cfg.end) * 0.5 * (1.0 + math.cos(math.pi * frac))

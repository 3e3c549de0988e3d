"""What counts as solving a benchmark env, and the budgets and rows a benchmark keeps."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# CartPole-v1 counts as solved at a 20-episode deterministic evaluation mean >= 475, twice in a
# row (the criterion; 475 is Gymnasium's reward_threshold for CartPole-v1).
SOLVE_RETURN = 475.0


SOLVE_CONSECUTIVE = 2


@dataclass(frozen=True)
class Budget:
    """How much of each measurement to run; `quick` is for smoke tests, not for numbers."""

    repeats: int = 3
    seeds: int = 5
    phase_rollouts: int = 40
    env_steps: int = 2000
    e2e_timesteps: int = 20_000
    solve_timesteps: int = 100_000
    eval_every_updates: int = 8
    tracking_timesteps: int = 20_000
    # Tracking costs a few % of wall time against swings of 10 % here: more pairs than repeats.
    tracking_pairs: int = 6
    # The main job (`python -m ppo1.train` as configured, evaluations included); None: its
    # own total_timesteps.
    main_job_timesteps: int | None = None
    main_job_pairs: int = 3
    startup: bool = True

    @classmethod
    def quick(cls) -> Budget:
        return cls(
            repeats=1,
            seeds=1,
            phase_rollouts=2,
            env_steps=50,
            e2e_timesteps=512,
            solve_timesteps=512,
            eval_every_updates=1,
            tracking_timesteps=512,
            tracking_pairs=1,
            main_job_timesteps=512,
            main_job_pairs=1,
            startup=False,
        )


@dataclass
class Row:
    """One measured quantity: samples per system ('ppo1', 'sb3'); higher or lower is better."""

    key: str
    name: str
    unit: str
    higher_is_better: bool
    samples: dict[str, list[float]] = field(default_factory=dict)
    note: str = ""

    def add(self, system: str, value: float | None) -> None:
        self.samples.setdefault(system, [])
        if value is not None:
            self.samples[system].append(value)

    def median(self, system: str) -> float | None:
        values = self.samples.get(system)
        return statistics.median(values) if values else None

    def speedup(self) -> float | None:
        """ppo1's advantage over SB3 as a factor > 1 when ppo1 is better, from the medians."""
        ours, theirs = self.median("ppo1"), self.median("sb3")
        if ours is None or theirs is None or ours == 0 or theirs == 0:
            return None
        return ours / theirs if self.higher_is_better else theirs / ours


class Solved(Exception):
    """Raised from the update hook to stop a time-to-solve run."""


class SolveWatch:
    """Feeds evaluation results; `done` once SOLVE_CONSECUTIVE in a row reach SOLVE_RETURN."""

    def __init__(self) -> None:
        self.streak = 0
        self.solved_at: tuple[float, float] | None = None  # (env steps, training seconds)

    def see(self, step: float, seconds: float, mean_return: float) -> bool:
        self.streak = self.streak + 1 if mean_return >= SOLVE_RETURN else 0
        if self.streak >= SOLVE_CONSECUTIVE and self.solved_at is None:
            self.solved_at = (step, seconds)
        return self.solved_at is not None

"""What a sweep trial maximises, computed from one training run's evaluation curve."""

from __future__ import annotations

import numpy as np

from ppo1.config import Objective


def area_under_curve(evals: list[tuple[int, float]]) -> float:
    """Trapezoid area under (step, mean return) divided by the steps spanned: mean return."""
    if len(evals) == 1:
        return evals[0][1]
    steps = np.array([s for s, _ in evals], dtype=np.float64)
    returns = np.array([r for _, r in evals], dtype=np.float64)
    area = float(np.sum((returns[1:] + returns[:-1]) / 2 * np.diff(steps)))
    return area / float(steps[-1] - steps[0])


def objective_value(kind: Objective, evals: list[tuple[int, float]]) -> float:
    """The objective of one run from its evaluations [(env steps, mean return), ...]."""
    if not evals:
        raise ValueError("no evaluation to score: the run ended before its first evaluation")
    if kind is Objective.final:
        return evals[-1][1]
    if kind is Objective.best:
        return max(r for _, r in evals)
    return area_under_curve(evals)

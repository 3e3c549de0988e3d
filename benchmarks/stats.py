"""Aggregate scores over seeds as rliable recommends (Agarwal et al. 2021, "Deep RL at the
Edge of the Statistical Precipice"): the interquartile mean and a stratified-bootstrap interval.

`scores` is [runs, tasks]: one column per task (a results row), one entry per seed.
"""

from __future__ import annotations

import numpy as np


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean: the mean of the scores left after cutting floor(n/4) from each end
    of the n sorted ones (scipy.stats.trim_mean(scores, 0.25, axis=None), which rliable uses)."""
    flat = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    cut = int(0.25 * flat.size)
    return float(flat[cut : flat.size - cut].mean())


def stratified_bootstrap_ci(
    scores: np.ndarray, reps: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the IQM over `reps` resamples, each drawing every task's runs
    with replacement from that task's own runs (so no task's weight changes)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, runs, size=(reps, runs, tasks))
    resampled = np.take_along_axis(scores[None], picks, axis=1)
    stats = np.array([iqm(sample) for sample in resampled])
    tail = 100 * (1 - confidence) / 2
    lo, hi = np.percentile(stats, [tail, 100 - tail])
    return float(lo), float(hi)

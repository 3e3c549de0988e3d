"""Each figure function on hand-made data: the right traces, eps lines and clip split."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from ppo1.report import plots
from ppo1.report.compare import seed_band
from ppo1.report.ratios import HIST_EDGES, RatioSnapshot, from_json, summarize, to_json


def vline_xs(fig: go.Figure) -> list[float]:
    return sorted(s.x0 for s in fig.layout.shapes if s.x0 == s.x1)


def by_name(fig: go.Figure) -> dict[str, go.BaseTraceType]:
    return {t.name: t for t in fig.data if t.name}


def test_moving_average_by_hand() -> None:
    out = plots.moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2)
    np.testing.assert_allclose(out, [1.0, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(plots.moving_average(np.array([3.0, 1.0]), 5), [3.0, 2.0])
    with pytest.raises(ValueError, match="window"):
        plots.moving_average(np.array([1.0]), 0)


def test_reward_figure_switches_between_episodes_and_steps() -> None:
    steps, returns = np.array([8, 8, 24]), np.array([10.0, 20.0, 30.0])
    fig = plots.reward_figure(steps, returns, window=2)
    raw, avg = fig.data
    np.testing.assert_array_equal(raw.x, [1, 2, 3])
    np.testing.assert_array_equal(raw.y, returns)
    np.testing.assert_allclose(avg.y, [10.0, 15.0, 25.0])
    episode, env_steps = fig.layout.updatemenus[0].buttons
    assert episode.label == "episode" and env_steps.label == "env steps"
    for trace_x in env_steps.args[0]["x"]:
        np.testing.assert_array_equal(trace_x, steps)
    assert env_steps.args[1] == {"xaxis.title.text": "env steps"}


def test_ratio_histogram_marks_the_eps_in_force() -> None:
    ratio = np.array([0.7, 0.95, 1.0, 1.05, 1.3])
    fig = plots.ratio_histogram_figure(ratio, clip=0.1)
    assert len(fig.data) == 1
    np.testing.assert_array_equal(fig.data[0].x, ratio)
    assert vline_xs(fig) == pytest.approx([0.9, 1.0, 1.1])
    assert "0.1" in fig.layout.title.text


def test_clip_activity_splits_hand_made_points() -> None:
    # (r, A): clipping is active only for A >= 0 with r > 1 + eps, or A < 0 with r < 1 - eps.
    points = {
        (1.3, 1.0): True,
        (1.3, 0.0): True,  # A = 0 counts with the positive side, as in ppo.clip_active
        (0.7, -1.0): True,
        (1.2, 1.0): False,  # on the edge: r = 1 + eps is not beyond it
        (1.1, 1.0): False,
        (0.7, 1.0): False,  # r small but A > 0: the min() keeps the unclipped term
        (1.3, -1.0): False,  # r large but A < 0: likewise
        (0.9, -1.0): False,
    }
    ratio = np.array([r for r, _ in points])
    adv = np.array([a for _, a in points])
    fig = plots.clip_activity_figure(ratio, adv, clip=0.2)
    traces = by_name(fig)
    active = traces["clip active (no gradient)"]
    inactive = traces["clip inactive"]
    assert set(zip(active.x, active.y, strict=True)) == {p for p, a in points.items() if a}
    assert set(zip(inactive.x, inactive.y, strict=True)) == {p for p, a in points.items() if not a}
    assert vline_xs(fig) == pytest.approx([0.8, 1.0, 1.2])
    assert "37.5% of 8 samples" in fig.layout.title.text


CURVES: plots.Curves = {
    "losses/approx_kl": (np.array([256, 512]), np.array([0.01, 0.02])),
    "losses/kl": (np.array([256, 512]), np.array([0.011, 0.019])),
    "losses/clipfrac": (np.array([256, 512]), np.array([0.1, 0.3])),
    "losses/policy_loss": (np.array([256, 512]), np.array([-0.01, -0.02])),
    "losses/value_loss": (np.array([256, 512]), np.array([5.0, 4.0])),
    "losses/entropy": (np.array([256, 512]), np.array([0.69, 0.68])),
    "losses/explained_variance": (np.array([256, 512]), np.array([0.1, 0.5])),
    "charts/learning_rate": (np.array([256, 512]), np.array([1e-3, 5e-4])),
    "charts/clip_range": (np.array([256, 512]), np.array([0.2, 0.1])),
}


@pytest.mark.parametrize(
    ("figure", "expected"),
    [
        (
            plots.kl_clip_figure,
            {
                "approx KL (k3)": "losses/approx_kl",
                "exact KL": "losses/kl",
                "clip fraction": "losses/clipfrac",
            },
        ),
        (
            plots.losses_figure,
            {
                "policy loss": "losses/policy_loss",
                "value loss": "losses/value_loss",
                "entropy": "losses/entropy",
            },
        ),
        (
            plots.schedule_figure,
            {
                "explained variance": "losses/explained_variance",
                "learning rate": "charts/learning_rate",
                "clip ε": "charts/clip_range",
            },
        ),
    ],
)
def test_update_curves_figures(figure, expected: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    traces = by_name(figure(CURVES))
    assert set(traces) == set(expected)
    for name, key in expected.items():
        np.testing.assert_array_equal(traces[name].x, CURVES[key][0])
        np.testing.assert_array_equal(traces[name].y, CURVES[key][1])
    # A metric that was not logged leaves its trace out instead of failing.
    partial = {k: v for k, v in CURVES.items() if k != next(iter(expected.values()))}
    assert len(by_name(figure(partial))) == len(expected) - 1


def snapshot(update: int, clip: float, ratio: list[float]) -> RatioSnapshot:
    r = np.array(ratio)
    return summarize(update, 256 * update, clip, r, np.ones_like(r), 4, np.random.default_rng(0))


def test_summarize_bins_quantiles_and_bounded_sample() -> None:
    ratio = np.array([0.5, 0.9, 1.0, 1.0, 1.1, 7.0])  # 7.0 overflows into the last bin
    s = summarize(3, 768, 0.2, ratio, -ratio, 4, np.random.default_rng(0))
    assert (s.update, s.step, s.clip) == (3, 768, 0.2)
    assert sum(s.hist) == 6 and s.hist[-1] == 1
    assert s.hist[np.searchsorted(HIST_EDGES, 1.0, side="right") - 1] == 2
    assert s.quantiles[2] == pytest.approx(1.0)
    assert len(s.ratio) == len(s.advantages) == 4
    assert all(a == -r for r, a in zip(s.ratio, s.advantages, strict=True))
    with pytest.raises(ValueError, match="1-D twins"):
        summarize(1, 1, 0.2, ratio, ratio[:2], 4, np.random.default_rng(0))
    assert from_json(to_json([s])) == [s]


@pytest.mark.parametrize("size", [1, 2, 7, 256, 4096])
def test_summary_statistics_equal_numpys(size: int) -> None:
    rng = np.random.default_rng(size)
    ratio = np.exp(rng.normal(0.0, 0.4, size)).astype(np.float32)
    ratio[: size // 3] = rng.choice(HIST_EDGES, size // 3)  # on bin edges, 0 and 2 included
    if size > 3:
        ratio[:2] = [-0.5, 9.0]  # outside the binned range: counted in the end bins
    s = summarize(1, 256, 0.2, ratio, ratio, 8, rng)
    clamped = np.clip(ratio, HIST_EDGES[0], HIST_EDGES[-1])
    assert s.hist == np.histogram(clamped, bins=HIST_EDGES)[0].tolist()
    expected = np.quantile(ratio, (0.05, 0.25, 0.5, 0.75, 0.95)).astype(np.float32)
    np.testing.assert_allclose(s.quantiles, expected, rtol=1e-6)


def test_ratio_evolution_draws_bands_annealed_eps_and_heatmap() -> None:
    snaps = [snapshot(1, 0.2, [0.8, 1.0, 1.0, 1.2]), snapshot(2, 0.1, [1.0, 1.0, 1.9, 0.1])]
    fig = plots.ratio_evolution_figure(snaps)
    traces = by_name(fig)
    assert {"5-95 %", "25-75 %", "median", "1-ε", "1+ε"} <= set(traces)
    np.testing.assert_allclose(traces["1-ε"].y, [0.8, 0.9])
    np.testing.assert_allclose(traces["1+ε"].y, [1.2, 1.1])
    np.testing.assert_allclose(traces["median"].y, [1.0, 1.0])
    np.testing.assert_array_equal(traces["median"].x, [256, 512])
    (heatmap,) = [t for t in fig.data if isinstance(t, go.Heatmap)]
    z = np.asarray(heatmap.z)
    assert z.shape == (len(HIST_EDGES) - 1, 2)
    np.testing.assert_allclose(z.sum(axis=0), [1.0, 1.0], rtol=1e-6)


def test_seed_band_by_hand() -> None:
    x = np.array([0.0, 10.0])
    grid, mean, std = seed_band([(x, x), (x, x + 2.0)], points=3)
    np.testing.assert_allclose(grid, [0.0, 5.0, 10.0])
    np.testing.assert_allclose(mean, grid + 1.0)
    np.testing.assert_allclose(std, [1.0, 1.0, 1.0])
    single_x, single_y, single_std = seed_band([(x, x)])
    np.testing.assert_array_equal(single_x, x)
    np.testing.assert_array_equal(single_y, x)
    assert not single_std.any()

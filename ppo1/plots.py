"""Plotly figures of what PPO-Clip does, as pure functions of logged data.

`Curves` maps an MLflow metric name (`losses/kl`, ...) to its (env step, value) arrays, so the
same functions draw a run from memory at the end of training and from the MLflow store later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.colors import DEFAULT_PLOTLY_COLORS, unlabel_rgb
from plotly.subplots import make_subplots

from ppo1.ppo import clip_active
from ppo1.ratios import HIST_EDGES, RatioSnapshot

Series = tuple[np.ndarray, np.ndarray]
Curves = Mapping[str, Series]

EPISODIC_RETURN = "charts/episodic_return"
EVAL_RETURN = "eval/mean_return"
_EPS_LINE = {"dash": "dash", "color": "firebrick", "width": 1}
_HEIGHT = 420


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean: out[i] = mean(values[max(0, i - window + 1) : i + 1])."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(0, ends - window)
    means: np.ndarray = (sums[ends] - sums[starts]) / (ends - starts)
    return means


def reward_figure(steps: np.ndarray, returns: np.ndarray, window: int = 20) -> go.Figure:
    """Return of every training episode and its trailing mean; buttons switch x between the
    episode number and env steps."""
    episode = np.arange(1, returns.size + 1)
    fig = go.Figure(
        [
            go.Scatter(
                x=episode,
                y=returns,
                mode="markers",
                name="episode return",
                marker_size=3,
                opacity=0.4,
            ),
            go.Scatter(x=episode, y=moving_average(returns, window), name=f"mean of last {window}"),
        ]
    )
    buttons = [
        {"label": label, "method": "update", "args": [{"x": [x, x]}, {"xaxis.title.text": label}]}
        for label, x in (("episode", episode), ("env steps", steps))
    ]
    fig.update_layout(
        title="Training episode return",
        xaxis_title="episode",
        yaxis_title="return",
        height=_HEIGHT,
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "y": 1.15}],
    )
    return fig


def _eps_lines(fig: go.Figure, clip: float) -> None:
    """Vertical lines at 1 - eps, 1 and 1 + eps (the clipped surrogate's flat region edges)."""
    one = {"dash": "dot", "color": "gray", "width": 1}
    for x, text, line in (
        (1.0 - clip, "1-ε", _EPS_LINE),
        (1.0, "1", one),
        (1.0 + clip, "1+ε", _EPS_LINE),
    ):
        fig.add_vline(x=x, line=line, annotation_text=text)


def ratio_histogram_figure(ratio: np.ndarray, clip: float) -> go.Figure:
    """Distribution of r_t = pi_new / pi_old over the last rollout (its logged sample), with
    1 +- eps marked."""
    fig = go.Figure(go.Histogram(x=ratio, name="r_t", nbinsx=60))
    _eps_lines(fig, clip)
    fig.update_layout(
        title=f"Policy ratio r_t after the last update (ε = {clip:.3g})",
        xaxis_title="r_t",
        yaxis_title="samples",
        height=_HEIGHT,
    )
    return fig


def clip_activity_figure(ratio: np.ndarray, advantages: np.ndarray, clip: float) -> go.Figure:
    """r_t against A_t, split where the clipped branch of L^CLIP is active (zero gradient)."""
    active = clip_active(torch.as_tensor(ratio), torch.as_tensor(advantages), clip).numpy()
    fig = go.Figure(
        [
            go.Scatter(
                x=ratio[mask],
                y=advantages[mask],
                mode="markers",
                name=name,
                marker_size=4,
                marker_color=color,
            )
            for mask, name, color in (
                (active, "clip active (no gradient)", "firebrick"),
                (~active, "clip inactive", "steelblue"),
            )
        ]
    )
    _eps_lines(fig, clip)
    fig.add_hline(y=0.0, line={"color": "gray", "width": 1})
    fig.update_layout(
        title=f"Where clipping is active: {active.mean():.1%} of {active.size} samples",
        xaxis_title="r_t",
        yaxis_title="advantage A_t",
        height=_HEIGHT,
    )
    return fig


def _line(curves: Curves, key: str, name: str, **kwargs: object) -> go.Scatter | None:
    if key not in curves:
        return None
    x, y = curves[key]
    return go.Scatter(x=x, y=y, name=name, mode="lines", **kwargs)


def _stacked(curves: Curves, title: str, rows: Sequence[Sequence[tuple[str, str]]]) -> go.Figure:
    """One subplot per row of (metric, legend name) pairs, sharing the env-step axis."""
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for i, row in enumerate(rows, start=1):
        for key, name in row:
            trace = _line(curves, key, name)
            if trace is not None:
                fig.add_trace(trace, row=i, col=1)
        fig.update_yaxes(title_text=" / ".join(name for _, name in row), row=i, col=1)
    fig.update_xaxes(title_text="env steps", row=len(rows), col=1)
    fig.update_layout(title=title, height=_HEIGHT + 160 * (len(rows) - 1))
    return fig


def kl_clip_figure(curves: Curves) -> go.Figure:
    """Per-update KL (k3 estimate during the epochs, exact after) and clip fraction."""
    return _stacked(
        curves,
        "KL and clipping over updates",
        [
            [("losses/approx_kl", "approx KL (k3)"), ("losses/kl", "exact KL")],
            [("losses/clipfrac", "clip fraction")],
        ],
    )


def losses_figure(curves: Curves) -> go.Figure:
    """Per-update policy loss, value loss and entropy."""
    return _stacked(
        curves,
        "Losses and entropy over updates",
        [
            [("losses/policy_loss", "policy loss")],
            [("losses/value_loss", "value loss")],
            [("losses/entropy", "entropy")],
        ],
    )


def schedule_figure(curves: Curves) -> go.Figure:
    """Explained variance of the value function, beside the lr and clip schedules."""
    return _stacked(
        curves,
        "Value fit and schedules",
        [
            [("losses/explained_variance", "explained variance")],
            [("charts/learning_rate", "learning rate")],
            [("charts/clip_range", "clip ε")],
        ],
    )


def ratio_evolution_figure(snapshots: Sequence[RatioSnapshot]) -> go.Figure:
    """r_t over training: 5-95 and 25-75 % bands, median and 1 +- eps per update (top), and the
    share of each update's batch per r_t bin (bottom)."""
    steps = np.array([s.step for s in snapshots])
    q = np.array([s.quantiles for s in snapshots]).reshape(len(snapshots), -1)
    clip = np.array([s.clip for s in snapshots])
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    for lo, hi, name, alpha in ((0, 4, "5-95 %", 0.2), (1, 3, "25-75 %", 0.4)):
        fig.add_trace(
            go.Scatter(
                x=steps, y=q[:, hi], mode="lines", line_width=0, showlegend=False, legendgroup=name
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(
                x=steps,
                y=q[:, lo],
                mode="lines",
                line_width=0,
                fill="tonexty",
                name=name,
                fillcolor=f"rgba(70,130,180,{alpha})",
                legendgroup=name,
            ),
            row=1,
            col=1,
        )
    fig.add_trace(go.Scatter(x=steps, y=q[:, 2], name="median", line_color="steelblue"), 1, 1)
    for y, name in ((1.0 - clip, "1-ε"), (1.0 + clip, "1+ε")):
        fig.add_trace(go.Scatter(x=steps, y=y, name=name, line=_EPS_LINE), row=1, col=1)
    hist = np.array([s.hist for s in snapshots], dtype=np.float64)
    share = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    fig.add_trace(
        go.Heatmap(
            x=steps,
            y=centers,
            z=share.T.astype(np.float32),
            colorscale="Blues",
            name="share of batch",
            colorbar={"title": "share", "len": 0.45, "y": 0.22},
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(title_text="r_t quantiles", row=1, col=1)
    fig.update_yaxes(title_text="r_t (end bins hold the overflow)", row=2, col=1)
    fig.update_xaxes(title_text="env steps", row=2, col=1)
    fig.update_layout(title="How the ratio distribution evolves", height=_HEIGHT + 260)
    return fig


def _rgba(color: str, alpha: float) -> str:
    r, g, b = unlabel_rgb(color)
    return f"rgba({r},{g},{b},{alpha})"


def seed_band(
    runs: Sequence[Series], points: int = 200
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std across runs, each interpolated onto a shared grid over their common steps;
    a single run is returned as logged with zero std."""
    if len(runs) == 1:
        x, y = runs[0]
        return x, y, np.zeros_like(y)
    lo = max(float(x[0]) for x, _ in runs)
    hi = min(float(x[-1]) for x, _ in runs)
    grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
    ys = np.stack([np.interp(grid, x, y) for x, y in runs])
    return grid, ys.mean(axis=0), ys.std(axis=0)


def compare_figure(groups: Mapping[str, Sequence[Curves]], window: int = 20) -> go.Figure:
    """Eval and training-episode return, exact KL and clip fraction vs env steps: one colour
    per group of runs (same config, different seeds), mean +- std band when a group has several."""
    panels = (
        (EVAL_RETURN, "eval return"),
        (EPISODIC_RETURN, f"episode return (mean of last {window})"),
        ("losses/kl", "exact KL"),
        ("losses/clipfrac", "clip fraction"),
    )
    fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in panels])
    for g, (label, runs) in enumerate(groups.items()):
        color = DEFAULT_PLOTLY_COLORS[g % len(DEFAULT_PLOTLY_COLORS)]
        for p, (key, _) in enumerate(panels):
            series = [run[key] for run in runs if key in run and run[key][0].size]
            if not series:
                continue
            if key == EPISODIC_RETURN:
                series = [(x, moving_average(y, window)) for x, y in series]
            x, mean, std = seed_band(series)
            row, col = divmod(p, 2)
            if len(series) > 1:
                fig.add_trace(
                    go.Scatter(
                        x=np.concatenate([x, x[::-1]]),
                        y=np.concatenate([mean + std, (mean - std)[::-1]]),
                        fill="toself",
                        fillcolor=_rgba(color, 0.2),
                        line_width=0,
                        hoverinfo="skip",
                        legendgroup=label,
                        showlegend=False,
                    ),
                    row=row + 1,
                    col=col + 1,
                )
            name = f"{label} (n={len(series)})" if len(series) > 1 else label
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=mean,
                    name=name,
                    mode="lines",
                    line_color=color,
                    legendgroup=label,
                    showlegend=p == 0,
                ),
                row=row + 1,
                col=col + 1,
            )
    fig.update_xaxes(title_text="env steps")
    fig.update_layout(title="Runs compared (mean ± std across seeds)", height=_HEIGHT + 320)
    return fig


def params_table_figure(params: Mapping[str, Mapping[str, str]]) -> go.Figure:
    """The params that differ between runs, one column per run (run label -> params)."""
    labels = list(params)
    keys = sorted({k for p in params.values() for k in p})
    differing = [k for k in keys if len({params[r].get(k, "—") for r in labels}) > 1]
    cells = [differing] + [[params[r].get(k, "—") for k in differing] for r in labels]
    fig = go.Figure(go.Table(header={"values": ["param", *labels]}, cells={"values": cells}))
    fig.update_layout(
        title=f"{len(differing)} of {len(keys)} params differ",
        height=140 + 30 * (len(differing) + 1),
        margin={"t": 60, "b": 20},
    )
    return fig

"""Plotly figures of what PPO-Clip does, as pure functions of logged data.

`Curves` maps an MLflow metric name (`losses/kl`, ...) to its (env step, value) arrays, so the
same functions draw a run from memory at the end of training and from the MLflow store later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch

from ppo1.core.losses import clip_active
from ppo1.report.ratios import HIST_EDGES, RatioSnapshot

Series = tuple[np.ndarray, np.ndarray]
Curves = Mapping[str, Series]

EPISODIC_RETURN = "charts/episodic_return"
EVAL_RETURN = "eval/mean_return"
_EPS_LINE = {"dash": "dash", "color": "firebrick", "width": 1}
PLOT_HEIGHT = 420


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
        height=PLOT_HEIGHT,
        updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "y": 1.15}],
    )
    return fig


def _eps_lines(clip: float) -> dict[str, list[dict[str, Any]]]:
    """Layout shapes and labels marking 1 - eps, 1 and 1 + eps (where the clipped surrogate
    turns flat): what `fig.add_vline` draws, given as layout data (~10 ms a line less here)."""
    one = {"dash": "dot", "color": "gray", "width": 1}
    lines = ((1.0 - clip, "1-ε", _EPS_LINE), (1.0, "1", one), (1.0 + clip, "1+ε", _EPS_LINE))
    return {
        "shapes": [
            {"type": "line", "x0": x, "x1": x, "xref": "x", "y0": 0, "y1": 1, "yref": "paper"}
            | {"line": line}
            for x, _, line in lines
        ],
        "annotations": [
            {"x": x, "xref": "x", "y": 1, "yref": "paper", "text": text, "showarrow": False}
            | {"yanchor": "bottom"}
            for x, text, _ in lines
        ],
    }


def _suffix(k: int) -> str:
    """Plotly names subplot k's axes x, y for k = 1 and x<k>, y<k> after (xaxis<k> in layout)."""
    return "" if k == 1 else str(k)


def subplot_grid(
    rows: int,
    cols: int = 1,
    shared_x: bool = False,
    titles: Sequence[str] = (),
    gap_y: float = 0.06,
) -> dict[str, Any]:
    """The layout of a rows x cols grid of subplots, k = 1, 2, ... row by row from the top left;
    a trace goes on subplot k with xaxis="x<k>", yaxis="y<k>" (see `_on`). The grid
    `make_subplots` builds, without its ~25 ms a figure of generic bookkeeping."""
    gap_x = 0.1
    width, height = (1 - gap_x * (cols - 1)) / cols, (1 - gap_y * (rows - 1)) / rows
    layout: dict[str, Any] = {"annotations": []}
    for k in range(1, rows * cols + 1):
        row, col = divmod(k - 1, cols)
        left, top = col * (width + gap_x), 1 - row * (height + gap_y)
        x: dict[str, Any] = {"domain": [left, left + width], "anchor": f"y{_suffix(k)}"}
        if shared_x and k > 1:
            x["matches"] = "x"
        if shared_x and row < rows - 1:
            x["showticklabels"] = False  # only the bottom subplot labels the shared axis
        layout[f"xaxis{_suffix(k)}"] = x
        layout[f"yaxis{_suffix(k)}"] = {"domain": [top - height, top], "anchor": f"x{_suffix(k)}"}
    for k, title in enumerate(titles, start=1):
        row, col = divmod(k - 1, cols)
        layout["annotations"].append(
            {"text": title, "x": col * (width + gap_x) + width / 2, "y": 1 - row * (height + gap_y)}
            | {"xref": "paper", "yref": "paper", "showarrow": False, "yanchor": "bottom"}
            | {"xanchor": "center", "font": {"size": 16}}
        )
    return layout


def on_subplot(k: int, trace: go.Scatter | go.Heatmap) -> go.Scatter | go.Heatmap:
    """`trace` drawn on subplot k of a `_grid`."""
    trace.update(xaxis=f"x{_suffix(k)}", yaxis=f"y{_suffix(k)}")
    return trace


def axis_titles(layout: dict[str, Any], axis: str, titles: Mapping[int, str]) -> None:
    """Title subplot k's `axis` ("x" or "y") for each k in `titles`."""
    for k, title in titles.items():
        layout[f"{axis}axis{_suffix(k)}"]["title"] = {"text": title}


def ratio_histogram_figure(ratio: np.ndarray, clip: float) -> go.Figure:
    """Distribution of r_t = pi_new / pi_old over the last rollout (its logged sample), with
    1 +- eps marked."""
    return go.Figure(
        go.Histogram(x=ratio, name="r_t", nbinsx=60),
        layout={
            "title": f"Policy ratio r_t after the last update (ε = {clip:.3g})",
            "xaxis_title": "r_t",
            "yaxis_title": "samples",
            "height": PLOT_HEIGHT,
            **_eps_lines(clip),
        },
    )


def clip_activity_figure(ratio: np.ndarray, advantages: np.ndarray, clip: float) -> go.Figure:
    """r_t against A_t, split where the clipped branch of L^CLIP is active (zero gradient)."""
    active = clip_active(torch.as_tensor(ratio), torch.as_tensor(advantages), clip).numpy()
    marks = _eps_lines(clip)
    zero = {"type": "line", "x0": 0, "x1": 1, "xref": "paper", "y0": 0.0, "y1": 0.0, "yref": "y"}
    marks["shapes"].append(zero | {"line": {"color": "gray", "width": 1}})
    return go.Figure(
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
        ],
        layout={
            "title": f"Where clipping is active: {active.mean():.1%} of {active.size} samples",
            "xaxis_title": "r_t",
            "yaxis_title": "advantage A_t",
            "height": PLOT_HEIGHT,
            **marks,
        },
    )


def _stacked(curves: Curves, title: str, rows: Sequence[Sequence[tuple[str, str]]]) -> go.Figure:
    """One subplot per row of (metric, legend name) pairs, sharing the env-step axis; a metric
    that was not logged is left out."""
    layout = subplot_grid(len(rows), shared_x=True)
    axis_titles(layout, "y", {k: " / ".join(n for _, n in row) for k, row in enumerate(rows, 1)})
    axis_titles(layout, "x", {len(rows): "env steps"})
    traces = [
        on_subplot(k, go.Scatter(x=curves[key][0], y=curves[key][1], name=name, mode="lines"))
        for k, row in enumerate(rows, start=1)
        for key, name in row
        if key in curves
    ]
    return go.Figure(
        traces, layout | {"title": title, "height": PLOT_HEIGHT + 160 * (len(rows) - 1)}
    )


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
    traces: list[go.Scatter | go.Heatmap] = []
    for lo, hi, name, alpha in ((0, 4, "5-95 %", 0.2), (1, 3, "25-75 %", 0.4)):
        traces.append(
            go.Scatter(
                x=steps, y=q[:, hi], mode="lines", line_width=0, showlegend=False, legendgroup=name
            )
        )
        traces.append(
            go.Scatter(
                x=steps,
                y=q[:, lo],
                mode="lines",
                line_width=0,
                fill="tonexty",
                name=name,
                fillcolor=f"rgba(70,130,180,{alpha})",
                legendgroup=name,
            )
        )
    traces.append(go.Scatter(x=steps, y=q[:, 2], name="median", line_color="steelblue"))
    for y, name in ((1.0 - clip, "1-ε"), (1.0 + clip, "1+ε")):
        traces.append(go.Scatter(x=steps, y=y, name=name, line=_EPS_LINE))
    hist = np.array([s.hist for s in snapshots], dtype=np.float64)
    share = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1.0)
    centers = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    heatmap = go.Heatmap(
        x=steps,
        y=centers,
        z=share.T.astype(np.float32),
        colorscale="Blues",
        name="share of batch",
        colorbar={"title": "share", "len": 0.45, "y": 0.22},
    )
    layout = subplot_grid(2, shared_x=True)
    axis_titles(layout, "y", {1: "r_t quantiles", 2: "r_t (end bins hold the overflow)"})
    axis_titles(layout, "x", {2: "env steps"})
    layout |= {"title": "How the ratio distribution evolves", "height": PLOT_HEIGHT + 260}
    return go.Figure([*(on_subplot(1, t) for t in traces), on_subplot(2, heatmap)], layout)

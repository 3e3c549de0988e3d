"""Runs on one page: grouped by config (seeds aside), each group a letter and a short name.

A group's name is its letter and the few params that set it apart, abbreviated
(`B: clip=0.1 lr=0.000316`), or the letter alone when more differ; the params table, one
column per group, keys the letters to every differing param and names the group's runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
from plotly.colors import DEFAULT_PLOTLY_COLORS, unlabel_rgb

from ppo1.config import NOT_LEARNING
from ppo1.report.plots import (
    EPISODIC_RETURN,
    EVAL_RETURN,
    PLOT_HEIGHT,
    Curves,
    Series,
    axis_titles,
    moving_average,
    on_subplot,
    subplot_grid,
)
from ppo1.report.runs import ROLE_TAG, RunData
from ppo1.tracking.names import short_keys, short_value

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# Not what sets a group apart: settings that do not change what is learnt, and a sweep's own
# (its trial number differs between every two trials that the params already tell apart).
_NOT_COMPARED = (*NOT_LEARNING, "sweep")
# Differing params spelled out in a group's name; with more, the name is the letter alone.
MAX_NAMED = 3
MAX_NAME = 48  # characters of a name in the legend, which takes its width from the plots


@dataclass
class Group:
    """Runs with one config (seed and the like aside), drawn as one curve with a band."""

    letter: str
    config: dict[str, str]  # the params that differ between groups, by full key
    name: str
    runs: list[RunData] = field(default_factory=list)


def config_of(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if not k.startswith(_NOT_COMPARED)}


def letter(index: int) -> str:
    """0 -> A, 25 -> Z, 26 -> AA: spreadsheet column names."""
    name = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


def _name(index: int, config: dict[str, str], short: dict[str, str]) -> str:
    """`B: clip=0.1 lr=0.000316`, or `B` when more than MAX_NAMED params differ."""
    if len(config) > MAX_NAMED:
        return letter(index)
    named = " ".join(f"{short[k]}={short_value(v)}" for k, v in config.items()) or "same config"
    name = f"{letter(index)}: {named}"
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def group_runs(runs: Sequence[RunData]) -> list[Group]:
    """Runs grouped by the params that differ between them, in order of first appearance."""
    configs = [config_of(r.params) for r in runs]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({c.get(k, "—") for c in configs}) > 1]
    short = short_keys(differing)
    groups: dict[tuple[str, ...], Group] = {}
    for run, config in zip(runs, configs, strict=True):
        values = tuple(config.get(k, "—") for k in differing)
        if values not in groups:
            differs = dict(zip(differing, values, strict=True))
            groups[values] = Group(letter(len(groups)), differs, _name(len(groups), differs, short))
        groups[values].runs.append(run)
    return list(groups.values())


def params_table_figure(groups: Sequence[Group]) -> go.Figure:
    """The params that differ between groups, one column per group, and each group's runs."""
    differing = list(groups[0].config) if groups else []
    header = ["param", *(f"{g.letter} (n={len(g.runs)})" for g in groups)]
    rows = [[key, *(g.config[key] for g in groups)] for key in differing]
    runs = ["runs", *("<br>".join(r.label for r in g.runs) for g in groups)]
    cells = list(zip(*rows, runs, strict=True))  # Plotly takes the table column by column
    # A row per param, and as many lines for the runs as the largest group has.
    lines = len(differing) + max((len(g.runs) for g in groups), default=1)
    fig = go.Figure(go.Table(header={"values": header}, cells={"values": cells}))
    fig.update_layout(
        title=f"{len(differing)} params differ between the {len(groups)} groups",
        height=160 + 30 * (lines + 1),
        margin={"t": 60, "b": 20},
    )
    return fig


def compare_figures(runs: Sequence[RunData]) -> dict[str, go.Figure]:
    """The curves of each group (mean +- std over its seeds) and the table keying the groups."""
    groups = group_runs(runs)
    return {
        "curves": compare_figure({g.name: [r.curves for r in g.runs] for g in groups}),
        "params": params_table_figure(groups),
    }


def log_page(
    client: MlflowClient, experiment_id: str, page: str, run_ids: list[str], command: str
) -> str:
    """Keep a comparison beside its runs: a FINISHED run holding the page (`compare.html`) and
    the compared runs' ids (`runs.txt`). It logs no training metric, so no later comparison
    of the experiment takes it for a training run. Returns its id."""
    tags = {ROLE_TAG: "compare", "ppo1.command": command, "mlflow.source.name": "ppo1.compare"}
    run_id: str = client.create_run(
        experiment_id, tags=tags, run_name=f"compare-{len(run_ids)}-runs"
    ).info.run_id
    client.log_text(run_id, page, "compare.html")
    client.log_text(run_id, "\n".join(run_ids) + "\n", "runs.txt")
    client.set_terminated(run_id)
    return run_id


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
    traces: list[go.Scatter | go.Heatmap] = []
    for g, (label, runs) in enumerate(groups.items()):
        color = DEFAULT_PLOTLY_COLORS[g % len(DEFAULT_PLOTLY_COLORS)]
        for p, (key, _) in enumerate(panels):
            series = [run[key] for run in runs if key in run and run[key][0].size]
            if not series:
                continue
            if key == EPISODIC_RETURN:
                series = [(x, moving_average(y, window)) for x, y in series]
            x, mean, std = seed_band(series)
            if len(series) > 1:
                band = go.Scatter(
                    x=np.concatenate([x, x[::-1]]),
                    y=np.concatenate([mean + std, (mean - std)[::-1]]),
                    fill="toself",
                    fillcolor=_rgba(color, 0.2),
                    line_width=0,
                    hoverinfo="skip",
                    legendgroup=label,
                    showlegend=False,
                )
                traces.append(on_subplot(p + 1, band))
            name = f"{label} (n={len(series)})" if len(series) > 1 else label
            line = go.Scatter(
                x=x,
                y=mean,
                name=name,
                mode="lines",
                line_color=color,
                legendgroup=label,
                showlegend=p == 0,
            )
            traces.append(on_subplot(p + 1, line))
    # Room between the rows for the x-axis titles above and the subplot titles below.
    layout = subplot_grid(2, 2, titles=[t for _, t in panels], gap_y=0.15)
    axis_titles(layout, "x", dict.fromkeys(range(1, 5), "env steps"))
    # A fixed height, and the legend beside the plots, where it scrolls when long: however many
    # groups there are, the plots keep their size (a legend below would take it from them).
    layout |= {
        "title": "Runs compared (mean ± std across seeds)",
        "height": PLOT_HEIGHT + 320,
        "legend": {"orientation": "v", "x": 1.02, "xanchor": "left", "y": 1, "yanchor": "top"},
    }
    return go.Figure(traces, layout)

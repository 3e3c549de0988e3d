"""A run's figures as one offline HTML page (plotly.js inlined once) plus one JSON per figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from ppo1.report import plots
from ppo1.report.html import html_page
from ppo1.report.ratios import to_json
from ppo1.report.runs import SNAPSHOTS_FILE, RunData

DASHBOARD = "dashboard.html"


def run_figures(run: RunData) -> dict[str, go.Figure]:
    """The diagnostics of one run, by file stem; ratio figures only where snapshots exist."""
    figures: dict[str, go.Figure] = {}
    steps, returns = run.curves.get(plots.EPISODIC_RETURN, (np.array([]), np.array([])))
    figures["episode_return"] = plots.reward_figure(steps, returns)
    if run.snapshots:
        last = run.snapshots[-1]
        ratio, advantages = np.array(last.ratio), np.array(last.advantages)
        figures["ratio_histogram"] = plots.ratio_histogram_figure(ratio, last.clip)
        figures["clip_activity"] = plots.clip_activity_figure(ratio, advantages, last.clip)
        figures["ratio_evolution"] = plots.ratio_evolution_figure(run.snapshots)
    figures["kl_clip"] = plots.kl_clip_figure(run.curves)
    figures["losses"] = plots.losses_figure(run.curves)
    figures["schedules"] = plots.schedule_figure(run.curves)
    return figures


def write_figures(folder: Path, run: RunData, page: bool = True) -> list[Path]:
    """The run's figures into `folder`: json/<name>.json (read back with plotly.io.read_json),
    the ratio data and, with `page`, dashboard.html. Returns the files written."""
    figures = run_figures(run)
    (folder / "json").mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        paths.append(folder / "json" / f"{name}.json")
        paths[-1].write_text(fig.to_json())
    if run.snapshots:
        paths.append(folder / SNAPSHOTS_FILE)
        paths[-1].write_text(json.dumps(to_json(run.snapshots)))
    if page:
        paths.append(folder / DASHBOARD)
        paths[-1].write_text(html_page(f"ppo1 run {run.label}", figures), encoding="utf-8")
    return paths

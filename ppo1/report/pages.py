"""A run's figures as one offline HTML page (plotly.js inlined once) plus one JSON per figure."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ppo1.report import plots
from ppo1.report.ratios import to_json
from ppo1.report.runs import SNAPSHOTS_FILE, RunData
from ppo1.utils.cli import exit_with_error

DASHBOARD = "dashboard.html"
_STYLE = "body{font-family:sans-serif;margin:1em 2em}.plot{margin-bottom:1.5em}"


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


def html_page(title: str, figures: dict[str, go.Figure], notes: Sequence[str] = ()) -> str:
    """A self-contained page: plotly.js once in the head, a paragraph per note (what the page
    could not show, and why), then one div per figure."""
    paragraphs = "".join(f'<p class="note">{html.escape(note)}</p>\n' for note in notes)
    divs = "\n".join(
        f'<div class="plot">{fig.to_html(full_html=False, include_plotlyjs=False, div_id=name)}'
        "</div>"
        for name, fig in figures.items()
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style>\n<script>{get_plotlyjs()}</script></head>\n"
        f"<body><h2>{html.escape(title)}</h2>\n{paragraphs}{divs}\n</body></html>\n"
    )


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


def out_error(out: Path, err: OSError) -> NoReturn:
    """`--out` could not be written: one line with the system's reason, not a traceback."""
    inner = f" ({err.filename})" if err.filename and Path(err.filename) != out else ""
    exit_with_error(f"cannot write --out {out}: {err.strerror or err}{inner}")

"""The benchmark's outputs: the Markdown table, the bar chart, the MLflow run, the machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from benchmarks.budget import Row
from benchmarks.markdown import markdown_rows
from ppo1.config import TrackingConfig, TrainConfig
from ppo1.tracking.tracker import Tracker


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def machine_info() -> dict[str, str]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_avg_1m": f"{load[0]:.2f}",
    }


def cell(row: Row, system: str) -> str:
    values = row.samples.get(system)
    if not values:
        return "-" if system in row.samples else "n/a"
    median = fmt(row.median(system))
    if len(values) == 1:
        return median
    return f"{median} ({fmt(min(values))}-{fmt(max(values))})"


def markdown_table(
    rows: list[Row], info: dict[str, str], cfg: TrainConfig, notes: list[str]
) -> str:
    has_sb3 = any("sb3" in row.samples for row in rows)
    header = ["measure", "unit", "ppo1", *(["SB3", "ppo1 vs SB3"] if has_sb3 else [])]
    cells = []
    for row in rows:
        cells.append([row.name, row.unit, cell(row, "ppo1")])
        if has_sb3:
            speedup = row.speedup()
            cells[-1] += [cell(row, "sb3"), "" if speedup is None else f"{speedup:.1f}x"]
    lines = [
        f"ppo1 benchmark: {cfg.env.id}, {cfg.env.num_envs} envs x {cfg.algo.n_steps} steps, "
        f"{cfg.algo.epochs} epochs, minibatch {cfg.algo.minibatch_size}",
        "machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "cells: median (min-max) over seeds/repeats",
        "",
        markdown_rows(header, cells, right=len(header) - 2),
    ]
    lines += [f"note: {row.name}: {row.note}" for row in rows if row.note]
    lines += [f"note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def bar_chart(rows: list[Row]) -> Any:
    """Grouped bars of the medians with min-max error bars: env-steps/s, and seconds."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    sps = [r for r in rows if r.unit == "env-steps/s"]
    secs = [r for r in rows if r.unit == "s"]
    fig = make_subplots(
        rows=1, cols=2, column_widths=[0.7, 0.3], subplot_titles=("env-steps/s", "seconds")
    )
    for system, color in (("ppo1", "#1f77b4"), ("sb3", "#ff7f0e")):
        for col, group in ((1, sps), (2, secs)):
            present = [r for r in group if r.samples.get(system)]
            if not present:
                continue
            medians = [r.median(system) or 0.0 for r in present]
            fig.add_trace(
                go.Bar(
                    name=system,
                    x=[r.name for r in present],
                    y=medians,
                    marker_color=color,
                    showlegend=col == 1,
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [
                            max(r.samples[system]) - m
                            for r, m in zip(present, medians, strict=True)
                        ],
                        "arrayminus": [
                            m - min(r.samples[system])
                            for r, m in zip(present, medians, strict=True)
                        ],
                    },
                ),
                row=1,
                col=col,
            )
    fig.update_layout(barmode="group", title="ppo1 benchmark (median, min-max)")
    return fig


def log_to_mlflow(
    rows: list[Row], params: dict[str, Any], table: str, out: Path, tracking: TrackingConfig
) -> str | None:
    """One run: the medians as metrics, the table, the raw samples and the bar chart."""
    with Tracker(tracking, params, {"mlflow.source.name": "benchmarks.bench"}) as tracker:
        metrics: dict[str, float] = {}
        for row in rows:
            for system in row.samples:
                median = row.median(system)
                if median is not None:
                    metrics[f"bench/{system}/{row.key}"] = median
        tracker.log_metrics(metrics, 0)
        tracker.log_text(table, "bench.md")
        for name in ("bench.json", "bench.html"):
            tracker.log_artifact(out / name)
    return tracker.run_id

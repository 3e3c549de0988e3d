"""notebooks/walkthrough.ipynb: committed without outputs, and executed top to bottom in a real
Jupyter kernel (this interpreter's), where it trains through ppo1 into a throwaway MLflow
store, leaves the checkout alone and draws its figures offline."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from plotly.offline import get_plotlyjs

from tests.browser import offline_page

ROOT = Path(__file__).resolve().parents[1]  # the checkout these tests belong to
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"
KERNEL = "ppo1-walkthrough"
# The notebook's figures in output order: the objective, the ratios after one update, then the
# run's figures as read back from MLflow (ASCII title prefixes: the JSON escapes the rest).
TITLES = [
    "The clipped objective",
    "Policy ratio r_t after the last update",
    "Training episode return",
    "Policy ratio r_t after the last update",
    "Where clipping is active",
    "How the ratio distribution evolves",
    "KL and clipping over updates",
    "Losses and entropy over updates",
    "Value fit and schedules",
]
# Plotly's notebook renderer writes a MathJax <script src> on a CDN into every figure (for
# LaTeX labels, which these figures do not use); offline it fails and nothing else changes.
MATHJAX = "mathjax"
# What the notebook must not touch: kept out of the snapshot because they change by
# themselves (caches, the venv) or are only ever read.
NOT_WATCHED = {".git", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    dirty = [i for i, cell in enumerate(code) if cell.outputs or cell.execution_count is not None]
    assert dirty == [], (
        f"code cells {dirty} of {NOTEBOOK.name} keep outputs or execution counts: clear all "
        "outputs before committing (Jupyter: Edit > Clear Outputs of All Cells)"
    )
    # Nor the timings nbclient and Jupyter record per cell.
    assert all("execution" not in cell.metadata for cell in code)


def tree_state(root: Path) -> dict[str, int]:
    """Every file under `root` (caches and the venv aside) and its modification time."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in NOT_WATCHED]
        for name in files:
            path = Path(folder, name)
            state[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return state


def this_interpreters_kernel(folder: Path) -> KernelManager:
    """A kernel of this very interpreter (the venv's), whatever kernels Jupyter has installed:
    a `python3` kernelspec elsewhere on the machine may point at another Python."""
    write_kernel_spec(folder / KERNEL)  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    return KernelManager(
        kernel_name=KERNEL,
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(folder)]),
        # Unix sockets in `folder` rather than TCP ports on loopback (which ipykernel warns of).
        transport="ipc",
        ip=str(folder / "kernel-ipc"),
    )


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> nbformat.NotebookNode:
    """The notebook after a run from the first cell to the last; a cell that raises fails it."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    folder = tmp_path_factory.mktemp("walkthrough")
    before = tree_state(ROOT)
    client = NotebookClient(
        notebook,
        km=this_interpreters_kernel(folder),
        timeout=600,  # per cell; the training cell takes ~15 s here
        resources={"metadata": {"path": str(folder)}},  # the kernel's working directory
    )
    client.execute()
    assert tree_state(ROOT) == before, "the notebook wrote into the checkout"
    return notebook


def html_outputs(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        output.data["text/html"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/html" in output.get("data", {})
    ]


@pytest.mark.slow
def test_notebook_runs_and_shows_the_figures(executed: nbformat.NotebookNode) -> None:
    outputs = [output for cell in executed.cells for output in cell.get("outputs", [])]
    assert [o for o in outputs if o.output_type == "error"] == []
    # Nothing on stderr: no warnings, no stray log lines from the libraries underneath.
    assert [o.text for o in outputs if o.get("name") == "stderr"] == []
    text = "".join(o.text for o in outputs if o.get("name") == "stdout")
    assert "A_t: [0.75, 1.0, 0.75, 1.0]" in text  # the GAE example worked by hand
    assert re.search(r"run [0-9a-f]{32}: \d+ training episodes", text)
    assert "figures: episode_return, ratio_histogram, clip_activity, ratio_evolution" in text
    assert any(
        "`algo.n_steps` | 32 | 256" in o.get("data", {}).get("text/markdown", "") for o in outputs
    )

    html = html_outputs(executed)
    bundle = get_plotlyjs()
    # plotly.js is inlined once, before every figure, so they draw with no network.
    assert bundle in html[0] and not any(bundle in h for h in html[1:])
    figures = [h for h in html if "Plotly.newPlot" in h]
    assert len(figures) == len(TITLES)
    for figure, title in zip(figures, TITLES, strict=True):
        assert f'"text":"{title}' in figure, title
    sources = [src for h in html for src in re.findall(r'<script[^>]*\ssrc="([^"]*)"', h)]
    assert all(MATHJAX in src for src in sources), sources


@pytest.mark.slow
def test_notebook_figures_render_with_the_network_blocked(
    executed: nbformat.NotebookNode, tmp_path: Path
) -> None:
    """The executed notebook's HTML outputs, in order, on one page as a notebook front end
    shows them: every figure draws in Chromium with nothing reachable but local files."""
    page_file = tmp_path / "walkthrough.html"
    body = "\n".join(f'<div class="output">{h}</div>' for h in html_outputs(executed))
    page_file.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{body}')
    with offline_page() as offline:
        offline.page.goto(page_file.as_uri())
        plots = offline.page.locator(".js-plotly-plot")
        plots.nth(len(TITLES) - 1).locator("svg.main-svg").first.wait_for(timeout=60_000)
        traces = plots.evaluate_all(
            "plots => plots.map(p => p.querySelectorAll('svg.main-svg g.trace').length)"
        )
        assert len(traces) == len(TITLES) and all(n > 0 for n in traces), traces
        offline.page.screenshot(path=tmp_path / "walkthrough.png", full_page=True)
    assert all(MATHJAX in url for url in offline.blocked), offline.blocked

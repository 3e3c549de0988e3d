"""Figures as one self-contained HTML page, and the error for a page that cannot be written.

Apart from the run diagnostics (ppo1.report.pages): a sweep process writes its study's page
without importing what drawing a run takes (torch, through the clipping rule the plots share
with the loss)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ppo1.utils.cli import exit_with_error

_STYLE = "body{font-family:sans-serif;margin:1em 2em}.plot{margin-bottom:1.5em}"


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


def out_error(out: Path, err: OSError) -> NoReturn:
    """`--out` could not be written: one line with the system's reason, not a traceback."""
    inner = f" ({err.filename})" if err.filename and Path(err.filename) != out else ""
    exit_with_error(f"cannot write --out {out}: {err.strerror or err}{inner}")

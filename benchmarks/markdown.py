"""Markdown tables, as the benchmarks print them for docs/."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_rows(header: Sequence[str], rows: Sequence[Sequence[str]], right: int = 0) -> str:
    """A Markdown table: the header, its separator (the last `right` columns, numbers,
    aligned right), a line per row."""
    rule = ["---"] * (len(header) - right) + ["---:"] * right
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])

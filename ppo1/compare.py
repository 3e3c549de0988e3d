"""`python -m ppo1.compare RUN_ID|EXPERIMENT ... [--filter F]`: several runs on one offline page.

Runs that differ only by seed (or by tracking/printing options) form one group, drawn as
mean +- std across its seeds; the page ends with a table of the params that differ.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ppo1.config import NOT_LEARNING
from ppo1.tracking.store import add_store_argument

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ppo1.report.plots import Curves
    from ppo1.report.runs import RunData


def config_of(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if not k.startswith(NOT_LEARNING)}


def group_by_config(runs: Sequence[RunData]) -> dict[str, list[Curves]]:
    """Runs with equal configs (seed aside) in one group, labelled by what sets it apart."""
    configs = [config_of(r.params) for r in runs]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({c.get(k) for c in configs}) > 1]
    groups: dict[str, list[Curves]] = {}
    for run, config in zip(runs, configs, strict=True):
        label = ", ".join(f"{k}={config.get(k)}" for k in differing) or "same config"
        groups.setdefault(label, []).append(run.curves)
    return groups


def compare_figures(runs: Sequence[RunData]) -> dict[str, go.Figure]:
    from ppo1.report.plots import compare_figure, params_table_figure

    return {
        "curves": compare_figure(group_by_config(runs)),
        "params": params_table_figure({r.label: r.params for r in runs}),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ppo1.compare",
        description="Compare MLflow runs (learning curves, KL, clip fraction, params) on one "
        "offline Plotly page.",
    )
    parser.add_argument("targets", nargs="+", help="run ids and/or experiment names")
    parser.add_argument(
        "--filter",
        default="",
        help="MLflow search filter for the experiments' runs, e.g. \"params.`algo.clip` = '0.1'\"",
    )
    parser.add_argument("--out", type=Path, default=Path("compare.html"))
    add_store_argument(parser)
    args = parser.parse_args(argv)
    # Imported once the arguments are parsed: `--help` answers without torch and MLflow.
    from ppo1.report.pages import html_page, out_error
    from ppo1.report.runs import load_run, open_store, resolve_runs

    client = open_store(args.tracking_uri)
    runs = [load_run(client, run) for run in resolve_runs(client, args.targets, args.filter)]
    page = html_page(f"ppo1: {len(runs)} runs compared", compare_figures(runs))
    try:
        args.out.write_text(page, encoding="utf-8")
    except OSError as err:
        out_error(args.out, err)
    print(f"wrote {args.out} ({len(runs)} runs; opens offline in any browser)")


if __name__ == "__main__":
    main()

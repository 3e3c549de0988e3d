"""`python -m ppo1.compare RUN_ID|EXPERIMENT ... [--filter F]`: several runs on one offline page.

Runs that differ only by seed (or by tracking/printing options) form one group, drawn as
mean +- std across its seeds and named by a letter and what sets it apart; the page ends with
a table keying the letters to the params that differ. Sweeps' runs are left out of an
experiment unless asked for (`--include-sweeps`, `--study NAME`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ppo1.tracking.store import add_store_argument

if TYPE_CHECKING:
    from mlflow.entities import Run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    sweeps = parser.add_mutually_exclusive_group()
    sweeps.add_argument(
        "--include-sweeps",
        action="store_true",
        help="also the training runs of sweeps' trials, which an experiment otherwise leaves out",
    )
    sweeps.add_argument("--study", help="only the training runs of this Optuna study's trials")
    parser.add_argument("--out", type=Path, default=Path("compare.html"))
    parser.add_argument(
        "--log",
        action="store_true",
        help="also keep the page in MLflow: a run of its own (tag ppo1.role=compare) in the "
        "first run's experiment, with the page as its artifact compare.html",
    )
    add_store_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Imported once the arguments are parsed: `--help` answers without plotly and MLflow.
    from ppo1.report.compare import compare_figures, log_page
    from ppo1.report.html import html_page, out_error
    from ppo1.report.runs import load_run, open_store, resolve_runs
    from ppo1.tracking.urls import runs_table_url, ui_lines

    client = open_store(args.tracking_uri)
    left_out: list[Run] = []
    chosen = resolve_runs(
        client,
        args.targets,
        args.filter,
        include_sweeps=args.include_sweeps,
        study=args.study,
        left_out=left_out,
    )
    runs = [load_run(client, run) for run in chosen]
    page = html_page(f"ppo1: {len(runs)} runs compared", compare_figures(runs))
    try:
        args.out.write_text(page, encoding="utf-8")
    except OSError as err:
        out_error(args.out, err)
    print(f"wrote {args.out} ({len(runs)} runs; opens offline in any browser)")
    if left_out:
        print(f"left out {len(left_out)} runs of sweeps' trials (--include-sweeps, --study NAME)")
    experiments = list(dict.fromkeys(run.info.experiment_id for run in chosen))
    logged = None
    if args.log:
        command = shlex.join(["python", "-m", "ppo1.compare", *sys.argv[1:]])
        logged = log_page(client, experiments[0], page, [r.info.run_id for r in chosen], command)
        print(f"logged as MLflow run {logged}")
    uri = client.tracking_uri
    lines = ui_lines(uri, experiments[0], logged, "the page", artifact="compare.html")
    lines += [f"  all runs: {runs_table_url(uri, e)}" for e in experiments[1:]]
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""`python -m ppo1.dashboard RUN_ID --out DIR`: a finished run's figures from the MLflow store,
as one offline HTML page (plotly.js inlined once) plus one JSON per figure."""

from __future__ import annotations

import argparse
from pathlib import Path

from ppo1.tracking.store import add_store_argument
from ppo1.utils.cli import exit_with_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ppo1.dashboard",
        description="Write a finished run's Plotly diagnostics (offline HTML + JSON) to a folder.",
    )
    parser.add_argument("run_id", help="MLflow run id")
    parser.add_argument("--out", type=Path, default=None, help="folder (default: figures-<id8>)")
    add_store_argument(parser)
    args = parser.parse_args(argv)
    # Imported once the arguments are parsed: `--help` answers without torch and MLflow.
    from ppo1.report.html import out_error
    from ppo1.report.pages import DASHBOARD, write_figures
    from ppo1.report.runs import TRAINING_METRIC, get_run, load_run, open_store

    folder = args.out or Path(f"figures-{args.run_id[:8]}")
    if folder.exists() and not folder.is_dir():
        exit_with_error(f"--out {folder} is a file; it takes a folder")
    client = open_store(args.tracking_uri)
    run = load_run(client, get_run(client, args.run_id))
    if TRAINING_METRIC not in run.curves:
        exit_with_error(
            f"run {args.run_id} has no training curves (a sweep's study or trial run, "
            "or a run stopped before its first update): nothing to draw"
        )
    try:
        write_figures(folder, run)
    except OSError as err:
        out_error(folder, err)
    print(f"wrote {folder / DASHBOARD} (opens offline in any browser) and {folder}/json/")


if __name__ == "__main__":
    main()

"""`python -m benchmarks.results`: its statistics by hand, and the quick mode end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from benchmarks.results import EXPERIMENT, ROWS
from benchmarks.stats import iqm, stratified_bootstrap_ci
from ppo1.config import CONF_DIR
from ppo1.report.plots import EVAL_RETURN
from tests.conftest import one_error_line, run_module


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    # n = 5: floor(5 / 4) = 1 cut from each end of the sorted scores, leaving 2, 3, 4.
    assert iqm(np.array([100.0, 3.0, 1.0, 4.0, 2.0])) == 3.0
    # n = 8 over two tasks: 2 cut from each end of 0 0 1 2 | 3 4 9 9 leaves 1, 2, 3, 4.
    assert iqm(np.array([[0.0, 3.0], [0.0, 4.0], [1.0, 9.0], [2.0, 9.0]])) == 2.5


def test_the_bootstrap_resamples_within_each_task() -> None:
    # Stratified: every resample keeps four 0s and four 10s, whose IQM is always
    # mean(0, 0, 10, 10) = 5. Pooling the tasks would give resamples of IQM 0 to 10.
    scores = np.array([[0.0, 10.0]] * 4)
    assert stratified_bootstrap_ci(scores) == (5.0, 5.0)


def test_the_bootstrap_interval_spans_the_resampled_iqms() -> None:
    # Two runs [0, 1]: a resample is (0, 0), (1, 1) or a mix, with IQM 0, 1 or 0.5 (n = 2 cuts
    # nothing); probabilities 1/4, 1/4, 1/2, so the 95 % interval is [0, 1].
    assert stratified_bootstrap_ci(np.array([0.0, 1.0])) == (0.0, 1.0)
    lo, hi = stratified_bootstrap_ci(np.array([0.0, 1.0]), confidence=0.4)
    assert (lo, hi) == (0.5, 0.5)


def test_every_row_names_a_shipped_preset_and_each_reference_its_source() -> None:
    for row in ROWS:
        assert (CONF_DIR / "env" / f"{row.env}.yaml").exists()
        assert (CONF_DIR / "algo" / f"{row.algo}.yaml").exists()
        assert row.reference is None or "RL Zoo" in row.reference.source


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rows", "cartpol"], "--rows: unknown ['cartpol']"),
        (["--seeds", "0"], "--seeds, --jobs and --steps must be >= 1"),
        (["--impl", "ppo1,sb2"], "--impl: unknown ['sb2']; choose from ['ppo1', 'sb3']"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(args: list[str], message: str) -> None:
    proc = run_module("benchmarks.results", *args)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]


def test_an_unusable_store_is_refused_before_any_run(tmp_path: Path) -> None:
    proc = run_module(
        "benchmarks.results", "--rows", "pendulum", "--seeds", "1",
        "--out", str(tmp_path / "out"), "--tracking-uri", "garbage",
    )  # fmt: skip
    assert "garbage" in one_error_line(proc)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_quick_mode_trains_the_cheap_rows_and_writes_the_table(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    proc = run_module(
        "benchmarks.results", "--quick", "--out", str(out), "--tracking-uri", uri, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (out / "results.md").read_text()
    quick = [row for row in ROWS if row.quick_steps]
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(lines) == 1 + len(quick)  # the header, then one line per quick row
    for row, line in zip(quick, lines[1:], strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row.env and cells[5] == "3"  # 3 seeds
        mean = float(cells[3].split(" ± ")[0])
        assert mean >= row.quick_threshold
    runs = json.loads((out / "results.json").read_text())
    assert len(runs) == 3 * len(quick)
    # Every run is in the one experiment, finished, with its evaluation curve.
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None
    logged = client.search_runs([experiment.experiment_id])
    assert {r.info.run_id for r in logged} == {r["run_id"] for r in runs}
    assert all(r.info.status == "FINISHED" for r in logged)
    assert "plotly" in (out / "curves.html").read_text()[:200_000].lower()


@pytest.mark.slow
def test_an_sb3_row_trains_the_same_settings_and_evaluates_alike(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    proc = run_module(
        "benchmarks.results", "--rows", "cartpole", "--algo", "ppo_clip", "--impl", "ppo1,sb3",
        "--seeds", "1", "--steps", "50000", "--out", str(out), "--tracking-uri", uri, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in (out / "results.md").read_text().splitlines() if "| cartpole" in line]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [c[1] for c in cells] == ["ppo_clip", "ppo_clip, SB3's PPO"]
    runs = {r["row"]: r for r in json.loads((out / "results.json").read_text())}
    client = MlflowClient(uri)
    ours, sb3 = runs["cartpole"]["run_id"], runs["cartpole (sb3)"]["run_id"]
    assert client.get_run(sb3).data.tags["ppo1.role"] == "sb3-peer"
    # Evaluated at the same steps, on the same envs and episodes: the rows compare.
    steps = [[m.step for m in client.get_metric_history(r, EVAL_RETURN)] for r in (ours, sb3)]
    assert steps[0] == steps[1] and len(steps[0]) >= 2
    # SB3 learns with the preset too (a random policy scores about 20).
    assert runs["cartpole (sb3)"]["final_eval"] > 100

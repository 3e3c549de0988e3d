"""`python -m benchmarks.bench`: its table, files and MLflow run, and the time-to-solve rule."""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from benchmarks import bench, phases
from benchmarks import budget as solving
from benchmarks.bench import compose_config
from benchmarks.budget import Budget, Row, SolveWatch
from benchmarks.phases import MatmulCall, time_to_solve
from benchmarks.sb3_peer import Sb3Runner, sb3_kwargs
from benchmarks.table import markdown_table

THROUGHPUT_KEYS = ("env_sps", "raw_sps", "rollout_sps", "update_sps", "end_to_end_sps")


def test_solved_needs_consecutive_evaluations_at_the_threshold() -> None:
    watch = SolveWatch()
    assert not watch.see(1000, 1.0, 480.0)
    assert not watch.see(2000, 2.0, 470.0)  # the streak restarts
    assert not watch.see(3000, 3.0, 475.0)
    assert watch.see(4000, 4.0, 500.0)
    assert watch.see(5000, 5.0, 100.0)  # solved stays solved, at the first time
    assert watch.solved_at == (4000, 4.0)


def test_table_reports_medians_ranges_and_speedups() -> None:
    sps = Row("e2e", "end-to-end", "env-steps/s", True, {"ppo1": [30.0, 10.0, 20.0], "sb3": [5.0]})
    secs = Row("t", "time to solve", "s", False, {"ppo1": [2.0], "sb3": [8.0, 10.0, 12.0]})
    unsolved = Row("u", "steps to solve", "env steps", False, {"ppo1": [], "sb3": [1.0]})
    assert sps.speedup() == 4.0 and secs.speedup() == 5.0 and unsolved.speedup() is None
    table = markdown_table([sps, secs, unsolved], {"cores": "2"}, compose_config([]), ["a note"])
    assert "| end-to-end | env-steps/s | 20.0 (10.0-30.0) | 5.00 | 4.0x |" in table
    assert "| time to solve | s | 2.00 | 10.0 (8.00-12.0) | 5.0x |" in table
    assert "| steps to solve | env steps | - | 1.00 |  |" in table
    assert "machine: cores 2" in table and "note: a note" in table


def test_sb3_gets_the_same_settings() -> None:
    cfg = compose_config(["algo.epochs=7", "schedule=linear"])
    kwargs, differences = sb3_kwargs(cfg)
    assert (kwargs["n_steps"], kwargs["batch_size"], kwargs["n_epochs"]) == (32, 256, 7)
    assert (kwargs["gamma"], kwargs["gae_lambda"]) == (0.98, 0.8)
    # SB3 schedules take progress_remaining, 1 -> 0.
    assert kwargs["learning_rate"](1.0) == pytest.approx(1e-3)
    assert kwargs["learning_rate"](0.25) == pytest.approx(2.5e-4)
    assert kwargs["clip_range"](0.5) == pytest.approx(0.1)
    assert differences == []
    _, differences = sb3_kwargs(compose_config(["algo=sb_ppo1"]))
    assert "SB3 normalises advantages per minibatch" in differences


@pytest.mark.slow
def test_time_to_solve_stops_at_the_second_passing_evaluation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Any return passes, so both systems are "solved" at their second evaluation (512 steps).
    monkeypatch.setattr(solving, "SOLVE_RETURN", -1.0)
    cfg = compose_config(["eval.episodes=2"])
    budget = replace(Budget.quick(), solve_timesteps=2048)
    steps, seconds = time_to_solve(cfg, 1, budget) or (None, None)
    assert steps == 512 and seconds is not None and seconds > 0
    sb3_steps, sb3_seconds = Sb3Runner(cfg, budget).time_to_solve(1) or (None, None)
    assert sb3_steps == 512 and sb3_seconds is not None and sb3_seconds > 0


@pytest.mark.slow
def test_quick_bench_prints_saves_and_logs_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"  # where SB3's default logger would leave a folder per learn()
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    rows = bench.run_bench(["--quick", "--out", str(out), "--tracking-uri", uri])
    printed = capsys.readouterr().out
    assert not any(temp.iterdir())
    by_key = {row.key: row for row in rows}
    for key in THROUGHPUT_KEYS:
        for system in ("ppo1", "sb3"):
            assert (by_key[key].median(system) or 0.0) > 0, (key, system)
    assert by_key["tracking_overhead_pct"].median("ppo1") is not None
    ceiling, raw = by_key["ceiling_sps"].samples["ppo1"], by_key["raw_sps"].samples["ppo1"]
    assert len(ceiling) == len(raw) and all(c < r for c, r in zip(ceiling, raw, strict=True))
    assert "sb3" not in by_key["ceiling_sps"].samples
    assert by_key["tracking_overhead_main_job_pct"].median("ppo1") is not None
    table = (out / "bench.md").read_text()
    assert table in printed and "| end-to-end | env-steps/s |" in table
    payload = json.loads((out / "bench.json").read_text())
    assert payload["machine"]["cores"] and payload["machine"]["torch_threads"] == "1"
    assert {row["key"] for row in payload["rows"]} >= set(THROUGHPUT_KEYS)

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ppo1-bench")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["bench/ppo1/end_to_end_sps"] == by_key["end_to_end_sps"].median("ppo1")
    assert "bench/sb3/update_sps" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {
        "bench.md",
        "bench.json",
        "bench.html",
    }
    html = Path(client.download_artifacts(run.info.run_id, "bench.html", str(tmp_path))).read_text()
    # plotly.js is inlined so the chart renders offline, and the chart has both systems.
    assert "Plotly.newPlot" in html and '"name":"sb3"' in html and len(html) > 1_000_000


def test_the_ceiling_replays_every_matrix_product_of_an_update() -> None:
    # 2 epochs of 2 minibatches of 128: 4 steps, each a forward (3 addmm a tower) and a
    # backward (per tower: a weight gradient per layer, an input gradient above the first);
    # then one policy forward over the batch for the KL.
    cfg = compose_config(["algo.epochs=2", "algo.minibatch_size=128"])
    calls = phases.update_matmuls(cfg, seed=0)
    counts = {op: sum(n for c, n in calls.items() if c.op == op) for op in phases.MATMULS}
    assert counts == {"addmm": 4 * 6 + 3, "mm": 4 * 10}

    def macs(call: MatmulCall) -> int:
        (m, k), (_, n) = (shape for shape, _ in call.operands[-2:])  # addmm's bias is first
        return calls[call] * m * k * n

    # Per sample, the forward's multiply-adds (layers 4x64, 64x64, heads 64x2 and 64x1); the
    # backward's weight gradients cost as much again, plus the input gradients of the second
    # layers and the heads.
    forward = 2 * (4 * 64 + 64 * 64) + 64 * 2 + 64 * 1
    backward = forward + 2 * 64 * 64 + 64 * 2 + 64 * 1
    policy = 4 * 64 + 64 * 64 + 64 * 2
    assert sum(map(macs, calls)) == 4 * 128 * (forward + backward) + 256 * policy
    seconds = phases.replay_seconds(calls, repeats=20)
    assert seconds > 0
    # Nothing but the products is less than the whole update, and bounds a run below its rollout.
    assert phases.ceiling_sps(cfg, 0, raw_sps=30_000.0) < 30_000.0


def test_tuned_config_halves_the_epochs_at_twice_the_step_size() -> None:
    default, tuned = compose_config([]), compose_config(bench.TUNED)
    assert (tuned.algo.epochs, tuned.algo.lr) == (default.algo.epochs // 2, 2 * default.algo.lr)
    assert replace(tuned.algo, epochs=default.algo.epochs, lr=default.algo.lr) == default.algo


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("algo.clip=0", "error: invalid config: algo.clip must be > 0, got 0.0"),
        ("algo.foo=1", "error: Could not override 'algo.foo'. Key 'foo' not in 'AlgoConfig'"),
        ("env=foo", "Could not find 'env/foo' Available options in 'env': acrobot cartpole"),
        ("env.id=FrozenLake-v1", "error: invalid config: env.id 'FrozenLake-v1': observations"),
    ],
)
def test_bad_overrides_stop_the_bench_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--quick", "--no-sb3", "--out", str(tmp_path), override])
    captured = capsys.readouterr()
    assert exit_.value.code == 2
    assert captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.splitlines()) == 1
    assert captured.out == "" and not any(tmp_path.iterdir())  # nothing was measured


@pytest.mark.parametrize("env", ["cartpole", "pendulum"])
def test_table_without_sb3_shows_only_what_was_measured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], env: str
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--quick", "--no-sb3", "--tracking-pairs", "0", "--main-job-pairs", "0"]
    out = tmp_path / "out"
    # None: the ppo1-bench script exits with main's return value, so 0 (a list would exit 1).
    assert bench.main([*args, "--out", str(out), "--tracking-uri", uri, f"env={env}"]) is None
    table = (out / "bench.md").read_text()
    assert "SB3" not in table and "n/a" not in table and "MLflow tracking on vs off" not in table
    if env == "cartpole":
        assert "| time to solve, ppo1 algo=ppo_fast | s |" in table
        assert "evaluation mean >= 475" in table
    else:
        assert "time to solve" not in table and ">= 475" not in table
    assert "| end-to-end | env-steps/s |" in table

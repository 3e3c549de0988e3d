"""The metric writer process: real SQLite stores, real child processes, no row lost or doubled."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ppo1.config import TrackingConfig, TrainConfig
from ppo1.metric_writer import MetricWriter, Row, write_rows
from ppo1.tracking import Tracker, usable_cpus
from ppo1.train import train

from .conftest import TINY, wait_until

Compose = Callable[[list[str]], TrainConfig]

# A cold `import mlflow` on a loaded CI machine can take far longer than the usual ~2 s.
READY_TIMEOUT_S = 120.0


def new_run(uri: str) -> str:
    with Tracker(TrackingConfig(uri=uri, experiment="writer"), {"seed": 0}) as run:
        assert run.run_id is not None
        return run.run_id


def writer_pids(run_id: str) -> list[int]:
    """Live `python -m ppo1.metric_writer` processes writing to this run."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not a process
        if b"ppo1.metric_writer" in argv and run_id.encode() in argv:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                pids.append(int(proc.name))
    return pids


def wait_ready(writer: MetricWriter) -> None:
    def ready() -> bool:
        writer.submit([])  # reads the writer's replies
        return writer.ready

    wait_until(ready, READY_TIMEOUT_S)


def stored(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    history = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def rows(key: str, steps: range) -> list[Row]:
    return [(key, float(step) / 7, 1_000 + step, step) for step in steps]


pytestmark = pytest.mark.skipif(os.name != "posix", reason="the writer runs on POSIX only")
# A tracked run starts a writer only where it may use a second CPU.
two_cpus = pytest.mark.skipif(usable_cpus() < 2, reason="a one-CPU job writes its own rows")


def test_the_writer_process_stores_what_it_acknowledges(mlflow_uri: str) -> None:
    run_id = new_run(mlflow_uri)
    writer = MetricWriter(mlflow_uri, run_id)
    writer.submit([*rows("a", range(0, 1500)), ("nan", math.nan, 5, 0)])  # waits: not ready
    wait_ready(writer)
    writer.submit(rows("a", range(1500, 2500)))
    # What the process acknowledged is in the store before the trainer writes anything.
    wait_until(lambda: len(stored(mlflow_uri, run_id, "a")) == 2500, READY_TIMEOUT_S)
    assert writer.close() == []
    assert stored(mlflow_uri, run_id, "a") == [(s, s / 7) for s in range(2500)]
    assert math.isnan(MlflowClient(mlflow_uri).get_metric_history(run_id, "nan")[0].value)
    assert writer_pids(run_id) == []


def test_closed_before_it_is_ready_it_hands_every_row_back(mlflow_uri: str) -> None:
    run_id = new_run(mlflow_uri)
    writer = MetricWriter(mlflow_uri, run_id)
    batch = rows("a", range(10))
    writer.submit(batch)
    assert writer.close() == batch
    assert stored(mlflow_uri, run_id, "a") == []
    assert writer_pids(run_id) == []


def test_close_does_not_wait_for_a_forked_process_to_release_the_pipe(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ppo1.metric_writer._CLOSE_TIMEOUT_S", 10.0)
    run_id = new_run(mlflow_uri)
    writer = MetricWriter(mlflow_uri, run_id)
    wait_ready(writer)
    holder = os.fork()  # as a user's multiprocessing would: it inherits the pipe's write end
    if holder == 0:
        time.sleep(60)
        os._exit(0)
    try:
        writer.submit(rows("a", range(10)))
        assert writer.close() == []
        # It stopped at the end line, not killed at the timeout waiting for end of input.
        assert writer._proc.returncode == 0
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    assert stored(mlflow_uri, run_id, "a") == [(s, s / 7) for s in range(10)]


def test_a_writer_killed_mid_run_loses_and_doubles_nothing(mlflow_uri: str) -> None:
    run_id = new_run(mlflow_uri)
    writer = MetricWriter(mlflow_uri, run_id)
    wait_ready(writer)
    writer.submit(rows("a", range(0, 100)))
    wait_until(lambda: len(stored(mlflow_uri, run_id, "a")) == 100, READY_TIMEOUT_S)
    (pid,) = writer_pids(run_id)
    os.kill(pid, signal.SIGKILL)
    writer.submit(rows("a", range(100, 300)))  # into a pipe nobody reads, or a broken one
    left = writer.close()
    assert left == rows("a", range(100, 300))
    write_rows(MlflowClient(mlflow_uri), run_id, [*left, *rows("a", range(50, 100))])
    assert stored(mlflow_uri, run_id, "a") == [(s, s / 7) for s in range(300)]


@two_cpus
def test_a_tracked_run_hands_its_metrics_to_the_writer(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start the writer at the first update and hand it rows after every one.
    monkeypatch.setattr("ppo1.tracking._WRITER_AFTER_S", 0.0)
    monkeypatch.setattr("ppo1.tracking._FLUSH_EVERY_S", 0.0)
    cfg = compose_cfg(
        ["total_timesteps=15360", *TINY[1:], "eval.every=10", f"tracking.uri={mlflow_uri}"]
    )
    client = MlflowClient(mlflow_uri)
    seen_mid_run: list[int] = []

    def until_the_writer_stores_one(step: int, _: dict[str, float]) -> None:
        # Slow the run down until rows reach the store; mid-run only the writer writes them.
        if not seen_mid_run:
            (run,) = client.search_runs(["1"])
            if client.get_metric_history(run.info.run_id, "losses/kl"):
                assert writer_pids(run.info.run_id)
                seen_mid_run.append(step)
            else:
                time.sleep(0.25)

    result = train(cfg, on_update=until_the_writer_stores_one)
    assert result.run_id is not None
    assert seen_mid_run and seen_mid_run[0] < cfg.total_timesteps
    for key in ("losses/kl", "charts/SPS", "eval/mean_return"):
        expected = [(int(h["step"]), h[key]) for h in result.history if key in h]
        assert stored(mlflow_uri, result.run_id, key) == expected
    # Every episode, equal ones ending on one step included (MLflow drops exact duplicates).
    episodes = stored(mlflow_uri, result.run_id, "charts/episodic_return")
    assert episodes == sorted((e.step, e.ret) for e in result.episodes)
    assert writer_pids(result.run_id) == []


@two_cpus
def test_ctrl_c_lets_the_writer_finish_and_marks_the_run_killed(mlflow_uri: str) -> None:
    """A real SIGINT to `python -m ppo1.train` while its writer process holds rows."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppo1.train",
            "total_timesteps=10000000",
            f"tracking.uri={mlflow_uri}",
            "tracking.figures=none",
            "eval.every=1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    client = MlflowClient(mlflow_uri)
    try:
        assert proc.stdout.readline().startswith("update")
        (run,) = client.search_runs(["1"])
        run_id = run.info.run_id

        def has_rows() -> bool:
            # Mid-run, rows reach the store only through the writer process (started 5 s in).
            return bool(client.get_metric_history(run_id, "losses/kl"))

        wait_until(has_rows, READY_TIMEOUT_S, process=proc)
        assert writer_pids(run_id)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a failed assertion would leave a 10M-step run training
    assert proc.returncode == 130
    assert client.get_run(run_id).info.status == "KILLED"
    last_update = int(stdout.strip().splitlines()[-1].split()[1].split("/")[0])
    steps = [m.step for m in client.get_metric_history(run_id, "losses/kl")]
    # Every update that printed its line is stored, once (the interrupted one may be too).
    assert Counter(steps).most_common(1)[0][1] == 1
    assert sorted(steps)[:last_update] == [256 * u for u in range(1, last_update + 1)]
    assert writer_pids(run_id) == []


@pytest.mark.parametrize("why", ["tracking.writer_process=false", "one usable CPU"])
def test_without_a_writer_the_trainer_writes_every_row_itself(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    for timer in ("_WRITER_AFTER_S", "_FLUSH_EVERY_S", "_WRITE_EVERY_S"):
        monkeypatch.setattr(f"ppo1.tracking.{timer}", 0.0)  # every update, whichever writes
    overrides = ["total_timesteps=2560", *TINY[1:], f"tracking.uri={mlflow_uri}"]
    cfg = compose_cfg([*overrides, why] if why.startswith("tracking.") else overrides)
    client = MlflowClient(mlflow_uri)
    checked: list[int] = []

    def rows_stored_by_the_trainer(step: int, _: dict[str, float]) -> None:
        (run,) = client.search_runs(["1"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "losses/kl")] == [
            256 * u for u in range(1, step // 256 + 1)
        ]
        assert writer_pids(run.info.run_id) == []
        checked.append(step)

    cpus = os.sched_getaffinity(0)
    if why == "one usable CPU":
        os.sched_setaffinity(0, {min(cpus)})  # as a scheduler's one-CPU allocation would
    try:
        train(cfg, on_update=rows_stored_by_the_trainer)
    finally:
        os.sched_setaffinity(0, cpus)
    assert checked == [256 * u for u in range(1, 11)]

"""The run writer process: real SQLite stores, real child processes, no write lost or doubled."""

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
from ppo1.tracked import train
from ppo1.tracking.ops import ORPHANED, Op, Row, apply
from ppo1.tracking.tracker import Tracker
from ppo1.tracking.writer import RunWriter
from ppo1.utils.paths import usable_cpus

from .conftest import TINY, run_python, running, wait_until

Compose = Callable[[list[str]], TrainConfig]

# A cold `import mlflow` on a loaded CI machine can take far longer than the usual ~2 s.
READY_TIMEOUT_S = 120.0


def new_run(uri: str) -> str:
    with Tracker(TrackingConfig(uri=uri, experiment="writer"), {"seed": 0}) as run:
        assert run.run_id is not None
        return run.run_id


def writer_pids(uri: str) -> list[int]:
    """Live `python -m ppo1.tracking.writer` processes writing to this store."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not a process
        if b"ppo1.tracking.writer" in argv and uri.encode() in argv and running(proc.name):
            pids.append(int(proc.name))
    return pids


def wait_ready(writer: RunWriter) -> None:
    wait_until(lambda: writer.wait_ready(), READY_TIMEOUT_S)


def stored(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    history = MlflowClient(uri).get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in history)


def rows(key: str, steps: range) -> list[Row]:
    return [(key, float(step) / 7, 1_000 + step, step) for step in steps]


def attached(uri: str, run_id: str) -> RunWriter:
    return RunWriter(uri, ["attach", run_id])


pytestmark = pytest.mark.skipif(os.name != "posix", reason="the writer runs on POSIX only")
# A tracked run starts a writer only where it may use a second CPU.
two_cpus = pytest.mark.skipif(usable_cpus() < 2, reason="a one-CPU job writes its own rows")


def test_the_writer_process_stores_what_it_acknowledges(mlflow_uri: str) -> None:
    run_id = new_run(mlflow_uri)
    writer = attached(mlflow_uri, run_id)
    writer.submit(("metrics", [*rows("a", range(0, 1500)), ("nan", math.nan, 5, 0)]))
    wait_ready(writer)
    writer.submit(("metrics", rows("a", range(1500, 2500))))
    # What the process acknowledged is in the store before the trainer writes anything.
    wait_until(lambda: len(stored(mlflow_uri, run_id, "a")) == 2500, READY_TIMEOUT_S)
    assert writer.close() == []
    assert stored(mlflow_uri, run_id, "a") == [(s, s / 7) for s in range(2500)]
    assert math.isnan(MlflowClient(mlflow_uri).get_metric_history(run_id, "nan")[0].value)
    assert writer_pids(mlflow_uri) == []


def test_closed_before_it_is_ready_it_hands_every_row_back(mlflow_uri: str) -> None:
    run_id = new_run(mlflow_uri)
    writer = attached(mlflow_uri, run_id)
    batch = ("metrics", rows("a", range(10)))
    writer.submit(batch)
    assert writer.close(only_if_ready=True) == [batch]
    assert stored(mlflow_uri, run_id, "a") == []
    assert writer_pids(mlflow_uri) == []


def test_close_does_not_wait_for_a_forked_process_to_release_the_pipe(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ppo1.tracking.writer._CLOSE_TIMEOUT_S", 10.0)
    run_id = new_run(mlflow_uri)
    writer = attached(mlflow_uri, run_id)
    wait_ready(writer)
    holder = os.fork()  # as a user's multiprocessing would: it inherits the pipe's write end
    if holder == 0:
        time.sleep(60)
        os._exit(0)
    try:
        writer.submit(("metrics", rows("a", range(10))))
        assert writer.close() == []
        # It stopped at the end line, not killed at the timeout waiting for end of input.
        assert writer._proc.returncode == 0
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    assert stored(mlflow_uri, run_id, "a") == [(s, s / 7) for s in range(10)]


def test_a_writer_killed_mid_run_loses_and_doubles_nothing(mlflow_uri: str) -> None:
    run_id = new_run(mlflow_uri)
    writer = attached(mlflow_uri, run_id)
    wait_ready(writer)
    writer.submit(("metrics", rows("a", range(0, 100))))
    wait_until(lambda: len(stored(mlflow_uri, run_id, "a")) == 100, READY_TIMEOUT_S)
    (pid,) = writer_pids(mlflow_uri)
    os.kill(pid, signal.SIGKILL)
    writer.submit(("metrics", rows("a", range(100, 300))))  # into a pipe nobody reads
    left = writer.close()
    assert left == [("metrics", rows("a", range(100, 300)))]
    apply(MlflowClient(mlflow_uri), run_id, ("metrics", [*left[0][1], *rows("a", range(50, 100))]))
    assert stored(mlflow_uri, run_id, "a") == [(s, s / 7) for s in range(300)]


@two_cpus
def test_a_tracked_run_hands_its_metrics_to_the_writer(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Start the writer at the first update and hand it rows after every one.
    monkeypatch.setattr("ppo1.tracking.tracker._WRITER_AFTER_S", 0.0)
    monkeypatch.setattr("ppo1.tracking.tracker._FLUSH_EVERY_S", 0.0)
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
                assert writer_pids(mlflow_uri)
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
    assert writer_pids(mlflow_uri) == []


@two_cpus
def test_ctrl_c_lets_the_writer_finish_and_marks_the_run_killed(mlflow_uri: str) -> None:
    """A real SIGINT to `python -m ppo1.train` while its writer process holds rows."""
    client = MlflowClient(mlflow_uri)
    client.search_experiments()  # the store exists before the writer opens it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ppo1.train",
            "total_timesteps=10000000",
            "verbose=true",  # a line per update
            f"tracking.uri={mlflow_uri}",
            "tracking.figures=none",
            "eval.every=1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline().startswith("update")

        def has_rows() -> bool:
            # The writer process creates the run and stores its rows while training goes on.
            runs = client.search_runs(["1"])
            return bool(runs) and bool(client.get_metric_history(runs[0].info.run_id, "losses/kl"))

        wait_until(has_rows, READY_TIMEOUT_S, process=proc)
        (run,) = client.search_runs(["1"])
        run_id = run.info.run_id
        assert writer_pids(mlflow_uri)
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
    assert writer_pids(mlflow_uri) == []


@pytest.mark.parametrize("why", ["tracking.writer_process=false", "one usable CPU"])
def test_without_a_writer_the_trainer_writes_every_row_itself(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    for timer in ("_WRITER_AFTER_S", "_FLUSH_EVERY_S", "_WRITE_EVERY_S"):
        monkeypatch.setattr(f"ppo1.tracking.tracker.{timer}", 0.0)  # every update, whichever writes
    # A checkpoint every update: rows go to the tracker once a checkpoint holds their update.
    overrides = ["total_timesteps=2560", *TINY[1:], f"tracking.uri={mlflow_uri}"]
    overrides.append("checkpoint_every=1")
    cfg = compose_cfg([*overrides, why] if why.startswith("tracking.") else overrides)
    client = MlflowClient(mlflow_uri)
    checked: list[int] = []

    def rows_stored_by_the_trainer(step: int, _: dict[str, float]) -> None:
        (run,) = client.search_runs(["1"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "losses/kl")] == [
            256 * u for u in range(1, step // 256 + 1)
        ]
        assert writer_pids(mlflow_uri) == []
        checked.append(step)

    cpus = os.sched_getaffinity(0)
    if why == "one usable CPU":
        os.sched_setaffinity(0, {min(cpus)})  # as a scheduler's one-CPU allocation would
    try:
        train(cfg, on_update=rows_stored_by_the_trainer)
    finally:
        os.sched_setaffinity(0, cpus)
    assert checked == [256 * u for u in range(1, 11)]


def writer_client(uri: str, run_name: str | None = None) -> Tracker:
    """A Tracker whose writer process is the run's only MLflow client."""
    cfg = TrackingConfig(uri=uri, experiment="writer", run_name=run_name)
    return Tracker(cfg, {"algo": {"clip": 0.2}}, {"ppo1.role": "test"}, writer_client=True)


@two_cpus
def test_the_writer_creates_the_run_and_makes_every_write(
    mlflow_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("ppo1.tracking.tracker._FLUSH_EVERY_S", 0.0)
    model = tmp_path / "policy.pt"
    model.write_bytes(b"weights")
    before_ms = time.time() * 1000
    with writer_client(mlflow_uri, run_name="remote") as tracker:
        entered_ms = time.time() * 1000
        assert tracker.run_id is None  # training goes on while the writer imports mlflow
        tracker.log_metrics({"a": 1.0}, 1)
        tracker.flush()
        tracker.log_text("clip: 0.2\n", "config.yaml")
        tracker.log_artifact(model, "model")
        model.unlink()  # the caller's file may go as soon as log_artifact returns
        tracker.set_tags({"t": "x"})
        tracker.log_metrics({"a": 2.0}, 2)
        run = tracker.wait_for_run()
        assert run is not None and run[1] == "remote"
        assert writer_pids(mlflow_uri)
    run_id = run[0]
    client = MlflowClient(mlflow_uri)
    stored_run = client.get_run(run_id)
    assert stored_run.info.status == "FINISHED"
    # Started when training did, not seconds later when the writer created it.
    assert before_ms - 1 <= stored_run.info.start_time <= entered_ms + 1
    assert stored_run.data.params == {"algo.clip": "0.2"}
    assert stored_run.data.tags["t"] == "x" and stored_run.data.tags["ppo1.role"] == "test"
    assert stored(mlflow_uri, run_id, "a") == [(1, 1.0), (2, 2.0)]
    out = tmp_path / "out"
    out.mkdir()
    assert Path(client.download_artifacts(run_id, "model/policy.pt", str(out))).read_bytes() == (
        b"weights"
    )
    assert Path(client.download_artifacts(run_id, "config.yaml", str(out))).read_text() == (
        "clip: 0.2\n"
    )
    assert len(client.search_runs([stored_run.info.experiment_id])) == 1
    assert writer_pids(mlflow_uri) == []


@two_cpus
@pytest.mark.parametrize("when", ["before it has the run", "once it has the run"])
def test_what_a_dead_writer_left_undone_the_trainer_does(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    monkeypatch.setattr("ppo1.tracking.tracker._FLUSH_EVERY_S", 0.0)
    with writer_client(mlflow_uri) as tracker:
        if when == "once it has the run":
            assert tracker.wait_for_run() is not None
        tracker.log_metrics({"a": 1.0}, 1)
        tracker.flush()
        tracker.log_text("clip: 0.2\n", "config.yaml")
        # Before it has the run, its process may not have exec'd the writer yet (a busy machine).
        wait_until(lambda: len(writer_pids(mlflow_uri)) == 1, READY_TIMEOUT_S)
        (pid,) = writer_pids(mlflow_uri)
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not writer_pids(mlflow_uri), READY_TIMEOUT_S)
        tracker.log_metrics({"a": 2.0}, 2)
        tracker.flush()  # finds the writer gone: from here this process writes
        tracker.log_metrics({"a": 3.0}, 3)
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("writer").experiment_id])
    assert run.info.run_id == tracker.run_id and run.info.status == "FINISHED"
    assert run.data.params == {"algo.clip": "0.2"}
    assert stored(mlflow_uri, run.info.run_id, "a") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["config.yaml"]


def killed_tracker(uri: str, *, writer_process: bool, metric: bool) -> str:
    """The run of a process that opens a Tracker (and logs a=1.0 at step 1, stored or handed
    to its writer), then SIGKILLs itself, as the OOM killer or `kill -9` would."""
    script = (
        "import os, signal\n"
        "import ppo1.tracking.tracker as tracking\n"
        "from ppo1.config import TrackingConfig\n"
        "tracking._FLUSH_EVERY_S = 0.0\n"
        f"cfg = TrackingConfig(uri={uri!r}, writer_process={writer_process})\n"
        "tracker = tracking.Tracker(cfg, {}).__enter__()\n"
        + ("tracker.log_metrics({'a': 1.0}, 1)\ntracker.flush()\n" if metric else "")
        + "print(tracker.wait_for_run()[0], flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = run_python(script, timeout=READY_TIMEOUT_S)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done.stdout.strip()


@two_cpus
def test_a_trainer_killed_outright_leaves_its_run_failed(mlflow_uri: str) -> None:
    """SIGKILL (the OOM killer, `kill -9`) gives the trainer no chance to end its run."""
    run_id = killed_tracker(mlflow_uri, writer_process=True, metric=True)
    client = MlflowClient(mlflow_uri)
    wait_until(lambda: client.get_run(run_id).info.status == "FAILED", READY_TIMEOUT_S)
    assert client.get_run(run_id).data.tags["ppo1.error"] == ORPHANED
    assert stored(mlflow_uri, run_id, "a") == [(1, 1.0)]


@two_cpus
def test_ctrl_c_while_the_writer_sets_the_run_up_ends_it_killed(
    mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    submit = RunWriter.submit

    def interrupted_once(self: RunWriter, op: Op) -> None:
        if op[0] == "params":  # inside __enter__: the writer is creating the run
            raise KeyboardInterrupt
        submit(self, op)

    monkeypatch.setattr(RunWriter, "submit", interrupted_once)
    with pytest.raises(KeyboardInterrupt) as err, writer_client(mlflow_uri):
        pass
    client = MlflowClient(mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("writer").experiment_id])
    assert run.info.status == "KILLED"
    assert err.value.__notes__ == [f"the MLflow run {run.info.run_id} is marked KILLED"]
    assert writer_pids(mlflow_uri) == []

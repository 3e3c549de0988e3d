"""Runs that survive crashes: checkpoints, `resume=`, dead runs ended, a failing store.

Real `python -m ppo1.train` processes, real signals, real SQLite stores in tmp_path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from ppo1.config import TrackingConfig, TrainConfig
from ppo1.core.checkpoint import POLICY_FILE, RESUME_FILE, load_checkpoint
from ppo1.core.fast.optim import FlatAdam
from ppo1.report.runs import load_run
from ppo1.tracked import train
from ppo1.tracking.ops import DIED, PID_START_TAG, PID_TAG
from ppo1.tracking.resume import CHECKPOINT_TAG, prepare_resume
from ppo1.tracking.tracker import Tracker

from .conftest import TINY, one_error_line, run_module, wait_until
from .test_run_writer import READY_TIMEOUT_S, killed_tracker, two_cpus, writer_pids

Compose = Callable[[list[str]], TrainConfig]

pytestmark = pytest.mark.skipif(os.name != "posix", reason="signals and process groups")


def new_store(folder: Path) -> tuple[str, MlflowClient]:
    """A SQLite store in `folder`, created before any trainer opens it."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()
    return uri, client


def start_train(*overrides: str) -> subprocess.Popen[str]:
    """`python -m ppo1.train` in a process group of its own (its writer has another)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ppo1.train", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_train(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ppo1.train", *overrides],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def the_run(client: MlflowClient) -> str:
    (run,) = client.search_runs(["1"])
    return str(run.info.run_id)


def steps(client: MlflowClient, run_id: str, key: str = "losses/kl") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def folder_of(client: MlflowClient, run_id: str) -> Path:
    return Path(client.get_run(run_id).data.tags[CHECKPOINT_TAG])


def kill_trainer_and_writer(proc: subprocess.Popen[str], uri: str) -> None:
    """SIGKILL the trainer and its writer together, as a job scheduler ending a job would:
    the trainer is stopped first so that it cannot take over from its dead writer."""
    os.killpg(proc.pid, signal.SIGSTOP)
    for pid in writer_pids(uri):
        os.kill(pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_resume_continues_the_same_run(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.search_experiments()  # the store exists before the writer opens it
    common = [f"tracking.uri={uri}", "tracking.figures=none", "eval.episodes=2", "eval.every=5"]
    proc = start_train("total_timesteps=5120", "verbose=true", *common)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.split()[:2] == ["update", "1/20"]
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    # The signal may land before update 1's own stop check: then it is the last one printed.
    stdout = first + rest
    assert proc.returncode == 130, stderr
    run_id = the_run(client)
    assert client.get_run(run_id).info.status == "KILLED"
    state = torch.load(folder_of(client, run_id) / RESUME_FILE, weights_only=True)
    interrupted_at = int(stdout.strip().splitlines()[-1].split()[1].split("/")[0])
    assert state["update"] == interrupted_at < 20  # the update in progress finished first
    assert stderr.strip().endswith(f"to resume: python -m ppo1.train resume={run_id}")

    resumed = run_train(f"resume={run_id}", f"tracking.uri={uri}")
    assert resumed.returncode == 0, resumed.stderr
    seed = 1 + interrupted_at
    assert f"envs re-seeded with seed + {interrupted_at} = {seed}" in resumed.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "re-seeded" in run.data.tags["ppo1.resumed"]
    assert len(client.search_runs(["1"])) == 1
    # One continuous history: every update once, in order.
    assert steps(client, run_id) == [256 * u for u in range(1, 21)]
    assert steps(client, run_id, "eval/mean_return") == [1280, 2560, 3840, 5120]
    episodes = steps(client, run_id, "charts/episodic_return")
    assert episodes == sorted(episodes) and episodes[-1] <= 5120
    assert "model" in {a.path for a in client.list_artifacts(run_id)}
    _, cfg = load_checkpoint(folder_of(client, run_id) / POLICY_FILE)
    assert cfg.total_timesteps == 5120 and cfg.eval.every == 5

    # What a resume may not do, each refused with one line before anything runs.
    finished = run_train(f"resume={run_id}", f"tracking.uri={uri}")
    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines()[-1] == (
        f"error: run {run_id} is FINISHED: its 20 updates are all trained; pass a larger "
        "total_timesteps (now 5120) to train it further"
    )
    changed = run_train(f"resume={run_id}", f"tracking.uri={uri}", "algo.lr=0.01")
    assert changed.returncode == 2
    last = changed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: resume={run_id} continues with its checkpoint's config; ")
    assert "algo.lr cannot change" in last


@pytest.mark.slow
@two_cpus
def test_kill_9_of_trainer_and_writer_then_resume_by_run_id(tmp_path: Path) -> None:
    uri, client = new_store(tmp_path)
    total = 256 * 200
    proc = start_train(
        f"total_timesteps={total}",
        f"tracking.uri={uri}",
        "tracking.figures=none",
        "eval.every=1000",
        "eval.episodes=2",
        "checkpoint_every=5",
    )
    try:

        def checkpointed_and_stored() -> bool:
            runs = client.search_runs(["1"])
            return bool(runs) and bool(steps(client, runs[0].info.run_id))

        wait_until(checkpointed_and_stored, READY_TIMEOUT_S, process=proc)
        kill_trainer_and_writer(proc, uri)
    finally:
        proc.kill()
    run_id = the_run(client)
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody was left to end it
    checkpoint = torch.load(folder_of(client, run_id) / RESUME_FILE, weights_only=True)
    # Metrics go to the store only once a checkpoint holds their update.
    assert max(steps(client, run_id)) <= checkpoint["global_step"]

    resumed = run_train(f"resume={run_id}", f"tracking.uri={uri}")
    assert resumed.returncode == 0, resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "ppo1.error" not in run.data.tags
    assert steps(client, run_id) == [256 * u for u in range(1, 201)]
    assert writer_pids(uri) == []


def test_the_next_tracker_ends_a_run_whose_processes_died(mlflow_uri: str) -> None:
    """A run whose trainer died with no writer left to end it is ended FAILED by the next
    client that creates a run in the experiment; a live run on this host is left alone."""
    dead = killed_tracker(mlflow_uri, writer_process=False, metric=False)
    client = MlflowClient(mlflow_uri)
    assert client.get_run(dead).info.status == "RUNNING"
    cfg = TrackingConfig(uri=mlflow_uri, writer_process=False)
    with Tracker(cfg, {}) as live:
        assert live.run_id is not None
        with Tracker(cfg, {}):
            pass  # the live run's process (this one) is alive: it stays RUNNING
        assert client.get_run(live.run_id).info.status == "RUNNING"
    run = client.get_run(dead)
    assert run.info.status == "FAILED"
    assert run.data.tags["ppo1.error"] == DIED


def test_a_nested_run_leaves_dead_runs_to_the_next_top_level_one(mlflow_uri: str) -> None:
    """A sweep's trial and seed runs skip the search for dead runs (their sweep ends its own
    dead trials' runs): the next top-level run still ends the dead run."""
    dead = killed_tracker(mlflow_uri, writer_process=False, metric=False)
    client = MlflowClient(mlflow_uri)
    cfg = TrackingConfig(uri=mlflow_uri, writer_process=False)
    with Tracker(cfg, {}, {"ppo1.role": "study"}) as parent:
        assert parent.run_id is not None
        with Tracker(cfg, {}, {"mlflow.parentRunId": parent.run_id}) as nested:
            assert nested.run_id is not None
    assert client.get_run(dead).info.status == "FAILED"  # ended by the parent's creation
    dead = killed_tracker(mlflow_uri, writer_process=False, metric=False)
    with Tracker(cfg, {}, {"mlflow.parentRunId": parent.run_id}):
        pass
    assert client.get_run(dead).info.status == "RUNNING"
    with Tracker(cfg, {}):
        pass
    assert client.get_run(dead).info.status == "FAILED"
    assert client.get_run(dead).data.tags["ppo1.error"] == DIED


def test_an_untracked_run_resumes_from_its_checkpoint_path(
    compose_cfg: Compose, tmp_path: Path
) -> None:
    overrides = ["total_timesteps=2560", *TINY[1:], "tracking.enabled=false", "seed=3"]
    whole = train(compose_cfg(overrides))

    def stop_at_update_4(step: int, _: dict[str, float]) -> None:
        if step == 4 * 256:
            raise KeyboardInterrupt

    cut = [*overrides, f"checkpoint_dir={tmp_path}"]
    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg(cut), on_update=stop_at_update_4)
    (folder,) = tmp_path.iterdir()
    done = run_train(f"resume={folder / RESUME_FILE}", "verbose=false")
    assert done.returncode == 0, done.stderr
    _, cfg = load_checkpoint(folder / POLICY_FILE)
    assert cfg.seed == 3 and not cfg.tracking.enabled
    state = torch.load(folder / RESUME_FILE, weights_only=True)
    history = state["history"]
    assert [int(h["step"]) for h in history] == [256 * u for u in range(1, 11)]
    # Up to the cut, the same numbers as the uninterrupted run (timing aside).
    timing = {"charts/SPS", "time/train_seconds", "time/eval_seconds"}
    same = [{k: v for k, v in h.items() if k not in timing} for h in history[:4]]
    assert same == [{k: v for k, v in h.items() if k not in timing} for h in whole.history[:4]]


@pytest.mark.slow
@two_cpus
def test_a_killed_and_resumed_run_still_solves_cartpole(tmp_path: Path) -> None:
    """As tests/test_learning.py, with a kill -9 of the trainer and its writer mid-way."""
    uri, client = new_store(tmp_path)
    proc = start_train(
        "total_timesteps=60000", f"tracking.uri={uri}", "tracking.figures=none", "verbose=true"
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            # Mid-way, once the writer has the run (it can take long to start on a busy CI).
            update = int(line.split()[1].split("/")[0])
            if update >= 100 and client.search_runs(["1"]):
                break
        assert update < 200, "the run was not stored until near its end"
        kill_trainer_and_writer(proc, uri)
    finally:
        proc.kill()
    run_id = the_run(client)
    resumed = run_train(f"resume={run_id}", f"tracking.uri={uri}")
    assert resumed.returncode == 0, resumed.stderr
    assert client.get_run(run_id).info.status == "FINISHED"
    updates = -(-60000 // 256)
    assert steps(client, run_id) == [256 * u for u in range(1, updates + 1)]
    evals = client.get_metric_history(run_id, "eval/mean_return")
    assert max(evals, key=lambda m: m.step).value >= 475, [m.value for m in evals]


@pytest.mark.slow
def test_a_full_artifact_store_keeps_the_model_and_says_where(tmp_path: Path) -> None:
    """The experiment's artifacts on a 2 MB filesystem: the ~5 MB dashboard cannot fit."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(artifacts)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        done = run_train(f"tracking.uri={uri}", *TINY)
        client = MlflowClient(uri)
        run_id = the_run(client)
        run = client.get_run(run_id)
        listed = {a.path for a in client.list_artifacts(run_id)}
        model = {a.path for a in client.list_artifacts(run_id, "model")}
    finally:
        subprocess.run(["umount", str(artifacts)], check=True)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the tracking store failed storing "), done.stderr
    assert "dashboard.html" in last and "No space left on device" in last
    assert f"the MLflow run {run_id} is marked FAILED" in last
    policy = folder_of(client, run_id) / POLICY_FILE
    assert f"the policy is saved at {policy}" in last
    assert "Traceback" not in done.stderr
    load_checkpoint(policy)
    assert run.info.status == "FAILED"
    assert "StoreFailedError" in run.data.tags["ppo1.error"]
    assert {"config.yaml", "model"} <= listed and model == {"model/policy.pt"}


@pytest.mark.slow
def test_the_ratio_snapshots_and_figures_span_the_resumed_run(
    compose_cfg: Compose, mlflow_uri: str
) -> None:
    overrides = ["total_timesteps=2560", *TINY[1:], f"tracking.uri={mlflow_uri}"]
    overrides += ["tracking.figures=light", "checkpoint_every=3"]

    def stop_at_update_4(step: int, _: dict[str, float]) -> None:
        if step == 4 * 256:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg(overrides), on_update=stop_at_update_4)
    client = MlflowClient(mlflow_uri)
    run_id = the_run(client)
    assert steps(client, run_id) == [256 * u for u in range(1, 5)]
    resume_at = [f"resume={run_id}", f"tracking.uri={mlflow_uri}"]
    cfg, resume = prepare_resume(compose_cfg([*overrides, "resume=" + run_id]), resume_at)
    assert resume.update == 4 and resume.logged["losses/kl"] == 4 * 256
    result = train(cfg, resume=resume)
    assert result.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    data = load_run(client, client.get_run(run_id))
    assert [s.update for s in data.snapshots] == list(range(1, 11))
    assert [s.step for s in data.snapshots] == [256 * u for u in range(1, 11)]
    # Only the latest snapshot keeps its (r, A) sample, as in an uninterrupted run.
    assert [bool(s.ratio) for s in data.snapshots] == [False] * 9 + [True]
    assert steps(client, run_id) == [256 * u for u in range(1, 11)]


def test_an_empty_resume_is_refused_in_one_line(tmp_path: Path) -> None:
    """Not read as the working directory's checkpoint ("<cwd>/resume.pt is not a ppo1 ...")."""
    proc = run_module("ppo1.train", "resume=", f"tracking.uri={tmp_path / 'mlruns'}")
    line = one_error_line(proc)
    assert line == "error: resume= is empty: give a run id or a checkpoint folder or file"
    assert not (tmp_path / "mlruns").exists()


def test_a_reused_pid_does_not_keep_a_dead_run_running(mlflow_uri: str) -> None:
    """The pid alone could now be another process's: its start time tells them apart."""
    cfg = TrackingConfig(uri=mlflow_uri, writer_process=False)
    client = MlflowClient(mlflow_uri)
    with Tracker(cfg, {}) as first:
        assert first.run_id is not None
        tags = client.get_run(first.run_id).data.tags
        assert tags[PID_TAG] == str(os.getpid()) and tags[PID_START_TAG]
        # As if this process's pid had been another's, which has since exited.
        client.set_tag(first.run_id, PID_START_TAG, "1")
        with Tracker(cfg, {}):
            pass
        run = client.get_run(first.run_id)
        assert run.info.status == "FAILED" and run.data.tags["ppo1.error"] == DIED


def test_flat_adam_continues_from_its_saved_state(tmp_path: Path) -> None:
    """Moments and step count round-trip through a weights_only checkpoint."""

    def adam_step(net: torch.nn.Linear, optimizer: FlatAdam) -> None:
        optimizer.zero_grad()
        net(torch.ones(4, 3)).square().sum().backward()
        optimizer.step()

    torch.manual_seed(0)
    trained = torch.nn.Linear(3, 2)
    optimizer = FlatAdam(trained.parameters(), lr=0.1)
    for _ in range(3):
        adam_step(trained, optimizer)
    torch.save({"net": trained.state_dict(), "adam": optimizer.state_dict()}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    copies = []
    for restore in (True, False):
        net = torch.nn.Linear(3, 2)
        net.load_state_dict(saved["net"])
        restored = FlatAdam(net.parameters(), lr=0.1)
        if restore:
            restored.load_state_dict(saved["adam"])
        adam_step(net, restored)
        copies.append(net.weight.detach().clone())
    adam_step(trained, optimizer)
    assert torch.equal(copies[0], trained.weight.detach())
    assert not torch.equal(copies[1], trained.weight.detach())  # a fresh Adam steps otherwise

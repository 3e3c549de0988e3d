"""Sweeps across machines, for real: a PostgreSQL server (the study) and an `mlflow server` on
it (the runs) started on 127.0.0.1 by ppo1.sweep.cluster, as `make cluster-up` starts them,
and sweep worker processes that share one study through them.

`make test` installs Debian's postgresql when its binaries are missing (as it installs
Chromium for the browser tests).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from sqlalchemy import create_engine, text

from ppo1.sweep.cluster import Cluster, down, postgres_bindir, up
from ppo1.sweep.database import lock_id, study_key
from ppo1.sweep.pruning import KL_ATTR
from ppo1.sweep.study import (
    FAIL_REASON_ATTR,
    INTERRUPTED_ATTR,
    counted_trials,
    open_storage,
    study_lock,
)
from ppo1.tracking.ops import PID_TAG
from tests.conftest import (
    TEST_CONF,
    dashboard_study,
    free_port,
    mlflow_serving,
    one_error_line,
    run_module,
    wait_until,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb): `make test` installs postgresql")
    # Not under pytest's tmp_path: that is root's alone, and the server runs as nobody.
    folder = Path(tempfile.mkdtemp(prefix="ppo1-cluster-"))
    started = up(folder)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PGPASSFILE", str(started.pgpass))  # for this process's study reads
            yield started
    finally:
        down(folder)
        shutil.rmtree(folder)


def worker_command(study: str, storage: str, *extra: str) -> list[str]:
    """One sweep worker of the tiny sweep on `study`, as a user on another machine runs it."""
    return [
        sys.executable, "-m", "ppo1.train", "-m", "sweep=tiny",
        f"hydra.searchpath=[file://{TEST_CONF}]",
        f"sweep.study_name={study}", f"sweep.storage={storage}", f"tracking.experiment={study}",
        *extra,
    ]  # fmt: skip


def start_workers(
    cluster: Cluster, tmp_path: Path, commands: list[list[str]], **env_vars: str
) -> list[subprocess.Popen[str]]:
    """Each command a worker process in its own process group (for kill -9 of the whole)."""
    # A lost tracking server is told in seconds, not after MLflow's ~4 minutes of retries.
    retries = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    env = {**os.environ, **cluster.env(), **retries, **env_vars}
    return [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for command in commands
    ]


def load(cluster: Cluster, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(cluster.database_url("optuna")))


def runs_of(cluster: Cluster, experiment_name: str) -> dict[str, list[Run]]:
    client = MlflowClient(cluster.tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None
    roles: dict[str, list[Run]] = {"study": [], "trial": [], "seed": []}
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        roles[run.data.tags["ppo1.role"]].append(run)
    return roles


def test_three_workers_on_one_postgres_study(cluster: Cluster, tmp_path: Path) -> None:
    # One worker has the password in its URL, as a user might type it; two read it from the
    # password file (PGPASSFILE), as docs/cluster.md says. All three share one study.
    with_password = cluster.database_url("optuna", with_password=True)
    commands = [
        worker_command("three", url, "sweep.n_trials=6", "total_timesteps=4096")
        for url in [with_password, cluster.database_url("optuna"), cluster.database_url("optuna")]
    ]
    workers = start_workers(cluster, tmp_path, commands)
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err[-6000:] for _, err in outputs]

    study = load(cluster, "three")
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state is TrialState.COMPLETE for t in study.trials)
    # No two trials at one point (the search space is continuous: nothing forces a repeat).
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 6
    ran = [
        {int(line.split()[1][:-1]) for line in out.splitlines() if line.startswith("trial ")}
        for out, _ in outputs
    ]
    assert sum(map(len, ran)) == 6 and set.union(*ran) == set(range(6))
    assert sum(map(bool, ran)) >= 2, f"several workers should have run trials: {ran}"

    runs = runs_of(cluster, "three")
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.storage"] == cluster.database_url("optuna")
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs["trial"])
    assert numbers == list(range(6))
    assert {r.data.tags["mlflow.parentRunId"] for r in runs["trial"]} == {parent.info.run_id}
    trial_ids = {r.info.run_id for r in runs["trial"]}
    assert len(runs["seed"]) == 6
    assert {r.data.tags["mlflow.parentRunId"] for r in runs["seed"]} == trial_ids

    # The password reached no param, tag, artifact or output line; the URL still says whose.
    client = MlflowClient(cluster.tracking_uri)
    logged = [str(r.data.params) + str(r.data.tags) for rs in runs.values() for r in rs]
    artifacts = []
    for i, run in enumerate(r for rs in runs.values() for r in rs):
        folder = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / str(i))))
        artifacts += [f.read_text(errors="replace") for f in folder.rglob("*") if f.is_file()]
    logged += artifacts
    logged += [text for pair in outputs for text in pair]
    logged += [str(t.user_attrs) for t in study.trials]  # the trained configs, as stored
    assert not [text for text in logged if cluster.password in text]
    masked = cluster.database_url("optuna").replace("ppo1@", "ppo1:***@")
    assert any(r.data.params.get("sweep.storage") == masked for r in runs["trial"])
    assert any(f"storage: {masked}" in text for text in artifacts)  # a seed run's config.yaml


def test_a_worker_killed_mid_trial_leaves_its_slot_to_the_others(
    cluster: Cluster, tmp_path: Path
) -> None:
    storage = cluster.database_url("optuna")
    command = worker_command(
        "killed", storage, "sweep.n_trials=5", "total_timesteps=8192", "sweep.grace_s=3"
    )
    workers = start_workers(cluster, tmp_path, [command] * 3)
    client = MlflowClient(cluster.tracking_uri)

    training: list[Run] = []

    def a_trial_run_training() -> bool:
        experiment = client.get_experiment_by_name("killed")
        if experiment is None:
            return False
        training[:] = client.search_runs(
            [experiment.experiment_id],
            "tags.`ppo1.role` = 'trial' and attributes.status = 'RUNNING'",
        )
        return bool(training)

    try:
        wait_until(a_trial_run_training, timeout=300, process=workers[0])
        victim_run = training[0]
        # The trial's run carries the pid of the process that trains it: its sweep worker.
        victim = next(w for w in workers if str(w.pid) == victim_run.data.tags[PID_TAG])
        os.killpg(victim.pid, signal.SIGKILL)
        survivors = [w for w in workers if w is not victim]
        outputs = [w.communicate(timeout=600) for w in survivors]
    finally:
        for worker in workers:
            worker.kill()
    assert [w.returncode for w in survivors] == [0, 0], [err[-2000:] for _, err in outputs]

    study = load(cluster, "killed")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == counted_trials(study) == 5
    stale = [t for t in study.trials if t.state is TrialState.FAIL]
    assert len(stale) == 1 and stale[0].user_attrs[INTERRUPTED_ATTR]
    assert stale[0].user_attrs[FAIL_REASON_ATTR].startswith("stale: no heartbeat")
    assert int(victim_run.data.tags["optuna.trial_number"]) == stale[0].number
    assert client.get_run(victim_run.info.run_id).info.status == "FAILED"


def test_optuna_dashboard_watches_the_postgres_study(cluster: Cluster, tmp_path: Path) -> None:
    # As docs/cluster.md has it: the storage URL without the password (libpq reads the
    # password file, PGPASSFILE, set for this process by the fixture).
    storage = cluster.database_url("optuna")
    (worker,) = start_workers(
        cluster, tmp_path, [worker_command("watched", storage, "sweep.n_trials=2")]
    )
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-3000:]
    served = dashboard_study(storage, "watched")
    study = load(cluster, "watched")
    assert [t["state"] for t in served["trials"]] == ["Complete", "Complete"]
    assert [t["values"][0] for t in served["trials"]] == [t.value for t in study.trials]


def test_the_ask_lock_is_held_in_the_database_per_study(cluster: Cluster) -> None:
    url = cluster.database_url("optuna")
    other_worker = create_engine(url)  # a connection of its own, as another machine's

    def free(study: str) -> bool:
        probe = text(f"SELECT pg_try_advisory_xact_lock({lock_id(study_key(study))})")
        with other_worker.connect() as connection, connection.begin():
            return bool(connection.execute(probe).scalar())

    with study_lock(url, "held"):
        assert not free("held")
        assert free("another")  # other studies in the database ask meanwhile
    assert free("held")
    other_worker.dispose()


def test_an_unreachable_database_is_one_error_before_any_trial(tmp_path: Path) -> None:
    storage = f"postgresql+psycopg://ppo1:secret@127.0.0.1:{free_port()}/optuna"
    done = run_module(
        "ppo1.train", "-m", *worker_command("gone", storage)[4:],
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    )  # fmt: skip
    line = one_error_line(done)
    assert line.startswith("error: invalid sweep: sweep.storage postgresql+psycopg://ppo1:***@")
    assert "cannot use the database: " in line and "Connection refused" in line
    assert "secret" not in done.stdout + done.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing started


def test_a_wrong_password_is_one_error_without_it(cluster: Cluster, tmp_path: Path) -> None:
    storage = cluster.database_url("optuna").replace("ppo1@", "ppo1:not-it@")
    done = run_module("ppo1.train", "-m", *worker_command("wrong", storage)[4:])
    line = one_error_line(done)
    assert 'password authentication failed for user "ppo1"' in line
    assert "not-it" not in done.stdout + done.stderr


def test_submitit_local_runs_the_trials_as_job_processes(cluster: Cluster, tmp_path: Path) -> None:
    # submitit's own executor starts each trial job as a process of its own, as on SLURM;
    # the job meets its trial through the PostgreSQL study.
    command = worker_command(
        "submitit",
        cluster.database_url("optuna"),
        "sweep.n_trials=2",
        "hydra/launcher=submitit_local",
    )
    (worker,) = start_workers(cluster, tmp_path, [command])
    _, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, err[-2000:]
    assert [t.state for t in load(cluster, "submitit").trials] == [TrialState.COMPLETE] * 2
    runs = runs_of(cluster, "submitit")
    pids = {r.data.tags[PID_TAG] for r in runs["trial"]}
    assert len(runs["trial"]) == 2 and str(worker.pid) not in pids and len(pids) == 2
    assert (tmp_path / ".submitit").is_dir()


def trial_training(cluster: Cluster, study: str) -> Callable[[], bool]:
    """Whether a trial of `study` is RUNNING and has reported an update."""

    def condition() -> bool:
        try:
            trials = load(cluster, study).trials
        except KeyError:  # no such study yet
            return False
        return any(t.state is TrialState.RUNNING and KL_ATTR in t.user_attrs for t in trials)

    return condition


def test_a_worker_that_loses_the_tracking_server_gives_its_trial_back(
    cluster: Cluster, tmp_path: Path
) -> None:
    server_db = f"sqlite:///{tmp_path / 'server.db'}"
    with mlflow_serving(
        ["server", "--backend-store-uri", server_db, "--workers", "1"], tmp_path
    ) as (
        url,
        server,
    ):
        command = worker_command(
            "lost_tracking",
            cluster.database_url("optuna"),
            "sweep.n_trials=2",
            "total_timesteps=20000",
        )
        (worker,) = start_workers(cluster, tmp_path, [command], MLFLOW_TRACKING_URI=url)
        try:
            wait_until(trial_training(cluster, "lost_tracking"), timeout=300, process=worker)
            os.killpg(server.pid, signal.SIGKILL)
            out, err = worker.communicate(timeout=300)
        finally:
            worker.kill()
    line = one_error_line(subprocess.CompletedProcess([], worker.returncode, out, err), 1)
    (trial,) = load(cluster, "lost_tracking").trials
    reason = trial.user_attrs[FAIL_REASON_ATTR]
    assert reason.startswith(f"the tracking server at {url} stopped answering: no server answers")
    assert line == (
        f"error: trial 0: FAIL, {reason}; this worker stops, and the trial's slot runs again in "
        "another worker (or when this command runs again)"
    )
    # Given back: FAIL with the reason, not counted, so the study still has both trials to run.
    assert trial.state is TrialState.FAIL and trial.user_attrs[INTERRUPTED_ATTR]
    assert counted_trials(load(cluster, "lost_tracking")) == 0


def test_a_worker_that_loses_the_database_stops_with_one_line(tmp_path: Path) -> None:
    if postgres_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb): `make test` installs postgresql")
    folder = Path(tempfile.mkdtemp(prefix="ppo1-cluster-"))
    own = up(folder)  # a server of its own to stop: the module's serves the other tests
    try:
        command = worker_command(
            "lost_db", own.database_url("optuna"), "sweep.n_trials=2", "total_timesteps=300000",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        )  # fmt: skip
        (worker,) = start_workers(own, tmp_path, [command])
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("PGPASSFILE", str(own.pgpass))
            wait_until(trial_training(own, "lost_db"), timeout=300, process=worker)
        down(folder)
        out, err = worker.communicate(timeout=300)
    finally:
        worker.kill()
        down(folder)
        shutil.rmtree(folder)
    line = one_error_line(subprocess.CompletedProcess([], worker.returncode, out, err), 1)
    assert line.startswith("error: the study's database failed: ")
    assert line.endswith(
        "; this worker stops, and its running trials go back to the study once their "
        "heartbeat is older than sweep.grace_s"
    )
    assert own.password not in out + err


def test_the_slurm_example_of_the_docs_composes(tmp_path: Path) -> None:
    # Without SLURM, what can be checked: every key of docs/cluster.md's command exists in
    # submitit_slurm's config, with the value the docs give it.
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cluster.md").read_text()
    (block,) = [b for b in docs.split("```bash\n") if "hydra/launcher=submitit_slurm" in b]
    command = shlex.split(block.split("```")[0].replace("\\\n", " "))
    assert command[:5] == ["python", "-m", "ppo1.train", "-m", "sweep=clip_epochs_lr"]
    done = run_module("ppo1.train", *command[4:], "--cfg", "hydra")
    assert done.returncode == 0, done.stderr
    launcher = yaml.safe_load(done.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["array_parallelism"]) == ("cpu", 16)
    assert launcher["setup"][1] == "export MLFLOW_TRACKING_URI=http://db:5000"

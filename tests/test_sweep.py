"""Real sweeps, tiny budgets: pruning, MLflow parent and child runs, figures, resume, sharing.

Each test runs `python -m ppo1.train -m sweep=...` as a user would, with the sweeps in
tests/conf/sweep, an Optuna journal file and an MLflow SQLite store in a temporary directory.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import plotly.io as pio
import pytest
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from ppo1.sweep.pruning import KL_ATTR, PRUNE_REASON_ATTR
from ppo1.sweep.study import (
    FAIL_REASON_ATTR,
    INTERRUPTED_ATTR,
    SETTINGS_ATTR,
    counted_trials,
    open_storage,
    study_lock,
)
from ppo1.tracking.ops import PID_TAG
from tests.browser import offline_page
from tests.conftest import TEST_CONF, dashboard_study, proc_stat, running, wait_until
from tests.test_figure_logging import values

pytestmark = pytest.mark.slow


def sweep_overrides(tmp_path: Path, name: str, *extra: str) -> list[str]:
    """`sweep=NAME` from tests/conf, its journal and MLflow store in tmp_path."""
    return [
        f"sweep={name}",
        f"hydra.searchpath=[file://{TEST_CONF}]",
        f"sweep.storage={tmp_path / 'study.journal'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *extra,
    ]


def sweep_command(tmp_path: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ppo1.train", "-m", *sweep_overrides(tmp_path, name, *extra)]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def load_study(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / "study.journal")))


def trials_so_far(tmp_path: Path, name: str) -> list[FrozenTrial]:
    """The trials of a study a sweep is running; none before the sweep has created it (its
    journal file exists a moment before the study's record is written in it)."""
    if not (tmp_path / "study.journal").exists():
        return []
    try:
        return load_study(tmp_path, name).trials
    except KeyError:  # Optuna's answer for a study that is not (yet) in the storage
        return []


def runs_by_role(tmp_path: Path) -> dict[str, list[Run]]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ppo1")
    assert experiment is not None
    roles: dict[str, list[Run]] = {"study": [], "trial": [], "seed": [], "none": []}
    for r in client.search_runs([experiment.experiment_id], max_results=1000):
        roles[r.data.tags.get("ppo1.role", "none")].append(r)
    return roles


def test_sweep_prunes_diverging_trials_and_tracks_them(tmp_path: Path) -> None:
    done = run(sweep_command(tmp_path, "tiny_prune"), tmp_path)

    # Optuna: step size 3e-4 learns, 1.0 is stopped by the KL rule, 1e20 by a non-finite loss.
    trials = {t.params["algo.lr"]: t for t in load_study(tmp_path, "tiny_prune").trials}
    assert set(trials) == {0.0003, 1.0, 1e20}
    assert trials[0.0003].state is TrialState.COMPLETE
    assert trials[1.0].state is TrialState.PRUNED
    assert trials[1.0].user_attrs[PRUNE_REASON_ATTR].startswith("losses/kl > 0.5 in update 1")
    assert trials[1.0].user_attrs[KL_ATTR][0] > 0.5
    assert trials[1e20].state is TrialState.PRUNED
    assert trials[1e20].user_attrs[PRUNE_REASON_ATTR].startswith("non-finite loss")
    best = trials[0.0003]

    # MLflow: one study run, a nested run per trial tagged with its end, a run per seed below.
    runs = runs_by_role(tmp_path)
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["optuna.best_trial"] == str(best.number)
    assert parent.data.metrics["best_value"] == pytest.approx(best.value)
    assert len(runs["trial"]) == 3
    for child in runs["trial"]:
        tags = child.data.tags
        trial = next(t for t in trials.values() if str(t.number) == tags["optuna.trial_number"])
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["optuna.state"] == trial.state.name
        assert child.data.params["algo.lr"] == str(trial.params["algo.lr"])
        if trial.state is TrialState.PRUNED:
            assert tags["optuna.prune_reason"] == trial.user_attrs[PRUNE_REASON_ATTR]
            assert child.info.status == "KILLED"
        else:
            assert child.data.metrics["objective"] == pytest.approx(trial.value)
            assert child.info.status == "FINISHED"
    trial_run_ids = {r.info.run_id for r in runs["trial"]}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs["seed"]} == trial_run_ids

    # The figures: one offline page with plotly.js inlined once; the best trial, ready to run.
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "parent")))
    page = (out / "optuna" / "report.html").read_text()
    assert page.count("* plotly.js v") == 1
    assert page.count('class="plotly-graph-div"') >= 4
    assert 'id="intermediate_values"' in page and '<script src="http' not in page
    with offline_page() as offline:  # it renders with the network blocked
        offline.page.goto((out / "optuna" / "report.html").as_uri())
        offline.page.locator("#intermediate_values svg.main-svg").first.wait_for(timeout=60_000)
        drawn = offline.page.locator(".js-plotly-plot").evaluate_all(
            "plots => plots.map(p => p.id)"
        )
        assert drawn == [
            "optimization_history",
            "intermediate_values",
            "parallel_coordinate",
            "slice",
        ]
        assert offline.blocked == []
    best_cfg = yaml.safe_load((out / "best" / "config.yaml").read_text())
    assert best_cfg["algo"]["lr"] == 0.0003 and "sweep" not in best_cfg
    command = (out / "best" / "command.txt").read_text().strip()
    assert command.startswith("python -m ppo1.train ") and "algo.lr=0.0003" in command
    assert f"re-run it: {command}" in done.stdout
    rerun = run([sys.executable, *shlex.split(command)[1:]], tmp_path)
    assert "final evaluation" in rerun.stdout

    # On demand (for a study still running elsewhere): the same report, the same parent run.
    report_command = [sys.executable, "-m", "ppo1.sweep_report"]
    report = run([*report_command, *sweep_overrides(tmp_path, "tiny_prune")], tmp_path)
    assert f"re-run it: {command}" in report.stdout
    (again,) = runs_by_role(tmp_path)["study"]
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"


def study_report(tmp_path: Path, name: str) -> tuple[Run, str]:
    """The parent run of study `name` and its optuna/report.html."""
    (parent,) = [r for r in runs_by_role(tmp_path)["study"] if r.info.run_name == f"{name}-study"]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    out = client.download_artifacts(parent.info.run_id, "optuna", str(tmp_path / name))
    return parent, (Path(out) / "report.html").read_text()


def figure_ids(page: str) -> list[str]:
    return re.findall(r'<div id="(\w+)" class="plotly-graph-div"', page)


def test_a_study_without_finished_trials_reports_what_it_can(tmp_path: Path) -> None:
    # A KL rule that fires on any KL prunes every trial after its first update, unevaluated.
    always = "sweep.kl.threshold=1e-12"
    diverging = sweep_command(tmp_path, "tiny", "sweep.study_name=nan", always)
    done = run([*diverging, "sweep.n_trials=2"], tmp_path)
    assert "Traceback" not in done.stderr
    assert "no completed trial yet" in done.stdout
    parent, page = study_report(tmp_path, "nan")
    assert parent.info.status == "FINISHED"
    assert figure_ids(page) == []
    assert "No completed trial yet: no optimization history, no parameter plots." in page

    # A key added to a study: its trials so far lack it, and the new one is pruned.
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=1"), tmp_path)
    run(
        [
            *sweep_command(tmp_path, "tiny", "sweep.n_trials=2", always),
            "algo.ent_coef=interval(0.0,0.01)",
        ],
        tmp_path,
    )
    states = [t.state for t in load_study(tmp_path, "tiny").trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED]
    parent, page = study_report(tmp_path, "tiny")
    assert parent.info.status == "FINISHED"
    assert figure_ids(page) == [
        "optimization_history",
        "intermediate_values",
        "parallel_coordinate",
        "slice",
    ]
    assert "No completed trial has algo.ent_coef: left out of the plots." in page
    assert "need two completed trials with algo.clip; 1 so far" in page


def test_resuming_with_settings_whose_values_do_not_compare_is_refused(tmp_path: Path) -> None:
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=1"), tmp_path)
    recorded = load_study(tmp_path, "tiny").user_attrs[SETTINGS_ATTR]
    # What the trials learned under, the swept param and where they were logged aside.
    assert {"sweep.objective": "final", "sweep.seeds": "1", "total_timesteps": "1024"}.items() <= (
        recorded.items()
    )
    assert recorded["env.id"] == "CartPole-v1" and recorded["algo.gamma"] == "0.98"
    assert recorded["eval.every"] == "2" and recorded["algo.epochs"] == "2"
    assert not {"algo.clip", "seed", "tracking.figures", "sweep.n_trials"} & recorded.keys()

    for changed, message in [
        (
            ["sweep.objective=auc", "total_timesteps=2048"],
            "ran its trials with total_timesteps=1024, sweep.objective=final; this command has "
            "total_timesteps=2048, sweep.objective=auc",
        ),
        (["sweep.seeds=2"], "ran its trials with sweep.seeds=1; this command has sweep.seeds=2"),
        # A fixed override that changes what the trials learn: an env or algorithm setting.
        (["algo.gamma=0.9"], "with algo.gamma=0.98; this command has algo.gamma=0.9"),
        (["env=acrobot"], "ran its trials with env.id=CartPole-v1"),
    ]:
        command = sweep_command(tmp_path, "tiny", "sweep.n_trials=2", *changed)
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert message in done.stderr and "Name a new study: sweep.study_name=" in done.stderr
        assert len(load_study(tmp_path, "tiny").trials) == 1

    # A study from before the full record (three settings, seeds as a number) resumes, and
    # the settings it lacked are recorded from this command.
    old = {"sweep.objective": "final", "sweep.seeds": 1, "total_timesteps": 1024}
    load_study(tmp_path, "tiny").set_user_attr(SETTINGS_ATTR, old)
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=2"), tmp_path)
    study = load_study(tmp_path, "tiny")
    assert len(study.trials) == 2
    assert study.user_attrs[SETTINGS_ATTR] == recorded


def waits_for_a_lock(pid: int) -> bool:
    """Whether process `pid` is blocked on a file lock (a "->" line of /proc/locks)."""
    return any(
        fields[1] == "->" and fields[5] == str(pid)
        for fields in (line.split() for line in Path("/proc/locks").read_text().splitlines())
    )


def test_the_rerun_command_is_what_the_best_trial_trained(tmp_path: Path) -> None:
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=1", "total_timesteps=2048"), tmp_path)
    # The report on demand, without the sweep's total_timesteps=2048 (tiny.yaml says 1024). It
    # writes on the study run as sweep processes do, one at a time under the study's lock: held
    # here, the report waits for it before it prints or writes anything.
    report_command = [sys.executable, "-m", "ppo1.sweep_report", *sweep_overrides(tmp_path, "tiny")]
    out = tmp_path / "report.out"
    with study_lock(str(tmp_path / "study.journal"), "tiny"), out.open("w") as stdout:
        report = subprocess.Popen(report_command, cwd=tmp_path, stdout=stdout, text=True)
        wait_until(lambda: waits_for_a_lock(report.pid), 60, report)
        assert "re-run it" not in out.read_text()
    assert report.wait(timeout=120) == 0
    (line,) = [line for line in out.read_text().splitlines() if line.startswith("re-run it: ")]
    assert "total_timesteps=2048" in line.split()
    parent, _ = study_report(tmp_path, "tiny")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    best = Path(client.download_artifacts(parent.info.run_id, "best", str(tmp_path / "best")))
    assert (best / "command.txt").read_text().strip() == line.removeprefix("re-run it: ")
    assert yaml.safe_load((best / "config.yaml").read_text())["total_timesteps"] == 2048


# Trials long enough (32 updates, a few seconds) that a poll sees one training and that both
# sweep processes are up before either could finish the study alone.
SLOW_TRIALS = "total_timesteps=8192"
# Trials that would train for minutes: a signal sent once one trains always finds it training
# (a SLOW_TRIALS trial may end, and its sweep with it, while the test is between its look at
# the study and the signal).
STOPPED_TRIALS = "total_timesteps=1000000"


def test_an_interrupted_sweep_resumes_to_its_total(tmp_path: Path) -> None:
    command = sweep_command(tmp_path, "tiny", SLOW_TRIALS)
    sweep = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def training_second_trial() -> bool:
        trials = trials_so_far(tmp_path, "tiny")
        return any(t.state is TrialState.COMPLETE for t in trials) and any(
            t.state is TrialState.RUNNING and KL_ATTR in t.user_attrs for t in trials
        )

    try:
        wait_until(training_second_trial, timeout=180, process=sweep)
        sweep.send_signal(signal.SIGINT)
        _, stderr = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert sweep.returncode == 130
    assert "Traceback" not in stderr.decode() and "KeyboardInterrupt" not in stderr.decode()
    assert stderr.decode().strip().splitlines()[-1].startswith("interrupted: ")
    study = load_study(tmp_path, "tiny")
    interrupted = [t for t in study.trials if t.user_attrs.get(INTERRUPTED_ATTR)]
    assert len(interrupted) == 1 and interrupted[0].state is TrialState.FAIL
    assert not [t for t in study.trials if t.state is TrialState.RUNNING]
    assert counted_trials(study) < 4
    assert runs_by_role(tmp_path)["study"][0].info.status == "KILLED"

    run(command, tmp_path)
    study = load_study(tmp_path, "tiny")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert counted_trials(study) == 4 and len(study.trials) == 5
    (parent,) = runs_by_role(tmp_path)["study"]
    assert parent.info.status == "FINISHED"


def test_three_sweep_processes_share_one_study(tmp_path: Path) -> None:
    command = sweep_command(tmp_path, "tiny", "sweep.n_trials=6", SLOW_TRIALS)
    sweeps = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in sweeps]
    assert [p.returncode for p in sweeps] == [0, 0, 0]

    study = load_study(tmp_path, "tiny")
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state is TrialState.COMPLETE for t in study.trials)
    # Each trial a new point: the processes do not replay one seed's sequence.
    assert len({t.params["algo.clip"] for t in study.trials}) == 6
    ran = [
        {int(line.split()[1][:-1]) for line in o.splitlines() if line.startswith("trial ")}
        for o in outputs
    ]
    assert sum(map(bool, ran)) >= 2, "several processes should have run trials"
    assert set.union(*ran) == set(range(6)) and sum(map(len, ran)) == 6
    runs = runs_by_role(tmp_path)
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED"
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs["trial"]) == list(range(6))


def test_the_joblib_launcher_runs_two_trials_at_once_in_warm_workers(tmp_path: Path) -> None:
    command = sweep_command(
        tmp_path, "tiny", "hydra/launcher=joblib", "sweep.n_jobs=2", "sweep.n_trials=6"
    )
    sweep = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    out = sweep.communicate(timeout=300)[0]
    assert sweep.returncode == 0

    study = load_study(tmp_path, "tiny")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    assert len({t.params["algo.clip"] for t in trials}) == 6
    assert sorted(
        int(line.split()[1][:-1]) for line in out.splitlines() if " COMPLETE" in line
    ) == (list(range(6)))
    # Two slots: the first two trials are asked at once and run side by side.
    first, second = trials[:2]
    assert second.datetime_start < first.datetime_complete  # type: ignore[operator]
    runs = runs_by_role(tmp_path)
    (parent,) = runs["study"]
    assert parent.info.status == "FINISHED"
    by_trial = sorted(runs["trial"], key=lambda r: int(r.data.tags["optuna.trial_number"]))
    assert [int(r.data.tags["optuna.trial_number"]) for r in by_trial] == list(range(6))
    assert {r.data.tags["mlflow.parentRunId"] for r in by_trial} == {parent.info.run_id}
    assert {r.info.status for r in by_trial} == {"FINISHED"}
    # In two worker processes, not the sweep's, each running several trials (warm: imported
    # once); every core runs a trial, so each job wrote its MLflow rows itself.
    pids = [r.data.tags[PID_TAG] for r in by_trial]
    assert len(set(pids)) == 2 and str(sweep.pid) not in pids
    assert {r.data.params["tracking.writer_process"] for r in by_trial} == {"False"}


def test_the_shipped_sweeps_seed_runs_log_per_update_means_not_every_episode(
    tmp_path: Path,
) -> None:
    """Each episode's rows would be most of what a short trial writes; its figures draw them."""
    budget = ["sweep.n_trials=1", "sweep.n_jobs=1", "total_timesteps=2048"]
    run(sweep_command(tmp_path, "clip_epochs_lr", *budget), tmp_path)
    (seed,) = runs_by_role(tmp_path)["seed"]
    assert seed.data.params["tracking.episode_rows"] == "False"
    assert "charts/episodic_return" not in seed.data.metrics
    assert {"rollout/ep_rew_mean", "rollout/ep_len_mean", "losses/kl"} <= set(seed.data.metrics)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    page = client.download_artifacts(seed.info.run_id, "figures", str(tmp_path / "figures"))
    figure = pio.read_json(Path(page) / "json" / "episode_return.json")
    assert len(values(figure.data[0].y)) >= 20  # every episode of 2048 steps, from memory


def test_a_resumed_sweep_draws_new_points(tmp_path: Path) -> None:
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=2"), tmp_path)
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=4"), tmp_path)
    trials = load_study(tmp_path, "tiny").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert len({t.params["algo.clip"] for t in trials}) == 4


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_trial_with_an_invalid_config_fails_and_the_sweep_goes_on(
    tmp_path: Path, launcher: str
) -> None:
    # The job finds its config invalid (in the sweep process, or in a worker's) and the
    # sweeper fails its trial with the message.
    choice = "algo.minibatch_size=choice(64,4096)"
    launch = [f"hydra/launcher={launcher}", "sweep.n_jobs=2"]
    done = run(sweep_command(tmp_path, "tiny", "sweep.n_trials=2", choice, *launch), tmp_path)
    study = load_study(tmp_path, "tiny")
    # RandomSampler(seed=0) draws both sizes in two trials.
    assert {t.state for t in study.trials} == {TrialState.FAIL, TrialState.COMPLETE}
    for trial in study.trials:
        if trial.params["algo.minibatch_size"] == 4096:
            assert trial.state is TrialState.FAIL
            assert (
                "algo.minibatch_size=4096 is larger than the batch"
                in trial.user_attrs[FAIL_REASON_ATTR]
            )
            assert f"trial {trial.number}: FAIL, invalid config" in done.stdout
        else:
            assert trial.state is TrialState.COMPLETE


def test_optuna_dashboard_serves_the_study_from_its_journal(tmp_path: Path) -> None:
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=2"), tmp_path)
    served = dashboard_study(str(tmp_path / "study.journal"), "tiny")
    study = load_study(tmp_path, "tiny")
    trials = served["trials"]
    assert [(t["number"], t["state"]) for t in trials] == [(0, "Complete"), (1, "Complete")]
    assert [t["values"][0] for t in trials] == [t.value for t in study.trials]
    assert {p["name"] for t in trials for p in t["params"]} == {"algo.clip"}


def test_a_report_creates_no_run_and_a_quote_in_the_store_path_is_fine(tmp_path: Path) -> None:
    # A study swept without tracking: its report finds no run, and must not leave one RUNNING.
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=1", "tracking.enabled=false"), tmp_path)
    report = run(
        [sys.executable, "-m", "ppo1.sweep_report", *sweep_overrides(tmp_path, "tiny")], tmp_path
    )
    assert "the study has no MLflow run in" in report.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []

    # A journal whose path holds a quote, which an MLflow filter could not hold: resuming
    # finds the study's run again.
    journal = tmp_path / "it's" / "study.journal"
    quoted = [f'sweep.storage="{journal}"', "sweep.study_name=quoted"]
    for n in (1, 2):
        run([*sweep_command(tmp_path, "tiny", f"sweep.n_trials={n}"), *quoted], tmp_path)
    runs = runs_by_role(tmp_path)
    (parent,) = runs["study"]
    assert parent.data.tags["optuna.storage"] == str(journal)
    assert parent.info.status == "FINISHED" and len(runs["trial"]) == 2


def test_a_sweep_that_cannot_track_records_no_settings(tmp_path: Path) -> None:
    # A tracking store in a folder that does not exist: refused before any trial...
    bad = sweep_command(tmp_path, "tiny", "sweep.n_trials=1", "total_timesteps=2048")
    bad = [a for a in bad if not a.startswith("tracking.uri=")]
    bad.append(f"tracking.uri=sqlite:///{tmp_path / 'missing' / 'mlflow.db'}")
    done = subprocess.run(bad, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: invalid config: tracking.uri")
    assert SETTINGS_ATTR not in load_study(tmp_path, "tiny").user_attrs
    # ... and its settings do not bind the corrected command, which differs in more than that.
    run(sweep_command(tmp_path, "tiny", "sweep.n_trials=1"), tmp_path)
    study = load_study(tmp_path, "tiny")
    assert study.user_attrs[SETTINGS_ATTR]["total_timesteps"] == "1024"
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]


def training(tmp_path: Path, name: str) -> Callable[[], bool]:
    """Whether a trial of study `name` is RUNNING and has reported an update (so its trial
    and seed runs exist)."""

    def condition() -> bool:
        return any(
            t.state is TrialState.RUNNING and KL_ATTR in t.user_attrs
            for t in trials_so_far(tmp_path, name)
        )

    return condition


def status_of_runs(tmp_path: Path) -> dict[str, set[str]]:
    return {role: {r.info.status for r in runs} for role, runs in runs_by_role(tmp_path).items()}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_sweep_gives_its_trial_back(tmp_path: Path, signum: signal.Signals) -> None:
    command = sweep_command(tmp_path, "tiny", "sweep.n_trials=1", STOPPED_TRIALS)
    sweep = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(training(tmp_path, "tiny"), timeout=120, process=sweep)
        sweep.send_signal(signum)
        _, stderr = sweep.communicate(timeout=60)
    finally:
        sweep.kill()
    assert sweep.returncode == 130 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: ")
    study = load_study(tmp_path, "tiny")
    (trial,) = study.trials
    assert trial.state is TrialState.FAIL and trial.user_attrs[INTERRUPTED_ATTR]
    assert counted_trials(study) == 0
    statuses = status_of_runs(tmp_path)
    assert statuses["study"] == statuses["trial"] == statuses["seed"] == {"KILLED"}


def descendants(pid: int) -> set[int]:
    """The processes below `pid` (children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for folder in Path("/proc").glob("[0-9]*"):
        if (stat := proc_stat(folder.name)) is not None:
            children.setdefault(int(stat[1]), []).append(int(folder.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def pool_workers(sweep_pid: int, below: set[int]) -> list[int]:
    """joblib's workers in a parallel sweep: the children of the fork server, its child."""
    parent = {pid: int(stat[1]) for pid in below if (stat := proc_stat(pid)) is not None}
    server = [p for p in below if parent.get(p) == sweep_pid and b"forkserver" in cmdline(p)]
    return [pid for pid in below if parent.get(pid) in server]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def ignores(pid: int, signum: int) -> bool:
    """Whether process `pid` ignores `signum` (its SigIgn mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def parallel_sweep(tmp_path: Path) -> subprocess.Popen[str]:
    """A sweep of two trials in two joblib workers, once both train; in its own session."""
    command = sweep_command(
        tmp_path,
        "tiny",
        "hydra/launcher=joblib",
        "sweep.n_jobs=2",
        "sweep.n_trials=2",
        STOPPED_TRIALS,
    )
    sweep = subprocess.Popen(
        command, cwd=tmp_path, stderr=subprocess.PIPE, text=True, start_new_session=True
    )

    def both_train() -> bool:
        trials = trials_so_far(tmp_path, "tiny")
        return sum(t.state is TrialState.RUNNING and KL_ATTR in t.user_attrs for t in trials) == 2

    try:
        wait_until(both_train, timeout=120, process=sweep)
    except BaseException:
        sweep.kill()
        raise
    return sweep


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stopped_parallel_sweep_stops_its_workers_and_gives_their_trials_back(
    tmp_path: Path, how: str
) -> None:
    sweep = parallel_sweep(tmp_path)
    try:
        below = descendants(sweep.pid)  # the fork server, its two workers, their trackers
        # A worker takes its stop from the sweep process alone: a Ctrl-C to the group and the
        # sweep's SIGTERM after it were two stops, and a job's second stops it at once,
        # wherever it is (inside an append to the study's journal: its runs ended FAILED).
        assert len(workers := pool_workers(sweep.pid, below)) == 2
        assert all(ignores(pid, signal.SIGINT) and ignores(pid, signal.SIGHUP) for pid in workers)
        if how == "SIGTERM":  # a scheduler's stop, to the sweep process only
            sweep.send_signal(signal.SIGTERM)
        else:  # a terminal's Ctrl-C: SIGINT to every process of its group
            os.killpg(sweep.pid, signal.SIGINT)
        _, stderr = sweep.communicate(timeout=60)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
    assert sweep.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("interrupted: ")
    study = load_study(tmp_path, "tiny")
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs[INTERRUPTED_ATTR] for t in study.trials)
    assert counted_trials(study) == 0
    statuses = status_of_runs(tmp_path)
    assert statuses["study"] == statuses["trial"] == statuses["seed"] == {"KILLED"}
    assert len(runs_by_role(tmp_path)["seed"]) == 2
    wait_until(lambda: not any(map(running, below)), timeout=30)


def test_a_parallel_sweep_killed_outright_leaves_no_worker_behind(tmp_path: Path) -> None:
    sweep = parallel_sweep(tmp_path)
    try:
        below = descendants(sweep.pid)
        assert len(below) >= 3, "a fork server and two workers"
        # Torch is the workers' (their fork server's): the sweep process, which only asks,
        # tells and reports, never loads it (~1.7 CPU-s taken from the workers' start).
        assert "libtorch_cpu" not in Path(f"/proc/{sweep.pid}/maps").read_text()
        assert any("libtorch_cpu" in Path(f"/proc/{pid}/maps").read_text() for pid in below)
        sweep.kill()  # SIGKILL to the sweep process alone: its workers are left to notice
        sweep.wait(timeout=30)
        # Each notices within a second that the fork server, its parent, ended with the sweep
        # process, and stops its job as SIGTERM does: its runs end KILLED.
        wait_until(lambda: not any(map(running, below)), timeout=60)
    finally:
        os.killpg(sweep.pid, signal.SIGKILL)
    statuses = status_of_runs(tmp_path)
    assert statuses["trial"] == statuses["seed"] == {"KILLED"}
    assert len(runs_by_role(tmp_path)["seed"]) == 2


def journal_held(tmp_path: Path) -> tuple[optuna.Trial, subprocess.Popen[str]]:
    """A trial of a study in a journal, and a process holding the journal's write lock until
    it reads a line (then it releases it and says so)."""
    journal = str(tmp_path / "study.journal")
    trial = optuna.create_study(study_name="s", storage=open_storage(journal)).ask()
    script = (
        "import sys; from ppo1.sweep.study import JournalLock\n"
        f"lock = JournalLock({journal!r}); lock.acquire(); print('held', flush=True)\n"
        "sys.stdin.readline(); lock.release(); print('released', flush=True)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return trial, holder


def test_a_process_killed_while_it_writes_the_journal_holds_no_one_up(tmp_path: Path) -> None:
    # A sweep process killed during a heartbeat, or a job during a report, dies holding the
    # journal's lock. Optuna's own lock (a symlink) stayed behind it for a 30 s grace period,
    # and a killed sweep's workers, waiting on it, could not end their runs (left RUNNING).
    trial, holder = journal_held(tmp_path)
    try:
        writing = threading.Thread(target=trial.set_user_attr, args=("after", True), daemon=True)
        writing.start()
        writing.join(timeout=2)
        assert writing.is_alive(), "a write to the journal waits while another process holds it"
        holder.kill()
        holder.wait(timeout=30)
        writing.join(timeout=10)
        assert not writing.is_alive(), "the lock went with the killed process"
    finally:
        holder.kill()
    assert load_study(tmp_path, "s").trials[0].user_attrs == {"after": True}


def test_a_process_stopped_while_it_writes_the_journal_holds_others_up_for_a_while_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-Z on a sweep process during a heartbeat or a job's report: alive, it keeps the
    # lock, and a sweep process sharing the study hung behind it for good (in a CI of
    # test_a_stopped_sweep_process_resumed_after_its_trial_went_stale). The others go on
    # after STALE_LOCK_S, as with Optuna's own lock.
    monkeypatch.setattr("ppo1.sweep.study.STALE_LOCK_S", 2.0)
    trial, holder = journal_held(tmp_path)
    try:
        assert holder.stdout is not None and holder.stdin is not None
        holder.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        writing = threading.Thread(target=trial.set_user_attr, args=("after", True), daemon=True)
        writing.start()
        writing.join(timeout=1)
        assert writing.is_alive(), "a write waits while another process holds the lock"
        writing.join(timeout=30)
        assert not writing.is_alive(), "the stopped holder's lock was taken to be stale"
        assert time.monotonic() - started >= 2.0
        started = time.monotonic()
        trial.set_user_attr("next", 1)  # the new lock file is free
        assert time.monotonic() - started < 1.0
        holder.send_signal(signal.SIGCONT)  # resumed, it finishes with the old file
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
    assert load_study(tmp_path, "s").trials[0].user_attrs == {"after": True, "next": 1}


def test_a_killed_sweep_process_is_found_out_and_its_slot_run_again(tmp_path: Path) -> None:
    command = sweep_command(tmp_path, "tiny", "sweep.n_trials=1", "sweep.grace_s=3", SLOW_TRIALS)
    # Its own process group, killed whole as a closed terminal or the OOM killer would.
    sweep = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_until(training(tmp_path, "tiny"), timeout=120, process=sweep)
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.wait(timeout=30)
    finally:
        sweep.kill()
    assert status_of_runs(tmp_path)["trial"] == {"RUNNING"}

    done = run(command, tmp_path)
    study = load_study(tmp_path, "tiny")
    stale = [t for t in study.trials if t.state is TrialState.FAIL]
    assert len(stale) == 1 and stale[0].user_attrs[INTERRUPTED_ATTR]
    reason = stale[0].user_attrs[FAIL_REASON_ATTR]
    assert reason.startswith("stale: no heartbeat from its sweep process for ")
    assert f"trial {stale[0].number}: FAIL, {reason}; its slot runs again" in done.stdout
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == counted_trials(study) == 1
    runs = runs_by_role(tmp_path)
    assert {r.info.status for r in runs["study"]} == {"FINISHED"}
    for r in runs["trial"] + runs["seed"]:
        number = int(r.data.tags["optuna.trial_number"])
        if number == stale[0].number:
            assert r.info.status == "FAILED"
            assert r.data.tags["ppo1.error"] == f"the sweep process died ({reason})"
        else:
            assert r.info.status == "FINISHED"


def test_a_stopped_sweep_process_resumed_after_its_trial_went_stale(tmp_path: Path) -> None:
    # A sweep process stopped past the grace period (Ctrl-Z, a sleeping laptop) while another
    # runs the study: the other fails its trial as stale and fills the study.
    command = sweep_command(tmp_path, "tiny", "sweep.n_trials=2", "sweep.grace_s=3", SLOW_TRIALS)
    stopped = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True)
    try:
        wait_until(training(tmp_path, "tiny"), timeout=120, process=stopped)
        stopped.send_signal(signal.SIGSTOP)
        run(command, tmp_path)
        stopped.send_signal(signal.SIGCONT)
        stdout, _ = stopped.communicate(timeout=120)
    finally:
        stopped.kill()
    # Woken, it drops its trial's result, which would count a third trial, and ends cleanly.
    assert stopped.returncode == 0
    assert "dropped, another sweep process had failed the trial as stale" in stdout
    states = sorted(t.state.name for t in load_study(tmp_path, "tiny").trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]

"""Sweep configs compose and validate; search spaces, objectives and the re-run command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from ppo1.config import ConfigError, Objective, SweepConfig, register_configs, to_train_config
from ppo1.sweep.objectives import area_under_curve, objective_value
from ppo1.sweep.pruning import build_pruner
from ppo1.sweep.search_space import distribution, end_points, overrides, search_space
from ppo1.sweep.study import create_study, open_storage
from ppo1.sweep.study_report import override_value, rerun_command

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted(p.stem for p in (ROOT / "sweeps").glob("*.yaml"))


def test_the_sweeps_dir_is_the_sweep_group() -> None:
    assert (ROOT / "conf" / "sweep").resolve() == (ROOT / "sweeps").resolve()
    assert "clip_epochs_lr" in SWEEPS and len(SWEEPS) >= 3


@pytest.mark.parametrize("name", SWEEPS)
def test_every_shipped_sweep_composes_into_a_valid_study(name: str) -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", [f"sweep={name}"], return_hydra_config=True)
    assert cfg.hydra.sweeper._target_.endswith("optuna_sweeper.OptunaSweeper")
    with open_dict(cfg):
        del cfg["hydra"]
    train_cfg = to_train_config(cfg)
    sweep = train_cfg.sweep
    assert sweep is not None and sweep.trial is None
    assert search_space(sweep.params)
    instantiate(sweep.sampler)
    build_pruner(sweep)


def test_search_space_from_hydra_sweep_syntax() -> None:
    assert distribution("a", "interval(0.05, 0.4)") == FloatDistribution(0.05, 0.4)
    assert distribution("a", "int(interval(1, 40))") == IntDistribution(1, 40)
    assert distribution("a", "tag(log, interval(1e-4, 1e-2))") == FloatDistribution(
        1e-4, 1e-2, log=True
    )
    # range() excludes its stop, as in Python and Hydra's basic sweeper.
    assert distribution("a", "range(2, 31, 4)") == IntDistribution(2, 30, step=4)
    assert distribution("a", "range(1, 10, 4)") == IntDistribution(1, 9, step=4)
    assert distribution("a", "choice(64, 128)") == CategoricalDistribution((64, 128))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0.2", "is not a sweep"),
        ("interval(0.4, 0.1)", "interval"),
        ("tag(log, interval(0, 1))", "log"),
        ("range(5, 5)", "is empty"),
        ("interval(0.1,", "cannot parse"),
    ],
)
def test_bad_search_space_fails_with_the_key(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"sweep.params.algo.clip.*{message}"):
        distribution("algo.clip", spec)


def test_bad_sweep_values_fail_together() -> None:
    with pytest.raises(
        ConfigError, match=r"n_trials must be >= 1.*seeds must be >= 1.*params is empty"
    ):
        SweepConfig(n_trials=0, seeds=0)


@pytest.mark.parametrize("name", ["a/b/c", "../../../elsewhere", "it's", ".hidden", "", "a b"])
def test_a_study_name_is_a_plain_file_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"sweep.study_name=.*letters, digits"):
        SweepConfig(study_name=name, params={"algo.clip": "interval(0.1, 0.3)"})


def test_end_points_of_a_search_space() -> None:
    space = search_space(
        {
            "algo.clip": "interval(0.1, 0.3)",
            "algo.epochs": "range(2, 31, 4)",
            "a": "choice(x, y, z)",
        }
    )
    assert end_points(space) == [
        {"algo.clip": 0.1, "algo.epochs": 2, "a": "x"},
        {"algo.clip": 0.3, "algo.epochs": 30, "a": "z"},
    ]


def test_trial_params_become_overrides() -> None:
    assert overrides({"algo.lr": 0.001, "algo.epochs": 4, "algo.net.shared": True}) == [
        "algo.lr=0.001",
        "algo.epochs=4",
        "algo.net.shared=true",
    ]


def test_objectives_by_hand() -> None:
    evals = [(100, 10.0), (200, 30.0), (400, 20.0)]
    # Trapezoids: 100 * (10 + 30) / 2 + 200 * (30 + 20) / 2 = 2000 + 5000, over 300 steps.
    assert area_under_curve(evals) == pytest.approx(7000 / 300)
    assert objective_value(Objective.auc, evals) == pytest.approx(7000 / 300)
    assert objective_value(Objective.final, evals) == 20.0
    assert objective_value(Objective.best, evals) == 30.0
    assert objective_value(Objective.auc, [(100, 5.0)]) == 5.0
    with pytest.raises(ValueError, match="no evaluation"):
        objective_value(Objective.final, [])


def test_rerun_command_keeps_what_differs_from_the_defaults() -> None:
    default = {
        "algo": {"lr": 0.001, "clip": 0.2},
        "env": {"id": "CartPole-v1"},
        "tracking": {"figures": "full", "uri": None},
        "verbose": True,
    }
    best = {
        "algo": {"lr": 0.0003, "clip": 0.2},
        "env": {"id": "Acrobot-v1"},
        "tracking": {"figures": "light", "uri": None},
        "verbose": False,
        "sweep": {"trial": 3},
    }
    assert rerun_command(best, default) == "python -m ppo1.train algo.lr=0.0003 env.id=Acrobot-v1"
    assert override_value(None) == "null"
    assert override_value([64, 64]) == "[64,64]"
    assert override_value("two words") == '"two words"'


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep=clip_epochs_lr"], "error: a sweep runs as a multirun"),
        (["-m", "sweep=clip_epochs_lr", "sweep.n_trials=0"], "sweep.n_trials must be >= 1"),
        (["-m", "sweep=clip_epochs_lr", "sweep.n_jobs=0"], "sweep.n_jobs must be >= 1"),
        (["-m", "sweep=clip_epochs_lr", "algo.clip=interval(0.3,0.1)"], "sweep.params.algo.clip"),
        # Fixed settings no trial could run with: caught before the study has any trial, which
        # would FAIL and count toward n_trials.
        (
            ["-m", "sweep=clip_epochs_lr", "algo.minibatch_size=1000"],
            "error: invalid config: algo.minibatch_size=1000 is larger than the batch",
        ),
        (
            ["-m", "sweep=clip_epochs_lr", "sweep.pruner.n_warmup_steps=abc"],
            "error: invalid sweep.pruner: Error in call to target",
        ),
        (
            ["-m", "sweep=clip_epochs_lr", "sweep.study_name=../../../elsewhere"],
            "error: invalid sweep: sweep.study_name='../../../elsewhere': use up to 100",
        ),
        (["-m", "sweep=clip_epochs_lr", 'sweep.study_name="it\'s"'], 'sweep.study_name="it\'s"'),
        (
            ["-m", "sweep=clip_epochs_lr", "sweep.sampler._target_=optuna.samplers.Nope"],
            "error: invalid sweep.sampler: Error locating target 'optuna.samplers.Nope'",
        ),
    ],
)
def test_bad_sweep_input_fails_before_any_trial(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ppo1.train", *args, f"sweep.storage={tmp_path / 's.journal'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "s.journal").exists()


def test_hydra_optuna_sweepers_keys_say_which_of_ours_to_use() -> None:
    assert sweep_exits(["hydra.sweeper.n_trials=20"]) == (
        "error: hydra.sweeper.n_trials is hydra-optuna-sweeper's: use sweep.n_trials=20 "
        "(the study's total)"
    )
    assert sweep_exits(["hydra.sweeper.n_jobs=4"]) == (
        "error: hydra.sweeper.n_jobs is hydra-optuna-sweeper's: use sweep.n_jobs=4"
    )


def test_a_report_on_a_missing_study_creates_no_files(tmp_path: Path) -> None:
    journal = tmp_path / "optuna" / "nope.journal"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ppo1.sweep_report",
            "sweep=clip_epochs_lr",
            f"sweep.storage={journal}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: no study 'clip_epochs_lr' in {journal}"
    assert list(tmp_path.iterdir()) == []


def _asked_points(studies: list[optuna.Study], n: int) -> list[float]:
    """`n` trials asked round-robin from `studies` (sweep processes sharing one study)."""
    space = search_space({"algo.clip": "interval(0.1, 0.3)"})
    return [studies[i % len(studies)].ask(space).params["algo.clip"] for i in range(n)]


@pytest.mark.parametrize("sampler", ["RandomSampler", "TPESampler"])
def test_sweep_processes_sharing_a_study_draw_new_points(tmp_path: Path, sampler: str) -> None:
    sweep = SweepConfig(
        study_name="s",
        params={"algo.clip": "interval(0.1, 0.3)"},
        sampler={"_target_": f"optuna.samplers.{sampler}", "seed": 0},
    )

    def processes(journal: str, k: int) -> list[optuna.Study]:
        return [create_study(sweep, open_storage(str(tmp_path / journal))) for _ in range(k)]

    # Three processes on one study, and a process resuming it: every trial a new point.
    shared = _asked_points(processes("shared.journal", 3), 6)
    shared += _asked_points(processes("shared.journal", 1), 2)
    assert len(set(shared)) == 8
    # One process alone repeats its sweep exactly, and draws what the three drew together.
    assert _asked_points(processes("alone.journal", 1), 8) == shared


def sweep_exits(args: list[str], env: dict[str, str] | None = None) -> str:
    """A sweep's one `error: ...` line, which it must end with, exit 2, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "ppo1.train", "-m", "sweep=clip_epochs_lr", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize("store", ["bogus://x", "a text file"])
def test_a_bad_tracking_store_stops_a_parallel_sweep_in_one_line(
    tmp_path: Path, store: str
) -> None:
    # Told before the workers start (a scheme MLflow has no store for), or only by MLflow once
    # they are starting (not a database): either way one line, and no worker's traceback.
    if store == "a text file":
        (tmp_path / "mlflow.db").write_text("not a database")
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [f"tracking.uri={store}", "sweep.n_jobs=2", f"sweep.storage={tmp_path / 's.journal'}"]
    line = sweep_exits(args)
    assert line.startswith(f"error: invalid config: tracking.uri {store!r}: ")


@pytest.mark.parametrize(
    ("storage", "message"),
    [
        ("foo://bar", "sweep.storage foo://bar: no database scheme 'foo'"),
        (
            "postgresql+pg8000://me:secret@localhost/db",
            "sweep.storage postgresql+pg8000://me:***@localhost/db: its database driver, the "
            "Python module 'pg8000', is not installed",
        ),
        (
            "mysql://me:secret@localhost/db",
            "sweep.storage mysql://me:***@localhost/db: no study lock for database scheme "
            "'mysql'; use postgresql+psycopg://... (across machines) or sqlite:///path/optuna.db",
        ),
    ],
)
def test_a_bad_storage_url_is_named_in_one_line(storage: str, message: str) -> None:
    assert message in sweep_exits([f"sweep.storage={storage}", "tracking.enabled=false"])


def test_a_read_only_mlruns_stops_the_sweep_before_any_trial(tmp_path: Path) -> None:
    mlruns = tmp_path / "mlruns"
    mlruns.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(mlruns), str(mlruns)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"a read-only bind mount needs root: {mounted.stderr.strip()}")
    try:
        env = {**os.environ, "PPO1_HOME": str(tmp_path)}
        line = sweep_exits(["tracking.enabled=false"], env)
    finally:
        subprocess.run(["umount", str(mlruns)], check=True)
    journal = mlruns / "optuna" / "clip_epochs_lr.journal"
    assert line == (
        f"error: invalid sweep: sweep.storage {journal}: cannot write the journal there "
        "(Read-only file system); name a writable file: sweep.storage=PATH"
    )

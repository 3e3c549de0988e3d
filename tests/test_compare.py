"""Compare's groups and their names, worked by hand; which runs an experiment stands for; the
UI links and run names."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from ppo1.config import SweepConfig, TrackingConfig
from ppo1.report import plots
from ppo1.report.compare import compare_figures, group_runs, letter, params_table_figure
from ppo1.report.runs import RunData, resolve_runs
from ppo1.tracking.names import name_tag, run_name, short_keys, short_value, sweep_run_name
from ppo1.tracking.urls import run_url, runs_table_url, ui_lines
from tests.conftest import refused


def run(name: str, offset: float, **params: str) -> RunData:
    steps = np.array([256.0, 512.0])
    curves = {
        plots.EVAL_RETURN: (steps, np.array([10.0, 20.0]) + offset),
        plots.EPISODIC_RETURN: (steps, np.array([9.0, 11.0]) + offset),
        "losses/kl": (steps, np.array([0.01, 0.02])),
        "losses/clipfrac": (steps, np.array([0.1, 0.2])),
    }
    return RunData(name, curves, {"tracking.run_name": name, **params})


def test_groups_are_lettered_and_named_by_what_sets_them_apart() -> None:
    runs = [
        run("a", 0.0, **{"algo.clip": "0.2", "seed": "1", "sweep.trial": "0"}),
        run("b", 2.0, **{"algo.clip": "0.2", "seed": "2", "sweep.trial": "1"}),
        run("c", 5.0, **{"algo.clip": "0.1", "seed": "1", "sweep.trial": "2"}),
    ]
    groups = group_runs(runs)
    assert [(g.name, [r.label for r in g.runs]) for g in groups] == [
        ("A: clip=0.2", ["a", "b"]),
        ("B: clip=0.1", ["c"]),
    ]
    figures = compare_figures(runs)
    lines = [t for t in figures["curves"].data if t.mode == "lines"]
    assert len(lines) == 2 * 4  # two groups x four panels
    assert [t.name for t in lines if t.showlegend] == ["A: clip=0.2 (n=2)", "B: clip=0.1"]
    assert len([t for t in figures["curves"].data if t.fill == "toself"]) == 4  # A's bands
    eval_mean = next(t for t in lines if t.xaxis == "x" and t.name.startswith("A"))
    np.testing.assert_allclose(eval_mean.y[[0, -1]], [11.0, 21.0])  # (10 + 12) / 2, (20 + 22) / 2
    table = params_table_figure(groups).data[0]
    assert list(table.header.values) == ["param", "A (n=2)", "B (n=1)"]
    assert [list(column) for column in table.cells.values] == [
        ["algo.clip", "runs"],
        ["0.2", "a<br>b"],
        ["0.1", "c"],
    ]


def test_many_differing_params_leave_the_letter_alone_and_the_height_fixed() -> None:
    def config(i: int) -> dict[str, str]:
        return {f"algo.p{k}": str(i + k) for k in range(5)}

    few = compare_figures([run("x", 0.0, **config(0)), run("y", 1.0, **config(1))])
    many = compare_figures([run(str(i), float(i), **config(i)) for i in range(30)])
    names = [t.name for t in many["curves"].data if t.showlegend]
    assert names[:3] == ["A", "B", "C"] and names[-1] == "AD"
    assert many["curves"].layout.height == few["curves"].layout.height
    assert many["curves"].layout.legend.orientation == "v"  # beside the plots, not below


def test_short_keys_values_and_letters() -> None:
    keys = ["algo.clip", "env.num_envs", "eval.num_envs", "algo.net.hidden", "clip"]
    assert short_keys(keys) == {
        "algo.clip": "algo.clip",  # "clip" is a key of its own
        "env.num_envs": "env.num_envs",
        "eval.num_envs": "eval.num_envs",
        "algo.net.hidden": "hidden",
        "clip": "clip",
    }
    assert [short_value(v) for v in ["0.000316227766", "20", "1e-05", "True", "[64, 64]"]] == [
        "0.000316",
        "20",
        "1e-05",
        "True",
        "[64, 64]",
    ]
    assert [letter(i) for i in (0, 25, 26, 27, 701, 702)] == ["A", "Z", "AA", "AB", "ZZ", "AAA"]


def test_run_names() -> None:
    choices = {"env": "acrobot", "algo": "ppo_clip", "schedule": "linear", "sweep": None}
    overrides = ["env=acrobot", "algo.clip=0.1", "seed=3", "tracking.uri=x", "+algo.foo=1"]
    assert run_name(choices, overrides, 3) == "acrobot-ppo_clip-s3 clip=0.1 foo=1"
    both = ["env.num_envs=4", "eval.num_envs=2", "schedule=cosine"]
    assert run_name(choices, both, 0) == (
        "acrobot-ppo_clip-s0 env.num_envs=4 eval.num_envs=2 schedule=cosine"
    )
    assert run_name(choices, [f"algo.lr={'1' * 200}"], 0).endswith("…")
    assert len(run_name(choices, [f"algo.lr={'1' * 200}"], 0)) == 120
    assert name_tag(TrackingConfig(), choices, [], 1) == {"mlflow.runName": "acrobot-ppo_clip-s1"}
    assert name_tag(TrackingConfig(run_name="mine"), choices, [], 1) == {}
    sweep = SweepConfig(study_name="clip", params={"algo.clip": "interval(0.1, 0.3)"})
    assert sweep_run_name(sweep, TrackingConfig(), 12, 0) == "clip-t12-s0"
    assert sweep_run_name(sweep, TrackingConfig(run_name="mine"), 12) == "mine-t12"


def test_ui_links_for_a_store_and_a_server() -> None:
    store, server = "sqlite:////data/my runs/mlflow.db", "http://tracking:8080/"
    ml = "?workflowType=machine_learning"
    assert run_url(store, "3", "abc") == f"http://127.0.0.1:5000/#/experiments/3/runs/abc{ml}"
    assert run_url(server, "3", "abc", "figures/a b.html") == (
        f"http://tracking:8080/#/experiments/3/runs/abc/artifacts/figures/a%20b.html{ml}"
    )
    assert runs_table_url(server, "3") == f"http://tracking:8080/#/experiments/3/runs{ml}"
    assert ui_lines(store, "3", "abc") == [
        "open the MLflow UI: mlflow ui --backend-store-uri 'sqlite:////data/my runs/mlflow.db' "
        "--host 127.0.0.1 --port 5000 --workers 1",
        f"  this run: http://127.0.0.1:5000/#/experiments/3/runs/abc{ml}",
        f"  all runs: http://127.0.0.1:5000/#/experiments/3/runs{ml}",
    ]
    assert ui_lines(server, "3")[0] == "in the MLflow UI:"


def test_an_experiment_leaves_sweep_runs_out_unless_asked(
    mlflow_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real store holding only a sweep's runs: a study run, a trial run, two seed runs."""
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("ppo1")
    study = {"ppo1.role": "study", "optuna.study_name": "s"}
    parent = client.create_run(experiment, tags=study).info.run_id
    trial_tags = {"ppo1.role": "trial", "optuna.study_name": "s", "mlflow.parentRunId": parent}
    trial = client.create_run(experiment, tags=trial_tags).info.run_id
    seeds = []
    for _ in range(2):
        seed_tags = {"ppo1.role": "seed", "mlflow.parentRunId": trial}
        seeds.append(client.create_run(experiment, tags=seed_tags).info.run_id)
        client.log_metric(seeds[-1], "losses/kl", 0.01, step=256)
    for run_id in (parent, trial, *seeds):
        client.set_terminated(run_id)

    left_out: list[Run] = []
    everything = resolve_runs(client, ["ppo1"], "", include_sweeps=True, left_out=left_out)
    assert [r.info.run_id for r in everything] == seeds and left_out == []
    assert [r.info.run_id for r in resolve_runs(client, ["ppo1"], "", study="s")] == seeds
    message = "no finished training runs in experiment 'ppo1'; 2 sweep runs left out"
    with refused(capsys, message):
        resolve_runs(client, ["ppo1"], "")

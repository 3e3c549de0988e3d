"""What the parent run of a study shows: Optuna's figures, offline, and the best trial to re-run."""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
from collections.abc import Callable
from typing import Any

import optuna
import plotly.graph_objects as go
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf
from optuna import visualization as vis
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial

from ppo1.report.html import html_page
from ppo1.sweep.search_space import overrides
from ppo1.sweep.study import CONFIG_ATTR
from ppo1.tracking.urls import ui_lines
from ppo1.utils.redact import redact

# Overrides -> the config a job of the sweep gets, without its `hydra` node.
ComposeJob = Callable[[list[str]], DictConfig]

# Keys a re-run should not copy from a sweep job: the sweep itself, its quiet, light output
# (the re-run saves its model, logs the full figures and every episode) and its inline MLflow
# writes (every core ran a trial; a lone re-run has a core for the writer process).
_NOT_RERUN = (
    "sweep",
    "hydra",
    "verbose",
    "log_every",
    "save_model",
    "tracking.figures",
    "tracking.episode_rows",
    "tracking.writer_process",
)


def _finished(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with a finite value: the only ones Optuna's parameter plots read."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [t for t in complete if t.value is not None and math.isfinite(t.value)]


def study_figures(study: optuna.Study, params: list[str]) -> tuple[dict[str, go.Figure], list[str]]:
    """Optuna's Plotly figures by name, and a note for each one that cannot be drawn yet.

    Intermediate values show where pruned trials stopped. The other plots read finished trials
    only, and the parameter plots raise on a parameter none of them has: after a sweep whose
    trials were all pruned or failed, or a key added to a study whose new trials were pruned.
    """
    figures: dict[str, go.Figure] = {}
    notes: list[str] = []
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        figures["intermediate_values"] = vis.plot_intermediate_values(study)
    else:
        notes.append("No trial has reported an evaluation yet: no intermediate values.")
    finished = _finished(study)
    drawn = [p for p in params if any(p in t.params for t in finished)]
    if not drawn:
        notes.append("No completed trial yet: no optimization history, no parameter plots.")
        return figures, notes
    figures = {"optimization_history": vis.plot_optimization_history(study), **figures}
    if missing := [p for p in params if p not in drawn]:
        notes.append(f"No completed trial has {', '.join(missing)}: left out of the plots.")
    figures["parallel_coordinate"] = vis.plot_parallel_coordinate(study, params=drawn)
    figures["slice"] = vis.plot_slice(study, params=drawn)
    # Both need two finished trials with every drawn parameter to say anything.
    covering = sum(set(drawn) <= set(t.params) for t in finished)
    if covering >= 2:
        figures["param_importances"] = vis.plot_param_importances(study, params=drawn)
        # A parameter with one value among them has no axis; Optuna warns (on stderr) instead.
        varied = [
            p for p in drawn if len({repr(t.params[p]) for t in finished if p in t.params}) > 1
        ]
        if len(varied) >= 2:
            figures["contour"] = vis.plot_contour(study, params=varied)
    else:
        notes.append(
            f"Parameter importances and contour need two completed trials with "
            f"{', '.join(drawn)}; {covering} so far."
        )
    return figures, notes


def prepare_report() -> None:
    """Draw the figures once for a made-up study of three trials in memory, for what drawing
    imports on first use (Optuna's importances import scikit-learn and pandas, its plots
    matplotlib's colormaps, plotly its trace classes: ~1.1 CPU-s). A parallel sweep calls it from
    a slot with no trial left to ask while another slot's trial still trains: the report then
    waits for none of it after the last trial."""
    space: dict[str, BaseDistribution] = {
        "x": FloatDistribution(0.0, 1.0),
        "y": FloatDistribution(0.0, 1.0),
    }
    storage = InMemoryStorage()
    quiet = logging.getLogger(InMemoryStorage.__module__)  # it logs the made-up study's creation
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        storage.create_new_study([StudyDirection.MAXIMIZE], "report-warm-up")
    finally:
        quiet.setLevel(level)
    study = optuna.Study("report-warm-up", storage)
    for x, y in ((0.0, 0.0), (1.0, 0.5), (0.5, 1.0)):
        params = {"x": x, "y": y}
        trial = create_trial(
            params=params, distributions=space, value=x + y, intermediate_values={0: x}
        )
        study.add_trial(trial)
    study_figures(study, list(space))


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'algo': {'clip': 0.2}} -> {'algo.clip': 0.2}, values kept as they are."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def override_value(value: Any) -> str:
    """A config value in Hydra's override grammar: null, true, 0.001, [64,64], "a b"."""
    if isinstance(value, str) and re.fullmatch(r"[\w.:\-/]+", value):
        return value
    return json.dumps(value, separators=(",", ":"))


def rerun_command(best: dict[str, Any], default: dict[str, Any]) -> str:
    """The `python -m ppo1.train key=value ...` that trains `best`: its keys that differ from
    the defaults, other than the sweep's own."""
    base = leaves(default)
    changed = [
        f"{key}={override_value(value)}"
        for key, value in leaves(best).items()
        if not any(key == k or key.startswith(f"{k}.") for k in _NOT_RERUN)
        and base.get(key) != value
    ]
    return shlex.join(["python", "-m", "ppo1.train", *changed])


def best_trial_summary(study: optuna.Study) -> dict[str, Any]:
    """The best trial and the count of trials per state, as logged on the parent run."""
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    best = study.best_trial
    return {
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": {name: states.count(name) for name in sorted(set(states))},
    }


def _plain(cfg: DictConfig) -> dict[str, Any]:
    container = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    assert isinstance(container, dict)
    return {str(k): v for k, v in container.items()}


def best_config(
    study: optuna.Study, compose_job: ComposeJob, sweep_overrides: list[str]
) -> dict[str, Any]:
    """The config the best trial trained with, as its job stored it on the trial.

    A trial from before jobs stored it gets a config composed again from `sweep_overrides` and
    its params: today's sweep files and command, which may differ from what it ran with.
    """
    best = study.best_trial
    stored: dict[str, Any] | None = best.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return _plain(compose_job([*sweep_overrides, *overrides(best.params)]))
    return stored


def report_study(
    study: optuna.Study,
    params: list[str],
    compose_job: ComposeJob,
    sweep_overrides: list[str],
    parent: tuple[MlflowClient, str] | None,
) -> None:
    """Print the best trial and log figures and the best trial's config on the parent run.

    `sweep_overrides` select the sweep (`sweep=NAME ...`); the re-run command is what differs
    in the best trial's config from the plain defaults.
    """
    best_cfg = command = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best_cfg = best_config(study, compose_job, sweep_overrides)
        # Printed and logged: a password in a URL (tracking.uri) stays out of both.
        command = redact(rerun_command(best_cfg, _plain(compose_job([]))))
        print(f"best trial {study.best_trial.number}: {study.best_value:.2f}", flush=True)
        print(f"re-run it: {command}", flush=True)
    else:
        print("no completed trial yet: no best trial to re-run", flush=True)
    if parent is None:
        return
    client, run_id = parent
    figures, notes = study_figures(study, params)
    page = html_page(f"Optuna study {study.study_name}", figures, notes)
    client.log_text(run_id, page, "optuna/report.html")
    if best_cfg is not None and command is not None:
        summary = best_trial_summary(study)
        trained = {key: value for key, value in best_cfg.items() if key != "sweep"}
        client.log_text(run_id, json.dumps(summary, indent=2), "best/summary.json")
        client.log_text(run_id, command + "\n", "best/command.txt")
        client.log_text(run_id, redact(OmegaConf.to_yaml(trained)), "best/config.yaml")
        client.set_tag(run_id, "optuna.best_trial", str(summary["best_trial"]))
        client.log_metric(run_id, "best_value", study.best_value)
    print(f"MLflow run {run_id} of the study: figures in optuna/report.html", flush=True)
    experiment_id = client.get_run(run_id).info.experiment_id
    print("\n".join(ui_lines(client.tracking_uri, experiment_id, run_id, "the study")), flush=True)

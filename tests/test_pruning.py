"""The KL pruner on hand-made trials and in a real (journal-file) Optuna study."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.pruners import MedianPruner, ThresholdPruner
from optuna.trial import TrialState, create_trial

from ppo1.config import KLMetric, KLPrunerConfig, SweepConfig, TrainConfig
from ppo1.core.loop import TrainResult, UpdateHook
from ppo1.sweep.pruning import (
    KL_ATTR,
    PRUNE_REASON_ATTR,
    KLPruner,
    TrialReporter,
    build_pruner,
    kl_divergence_reason,
)
from ppo1.sweep.study import find_trial, open_storage
from ppo1.sweep.trial import train_seeds
from ppo1.tracking.tracker import Tracker

RULE = KLPrunerConfig(metric=KLMetric.kl, threshold=0.1, patience=3, warmup_updates=2)


def running_trial(
    kls: list[float], evals: dict[int, float] | None = None
) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.RUNNING,
        params={"algo.lr": 0.01},
        distributions={"algo.lr": FloatDistribution(1e-4, 1.0, log=True)},
        user_attrs={KL_ATTR: kls},
        intermediate_values=evals or {},
    )


@pytest.mark.parametrize(
    ("kls", "fires"),
    [
        ([0.01, 0.01, 0.2, 0.3, 0.4], True),  # three in a row above 0.1 after warm-up
        ([0.01, 0.01, 0.2, 0.1, 0.4], False),  # 0.1 is not above the threshold: the run breaks
        ([0.01, 0.01, 0.2, 0.3], False),  # only two so far: patience not reached
        ([0.5, 0.5, 0.5, 0.01, 0.01], False),  # the high ones were warm-up, the tail is calm
        ([0.5, 0.5, 0.5], False),  # all within warm-up plus one: nothing counted yet
        ([0.5, 0.5, 0.5, 0.5, 0.5], True),  # warm-up over, three more above
        ([0.01, 0.01, 0.2, math.inf, math.nan], True),  # non-finite KL counts as diverged
        ([0.2, 0.3, 0.4, 0.5, 0.6, 0.01], False),  # recovered on the last update
    ],
)
def test_kl_rule_threshold_patience_warmup(kls: list[float], fires: bool) -> None:
    assert (kl_divergence_reason(kls, RULE) is not None) is fires
    study = optuna.create_study(direction="maximize")
    assert KLPruner(RULE).prune(study, running_trial(kls)) is fires


def test_kl_reason_names_the_updates() -> None:
    reason = kl_divergence_reason([0.0, 0.0, 0.2, 0.3, 0.4], RULE)
    assert reason == "losses/kl > 0.1 in updates 3-5 (0.2, 0.3, 0.4)"


def test_kl_pruner_defers_to_the_objective_pruner() -> None:
    study = optuna.create_study(direction="maximize")
    calm = [0.01] * 5
    pruner = KLPruner(RULE, ThresholdPruner(lower=100.0))
    assert pruner.prune(study, running_trial(calm, {512: 50.0}))  # return below 100
    assert not pruner.prune(study, running_trial(calm, {512: 150.0}))
    assert not KLPruner(RULE).prune(study, running_trial(calm, {512: 50.0}))


def test_build_pruner_from_a_sweep_config() -> None:
    objective = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 7}
    both = build_pruner(
        SweepConfig(params={"algo.lr": "interval(0.1, 1)"}, pruner=objective, kl=RULE)
    )
    assert isinstance(both, KLPruner) and isinstance(
        both.objective_pruner, optuna.pruners.MedianPruner
    )
    only_objective = build_pruner(
        SweepConfig(params={"algo.lr": "interval(0.1, 1)"}, pruner=objective)
    )
    assert isinstance(only_objective, optuna.pruners.MedianPruner)
    none = build_pruner(SweepConfig(params={"algo.lr": "interval(0.1, 1)"}))
    assert isinstance(none, optuna.pruners.NopPruner)


def metrics(kl: float, eval_return: float | None = None) -> dict[str, float]:
    m = {"losses/kl": kl, "losses/approx_kl": kl / 2}
    if eval_return is not None:
        m["eval/mean_return"] = eval_return
    return m


def journal_study(journal: Path, pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """A maximising study "s" in a journal file, as a sweep creates it."""
    return optuna.create_study(
        storage=open_storage(str(journal)), study_name="s", direction="maximize", pruner=pruner
    )


def test_reporter_prunes_a_real_trial_through_journal_storage(tmp_path: Path) -> None:
    storage = open_storage(str(tmp_path / "study.journal"))
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    trial = study.ask({"algo.lr": FloatDistribution(1e-4, 1.0, log=True)})
    # The job's side: its own Study object on the same storage, with the pruner.
    job_study = optuna.load_study(study_name="s", storage=storage, pruner=KLPruner(RULE))
    job_trial = find_trial(job_study, storage, trial.number)
    report = TrialReporter(job_trial, RULE, step_offset=0)
    for update, kl in enumerate([0.9, 0.9, 0.05, 0.2, 0.3], start=1):  # warm-up, then calm
        report(update * 256, metrics(kl, 20.0 if update % 2 == 0 else None))
    with pytest.raises(optuna.TrialPruned, match=r"losses/kl > 0.1 in updates 4-6"):
        report(6 * 256, metrics(0.4))
    study.tell(trial, state=TrialState.PRUNED)
    frozen = study.trials[0]
    assert frozen.state is TrialState.PRUNED
    assert frozen.user_attrs[KL_ATTR] == [0.9, 0.9, 0.05, 0.2, 0.3, 0.4]
    assert frozen.user_attrs[PRUNE_REASON_ATTR].startswith("losses/kl > 0.1 in updates 4-6")
    assert frozen.intermediate_values == {512: 20.0, 1024: 20.0}


def test_the_kl_series_is_stored_at_the_first_update_evaluations_and_the_seeds_end(
    tmp_path: Path,
) -> None:
    """Not at every update (a locked, fsynced journal append each): readers see the series
    once the trial trains, at each evaluation, and whole when the seed ends."""
    study = journal_study(tmp_path / "study.journal", KLPruner(RULE))
    report = TrialReporter(study.ask(), RULE, step_offset=0, seed_end=6 * 256)
    kls = [0.01 * update for update in range(1, 7)]
    stored = []
    for update, kl in enumerate(kls, start=1):
        report(update * 256, metrics(kl, 20.0 if update == 4 else None))
        stored.append(study.trials[0].user_attrs[KL_ATTR])
    assert stored == [kls[:1], kls[:1], kls[:1], kls[:4], kls[:4], kls]


def test_reporter_names_the_objective_pruner_and_offsets_seed_steps(tmp_path: Path) -> None:
    study = journal_study(tmp_path / "study.journal", KLPruner(RULE, ThresholdPruner(lower=100.0)))
    trial = study.ask()
    report = TrialReporter(trial, RULE, step_offset=1000)
    with pytest.raises(optuna.TrialPruned, match="ThresholdPruner at step 1256"):
        report(256, metrics(0.01, eval_return=10.0))
    assert study.trials[0].intermediate_values == {1256: 10.0}


def test_only_the_kl_rule_may_stop_a_trial_at_its_last_report(tmp_path: Path) -> None:
    study = journal_study(
        tmp_path / "study.journal",
        KLPruner(RULE, MedianPruner(n_startup_trials=1, n_warmup_steps=0)),
    )
    first = study.ask()
    for step in (256, 512):
        first.report(100.0, step)
    study.tell(first, 100.0)

    # Returns of 10 against a median of 100: pruned before the end, kept at the end.
    midway = study.ask()
    with pytest.raises(optuna.TrialPruned, match="MedianPruner at step 256"):
        TrialReporter(midway, RULE, step_offset=0, last_step=512)(256, metrics(0.01, 10.0))
    done = study.ask()
    TrialReporter(done, RULE, step_offset=0, last_step=512)(512, metrics(0.01, 10.0))
    assert done.should_prune(), "the median rule would have thrown the finished trial away"

    # A KL that blows up on the last update still stops it, as the KL rule says.
    diverged = study.ask()
    report = TrialReporter(diverged, RULE, step_offset=0, last_step=5 * 256)
    for update, kl in enumerate([0.01, 0.01, 0.2, 0.3], start=1):
        report(update * 256, metrics(kl))
    with pytest.raises(optuna.TrialPruned, match=r"losses/kl > 0.1 in updates 3-5"):
        report(5 * 256, metrics(0.4, 150.0))


def evaluating_at_the_end(
    mean_return: float,
) -> Callable[[TrainConfig, UpdateHook | None, object], TrainResult]:
    """A stand-in for ppo1.tracked.train: every update reports to the hook, as training does,
    with a calm KL and an evaluation at the last update only."""

    def train(cfg: TrainConfig, on_update: UpdateHook | None, tags: object) -> TrainResult:
        assert on_update is not None
        for update in range(1, cfg.num_updates + 1):
            last = update == cfg.num_updates
            on_update(update * cfg.batch_size, metrics(0.01, mean_return if last else None))
        return TrainResult(None, mean_return, evals=[(cfg.total_timesteps, mean_return)])

    return train


def test_a_trial_keeps_its_result_after_its_whole_budget(
    tmp_path: Path,
    compose_cfg: Callable[[list[str]], TrainConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cfg = compose_cfg(
        [
            "sweep=clip_epochs_lr",
            "total_timesteps=1024",
            "tracking.enabled=false",
            f"sweep.storage={tmp_path / 'study.journal'}",
            "sweep.pruner.n_startup_trials=1",
            "sweep.pruner.n_warmup_steps=0",
        ]
    )
    assert cfg.sweep is not None
    study = journal_study(tmp_path / "study.journal", build_pruner(cfg.sweep))

    def run(seeds: int, mean_return: float) -> float:
        sweep = dataclasses.replace(cfg.sweep, seeds=seeds)
        trial = study.ask()
        monkeypatch.setattr("ppo1.sweep.trial.train", evaluating_at_the_end(mean_return))
        with Tracker(cfg.tracking, {}) as trial_run:
            value = train_seeds(cfg, sweep, trial, trial_run)
        study.tell(trial, value)
        return value

    run(seeds=2, mean_return=100.0)  # the median: 100 at steps 1024 and 2048
    # 10 at step 1024: the end of the first of two seeds is pruned, the end of the trial is not.
    with pytest.raises(optuna.TrialPruned, match="MedianPruner at step 1024"):
        run(seeds=2, mean_return=10.0)
    assert run(seeds=1, mean_return=10.0) == 10.0

"""One sweep job: find its trial in the study's storage, train each seed, return the objective."""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np
import optuna
from optuna.trial import TrialState

from ppo1.config import SweepConfig, TrainConfig, to_plain_dict
from ppo1.core.update import NonFiniteLossError
from ppo1.sweep.objectives import objective_value
from ppo1.sweep.pruning import PRUNE_REASON_ATTR, TrialReporter, build_pruner
from ppo1.sweep.study import CONFIG_ATTR, PARENT_RUN_ATTR, find_trial, open_storage, storage_spec
from ppo1.sweep.workers import TrialInterrupted, enter_worker, worker_of_live_sweep
from ppo1.tracked import train
from ppo1.tracking.names import sweep_run_name
from ppo1.tracking.tracker import Tracker
from ppo1.utils.redact import redact_tree
from ppo1.utils.signals import sigterm_as_interrupt


def trial_tags(sweep: SweepConfig, number: int, parent_run_id: str | None) -> dict[str, str]:
    tags = {
        "ppo1.role": "trial",
        "optuna.study_name": sweep.study_name,
        "optuna.trial_number": str(number),
    }
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    return tags


def train_seeds(
    cfg: TrainConfig, sweep: SweepConfig, trial: optuna.Trial, trial_run: Tracker
) -> float:
    """Train seeds cfg.seed, cfg.seed + 1, ...; each run nests under the trial's run."""
    values = []
    for i in range(sweep.seeds):
        seed = cfg.seed + i
        name = sweep_run_name(sweep, cfg.tracking, trial.number, seed)
        seed_cfg = dataclasses.replace(
            cfg, seed=seed, tracking=dataclasses.replace(cfg.tracking, run_name=name)
        )
        tags = {"ppo1.role": "seed", "optuna.trial_number": str(trial.number)}
        if (run := trial_run.wait_for_run()) is not None:
            tags["mlflow.parentRunId"] = run[0]
        # The seed's final update (num_updates whole batches); the last seed's ends the trial.
        seed_end = cfg.num_updates * cfg.batch_size
        last_step = seed_end if i == sweep.seeds - 1 else None
        reporter = TrialReporter(trial, sweep.kl, i * cfg.total_timesteps, last_step, seed_end)
        result = train(seed_cfg, reporter, tags)
        values.append(objective_value(sweep.objective, result.evals))
        trial_run.log_metrics({f"objective/seed_{seed}": values[-1]}, 0)
    return float(np.mean(values))


def run_trial(cfg: TrainConfig) -> float:
    """Run the trial `cfg.sweep.trial`; pruned trials raise optuna.TrialPruned to the sweeper.

    Stopped in a worker process of the sweep's (the joblib launcher's), the job raises
    TrialInterrupted instead of KeyboardInterrupt: joblib, seeing a KeyboardInterrupt leave one
    job, kills every worker of its pool, and the other trials' jobs with them while they end
    their runs (left RUNNING). In the sweep process itself the interrupt goes on: it stops
    the sweep."""
    enter_worker()
    try:
        return _run_trial(cfg)
    except KeyboardInterrupt as err:
        live = worker_of_live_sweep()
        if live is None:
            raise
        if live:
            raise TrialInterrupted(str(err)) from err
        # Its sweep process is gone (ppo1.sweep.workers stopped the job), and nothing would
        # read the job's end: the worker ends with it, its runs ended.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _run_trial(cfg: TrainConfig) -> float:
    sweep = cfg.sweep
    assert sweep is not None and sweep.trial is not None
    storage = open_storage(storage_spec(sweep))
    study = optuna.load_study(
        study_name=sweep.study_name, storage=storage, pruner=build_pruner(sweep)
    )
    trial = find_trial(study, storage, sweep.trial)
    plain = to_plain_dict(cfg)
    # What the best trial's re-run command is made from; anyone reading the study sees it.
    trial.set_user_attr(CONFIG_ATTR, redact_tree(plain))
    parent_run_id = trial.user_attrs.get(PARENT_RUN_ATTR)
    tags = trial_tags(sweep, trial.number, parent_run_id)
    named = dataclasses.replace(
        cfg.tracking, run_name=sweep_run_name(sweep, cfg.tracking, trial.number)
    )
    # In a launcher's worker process as in the sweep's: SIGTERM ends the runs KILLED.
    with sigterm_as_interrupt(), Tracker(named, plain, tags) as trial_run:
        try:
            value = train_seeds(cfg, sweep, trial, trial_run)
        except NonFiniteLossError as err:
            # A diverged policy is a verdict on the hyperparameters, not a crash of the sweep.
            reason = f"non-finite loss: {err}"
            trial.set_user_attr(PRUNE_REASON_ATTR, reason)
            trial_run.set_tags(
                {"optuna.state": TrialState.PRUNED.name, "optuna.prune_reason": reason}
            )
            raise optuna.TrialPruned(reason) from err
        except optuna.TrialPruned as err:
            trial_run.set_tags(
                {"optuna.state": TrialState.PRUNED.name, "optuna.prune_reason": str(err)}
            )
            raise
        except Exception:
            trial_run.set_tags({"optuna.state": TrialState.FAIL.name})
            raise
        trial_run.log_metrics({"objective": value}, 0)
        trial_run.set_tags({"optuna.state": TrialState.COMPLETE.name})
    return value

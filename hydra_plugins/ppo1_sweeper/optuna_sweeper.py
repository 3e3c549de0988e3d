"""`hydra/sweeper=ppo1_optuna`: an Optuna study as a Hydra multirun, by ask-and-tell.

The sweeper asks trials, launches one job per trial through Hydra's launcher with the trial's
params and number as overrides, and tells each trial COMPLETE, PRUNED or FAIL from the job's
return. A job reports to its own trial through the study's storage (ppo1.sweep.trial), so any
launcher works and several sweep processes can share one study. Hydra loads plugins only from the
`hydra_plugins` namespace package; the logic lives in `ppo1`.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import sys
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import InstantiationException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from ppo1.config import ConfigError, SweepConfig, TrackingConfig, TrainConfig, to_train_config
from ppo1.sweep.faults import lost_service, stop_worker, stopped_by
from ppo1.sweep.pruning import PRUNE_REASON_ATTR, build_pruner
from ppo1.sweep.search_space import end_points, overrides, search_space
from ppo1.sweep.study import (
    FAIL_REASON_ATTR,
    INTERRUPTED_ATTR,
    PARENT_RUN_ATTR,
    beat,
    build_sampler,
    counted_trials,
    create_study,
    fail_stale_trials,
    heartbeat,
    open_storage,
    record_settings,
    settings_mismatch,
    storage_spec,
    study_lock,
    value_settings,
)
from ppo1.tracking.store import StoreFailedError
from ppo1.utils.cli import exit_with_error
from ppo1.utils.redact import redact
from ppo1.utils.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ppo1_sweeper.optuna_sweeper.OptunaSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="ppo1_optuna", node=OptunaSweeperConf, provider="ppo1"
)


class OptunaSweeper(Sweeper):
    def __init__(self) -> None:
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def _job_config(self, job_overrides: list[str]) -> DictConfig:
        """The config a job gets (without `hydra`), composed here to check it before launching."""
        assert self.hydra_context is not None and self.config is not None
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, job_overrides)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    def _read(
        self, arguments: list[str]
    ) -> tuple[SweepConfig, TrackingConfig, list[str], dict[str, BaseDistribution]]:
        """The sweep, tracking, plain overrides and search space; one message if invalid."""
        assert self.config is not None
        if self.config.get("sweep") is None:
            exit_with_error("hydra/sweeper=ppo1_optuna needs sweep=NAME")
        fixed, specs = self._split(arguments)
        try:
            sweep = OmegaConf.to_object(self.config.sweep)
            tracking = OmegaConf.to_object(self.config.tracking)
            assert isinstance(sweep, SweepConfig) and isinstance(tracking, TrackingConfig)
            return sweep, tracking, fixed, search_space({**sweep.params, **specs})
        except ConfigError as err:
            exit_with_error(f"invalid sweep: {err}")

    def _check_fixed(
        self, sweep: SweepConfig, fixed: list[str], space: dict[str, BaseDistribution]
    ) -> TrainConfig:
        """A job's config at an end of the search space; exit before the first trial if no
        trial could run: the fixed overrides give an invalid config at both ends of the space,
        or the sampler or pruner cannot be built. Each trial would FAIL, and FAILs count toward
        n_trials, so re-running the corrected command would find the study already full."""
        errors = []
        for point in end_points(space):
            try:
                job_cfg = to_train_config(self._job_config([*fixed, *overrides(point)]))
                break
            except ConfigError as err:
                errors.append(err)
        else:
            exit_with_error(f"invalid config: {errors[0]}")
        for key, build in (
            ("sampler", lambda: build_sampler(sweep)),
            ("pruner", lambda: build_pruner(sweep)),
        ):
            try:
                build()
            except InstantiationException as err:
                exit_with_error(f"invalid sweep.{key}: {' '.join(str(err).split())}")
        return job_cfg

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        # Imported here: Hydra imports every plugin when any app starts, and these pull in
        # mlflow (~2 s), which a plain `python -m ppo1.train` without tracking never needs.
        from ppo1.sweep.parent_run import open_study_run
        from ppo1.sweep.study_report import report_study

        sweep, tracking, fixed, space = self._read(arguments)
        job_cfg = self._check_fixed(sweep, fixed, space)
        spec = storage_spec(sweep)
        try:
            study = create_study(sweep, open_storage(spec))
        except ConfigError as err:
            exit_with_error(f"invalid sweep: {err}")
        with study_lock(spec, sweep.study_name):
            settings = value_settings(job_cfg, space)
            if mismatch := settings_mismatch(study, settings):
                exit_with_error(mismatch)
            try:  # under the lock: sweep processes must not create a new store's tables at once
                parent = open_study_run(tracking, sweep, spec)
            except ConfigError as err:
                exit_with_error(f"invalid config: {err}")
            # Only now that a trial can start: settings recorded by a command that could not
            # run (a bad tracking store) would refuse its corrected re-run as a mismatch.
            record_settings(study, settings)
        shown = redact(spec)
        print(
            f"study '{sweep.study_name}' in {shown}: {sweep.n_trials} trials in total", flush=True
        )
        with sigterm_as_interrupt():
            try:
                returns = self._optimize(study, sweep, space, spec, fixed, parent)
                report_study(study, list(space), self._job_config, fixed, parent)
            except KeyboardInterrupt:
                # The bookkeeping is done (trials given back, see _optimize): one line, as
                # plain training prints, instead of a traceback.
                _end_run(parent, "KILLED")
                print(
                    "interrupted: the running trials are given back and the study's MLflow "
                    "run is marked KILLED; run the same command to resume",
                    file=sys.stderr,
                )
                sys.exit(130)
            except BaseException as err:
                # Whatever broke, the study run must not stay RUNNING in the MLflow UI.
                line = stopped_by(err)  # a lost database or tracking server, or None
                if line is None:
                    _end_run(parent, "FAILED")
                    raise
                if not getattr(err, "tracking_lost", False):
                    with suppress(Exception):  # the MLflow server's database may be the lost one
                        _end_run(parent, "FAILED")
                print(f"error: {line}", file=sys.stderr)
                sys.exit(1)
        # The study run ends with the last sweep process working on it.
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            _end_run(parent, "FINISHED")
        return returns

    def _optimize(
        self,
        study: optuna.Study,
        sweep: SweepConfig,
        space: dict[str, BaseDistribution],
        spec: str,
        fixed: list[str],
        parent: "tuple[MlflowClient, str] | None",
    ) -> list[JobReturn]:
        """Ask, launch and tell batches until the study has n_trials, all finished."""
        returns: list[JobReturn] = []
        while True:
            trials = self._ask(study, sweep, space, spec, parent)
            if not trials:
                if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                    return returns
                # Other processes' trials fill the study: wait until they finish, or go
                # stale (their process died), when this process runs their slots again.
                time.sleep(sweep.heartbeat_s)
                continue
            try:
                returns += self._run(study, trials, fixed, len(returns), sweep.heartbeat_s)
            except BaseException:
                _give_back(study, trials)
                raise

    def _split(self, arguments: list[str]) -> tuple[list[str], dict[str, str]]:
        """Command-line overrides: plain ones go to every job, sweeps join the search space."""
        assert self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        fixed: list[str] = []
        specs: dict[str, str] = {}
        for line, override in zip(arguments, parser.parse_overrides(arguments), strict=True):
            if override.is_sweep_override():
                specs[override.get_key_element()] = line.split("=", 1)[1]
            else:
                fixed.append(line)
        return fixed, specs

    def _ask(
        self,
        study: optuna.Study,
        sweep: SweepConfig,
        space: dict[str, BaseDistribution],
        spec: str,
        parent: "tuple[MlflowClient, str] | None",
    ) -> list[optuna.Trial]:
        """The next batch: up to n_jobs trials, never past n_trials counting every process's,
        once stale trials have been failed to free their slots."""
        with study_lock(spec, sweep.study_name):
            _fail_stale(study, sweep.grace_s, parent)
            count = min(sweep.n_jobs, sweep.n_trials - counted_trials(study))
            trials = [study.ask(space) for _ in range(max(count, 0))]
            for trial in trials:
                beat(trial)
                if parent is not None:  # where the job's MLflow run nests
                    trial.set_user_attr(PARENT_RUN_ATTR, parent[1])
        return trials

    def _run(
        self,
        study: optuna.Study,
        trials: list[optuna.Trial],
        fixed: list[str],
        job_idx: int,
        heartbeat_s: float,
    ) -> list[JobReturn]:
        """Launch the trials that compose to a valid config; tell every trial its end."""
        assert self.launcher is not None
        launched, batch = [], []
        for trial in trials:
            job = [*fixed, *overrides(trial.params), f"sweep.trial={trial.number}"]
            try:
                to_train_config(self._job_config(job))
            except ConfigError as err:
                trial.set_user_attr(FAIL_REASON_ATTR, f"invalid config: {err}")
                study.tell(trial, state=TrialState.FAIL)
                print(f"trial {trial.number}: FAIL, invalid config: {err}", flush=True)
                continue
            launched.append(trial)
            batch.append(job)
        if not batch:
            return []
        with heartbeat(launched, heartbeat_s):
            results = list(self.launcher.launch(batch, initial_job_idx=job_idx))
        for trial, result in zip(launched, results, strict=True):
            print(f"trial {trial.number}: {_tell(study, trial, result)}", flush=True)
        return results


def _end_run(parent: "tuple[MlflowClient, str] | None", status: str) -> None:
    """End the study's MLflow run, if tracking: FINISHED, FAILED or KILLED."""
    if parent is not None:
        parent[0].set_terminated(parent[1], status)


def _fail_stale(
    study: optuna.Study, grace_s: float, parent: "tuple[MlflowClient, str] | None"
) -> None:
    """Fail the study's stale trials and end their MLflow runs FAILED, saying why."""
    for trial in fail_stale_trials(study, grace_s):
        reason = trial.user_attrs[FAIL_REASON_ATTR]
        print(f"trial {trial.number}: FAIL, {reason}; its slot runs again", flush=True)
        if parent is not None:
            from ppo1.sweep.parent_run import end_stale_runs  # imports mlflow: only when tracking

            end_stale_runs(parent, trial.number, f"the sweep process died ({reason})")


def _give_back(study: optuna.Study, trials: list[optuna.Trial]) -> None:
    """After an interrupt (Ctrl-C, SIGTERM): end the batch's unfinished trials as interrupted
    FAILs, which a resumed sweep does not count, so it runs their slots again."""
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    for trial in trials:
        if trial.number in running:
            trial.set_user_attr(INTERRUPTED_ATTR, True)
            study.tell(trial, state=TrialState.FAIL)


def _tell(study: optuna.Study, trial: optuna.Trial, result: JobReturn) -> str:
    """Tell the trial how its job ended; returns a one-line summary."""
    # `result.return_value` would re-raise a job's exception after printing every override.
    outcome = result._return_value
    if result.status is JobStatus.COMPLETED:
        return _told(study, trial, f"COMPLETE, objective {float(outcome):.2f}", float(outcome))
    if isinstance(outcome, optuna.TrialPruned):
        reason = trial.user_attrs.get(PRUNE_REASON_ATTR, outcome)
        return _told(study, trial, f"PRUNED, {reason}", state=TrialState.PRUNED)
    if (lost := lost_service(outcome)) is not None:
        # Every trial this worker started next would fail the same way and use up the study:
        # it stops, and _optimize gives the trial back (not counted, its slot runs again).
        trial.set_user_attr(FAIL_REASON_ATTR, lost)
        raise stop_worker(trial.number, lost, isinstance(outcome, StoreFailedError))
    reason = f"{type(outcome).__name__}: {outcome}"
    return _told(study, trial, f"FAIL, {reason}", state=TrialState.FAIL, fail_reason=reason)


def _stale(study: optuna.Study, trial: optuna.Trial) -> bool:
    """Whether another process failed the trial as stale while this one was stopped past the
    grace period (Ctrl-Z, a sleeping laptop) and has run its slot again."""
    return bool(study._storage.get_trial(trial._trial_id).user_attrs.get(INTERRUPTED_ATTR))


def _told(
    study: optuna.Study,
    trial: optuna.Trial,
    summary: str,
    value: float | None = None,
    state: TrialState | None = None,
    fail_reason: str | None = None,
) -> str:
    """Tell the trial its end, unless it was failed as stale meanwhile: that end stays."""
    if _stale(study, trial):
        return f"{summary}; dropped, another sweep process had failed the trial as stale"
    if fail_reason is not None:
        trial.set_user_attr(FAIL_REASON_ATTR, fail_reason)
    study.tell(trial, value, state=state)
    return summary

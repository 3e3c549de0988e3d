"""`hydra/sweeper=ppo1_optuna`: an Optuna study as a Hydra multirun, by ask-and-tell.

The sweeper asks trials, launches one job per trial through Hydra's launcher with the trial's
params and number as overrides, and tells each trial COMPLETE, PRUNED or FAIL from the job's
return. A job reports to its own trial through the study's storage (ppo1.sweep.trial), so any
launcher works and several sweep processes can share one study. Hydra loads plugins only from the
`hydra_plugins` namespace package; the logic lives in `ppo1`.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules,
# where dataclasses cannot resolve string annotations.
import gc
import sys
import uuid
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import InstantiationException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from ppo1.config import ConfigError, SweepConfig, TrackingConfig, TrainConfig, to_train_config
from ppo1.sweep.compose import ComposeOnce
from ppo1.sweep.faults import stopped_by
from ppo1.sweep.hydra_state import keep_plugins
from ppo1.sweep.outcomes import end_study_run, fail_stale, give_back, tell
from ppo1.sweep.pruning import build_pruner
from ppo1.sweep.search_space import end_points, overrides, search_space
from ppo1.sweep.slots import Slots
from ppo1.sweep.study import (
    PARENT_RUN_ATTR,
    beat,
    build_sampler,
    counted_trials,
    create_study,
    heartbeat,
    open_storage,
    record_settings,
    settings_mismatch,
    storage_spec,
    study_lock,
    value_settings,
)
from ppo1.sweep.workers import shut_down, uses_joblib, warm_up, workers_stopped
from ppo1.tracking.store import store_error, store_problem, tracking_uri
from ppo1.utils.cli import exit_with_error
from ppo1.utils.paths import usable_cpus
from ppo1.utils.redact import redact
from ppo1.utils.signals import sigterm_as_interrupt

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# How long an interrupted sweep waits for its jobs to end their MLflow runs before it gives
# their trials back (a job writing to a trial given back would fail its runs).
_STOP_WAIT_S = 15.0
# What a trial's job imports: its task function's module, what that imports once it has a
# config (torch, gymnasium, the tracked run's plotly), and MLflow's SQL store.
JOB_MODULES = ("ppo1.train", "ppo1.sweep.trial", "mlflow.store.tracking.sqlalchemy_store")


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.ppo1_sweeper.optuna_sweeper.OptunaSweeper"
    # hydra-optuna-sweeper's keys, accepted only to say which of ours to use instead of
    # Hydra's "Key 'n_trials' not in 'OptunaSweeperConf'" and a traceback.
    n_trials: int | None = None
    n_jobs: int | None = None
    study_name: str | None = None
    storage: str | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="ppo1_optuna", node=OptunaSweeperConf, provider="ppo1"
)


class OptunaSweeper(Sweeper):
    def __init__(self, **theirs: object) -> None:
        # Not honoured: hydra-optuna-sweeper's n_trials adds trials, ours is the study's total.
        self._theirs = {key: value for key, value in theirs.items() if value is not None}
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Launcher | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # Jobs' configs come from one composition per process (ppo1.sweep.compose), and their
        # Hydra state keeps this process's plugins (ppo1.sweep.hydra_state).
        keep_plugins()
        self.loader = ComposeOnce(hydra_context.config_loader, uuid.uuid4().hex)
        self.hydra_context = HydraContext(self.loader, hydra_context.callbacks)
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task_function, config=config
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
        if self._theirs:
            key, value = next(iter(self._theirs.items()))
            total = " (the study's total)" if key == "n_trials" else ""
            exit_with_error(
                f"hydra.sweeper.{key} is hydra-optuna-sweeper's: use sweep.{key}={value}{total}"
            )
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
        sweep, tracking, fixed, space = self._read(arguments)
        self.loader.varying = frozenset([*space, "sweep.trial"])  # what _run sets per trial
        job_cfg = self._check_fixed(sweep, fixed, space)
        n = self._slots(sweep)
        spec = storage_spec(sweep)
        try:
            study = create_study(sweep, open_storage(spec))
        except ConfigError as err:
            exit_with_error(f"invalid sweep: {err}")
        with study_lock(spec, sweep.study_name):
            settings = value_settings(job_cfg, space)
            if mismatch := settings_mismatch(study, settings):
                exit_with_error(mismatch)
            # Not before: a refused storage or settings would leave workers starting up. The
            # MLflow run opens while they start; mlflow (~1.5 s) is imported only now, so that
            # they start sooner (Hydra imports every plugin when any app starts, and a plain
            # `python -m ppo1.train` without tracking never needs it).
            if tracking.enabled and (problem := store_problem(uri := tracking_uri(tracking))):
                exit_with_error(f"invalid config: {store_error(uri, problem)}")  # no MLflow
            self._warm_up(n)
            from ppo1.sweep.parent_run import open_study_run

            try:  # under the lock: sweep processes must not create a new store's tables at once
                parent = open_study_run(tracking, sweep, spec)
            except ConfigError as err:
                shut_down()  # workers forked as this process exits print tracebacks
                exit_with_error(f"invalid config: {err}")
            # Only now that a trial can start: settings recorded by a command that could not
            # run (a bad tracking store) would refuse its corrected re-run as a mismatch.
            record_settings(study, settings)
        # Optuna's plots (~0.1 s; never torch, which only the workers need) load while the
        # workers still start.
        from ppo1.sweep.study_report import report_study

        shown = f"study '{sweep.study_name}' in {redact(spec)}"
        print(f"{shown}: {sweep.n_trials} trials in total", flush=True)
        with sigterm_as_interrupt():
            try:
                returns = self._optimize(study, sweep, space, spec, fixed, parent, n)
                # One report at a time on the shared study run: MLflow's set_tag is not atomic
                # (two at once on a server's PostgreSQL: a duplicate key, the sweep failed).
                with study_lock(spec, sweep.study_name):
                    report_study(study, list(space), self._job_config, fixed, parent)
            except KeyboardInterrupt:
                # The bookkeeping is done (trials given back, see _optimize): one line, as
                # plain training prints, instead of a traceback.
                end_study_run(parent, "KILLED")
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
                    end_study_run(parent, "FAILED")
                    raise
                if not getattr(err, "tracking_lost", False):
                    with suppress(Exception):  # the MLflow server's database may be the lost one
                        end_study_run(parent, "FAILED")
                print(f"error: {line}", file=sys.stderr)
                sys.exit(1)
        # The study run ends with the last sweep process working on it.
        if not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            end_study_run(parent, "FINISHED")
        # The process ends next. Its exit would walk every object of torch, mlflow and plotly
        # in repeated garbage collections (~1 s): none of them now (a last collection first
        # would walk them once more, 0.3 s, to free memory the exit frees anyway).
        gc.freeze()
        return returns

    def _optimize(
        self,
        study: optuna.Study,
        sweep: SweepConfig,
        space: dict[str, BaseDistribution],
        spec: str,
        fixed: list[str],
        parent: "tuple[MlflowClient, str] | None",
        n: int,
    ) -> list[JobReturn]:
        """Run trials in n slots (ppo1.sweep.slots) until the study has n_trials, all finished."""
        from ppo1.sweep.study_report import prepare_report  # see sweep()

        returns: list[JobReturn] = []
        if n >= usable_cpus() and not any(f.startswith("tracking.writer_process=") for f in fixed):
            # Every core runs a trial: a writer process per trial would only take turns with
            # them (and pay `import mlflow` again); a job writes its MLflow rows itself.
            fixed = [*fixed, "tracking.writer_process=false"]

        def run(trial: optuna.Trial) -> None:
            if (result := self._run(study, trial, fixed, sweep.heartbeat_s, slots)) is not None:
                returns.append(result)

        slots = Slots(
            n,
            lambda: self._ask(study, sweep, space, spec, parent),
            run,
            lambda: bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))),
            sweep.heartbeat_s,
            prepare_report,
        )
        try:
            slots.run()
        except BaseException:
            with workers_stopped() if n > 1 else nullcontext():
                give_back(study, slots.stop(_STOP_WAIT_S))
            raise
        finally:
            if n > 1 and uses_joblib(self.launcher):
                shut_down()
        return returns

    def _warm_up(self, n: int) -> None:
        """Start joblib's n workers, importing what a job imports, while the study is set up."""
        if n < 2 or not uses_joblib(self.launcher):
            return
        warm_up(self.launcher.joblib, n, JOB_MODULES)  # type: ignore[union-attr]

    def _slots(self, sweep: SweepConfig) -> int:
        """Trials run at once: sweep.n_jobs (default: the usable CPUs) with a launcher that
        runs jobs elsewhere; one with Hydra's basic launcher, which runs them in this process."""
        if isinstance(self.launcher, BasicLauncher):
            return 1
        n = sweep.n_jobs or usable_cpus()
        if uses_joblib(self.launcher):
            # joblib's pool (hydra.launcher.n_jobs, by default every CPU) as large as the slots.
            self.launcher.joblib["n_jobs"] = n  # type: ignore[union-attr]
        return n

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
    ) -> optuna.Trial | None:
        """The next trial, unless the study has n_trials counting every process's, once stale
        trials have been failed to free their slots."""
        with study_lock(spec, sweep.study_name):
            fail_stale(study, sweep.grace_s, parent)
            if counted_trials(study) >= sweep.n_trials:
                return None
            trial = study.ask(space)
            beat(trial)
            if parent is not None:  # where the job's MLflow run nests
                trial.set_user_attr(PARENT_RUN_ATTR, parent[1])
        return trial

    def _run(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        fixed: list[str],
        heartbeat_s: float,
        slots: Slots,
    ) -> JobReturn | None:
        """Launch the trial; tell the trial its end (FAIL if its params make the config
        invalid: the job checks it, and the launcher composed it already)."""
        assert self.launcher is not None
        job = [*fixed, *overrides(trial.params), f"sweep.trial={trial.number}"]
        with heartbeat([trial], heartbeat_s):
            (result,) = self.launcher.launch([job], initial_job_idx=trial.number)
        if slots.stopped:  # the job stopped for an interrupt: the sweep gives its trial back
            return None
        print(f"trial {trial.number}: {tell(study, trial, result)}", flush=True)
        return result

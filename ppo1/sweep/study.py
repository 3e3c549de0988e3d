"""The Optuna study of a sweep: its storage, the lock around asking, and finding one trial."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from optuna.distributions import BaseDistribution
from optuna.exceptions import StorageInternalError, UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend

# The type of JournalFileBackend's `lock_obj`, not exported by optuna.storages.journal (pinned).
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial, TrialState

from ppo1.config import NOT_LEARNING, ConfigError, SweepConfig, TrainConfig, to_plain_dict
from ppo1.sweep.database import database_lock, file_lock, open_rdb, study_key
from ppo1.utils.params import flatten
from ppo1.utils.paths import project_root
from ppo1.utils.signals import interrupts_deferred

# Seconds a process may hold a journal's write lock (an append takes ~1 ms) before the others
# take it to be stopped and go on without it: Optuna's grace period for its own lock.
STALE_LOCK_S = 30.0
# Trial user attrs the sweeper writes for its jobs and for resuming.
PARENT_RUN_ATTR = "mlflow_parent_run_id"
INTERRUPTED_ATTR = "interrupted"
FAIL_REASON_ATTR = "fail_reason"
# When the sweep process running the trial last showed it was alive (time.time()).
HEARTBEAT_ATTR = "heartbeat"
# The job's whole config, as it trained: what the best trial's re-run command reproduces.
CONFIG_ATTR = "config"
# Study user attr: the settings its trial values were measured under (see value_settings).
SETTINGS_ATTR = "value_settings"
# Of the sweep's own settings, those that change what a trial's value is.
_VALUE_SWEEP_KEYS = ("sweep.objective", "sweep.seeds")


def storage_spec(sweep: SweepConfig) -> str:
    """sweep.storage, else a journal file under the project's mlruns/ named after the study."""
    default = project_root() / "mlruns" / "optuna" / f"{sweep.study_name}.journal"
    return sweep.storage or str(default)


def _is_url(spec: str) -> bool:
    return "://" in spec


def open_storage(spec: str) -> BaseStorage:
    """An RDB URL, or a journal file path: Optuna's multi-process store on one machine.

    A store that cannot be opened or written raises one ConfigError, before any trial."""
    if _is_url(spec):
        return open_rdb(spec)
    path = Path(spec)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path), JournalLock(str(path))))
    except OSError as err:
        raise ConfigError(
            f"sweep.storage {spec}: cannot write the journal there ({err.strerror}); "
            f"name a writable file: sweep.storage=PATH"
        ) from None


class JournalLock(BaseJournalFileLock):
    """The lock around each append to a journal file, released however its holder ends, and
    an append whole: a stop while it is held waits for its release.

    Optuna's own (a symlink beside the journal) stays behind a process killed while it
    appends, and every other then waits out a 30 s grace period: a sweep process killed
    during a heartbeat held its workers past the time they get to end their runs, which
    stayed RUNNING. A holder stopped while it appends (Ctrl-Z, SIGSTOP) is alive and keeps
    it: after STALE_LOCK_S the others take a new lock file, as they did Optuna's lock (see
    file_lock). Every writer of a sweep's journal takes this one (open_storage)."""

    def __init__(self, journal: str) -> None:
        self._path = f"{journal}.write.lock"
        self._held: ExitStack | None = None

    def acquire(self) -> bool:
        with ExitStack() as stack:
            # A stop still ends a long wait here.
            stack.enter_context(file_lock(self._path, STALE_LOCK_S))
            stack.enter_context(interrupts_deferred())
            self._held = stack.pop_all()
        return True

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.close()


def storage_exists(spec: str) -> bool:
    """Whether `spec` may hold studies: an RDB URL, or a journal file already written (opening
    a missing one creates it, and its folder)."""
    return _is_url(spec) or Path(spec).exists()


@contextmanager
def study_lock(spec: str, study_name: str) -> Iterator[None]:
    """Serialise count-then-ask across sweep processes sharing the study's storage.

    Without it two processes could both see one trial left and both ask it. A database locks
    the study itself (ppo1.sweep.database); a journal file gets a lock file beside it.
    """
    if _is_url(spec):
        with database_lock(spec, study_key(study_name)):
            yield
        return
    with file_lock(f"{spec}.ask.lock"):
        yield


class TrialSeededSampler(BaseSampler):
    """`sweep.sampler` built afresh for each trial, seeded from its configured seed, the study
    name and the trial number.

    One seed for the whole sweep would make every sweep process sharing the study, and every
    resumed run, replay the same sequence of points: three processes on one study drew only
    three distinct configs in eight trials. Seeded per trial, one process still repeats its
    sweep exactly, and each trial number draws its own point; what the sampler learns from
    (TPE's model) is the study's history, which it reads afresh at every trial anyway.
    """

    def __init__(self, config: dict[str, Any], study_name: str) -> None:
        self._config = config
        self._study_name = study_name
        self._sampler: BaseSampler = instantiate(config)

    def trial_seed(self, number: int) -> int:
        key = f"{self._config['seed']}/{self._study_name}/{number}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler = instantiate(self._config, seed=self.trial_seed(trial.number))
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def build_sampler(sweep: SweepConfig) -> BaseSampler:
    """`sweep.sampler`, seeded per trial if it has a seed (without one, every process draws
    its own points anyway)."""
    if sweep.sampler.get("seed") is None:
        return instantiate(sweep.sampler)  # type: ignore[no-any-return]
    return TrialSeededSampler(sweep.sampler, sweep.study_name)


def create_study(sweep: SweepConfig, storage: BaseStorage) -> optuna.Study:
    """Create the study, or load it to resume or to join other sweep processes."""
    return optuna.create_study(
        storage=storage,
        study_name=sweep.study_name,
        sampler=build_sampler(sweep),
        direction="maximize",
        load_if_exists=True,
    )


def value_settings(job_cfg: TrainConfig, params: Iterable[str]) -> dict[str, str]:
    """What a trial's value means besides its params: every setting that changes what the
    trials learn (env, algorithm, budget, evaluation) and the objective; trials under other
    settings don't compare. The sweep's own machinery (sampler, pruner, n_trials) may change."""
    swept = set(params)
    return {
        key: value
        for key, value in flatten(to_plain_dict(job_cfg)).items()
        if key in _VALUE_SWEEP_KEYS
        or not (key in swept or key.startswith((*NOT_LEARNING, "sweep.")))
    }


def settings_mismatch(study: optuna.Study, settings: dict[str, str]) -> str | None:
    """If the study recorded other values of `settings` before, say which differ."""
    recorded = study.user_attrs.get(SETTINGS_ATTR) or {}
    differing = [k for k in settings if k in recorded and str(recorded[k]) != settings[k]]
    if differing:
        was = ", ".join(f"{key}={recorded[key]}" for key in differing)
        now = ", ".join(f"{key}={settings[key]}" for key in differing)
        return (
            f"study '{study.study_name}' ran its trials with {was}; this command has {now}, so "
            f"their values would not compare. Name a new study: sweep.study_name=..."
        )
    return None


def record_settings(study: optuna.Study, settings: dict[str, str]) -> None:
    """Record `settings` on the study, which settings_mismatch found consistent.

    Settings a study did not record (it predates them) take this command's values: nothing
    tells what its trials had.
    """
    recorded = study.user_attrs.get(SETTINGS_ATTR) or {}
    if settings.keys() - recorded.keys():
        study.set_user_attr(SETTINGS_ATTR, {**recorded, **settings})


def counted_trials(study: optuna.Study) -> int:
    """Trials that count toward n_trials: finished or running, but not those given back by an
    interrupted sweep or failed as stale, whose slots run again."""
    return sum(
        t.state is not TrialState.WAITING
        and not (t.state is TrialState.FAIL and t.user_attrs.get(INTERRUPTED_ATTR))
        for t in study.get_trials(deepcopy=False)
    )


def beat(trial: optuna.Trial) -> None:
    """Record that the trial's sweep process is alive now."""
    trial.set_user_attr(HEARTBEAT_ATTR, time.time())


@contextmanager
def heartbeat(trials: list[optuna.Trial], interval_s: float) -> Iterator[None]:
    """Beat for `trials` every `interval_s` seconds, in a thread, while the block runs (the
    training of their jobs holds the main thread)."""
    stop = threading.Event()

    def beat_all() -> None:
        while not stop.wait(interval_s):
            for trial in trials:
                # Failed as stale by another process while this one was stopped (Ctrl-Z, a
                # sleeping laptop): the sweeper drops its result when it tells it. A lost
                # database: the job and the sweeper meet it too, and say so (sweep.faults).
                with suppress(UpdateFinishedTrialError, StorageInternalError):
                    beat(trial)

    thread = threading.Thread(target=beat_all, name="ppo1-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _last_beat(trial: FrozenTrial) -> float:
    """When the trial's process last beat; its start, for a trial from before heartbeats."""
    assert trial.datetime_start is not None  # a RUNNING trial has started
    return float(trial.user_attrs.get(HEARTBEAT_ATTR, trial.datetime_start.timestamp()))


def fail_stale_trials(study: optuna.Study, grace_s: float) -> list[FrozenTrial]:
    """FAIL the RUNNING trials without a heartbeat for `grace_s` seconds, as given back: their
    sweep process died (kill -9, a lost machine) and nothing else would ever end them.

    Optuna's own heartbeat covers RDB storages only; this one works on journal files too.
    Call it under the study lock, so that two processes do not both fail one trial.
    """
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [t for t in running if now - _last_beat(t) > grace_s]
    storage = study._storage
    failed = []
    for trial in stale:
        silent = now - _last_beat(trial)
        reason = f"stale: no heartbeat from its sweep process for {silent:.0f} s"
        try:
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON_ATTR, reason)
            storage.set_trial_user_attr(trial._trial_id, INTERRUPTED_ATTR, True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue  # it ended meanwhile: its own process told it, unlocked
        failed.append(storage.get_trial(trial._trial_id))
    return failed


def find_trial(study: optuna.Study, storage: BaseStorage, number: int) -> optuna.Trial:
    """The live trial `number` of `study`, as the sweeper asked it, looked up in the storage."""
    study_id = storage.get_study_id_from_name(study.study_name)
    return optuna.Trial(study, storage.get_trial_id_from_study_id_trial_number(study_id, number))

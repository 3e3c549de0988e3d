"""The sweep schemas: objective, KL pruner, study, storage and search (`sweep=NAME`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ppo1.config.errors import raise_if


class Objective(Enum):
    """What a sweep trial maximises, per seed, then averaged over `sweep.seeds` seeds."""

    final = "final"  # the last evaluation's mean return
    best = "best"  # the best evaluation's mean return
    auc = "auc"  # area under the evaluation curve / steps: the mean return over training


class KLMetric(Enum):
    """The KL the KL pruner watches: exact analytic KL(old||new) or the k3 estimate."""

    kl = "losses/kl"
    approx_kl = "losses/approx_kl"


@dataclass
class KLPrunerConfig:
    """Prune a trial whose update KL exceeds `threshold` for `patience` updates in a row."""

    metric: KLMetric = KLMetric.kl
    threshold: float = 0.1
    patience: int = 3
    # Updates at the start of each seed's training that the rule ignores.
    warmup_updates: int = 2

    def __post_init__(self) -> None:
        raise_if(
            [
                (not self.threshold > 0, f"sweep.kl.threshold must be > 0, got {self.threshold}"),
                (self.patience < 1, f"sweep.kl.patience must be >= 1, got {self.patience}"),
                (
                    self.warmup_updates < 0,
                    f"sweep.kl.warmup_updates must be >= 0, got {self.warmup_updates}",
                ),
            ]
        )


# A study name names a journal file under mlruns/optuna/ and an MLflow tag value: no folders,
# no `..`, no quotes that would end an MLflow filter's string.
_STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class SweepConfig:
    """An Optuna study run as a Hydra multirun; filled in by `sweeps/<name>.yaml`."""

    study_name: str = "ppo1"
    # A journal file (any number of processes on one machine) or an RDB URL such as
    # postgresql+psycopg://... (across machines); null: mlruns/optuna/<study_name>.journal.
    storage: str | None = None
    # Total trials of the study: re-running the command resumes up to this many.
    n_trials: int = 20
    # Trials run at once by a launcher that runs jobs in other processes (hydra/launcher=
    # joblib, as the sweep files choose); null: the CPUs this process may use.
    n_jobs: int | None = None
    seeds: int = 1
    objective: Objective = Objective.auc
    # Search space: config key -> Hydra sweep syntax, e.g. tag(log, interval(1e-4, 1e-2)).
    params: dict[str, str] = field(default_factory=dict)
    # Built with hydra.utils.instantiate.
    sampler: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0}
    )
    # The conventional pruner on the evaluation returns; null: none.
    pruner: dict[str, Any] | None = None
    # The KL rule, checked before `pruner`; null: no KL pruning.
    kl: KLPrunerConfig | None = None
    # A sweep process writes the time on its running trials every heartbeat_s seconds; a
    # RUNNING trial silent for grace_s (its process was killed, its machine lost) is failed
    # by the next sweep process on the study, which runs its slot again.
    heartbeat_s: float = 30.0
    grace_s: float = 120.0
    # Set by the sweeper for each job it launches: the number of the trial the job runs.
    trial: int | None = None

    def __post_init__(self) -> None:
        raise_if(
            [
                (
                    not _STUDY_NAME.fullmatch(self.study_name),
                    f"sweep.study_name={self.study_name!r}: use up to 100 letters, digits, "
                    f"'.', '_' and '-', starting with a letter or digit",
                ),
                (self.n_trials < 1, f"sweep.n_trials must be >= 1, got {self.n_trials}"),
                (
                    self.n_jobs is not None and self.n_jobs < 1,
                    f"sweep.n_jobs must be >= 1, got {self.n_jobs}",
                ),
                (self.seeds < 1, f"sweep.seeds must be >= 1, got {self.seeds}"),
                (self.heartbeat_s <= 0, f"sweep.heartbeat_s must be > 0, got {self.heartbeat_s}"),
                (
                    self.grace_s <= self.heartbeat_s,
                    f"sweep.grace_s={self.grace_s} must be longer than sweep.heartbeat_s="
                    f"{self.heartbeat_s}, or live trials would be failed as stale",
                ),
                (not self.params, "sweep.params is empty: name at least one key to search"),
            ]
        )

"""Typed configuration: dataclass schemas registered in Hydra's ConfigStore (schema.py,
sweep.py), and how a composed config becomes a checked TrainConfig (compose.py).

Hydra validates types and unknown keys against these schemas when it composes `conf/`;
the `__post_init__` checks catch values that are well-typed but meaningless (clip <= 0, a
minibatch larger than the batch) once `OmegaConf.to_object` builds the typed objects.
"""

from ppo1.config.compose import (
    CONF_DIR,
    NOT_LEARNING,
    register_configs,
    schema_problems,
    to_plain_dict,
    to_train_config,
    to_train_config_or_exit,
)
from ppo1.config.errors import ConfigError, raise_if
from ppo1.config.schema import (
    Activation,
    AdvNorm,
    AlgoConfig,
    Backend,
    EnvConfig,
    EvalConfig,
    FiguresMode,
    NetworkConfig,
    ScheduleConfig,
    ScheduleKind,
    TrackingConfig,
    TrainConfig,
    Vectorization,
)
from ppo1.config.sweep import KLMetric, KLPrunerConfig, Objective, SweepConfig

__all__ = [
    "CONF_DIR",
    "NOT_LEARNING",
    "Activation",
    "AdvNorm",
    "AlgoConfig",
    "Backend",
    "ConfigError",
    "EnvConfig",
    "EvalConfig",
    "FiguresMode",
    "KLMetric",
    "KLPrunerConfig",
    "NetworkConfig",
    "Objective",
    "ScheduleConfig",
    "ScheduleKind",
    "SweepConfig",
    "TrackingConfig",
    "TrainConfig",
    "Vectorization",
    "raise_if",
    "register_configs",
    "schema_problems",
    "to_plain_dict",
    "to_train_config",
    "to_train_config_or_exit",
]

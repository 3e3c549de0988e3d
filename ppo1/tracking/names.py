"""Run names a person can read in the MLflow UI, instead of MLflow's random `bustling-pig-693`.

A training run is named by its presets and seed, then what the command line changed:
`cartpole-ppo_clip-s1`, `acrobot-ppo_clip-s3 clip=0.1`. A sweep's runs by study, trial
and seed: `clip_epochs_lr-t12` and its seeds `clip_epochs_lr-t12-s1`. `tracking.run_name`
replaces the name (a sweep's: the study's part of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ppo1.config import NOT_LEARNING, SweepConfig, TrackingConfig

# MLflow stores up to 250 characters of a name; its runs table shows the first ~25.
MAX_NAME = 120
_SAID = ("env", "algo", "seed")  # overrides the head of the name already says


def run_name(choices: Mapping[str, str | None], overrides: Sequence[str], seed: int) -> str:
    """`ENV-ALGO-sSEED` from Hydra's group choices, then the overrides that change what is
    learnt, keys shortened as `short_keys` does (`schedule=cosine clip=0.1`; not
    `tracking.uri=...` or `verbose=false`)."""
    head = "-".join(str(choices[g]) for g in ("env", "algo") if choices.get(g)) + f"-s{seed}"
    changed = {}
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in _SAID and not key.startswith(NOT_LEARNING):
            changed[key] = value
    short = short_keys(list(changed))
    name = " ".join([head.lstrip("-"), *(f"{short[k]}={v}" for k, v in changed.items())])
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest tail no other key ends with: `algo.clip` -> `clip`,
    while `env.num_envs` and `eval.num_envs` stay whole."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(k == tail or k.endswith(f".{tail}") for k in keys) == 1:
                break
        short[key] = tail
    return short


def short_value(value: str) -> str:
    """Numbers to 3 significant digits (`0.000316227766` -> `0.000316`); integers, words and
    lists as logged."""
    try:
        number = float(value)
    except ValueError:
        return value
    if number.is_integer() and "e" not in value.lower():
        return value
    return f"{number:.3g}"


def name_tag(
    tracking: TrackingConfig, choices: Mapping[str, str | None], overrides: Sequence[str], seed: int
) -> dict[str, str]:
    """The run name as MLflow's tag, unless `tracking.run_name` names the run."""
    if tracking.run_name is not None:
        return {}
    return {"mlflow.runName": run_name(choices, overrides, seed)}


def sweep_run_name(
    sweep: SweepConfig, tracking: TrackingConfig, trial: int, seed: int | None = None
) -> str:
    """A trial's run (`STUDY-t12`) or one of its seeds' (`STUDY-t12-s0`)."""
    name = f"{tracking.run_name or sweep.study_name}-t{trial}"
    return name if seed is None else f"{name}-s{seed}"

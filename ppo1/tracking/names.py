"""Run names a person can read in the MLflow UI, instead of MLflow's random `bustling-pig-693`.

A training run is named by its presets and seed, then what the command line changed:
`cartpole-ppo_clip-s1`, `acrobot-ppo_clip-s3 algo.clip=0.1`. A sweep's runs by study, trial
and seed: `clip_epochs_lr-t12` and its seeds `clip_epochs_lr-t12-s1`. `tracking.run_name`
replaces the name (a sweep's: the study's part of it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ppo1.config import NOT_LEARNING, SweepConfig, TrackingConfig

# The runs table shows ~40 characters of a name; MLflow stores up to 250.
MAX_NAME = 120
_SAID = ("env", "algo", "seed")  # overrides the head of the name already says


def run_name(choices: Mapping[str, str | None], overrides: Sequence[str], seed: int) -> str:
    """`ENV-ALGO-sSEED` from Hydra's group choices, then the overrides that change what is
    learnt (`schedule=cosine algo.clip=0.1`; not `tracking.uri=...` or `verbose=false`)."""
    head = "-".join(str(choices[g]) for g in ("env", "algo") if choices.get(g)) + f"-s{seed}"
    changed = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key not in _SAID and not key.startswith(NOT_LEARNING):
            changed.append(override.lstrip("+"))
    name = " ".join([head.lstrip("-"), *changed])
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


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

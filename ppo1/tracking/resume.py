"""Resumable runs: where a run's checkpoint folder is, and how `resume=` finds and checks one.

Each run (not a sweep trial) gets a folder `<root>/<time>-<random>/` before training starts,
named in the run's tag `ppo1.checkpoint_dir`; it holds `resume.pt` (everything to continue,
rewritten every `checkpoint_every` updates and on Ctrl-C/SIGTERM) and, at the end,
`policy.pt` (what `python -m ppo1.evaluate` loads). See docs/resume.md.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ppo1.config import ConfigError, TrainConfig, to_plain_dict
from ppo1.core.checkpoint import (
    RESUME_FILE,
    STATE_KEYS,
    CheckpointError,
    config_from_plain,
    load_payload,
)
from ppo1.tracking.ops import HOST_TAG, PID_TAG, end_dead_runs
from ppo1.tracking.store import open_client, tracking_uri
from ppo1.utils.paths import project_root

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

CHECKPOINT_TAG = "ppo1.checkpoint_dir"
# What `resume=` may change: how long to train and how the run is shown and stored. Anything
# else would make the rest of the run learn differently from the start it continues.
RESUMABLE = (
    "resume",
    "total_timesteps",
    "verbose",
    "log_every",
    "torch_threads",
    "save_model",
    "checkpoint_every",
    "tracking.uri",
    "tracking.writer_process",
    "tracking.figures",
    "tracking.figures_every",
)


def checkpoint_root(cfg: TrainConfig) -> Path | None:
    """Where the run's folder goes: `checkpoint_dir`, else beside a SQLite store, else the
    project's mlruns/; None for a sweep trial or an untracked run without `checkpoint_dir`."""
    if cfg.sweep is not None:
        return None  # a trial is pruned or finished by its sweep, never resumed
    if cfg.checkpoint_dir is not None:
        return Path(cfg.checkpoint_dir).resolve()
    if not cfg.tracking.enabled:
        return None  # a library call (tests, notebooks) should not grow folders in the checkout
    uri = tracking_uri(cfg.tracking)
    database = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    if uri.startswith("sqlite:///") and database.name not in ("", ":memory:"):
        return database.resolve().parent / "checkpoints"
    return project_root() / "mlruns" / "checkpoints"


def new_checkpoint_folder(cfg: TrainConfig) -> Path | None:
    """A fresh folder's path for this run's checkpoints, or None where it keeps none; made by
    `make_folder` once the store is checked (a mistyped store path must not be created)."""
    root = checkpoint_root(cfg)
    if root is None:
        return None
    return root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


@dataclass
class Resume:
    """A checkpoint to continue from, and the run it continues."""

    folder: Path
    state: dict[str, Any]
    run_id: str | None
    # Per metric, the last step the store holds: the resumed run logs only later steps.
    logged: dict[str, int]

    @property
    def update(self) -> int:
        return int(self.state["update"])


def override_key(override: str) -> str:
    """`+algo.clip=0.3` -> `algo.clip`: the key a command-line override sets."""
    return override.lstrip("+~").split("=", 1)[0]


def resumed_config(plain: dict[str, Any], composed: TrainConfig, keys: set[str]) -> TrainConfig:
    """The checkpoint's config with the command line's values of `keys` (all in RESUMABLE)."""
    given = to_plain_dict(composed)
    for key in keys:
        *parents, leaf = key.split(".")
        source, target = given, plain
        for parent in parents:
            source, target = source[parent], target.setdefault(parent, {})
        target[leaf] = source[leaf]
    return config_from_plain(plain, "the checkpoint")


def metric_steps(client: MlflowClient, run_id: str) -> dict[str, int]:
    """The last step the store holds of each of the run's metrics."""
    keys = client.get_run(run_id).data.metrics
    return {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in keys}


def find_run(client: MlflowClient, cfg: TrainConfig, folder: Path, run_id: str | None) -> Run:
    """The run a checkpoint folder belongs to, with a dead RUNNING run ended first."""
    if run_id is None:
        experiment = client.get_experiment_by_name(cfg.tracking.experiment)
        runs: list[Run] = []
        if experiment is not None:
            where = f"tags.`{CHECKPOINT_TAG}` = '{folder}'"
            runs = client.search_runs([experiment.experiment_id], where, max_results=1)
        if not runs:
            raise ConfigError(f"no run in {client.tracking_uri} has its checkpoints in {folder}")
        run_id = runs[0].info.run_id
    end_dead_runs(client, client.get_run(run_id).info.experiment_id)
    return client.get_run(run_id)


def check_status(run: Run, update: int, cfg: TrainConfig) -> None:
    """Refuse a run that another process still trains, or that has nothing left to train."""
    run_id, status, tags = run.info.run_id, run.info.status, run.data.tags
    if status == "RUNNING":
        where = f"pid {tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, '?')}"
        raise ConfigError(f"run {run_id} is still RUNNING ({where}); stop it before resuming it")
    if status == "FINISHED" and update >= cfg.num_updates:
        raise ConfigError(
            f"run {run_id} is FINISHED: its {update} updates are all trained; pass a larger "
            f"total_timesteps (now {cfg.total_timesteps}) to train it further"
        )


def prepare_resume(composed: TrainConfig, overrides: list[str]) -> tuple[TrainConfig, Resume]:
    """The config and checkpoint `resume=` continues from; a ConfigError says why not."""
    target = composed.resume
    assert target is not None
    if not target.strip():  # else Path("") would be the working directory
        raise ConfigError("resume= is empty: give a run id or a checkpoint folder or file")
    keys = {override_key(o) for o in overrides}
    fixed = sorted(keys - set(RESUMABLE))
    if fixed:
        raise ConfigError(
            f"resume={target} continues with its checkpoint's config; {', '.join(fixed)} "
            f"cannot change (a resume may set only {', '.join(RESUMABLE[1:])})"
        )
    client: MlflowClient | None = None
    run_id: str | None = None
    if Path(target).exists():
        folder = Path(target).resolve()
        folder = folder if folder.is_dir() else folder.parent
    else:
        client = open_client(tracking_uri(composed.tracking))
        folder, run_id = run_folder(client, target)
    try:
        state = load_payload(folder / RESUME_FILE, STATE_KEYS)
        cfg = resumed_config(dict(state["config"]), composed, keys - {"resume"})
    except CheckpointError as err:
        raise ConfigError(str(err)) from err
    update = int(state["update"])
    if update > cfg.num_updates:
        raise ConfigError(
            f"the checkpoint is at update {update}; total_timesteps={cfg.total_timesteps} "
            f"makes only {cfg.num_updates}"
        )
    if not cfg.tracking.enabled:
        return cfg, Resume(folder, state, None, {})
    client = client or open_client(tracking_uri(cfg.tracking))
    run = find_run(client, cfg, folder, run_id)
    check_status(run, update, cfg)
    run_id = run.info.run_id
    return cfg, Resume(folder, state, run_id, metric_steps(client, run_id))


def run_folder(client: MlflowClient, run_id: str) -> tuple[Path, str]:
    """The checkpoint folder of the run with this id."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as err:
        raise ConfigError(
            f"resume={run_id} is neither a checkpoint path nor a run in {client.tracking_uri}"
        ) from err
    folder = run.data.tags.get(CHECKPOINT_TAG)
    if folder is None:
        raise ConfigError(f"run {run_id} keeps no checkpoint (a sweep trial, or an older run)")
    return Path(folder), run_id

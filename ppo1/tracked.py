"""Training as an MLflow run: the core loop, watched by the run's tracker, its figures, the
console and a sweep's pruner; checkpoints in the run's folder, resumable (docs/resume.md)."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

from ppo1.config import TrainConfig, to_plain_dict
from ppo1.core.envs import make_vector_env
from ppo1.core.loop import Loop, LoopObserver, OnUpdate, TrainResult, UpdateHook, training_parts
from ppo1.core.update import NonFiniteLossError
from ppo1.report.figure_logger import FigureLogger
from ppo1.report.progress import Console, console
from ppo1.tracking.resume import CHECKPOINT_TAG, Resume, new_checkpoint_folder
from ppo1.tracking.tracker import Tracker


class RunLog(LoopObserver):
    """Hands the tracker the metric rows of finished updates, and the final policy.

    With periodic checkpoints, rows go out only once a checkpoint holds their update: after
    a `kill -9` the store has no step past the checkpoint that a resume restarts from, and
    the resume re-sends (from the checkpoint) what the store lost with the killed process.
    `logged`: per metric, the last step the store already holds; nothing up to it is sent.
    """

    def __init__(self, tracker: Tracker, logged: dict[str, int], episode_rows: bool) -> None:
        self.tracker, self.logged, self.episode_rows = tracker, logged, episode_rows
        self.updates = self.episodes = 0  # how much of result.history and .episodes went out

    def durable(self, result: TrainResult) -> None:
        episodes = result.episodes
        for row in result.history[self.updates :]:
            step = int(row["step"])
            while self.episodes < len(episodes) and episodes[self.episodes].step <= step:
                e = episodes[self.episodes]
                if self.episode_rows:
                    self._log(
                        {"charts/episodic_return": e.ret, "charts/episodic_length": e.length},
                        e.step,
                    )
                self.episodes += 1
            self._log({k: v for k, v in row.items() if k != "step"}, step)
            self.updates += 1

    def _log(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}
        if fresh:
            self.tracker.log_metrics(fresh, step)

    def updated(self, update: int, metrics: dict[str, float], result: TrainResult) -> None:
        self.tracker.flush()

    def finished(self, result: TrainResult, policy: Path | None) -> None:
        if policy is not None:
            self.tracker.log_artifact(policy, "model")


def resumed_line(cfg: TrainConfig, resume: Resume) -> str:
    """What a resume says, and records as a tag: where it continues, and the re-seeding."""
    update = resume.update
    return (
        f"resumed at update {update}/{cfg.num_updates} (step {resume.state['global_step']}); "
        f"envs re-seeded with seed + {update} = {cfg.seed + update} (envs cannot be "
        "checkpointed: episodes in progress at the checkpoint were dropped)"
    )


def train(
    cfg: TrainConfig,
    on_update: UpdateHook | None = None,
    tags: dict[str, str] | None = None,
    resume: Resume | None = None,
) -> TrainResult:
    """Train PPO-Clip as `cfg` says, tracked in MLflow; returns the evaluation curve.

    `resume`: continue that checkpoint (and its run) instead of starting afresh."""
    torch.set_num_threads(cfg.torch_threads)
    folder = new_checkpoint_folder(cfg) if resume is None else resume.folder
    tags = dict(tags or {})
    if folder is not None:
        tags[CHECKPOINT_TAG] = str(folder)
    if resume is not None:
        tags["ppo1.resumed"] = resumed_line(cfg, resume)
        print(tags["ppo1.resumed"], flush=True)
    # Built before the run, so that an env that cannot be trained fails before one exists.
    # Envs cannot be checkpointed: a resumed run re-seeds them with seed + its updates.
    envs, agent, optimizer, collector = training_parts(
        cfg, cfg.seed + (0 if resume is None else resume.update)
    )
    eval_envs = make_vector_env(cfg.env, min(cfg.eval.num_envs, cfg.eval.episodes))
    parts = (envs, agent, optimizer, collector, eval_envs)
    plain = to_plain_dict(cfg)
    loop: Loop | None = None
    shown: Console | None = None
    run_id = None if resume is None else resume.run_id
    try:
        with Tracker(cfg.tracking, plain, tags, run_id=run_id) as tracker:
            observers: list[LoopObserver] = [
                RunLog(tracker, {} if resume is None else resume.logged, cfg.tracking.episode_rows),
                FigureLogger(cfg, tracker),
            ]
            shown = console(cfg, tracker)
            if shown is not None:
                observers.append(shown)
            if on_update is not None:
                observers.append(OnUpdate(on_update))
            state = None if resume is None else resume.state
            loop = Loop(cfg, parts, folder, observers, state)
            tracker.log_text(OmegaConf.to_yaml(plain), "config.yaml")
            loop.run()
            loop.finish()
    except BaseException as err:
        if loop is not None and loop.result.policy is not None:
            err.add_note(f"the policy is saved at {loop.result.policy}")
        # A diverged run would diverge again; anything else may be continued.
        if not isinstance(err, NonFiniteLossError) and loop and loop.saved_update >= 0:
            again = tracker.run_id if tracker.run_id is not None else folder
            err.add_note(f"to resume: python -m ppo1.train resume={again}")
        raise
    finally:
        if shown is not None:
            shown.close()  # a bar cut short by Ctrl-C ends its line before the message
        envs.close()
        eval_envs.close()
    result = loop.result
    result.run_id = tracker.run_id  # known once the run has ended, if the writer created it
    result.experiment_id = tracker.experiment_id
    return result

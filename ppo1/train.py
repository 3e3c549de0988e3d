"""`python -m ppo1.train`: collect rollout -> GAE -> epochs x minibatches of L^CLIP -> log."""

from __future__ import annotations

import shlex
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import hydra
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ppo1.config import (
    CONF_DIR,
    AlgoConfig,
    ConfigError,
    TrainConfig,
    exit_with_error,
    register_configs,
    to_plain_dict,
    to_train_config_or_exit,
)
from ppo1.core.backends import Optimizer, check_backend, make_optimizer, ppo_update
from ppo1.core.checkpoint import build_agent, save_atomically, save_checkpoint
from ppo1.core.envs import make_vector_env
from ppo1.core.evaluation import evaluate
from ppo1.core.networks import ActorCritic
from ppo1.core.rollout import Episode, RolloutCollector
from ppo1.core.schedules import multiplier, progress
from ppo1.core.update import Batch, NonFiniteLossError, UpdateStats
from ppo1.report.figure_logger import FigureLogger, figures_hint
from ppo1.sweep.trial import run_trial
from ppo1.tracking.names import name_tag
from ppo1.tracking.resume import (
    CHECKPOINT_TAG,
    POLICY_FILE,
    RESUME_FILE,
    Resume,
    make_folder,
    new_checkpoint_folder,
    prepare_resume,
)
from ppo1.tracking.tracker import (
    StoreFailedError,
    Tracker,
    _signal_handlers,
    sigterm_as_interrupt,
    tracking_uri,
)
from ppo1.tracking.urls import ui_lines

# Called after every update with (env steps so far, that update's metrics); may raise to stop.
UpdateHook = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    run_id: str | None
    final_eval: float
    evals: list[tuple[int, float]] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    # The final policy, saved on this disk before any upload (None: no checkpoint folder).
    policy: Path | None = None
    experiment_id: str | None = None  # the run's, for links into the MLflow UI


def update_metrics(
    stats: UpdateStats, lr: float, clip: float, sps: float, recent: deque[Episode]
) -> dict[str, float]:
    """One update's metrics under the CleanRL/SB3 names practitioners compare against."""
    metrics = {
        "charts/SPS": sps,
        "charts/learning_rate": lr,
        "charts/clip_range": clip,
        "losses/policy_loss": stats.policy_loss,
        "losses/value_loss": stats.value_loss,
        "losses/entropy": stats.entropy,
        "losses/approx_kl": stats.approx_kl,
        "losses/kl": stats.kl,
        "losses/clipfrac": stats.clipfrac,
        "losses/explained_variance": stats.explained_variance,
        "losses/grad_norm": stats.grad_norm,
        "losses/epochs": float(stats.epochs),
    }
    if recent:
        metrics["rollout/ep_rew_mean"] = float(np.mean([e.ret for e in recent]))
        metrics["rollout/ep_len_mean"] = float(np.mean([e.length for e in recent]))
    return metrics


def progress_line(update: int, cfg: TrainConfig, step: int, m: dict[str, float]) -> str:
    # No episode has ended yet in the first updates of a long-episode env: a dash, not nan.
    ret = f"{m['rollout/ep_rew_mean']:8.1f}" if "rollout/ep_rew_mean" in m else f"{'-':>8}"
    ev = m.get("eval/mean_return")
    eval_part = f" | eval {ev:8.1f}" if ev is not None else ""
    return (
        f"update {update:>4}/{cfg.num_updates} | step {step:>8} | return {ret}{eval_part}"
        f" | kl {m['losses/kl']:.4f} | clipfrac {m['losses/clipfrac']:.3f}"
        f" | SPS {m['charts/SPS']:6.0f}"
    )


def training_parts(
    cfg: TrainConfig, seed: int
) -> tuple[VectorEnv, ActorCritic, Optimizer, RolloutCollector]:
    """What training steps: the vector env, the agent (initialised from `seed`), its
    optimizer (algo.backend's), and the collector that rolls the agent out in the env.
    Raises ConfigError, before building anything, on a setting the backend cannot train."""
    check_backend(cfg.algo)
    torch.manual_seed(seed)
    envs = make_vector_env(cfg.env, cfg.env.num_envs)
    agent = build_agent(cfg, envs)
    optimizer = make_optimizer(agent, cfg.algo)
    collector = RolloutCollector(envs, agent, cfg.algo.n_steps, cfg.algo.bootstrap_truncation, seed)
    return envs, agent, optimizer, collector


# What training steps, and the envs that evaluate it.
Parts = tuple[VectorEnv, ActorCritic, Optimizer, RolloutCollector, VectorEnv]


def next_batch(collector: RolloutCollector, algo: AlgoConfig) -> tuple[list[Episode], Batch]:
    """One rollout: the episodes that ended in it, and the batch an update takes from it
    (GAE advantages and lambda-returns)."""
    episodes = collector.collect()
    buf = collector.buffer
    advantages, returns = buf.advantages(algo.gamma, algo.gae_lambda)
    return episodes, Batch.from_rollout(buf, advantages, returns)


class _Stop:
    """Signal handler for Ctrl-C and SIGTERM during training: the first is held until the
    update in progress ends, so that the checkpoint written on the way out holds whole
    updates; a second one stops at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")
        self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt(f"signal {self.signum}")


class MetricRelease:
    """Hands the tracker the metric rows of finished updates, from `result`.

    With periodic checkpoints, rows go out only once a checkpoint holds their update: after
    a `kill -9` the store has no step past the checkpoint that a resume restarts from, and
    the resume re-sends (from the checkpoint) what the store lost with the killed process.
    `logged`: per metric, the last step the store already holds; nothing up to it is sent.
    """

    def __init__(self, tracker: Tracker, result: TrainResult, logged: dict[str, int]) -> None:
        self.tracker, self.result, self.logged = tracker, result, logged
        self.updates = self.episodes = 0  # how much of result.history and .episodes went out

    def release(self) -> None:
        episodes = self.result.episodes
        for row in self.result.history[self.updates :]:
            step = int(row["step"])
            while self.episodes < len(episodes) and episodes[self.episodes].step <= step:
                e = episodes[self.episodes]
                self._log(
                    {"charts/episodic_return": e.ret, "charts/episodic_length": e.length}, e.step
                )
                self.episodes += 1
            self._log({k: v for k, v in row.items() if k != "step"}, step)
            self.updates += 1

    def _log(self, metrics: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in metrics.items() if step > self.logged.get(k, -1)}
        if fresh:
            self.tracker.log_metrics(fresh, step)


class Loop:
    """The training loop, and the state between two updates that a resume.pt holds."""

    def __init__(
        self,
        cfg: TrainConfig,
        tracker: Tracker,
        result: TrainResult,
        folder: Path | None,
        on_update: UpdateHook | None,
        parts: Parts,
        resume: Resume | None,
    ) -> None:
        self.cfg, self.tracker, self.result, self.folder = cfg, tracker, result, folder
        self.on_update = on_update
        self.envs, self.agent, self.optimizer, self.collector, self.eval_envs = parts
        self.done = 0 if resume is None else resume.update  # updates fully in the state
        self.figures = FigureLogger(cfg, tracker)
        self.recent: deque[Episode] = deque(maxlen=100)
        self.metrics = MetricRelease(tracker, result, {} if resume is None else resume.logged)
        self.seconds_before = 0.0  # training time of the processes before a resume
        self.in_update = False
        self.saved_update = -1  # the update the resume.pt on disk holds
        if folder is not None:
            make_folder(folder)
        if resume is not None:
            self.load(resume.state)

    @property
    def periodic(self) -> bool:
        return self.folder is not None and self.cfg.checkpoint_every > 0

    def state(self) -> dict[str, Any]:
        """Everything the next update depends on, as plain tensors and containers."""
        return {
            "config": to_plain_dict(self.cfg),
            "update": self.done,
            "global_step": self.collector.global_step,
            "agent": self.agent.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "figures": self.figures.state_dict(),
            "history": self.result.history,
            "episodes": [(e.step, e.ret, e.length) for e in self.result.episodes],
            "evals": self.result.evals,
        }

    def load(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.figures.load_state_dict(state["figures"])
        self.collector.global_step = int(state["global_step"])
        result = self.result
        result.history = [dict(row) for row in state["history"]]
        result.episodes = [Episode(*e) for e in state["episodes"]]
        result.evals = [(int(step), float(ret)) for step, ret in state["evals"]]
        result.final_eval = result.evals[-1][1] if result.evals else float("nan")
        self.recent.extend(result.episodes)
        if result.history:
            self.seconds_before = result.history[-1]["time/train_seconds"]
        self.saved_update = self.done
        self.metrics.release()  # what a killed process may not have stored

    def checkpoint(self) -> None:
        """resume.pt at the last finished update, then its metric rows to the tracker."""
        assert self.folder is not None
        if self.saved_update != self.done:
            save_atomically(self.state(), self.folder / RESUME_FILE)
            self.saved_update = self.done
        self.metrics.release()

    def run(self) -> None:
        """Every update left; on the way out (Ctrl-C, SIGTERM, a pruned trial, an error) a
        checkpoint of the last finished update, or at least its metrics."""
        stop = _Stop()
        with _signal_handlers((signal.SIGINT, signal.SIGTERM), stop):
            try:
                self.updates(stop)
            except BaseException as err:
                self.on_the_way_out(err)
                raise

    def on_the_way_out(self, err: BaseException) -> None:
        """Save what a stop left: a checkpoint of the last finished update, or its metrics."""
        if not self.in_update and self.folder is not None:
            self.checkpoint()
        elif not self.in_update:
            self.metrics.release()
        elif not (self.periodic and isinstance(err, KeyboardInterrupt)):
            # Cut mid-update (a diverged loss; without checkpoints, a second Ctrl-C): the
            # state is half an update, but the finished updates' metrics are still true.
            # A second Ctrl-C with checkpoints keeps none past the last one: a resume would
            # log those steps again.
            self.metrics.release()

    def updates(self, stop: _Stop) -> None:
        cfg, result = self.cfg, self.result
        start = time.perf_counter()
        # Evaluation is excluded from SPS and time/train_seconds (the benchmark's time-to-solve).
        eval_seconds = 0.0
        for update in range(self.done + 1, cfg.num_updates + 1):
            self.in_update = True
            stats, lr, clip = self.learn(update)
            step = self.collector.global_step
            train_seconds = self.seconds_before + time.perf_counter() - start - eval_seconds
            metrics = update_metrics(stats, lr, clip, step / train_seconds, self.recent)
            metrics["time/train_seconds"] = train_seconds
            if update % cfg.eval.every == 0 or update == cfg.num_updates:
                eval_start = time.perf_counter()
                returns_eval = evaluate(
                    self.agent, self.eval_envs, cfg.eval.episodes, cfg.seed + 10_000
                )
                eval_seconds += time.perf_counter() - eval_start
                metrics["eval/mean_return"] = float(returns_eval.mean())
                metrics["eval/std_return"] = float(returns_eval.std())
                result.evals.append((step, metrics["eval/mean_return"]))
                result.final_eval = metrics["eval/mean_return"]
            result.history.append({"step": float(step), **metrics})
            self.done, self.in_update = update, False
            if not self.periodic:
                self.metrics.release()
            elif update % cfg.checkpoint_every == 0:
                self.checkpoint()
            self.tracker.flush()
            self.figures.maybe_log(update, result)
            if cfg.verbose:
                print(progress_line(update, cfg, step, metrics), flush=True)
            stop.check()
            if self.on_update is not None:
                self.on_update(step, metrics)

    def learn(self, update: int) -> tuple[UpdateStats, float, float]:
        """One rollout and the PPO update on it; the stats, lr and clip it used."""
        cfg, collector = self.cfg, self.collector
        mult = multiplier(cfg.schedule, progress(collector.global_step, cfg.total_timesteps))
        lr = cfg.algo.lr * mult
        clip = cfg.algo.clip * (mult if cfg.algo.anneal_clip else 1.0)
        episodes, batch = next_batch(collector, cfg.algo)
        stats = ppo_update(self.agent, self.optimizer, batch, cfg.algo, clip, lr)
        if self.agent.obs_norm is not None:
            # After the update, so that the rollout and its update saw the same statistics.
            self.agent.obs_norm.update(batch.obs)
        self.figures.record(update, collector.global_step, clip, stats)
        self.recent.extend(episodes)
        self.result.episodes += episodes
        return stats, lr, clip

    def finish(self) -> None:
        """A last checkpoint (a larger total_timesteps may continue it), the policy on this
        disk, then the uploads, smallest first: a store that fails loses no model."""
        if self.folder is not None:
            self.checkpoint()
        if self.cfg.save_model:
            with tempfile.TemporaryDirectory() as tmp:
                folder = self.folder or Path(tmp)
                save_checkpoint(folder / POLICY_FILE, self.agent, self.cfg)
                if self.folder is not None:
                    self.result.policy = folder / POLICY_FILE
                self.tracker.log_artifact(folder / POLICY_FILE, "model")
        if self.figures.enabled:
            self.figures.log(self.result)


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
    result = TrainResult(run_id=None, final_eval=float("nan"))
    folder = new_checkpoint_folder(cfg) if resume is None else resume.folder
    tags = dict(tags or {})
    if folder is not None:
        tags[CHECKPOINT_TAG] = str(folder)
    if resume is not None:
        tags["ppo1.resumed"] = resumed_line(cfg, resume)
        if cfg.verbose:
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
    run_id = None if resume is None else resume.run_id
    try:
        with Tracker(cfg.tracking, plain, tags, run_id=run_id) as tracker:
            loop = Loop(cfg, tracker, result, folder, on_update, parts, resume)
            tracker.log_text(OmegaConf.to_yaml(plain), "config.yaml")
            loop.run()
            loop.finish()
    except BaseException as err:
        if result.policy is not None:
            err.add_note(f"the policy is saved at {result.policy}")
        # A diverged run would diverge again; anything else may be continued.
        if not isinstance(err, NonFiniteLossError) and loop and loop.saved_update >= 0:
            again = tracker.run_id if tracker.run_id is not None else folder
            err.add_note(f"to resume: python -m ppo1.train resume={again}")
        raise
    finally:
        envs.close()
        eval_envs.close()
    result.run_id = tracker.run_id  # known once the run has ended, if the writer created it
    result.experiment_id = tracker.experiment_id
    return result


def summary(cfg: TrainConfig, result: TrainResult) -> str:
    lines = [
        f"final evaluation: {result.final_eval:.1f} mean return over {cfg.eval.episodes} episodes"
    ]
    if result.run_id is not None:
        uri = tracking_uri(cfg.tracking)
        lines.append(
            f"MLflow run {result.run_id} in experiment '{cfg.tracking.experiment}' ({uri})"
        )
        if result.experiment_id is not None:
            lines += ui_lines(uri, result.experiment_id, result.run_id)
        lines += figures_hint(cfg, result.run_id)
    if result.policy is not None:
        lines.append(f"policy: {result.policy} (python -m ppo1.evaluate {result.policy})")
    return "\n".join(lines)


def notes(err: BaseException) -> list[str]:
    """What the exception picked up on its way out: the Tracker notes the run it ended."""
    return list(getattr(err, "__notes__", []))


def exit_failed(message: str, err: BaseException) -> NoReturn:
    """Exit 1 with one `error: ...` line: training failed, the input was fine."""
    print("; ".join([f"error: {message}", *notes(err)]), file=sys.stderr)
    sys.exit(1)


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(dict_cfg: DictConfig) -> float:
    """Hydra entrypoint; the return value is the objective a sweeper optimises."""
    cfg = to_train_config_or_exit(dict_cfg)
    if cfg.sweep is not None:
        if cfg.sweep.trial is None:
            exit_with_error("a sweep runs as a multirun: python -m ppo1.train -m sweep=NAME")
        # A job of the sweep: pruned or failed trials go back to the sweeper as exceptions.
        return run_trial(cfg, train)
    command = shlex.join(["python", "-m", "ppo1.train", *sys.argv[1:]])
    hydra_cfg = HydraConfig.get()
    name = name_tag(cfg.tracking, hydra_cfg.runtime.choices, hydra_cfg.overrides.task, cfg.seed)
    tags = {"ppo1.command": command, "mlflow.source.name": "ppo1.train", **name}
    resume = None
    if cfg.resume is not None:
        try:
            cfg, resume = prepare_resume(cfg, list(hydra_cfg.overrides.task))
        except ConfigError as err:
            exit_with_error(str(err))
        tags = {"ppo1.resume_command": command}  # the run keeps the command that started it
    try:
        with sigterm_as_interrupt():  # a scheduler's stop ends the run KILLED, as Ctrl-C does
            result = train(cfg, tags=tags, resume=resume)
    except ConfigError as err:
        # What only building the envs or opening the tracking store can tell, before any run.
        exit_with_error(f"invalid config: {err}")
    except NonFiniteLossError as err:
        exit_failed(f"training diverged: {err}", err)
    except StoreFailedError as err:
        # The store stopped working mid-run (a server killed, a disk full): not bad input.
        exit_failed(str(err), err)
    except KeyboardInterrupt as err:
        said = notes(err)
        print(f"interrupted: {'; '.join(said)}" if said else "interrupted", file=sys.stderr)
        sys.exit(130)
    if cfg.verbose:
        print(summary(cfg, result))
    return result.final_eval


if __name__ == "__main__":
    main()

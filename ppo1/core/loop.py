"""The training loop, in CleanRL's order: anneal -> rollout -> GAE -> PPO update -> evaluate.

It knows nothing of MLflow, figures or the console: what watches it (the tracked run, the
figure logger, a progress line, a sweep's pruner) is a `LoopObserver` it calls at fixed points.
"""

from __future__ import annotations

import signal
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from ppo1.config import AlgoConfig, TrainConfig, to_plain_dict
from ppo1.core.backends import Optimizer, check_backend, make_optimizer, ppo_update
from ppo1.core.checkpoint import (
    POLICY_FILE,
    RESUME_FILE,
    build_agent,
    make_folder,
    save_atomically,
    save_checkpoint,
)
from ppo1.core.envs import make_vector_env
from ppo1.core.evaluation import evaluate
from ppo1.core.networks import ActorCritic
from ppo1.core.rollout import Episode, RolloutCollector
from ppo1.core.schedules import multiplier, progress
from ppo1.core.update import Batch, UpdateStats
from ppo1.utils.signals import StopAfterUpdate, signal_handlers

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


class LoopObserver:
    """What the loop tells whoever watches it; each method does nothing unless overridden."""

    # Under this key the observer's `state_dict` goes into resume.pt (None: it keeps none).
    state_key: str | None = None

    def learned(self, update: int, step: int, clip: float, stats: UpdateStats) -> None:
        """An update's PPO step is done (its r_t and advantages are in `stats`)."""

    def updated(self, update: int, metrics: dict[str, float], result: TrainResult) -> None:
        """An update is finished: rollout, PPO step, evaluation, its row in result.history."""

    def durable(self, result: TrainResult) -> None:
        """Every finished update's row may now be stored: a checkpoint holds them, or none
        is kept. A resume restarts from the checkpoint, so rows past it would be logged twice."""

    def finished(self, result: TrainResult, policy: Path | None) -> None:
        """Training is over; the final policy file (None: save_model=false), until this returns."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned, from a resumed checkpoint."""


class OnUpdate(LoopObserver):
    """An `UpdateHook` as an observer (a sweep's pruner, a test)."""

    def __init__(self, hook: UpdateHook) -> None:
        self.hook = hook

    def updated(self, update: int, metrics: dict[str, float], result: TrainResult) -> None:
        self.hook(int(result.history[-1]["step"]), metrics)


class Loop:
    """The training loop, and the state between two updates that a resume.pt holds.

    `folder`: where resume.pt and policy.pt go (None: no checkpoints); `state`: a resume.pt's
    contents to continue from."""

    def __init__(
        self,
        cfg: TrainConfig,
        parts: Parts,
        folder: Path | None,
        observers: Sequence[LoopObserver] = (),
        state: dict[str, Any] | None = None,
    ) -> None:
        self.cfg, self.folder, self.observers = cfg, folder, list(observers)
        self.result = TrainResult(run_id=None, final_eval=float("nan"))
        self.envs, self.agent, self.optimizer, self.collector, self.eval_envs = parts
        self.done = 0  # updates fully in the state
        self.recent: deque[Episode] = deque(maxlen=100)
        # Training and evaluation time of the processes before a resume.
        self.seconds_before = self.eval_seconds_before = 0.0
        self.in_update = False
        self.saved_update = -1  # the update the resume.pt on disk holds
        if folder is not None:
            make_folder(folder)
        if state is not None:
            self.load(state)

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
            "history": self.result.history,
            "episodes": [(e.step, e.ret, e.length) for e in self.result.episodes],
            "evals": self.result.evals,
            **{o.state_key: o.state_dict() for o in self.observers if o.state_key},
        }

    def load(self, state: dict[str, Any]) -> None:
        self.done = int(state["update"])
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        for o in self.observers:
            if o.state_key:
                o.load_state_dict(state[o.state_key])
        self.collector.global_step = int(state["global_step"])
        result = self.result
        result.history = [dict(row) for row in state["history"]]
        result.episodes = [Episode(*e) for e in state["episodes"]]
        result.evals = [(int(step), float(ret)) for step, ret in state["evals"]]
        result.final_eval = result.evals[-1][1] if result.evals else float("nan")
        self.recent.extend(result.episodes)
        if result.history:
            self.seconds_before = result.history[-1]["time/train_seconds"]
            self.eval_seconds_before = result.history[-1].get("time/eval_seconds", 0.0)
        self.saved_update = self.done
        self._durable()  # what a killed process may not have stored

    def _durable(self) -> None:
        for o in self.observers:
            o.durable(self.result)

    def checkpoint(self) -> None:
        """resume.pt at the last finished update; then its rows are durable."""
        assert self.folder is not None
        if self.saved_update != self.done:
            save_atomically(self.state(), self.folder / RESUME_FILE)
            self.saved_update = self.done
        self._durable()

    def run(self) -> None:
        """Every update left; on the way out (Ctrl-C, SIGTERM, a pruned trial, an error) a
        checkpoint of the last finished update, or at least its metrics."""
        stop = StopAfterUpdate()
        try:
            with signal_handlers((signal.SIGINT, signal.SIGTERM), stop):
                self.updates(stop)
            # One that came after the last update's check: the handlers it would now meet
            # are the caller's, so it is not lost.
            stop.check()
        except BaseException as err:
            self.on_the_way_out(err)
            raise

    def on_the_way_out(self, err: BaseException) -> None:
        """Save what a stop left: a checkpoint of the last finished update, or its metrics."""
        if not self.in_update and self.folder is not None:
            self.checkpoint()
        elif not self.in_update:
            self._durable()
        elif not (self.periodic and isinstance(err, KeyboardInterrupt)):
            # Cut mid-update (a diverged loss; without checkpoints, a second Ctrl-C): the
            # state is half an update, but the finished updates' metrics are still true.
            # A second Ctrl-C with checkpoints keeps none past the last one: a resume would
            # log those steps again.
            self._durable()

    def updates(self, stop: StopAfterUpdate) -> None:
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
            metrics["time/eval_seconds"] = self.eval_seconds_before + eval_seconds
            result.history.append({"step": float(step), **metrics})
            self.done, self.in_update = update, False
            if not self.periodic:
                self._durable()
            elif update % cfg.checkpoint_every == 0:
                self.checkpoint()
            for o in self.observers:
                o.updated(update, metrics, result)
            stop.check()

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
        for o in self.observers:
            o.learned(update, collector.global_step, clip, stats)
        self.recent.extend(episodes)
        self.result.episodes += episodes
        return stats, lr, clip

    def finish(self) -> None:
        """A last checkpoint (a larger total_timesteps may continue it), then the policy on
        this disk before the observers see it (a store that fails loses no model)."""
        if self.folder is not None:
            self.checkpoint()
        with tempfile.TemporaryDirectory() as tmp:
            policy = None
            if self.cfg.save_model:
                policy = (self.folder or Path(tmp)) / POLICY_FILE
                save_checkpoint(policy, self.agent, self.cfg)
                if self.folder is not None:
                    self.result.policy = policy
            for o in self.observers:
                o.finished(self.result, policy)

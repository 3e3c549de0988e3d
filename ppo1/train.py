"""`python -m ppo1.train`: collect rollout -> GAE -> epochs x minibatches of L^CLIP -> log."""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
import torch
from gymnasium.vector import VectorEnv
from omegaconf import DictConfig, OmegaConf

from ppo1.backends import Optimizer, check_backend, make_optimizer, ppo_update
from ppo1.checkpoint import build_agent, save_checkpoint
from ppo1.config import (
    AlgoConfig,
    ConfigError,
    TrainConfig,
    exit_with_error,
    register_configs,
    to_plain_dict,
    to_train_config_or_exit,
)
from ppo1.envs import make_vector_env
from ppo1.evaluation import evaluate
from ppo1.figure_logger import FigureLogger, figures_hint
from ppo1.networks import ActorCritic
from ppo1.rollout import Episode, RolloutCollector
from ppo1.schedules import multiplier, progress
from ppo1.tracking import Tracker, sigterm_as_interrupt, tracking_uri
from ppo1.trial import run_trial
from ppo1.update import Batch, NonFiniteLossError, UpdateStats

# Called after every update with (env steps so far, that update's metrics); may raise to stop.
UpdateHook = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    run_id: str | None
    final_eval: float
    evals: list[tuple[int, float]] = field(default_factory=list)
    episodes: list[Episode] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)


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


def next_batch(collector: RolloutCollector, algo: AlgoConfig) -> tuple[list[Episode], Batch]:
    """One rollout: the episodes that ended in it, and the batch an update takes from it
    (GAE advantages and lambda-returns)."""
    episodes = collector.collect()
    buf = collector.buffer
    advantages, returns = buf.advantages(algo.gamma, algo.gae_lambda)
    return episodes, Batch.from_rollout(buf, advantages, returns)


def train(
    cfg: TrainConfig, on_update: UpdateHook | None = None, tags: dict[str, str] | None = None
) -> TrainResult:
    """Train PPO-Clip as `cfg` says, tracked in MLflow; returns the evaluation curve."""
    torch.set_num_threads(cfg.torch_threads)
    envs, agent, optimizer, collector = training_parts(cfg, cfg.seed)
    eval_envs = make_vector_env(cfg.env, min(cfg.eval.num_envs, cfg.eval.episodes))
    result = TrainResult(run_id=None, final_eval=float("nan"))
    recent: deque[Episode] = deque(maxlen=100)
    plain = to_plain_dict(cfg)
    with Tracker(cfg.tracking, plain, tags) as tracker:
        figures = FigureLogger(cfg, tracker)
        tracker.log_text(OmegaConf.to_yaml(plain), "config.yaml")
        start = time.perf_counter()
        # Evaluation is excluded from SPS and time/train_seconds (the benchmark's time-to-solve).
        eval_seconds = 0.0
        for update in range(1, cfg.num_updates + 1):
            mult = multiplier(cfg.schedule, progress(collector.global_step, cfg.total_timesteps))
            lr = cfg.algo.lr * mult
            clip = cfg.algo.clip * (mult if cfg.algo.anneal_clip else 1.0)

            episodes, batch = next_batch(collector, cfg.algo)
            stats = ppo_update(agent, optimizer, batch, cfg.algo, clip, lr)
            if agent.obs_norm is not None:
                # After the update, so that the rollout and its update saw the same statistics.
                agent.obs_norm.update(batch.obs)

            step = collector.global_step
            figures.record(update, step, clip, stats)
            recent.extend(episodes)
            result.episodes += episodes
            train_seconds = time.perf_counter() - start - eval_seconds
            metrics = update_metrics(stats, lr, clip, step / train_seconds, recent)
            metrics["time/train_seconds"] = train_seconds
            if update % cfg.eval.every == 0 or update == cfg.num_updates:
                eval_start = time.perf_counter()
                returns_eval = evaluate(agent, eval_envs, cfg.eval.episodes, cfg.seed + 10_000)
                eval_seconds += time.perf_counter() - eval_start
                metrics["eval/mean_return"] = float(returns_eval.mean())
                metrics["eval/std_return"] = float(returns_eval.std())
                result.evals.append((step, metrics["eval/mean_return"]))
                result.final_eval = metrics["eval/mean_return"]
            for e in episodes:
                tracker.log_metrics(
                    {"charts/episodic_return": e.ret, "charts/episodic_length": e.length}, e.step
                )
            tracker.log_metrics(metrics, step)
            tracker.flush()
            result.history.append({"step": float(step), **metrics})
            figures.maybe_log(update, result)
            if cfg.verbose:
                print(progress_line(update, cfg, step, metrics), flush=True)
            if on_update is not None:
                on_update(step, metrics)

        if cfg.save_model:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "policy.pt"
                save_checkpoint(path, agent, cfg)
                tracker.log_artifact(path, "model")
    result.run_id = tracker.run_id  # known once the run has ended, if the writer created it
    envs.close()
    eval_envs.close()
    return result


def summary(cfg: TrainConfig, result: TrainResult) -> str:
    lines = [
        f"final evaluation: {result.final_eval:.1f} mean return over {cfg.eval.episodes} episodes"
    ]
    if result.run_id is not None:
        uri = tracking_uri(cfg.tracking)
        lines += [
            f"MLflow run {result.run_id} in experiment '{cfg.tracking.experiment}' ({uri})",
            f"open it: mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 "
            "--port 5000 --workers 1",
        ]
        lines += figures_hint(cfg, result.run_id)
    return "\n".join(lines)


def notes(err: BaseException) -> list[str]:
    """What the exception picked up on its way out: the Tracker notes the run it ended."""
    return list(getattr(err, "__notes__", []))


register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(dict_cfg: DictConfig) -> float:
    """Hydra entrypoint; the return value is the objective a sweeper optimises."""
    cfg = to_train_config_or_exit(dict_cfg)
    if cfg.sweep is not None:
        if cfg.sweep.trial is None:
            exit_with_error("a sweep runs as a multirun: python -m ppo1.train -m sweep=NAME")
        # A job of the sweep: pruned or failed trials go back to the sweeper as exceptions.
        return run_trial(cfg, train)
    command = shlex.join(["python", "-m", "ppo1.train", *sys.argv[1:]])
    try:
        with sigterm_as_interrupt():  # a scheduler's stop ends the run KILLED, as Ctrl-C does
            tags = {"ppo1.command": command, "mlflow.source.name": "ppo1.train"}
            result = train(cfg, tags=tags)
    except ConfigError as err:
        # What only building the envs or opening the tracking store can tell, before any run.
        exit_with_error(f"invalid config: {err}")
    except NonFiniteLossError as err:
        print("; ".join([f"error: training diverged: {err}", *notes(err)]), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as err:
        print(": ".join(["interrupted", *notes(err)]), file=sys.stderr)
        sys.exit(130)
    if cfg.verbose:
        print(summary(cfg, result))
    return result.final_eval


if __name__ == "__main__":
    main()

"""`python -m benchmarks.sb3_run OVERRIDES`: one SB3 PPO run with the settings ppo1 would train
with, tracked in MLflow like a ppo1 run, for the results table's same-settings peer rows.

    python -m benchmarks.sb3_run env=hopper seed=1 tracking.experiment=ppo1-results

The overrides are `python -m ppo1.train`'s (benchmarks.sb3_peer maps them onto SB3; what it
cannot express is tagged on the run). It evaluates as ppo1's loop does: every `eval.every`
updates and after the last, ppo1's evaluation envs and episode count seeded `seed + 10000`,
deterministic actions on observations normalised with the statistics of that moment, off the
training clock. It logs eval/mean_return, charts/episodic_return (SB3's Monitor), the clip
fraction and time/train_seconds, and prints `MLflow run ID` as ppo1.train does.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from benchmarks.bench import compose_config
from benchmarks.sb3_peer import sb3_available, sb3_kwargs, sb3_model, sb3_policy
from ppo1.config import TrainConfig, to_plain_dict
from ppo1.core.envs import make_vector_env
from ppo1.core.evaluation import run_episodes
from ppo1.report.plots import EPISODIC_RETURN, EVAL_RETURN
from ppo1.tracking.tracker import Tracker
from ppo1.utils.cli import exit_with_error


def train_sb3(cfg: TrainConfig, tracker: Tracker) -> None:
    """SB3 PPO for cfg.total_timesteps, its evaluations and episodes logged to `tracker`."""
    from stable_baselines3.common.callbacks import BaseCallback

    model = sb3_model(cfg, cfg.seed)
    eval_envs = make_vector_env(cfg.env, min(cfg.eval.num_envs, cfg.eval.episodes))
    every = cfg.eval.every * cfg.batch_size
    total = cfg.num_updates * cfg.batch_size  # whole rollouts, as ppo1 trains

    class Logged(BaseCallback):
        """After each rollout's update (SB3 calls this before the next rollout): its clip
        fraction, the episodes that ended, and an evaluation when one is due."""

        start = eval_seconds = 0.0

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def _on_rollout_start(self) -> None:
            # learn() dumps (and clears) the last update's logged values after this rollout.
            if self.num_timesteps:
                self.after_update(self.num_timesteps)

        def _on_training_end(self) -> None:
            self.after_update(self.num_timesteps, last=True)

        def _on_step(self) -> bool:
            for info in self.locals["infos"]:
                if "episode" in info:  # Monitor's return of an episode that just ended
                    tracker.log_metrics({EPISODIC_RETURN: info["episode"]["r"]}, self.num_timesteps)
            return True

        def after_update(self, step: int, last: bool = False) -> None:
            values = self.model.logger.name_to_value
            metrics = {"time/train_seconds": time.perf_counter() - self.start - self.eval_seconds}
            if "train/clip_fraction" in values:
                metrics["losses/clipfrac"] = float(values["train/clip_fraction"])
            if last or step % every == 0:
                eval_start = time.perf_counter()
                returns = run_episodes(
                    sb3_policy(self.model), eval_envs, cfg.eval.episodes, cfg.seed + 10_000
                )
                self.eval_seconds += time.perf_counter() - eval_start
                metrics[EVAL_RETURN] = float(returns.mean())
            tracker.log_metrics(metrics, step)
            tracker.flush()

    model.learn(total_timesteps=total, callback=Logged())
    model.env.close()
    eval_envs.close()


def main(argv: Sequence[str] | None = None) -> None:
    overrides = list(sys.argv[1:] if argv is None else argv)
    if not sb3_available():
        exit_with_error("SB3 is not installed: pip install -e '.[bench]'")
    cfg = compose_config(overrides)
    torch.set_num_threads(cfg.torch_threads)
    _, differences = sb3_kwargs(cfg)
    tags: dict[str, Any] = {
        "ppo1.role": "sb3-peer",
        "mlflow.source.name": "benchmarks.sb3_run",
        "ppo1.sb3_differs": "; ".join(differences) or "none",
    }
    with Tracker(cfg.tracking, to_plain_dict(cfg), tags) as tracker:
        train_sb3(cfg, tracker)
        run = tracker.wait_for_run()
    if run is not None:
        print(f"MLflow run {run[0]}", flush=True)


if __name__ == "__main__":
    main()

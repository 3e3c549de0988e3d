"""What training prints while it runs (`verbose`): one line per update."""

from __future__ import annotations

from ppo1.config import TrainConfig
from ppo1.core.loop import LoopObserver, TrainResult


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


class ProgressLines(LoopObserver):
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def updated(self, update: int, metrics: dict[str, float], result: TrainResult) -> None:
        step = int(result.history[-1]["step"])
        print(progress_line(update, self.cfg, step, metrics), flush=True)

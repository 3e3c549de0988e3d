"""What training prints while it runs (docs/configuration.md, Progress).

On a terminal, one live progress bar; otherwise (CI, a log file, a sweep's job) a plain line
every `log_every` updates; with `verbose=true`, a line after every update. The run's id and
how to open it come first, once the run exists.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

from ppo1.config import TrainConfig
from ppo1.core.loop import LoopObserver, TrainResult
from ppo1.tracking.urls import run_hint

if TYPE_CHECKING:
    from pathlib import Path

    from ppo1.tracking.tracker import Tracker

# On the bar: % done, steps, elapsed < ETA, then the postfix of `bar_postfix`.
BAR_FORMAT = "{percentage:3.0f}% |{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}]{postfix}"


def last_eval(result: TrainResult) -> float | None:
    return result.evals[-1][1] if result.evals else None


def progress_line(
    update: int, cfg: TrainConfig, step: int, m: dict[str, float], ev: float | None = None
) -> str:
    """`update 25/391 | step 6400 | return 43.1 | eval 61.2 | kl ... | clipfrac ... | SPS ...`;
    `ev`: the evaluation to show (None: no eval column)."""
    # No episode has ended yet in the first updates of a long-episode env: a dash, not nan.
    ret = f"{m['rollout/ep_rew_mean']:8.1f}" if "rollout/ep_rew_mean" in m else f"{'-':>8}"
    eval_part = f" | eval {ev:8.1f}" if ev is not None else ""
    return (
        f"update {update:>4}/{cfg.num_updates} | step {step:>8} | return {ret}{eval_part}"
        f" | kl {m['losses/kl']:.4f} | clipfrac {m['losses/clipfrac']:.3f}"
        f" | SPS {m['charts/SPS']:6.0f}"
    )


def bar_postfix(m: dict[str, float], ev: float | None) -> str:
    """The bar's metrics: training SPS, recent return, last evaluation, KL, clip fraction."""
    ret = f"{m['rollout/ep_rew_mean']:.1f}" if "rollout/ep_rew_mean" in m else "-"
    evaluated = f"{ev:.1f}" if ev is not None else "-"
    return (
        f"SPS {m['charts/SPS']:.0f} | return {ret} | eval {evaluated}"
        f" | kl {m['losses/kl']:.4f} | clipfrac {m['losses/clipfrac']:.3f}"
    )


class Console(LoopObserver):
    """Prints the run's id and UI hint as soon as the run exists (without waiting for the
    process that creates it), then progress as a subclass says. `close` ends the output
    however training ended."""

    def __init__(self, cfg: TrainConfig, tracker: Tracker | None) -> None:
        self.cfg, self.tracker = cfg, tracker
        self.announced = tracker is None or not cfg.tracking.enabled

    def say(self, line: str) -> None:
        print(line, flush=True)

    def announce(self) -> None:
        if self.announced:
            return
        assert self.tracker is not None
        run_id = self.tracker.known_run()
        if run_id is not None:
            self.announced = True
            for line in run_hint(self.cfg.tracking, run_id, self.tracker.experiment_id):
                self.say(line)

    def updated(self, update: int, metrics: dict[str, float], result: TrainResult) -> None:
        self.announce()
        self.show(update, int(result.history[-1]["step"]), metrics, result)

    def show(self, update: int, step: int, metrics: dict[str, float], result: TrainResult) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Training has ended, finished or not."""


class ProgressLines(Console):
    """A plain line every `every` updates and after the last one."""

    def __init__(self, cfg: TrainConfig, tracker: Tracker | None, every: int) -> None:
        super().__init__(cfg, tracker)
        self.every = every

    def show(self, update: int, step: int, metrics: dict[str, float], result: TrainResult) -> None:
        if update % self.every == 0 or update == self.cfg.num_updates:
            # Every update's line shows its own evaluation, if it ran one (as it always did);
            # a line every N updates shows the last one, wherever it ran.
            ev = metrics.get("eval/mean_return") if self.every == 1 else last_eval(result)
            self.say(progress_line(update, self.cfg, step, metrics, ev))


class ProgressBar(Console):
    """One live bar on the terminal (tqdm), its metrics updated after every update."""

    def __init__(self, cfg: TrainConfig, tracker: Tracker | None) -> None:
        super().__init__(cfg, tracker)
        self.bar: tqdm[None] | None = None

    def say(self, line: str) -> None:
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.write(line, file=sys.stdout)  # above the bar, which is redrawn below

    def show(self, update: int, step: int, metrics: dict[str, float], result: TrainResult) -> None:
        if self.bar is None:  # at the first update: a resumed run starts its bar part-way
            self.bar = tqdm(
                total=self.cfg.num_updates * self.cfg.batch_size,
                initial=step - self.cfg.batch_size,
                unit="step",
                bar_format=BAR_FORMAT,
                dynamic_ncols=True,
                file=sys.stdout,
            )
        self.bar.set_postfix_str(bar_postfix(metrics, last_eval(result)), refresh=False)
        self.bar.update(step - self.bar.n)

    def finished(self, result: TrainResult, policy: Path | None) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # leaves the bar's last state on its line, ends the line
            self.bar = None


def console(cfg: TrainConfig, tracker: Tracker | None) -> Console | None:
    """What prints training's progress, as `verbose`, `log_every` and the terminal say."""
    if cfg.verbose:
        return ProgressLines(cfg, None, every=1)  # one line per update, nothing else
    if cfg.log_every == 0 or cfg.sweep is not None:
        # A sweep's job prints nothing of its own: the sweeper prints a line per trial, and
        # jobs running side by side would interleave theirs with it.
        return None
    if sys.stdout.isatty():
        return ProgressBar(cfg, tracker)
    return ProgressLines(cfg, tracker, every=cfg.log_every)

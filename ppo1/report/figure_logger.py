"""Logs a run's Plotly diagnostics to MLflow while it trains (`tracking.figures`)."""

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ppo1.config import AdvNorm, FiguresMode, TrainConfig
from ppo1.core.loop import LoopObserver, TrainResult
from ppo1.core.update import UpdateStats, normalize_advantages
from ppo1.report.pages import write_figures
from ppo1.report.ratios import RatioSnapshot, from_json, summarize, to_json
from ppo1.report.runs import FIGURES_DIR, RunData, curves_from_history, label
from ppo1.tracking.store import default_tracking_uri, tracking_uri
from ppo1.tracking.tracker import Tracker

# (r_t, A_t) pairs kept of the last rollout: enough to see the clipped regions, ~40 kB.
MAX_POINTS = 1024


class FigureLogger(LoopObserver):
    """Summarises r_t after every update and logs the figures under `figures/` of the run:
    every `tracking.figures_every` updates (overwriting) and after the last one."""

    state_key = "figures"

    def __init__(self, cfg: TrainConfig, tracker: Tracker) -> None:
        self.cfg, self.tracker = cfg, tracker
        self.enabled = tracker.active and cfg.tracking.figures is not FiguresMode.none
        self.snapshots: list[RatioSnapshot] = []
        self.rng = np.random.default_rng(cfg.seed)

    def learned(self, update: int, step: int, clip: float, stats: UpdateStats) -> None:
        if not self.enabled:
            return
        advantages = stats.advantages
        # With per-minibatch normalisation the sign of A_t that decided clipping is that of
        # A_t minus its minibatch mean; the batch mean is the closest stand-in (exact when one
        # minibatch is the whole batch, as in algo=ppo_clip).
        if self.cfg.algo.adv_norm is AdvNorm.minibatch:
            advantages = normalize_advantages(
                advantages, AdvNorm.minibatch, self.cfg.algo.adv_norm_eps
            )
        if self.snapshots:  # only the latest snapshot keeps its (r, A) sample
            self.snapshots[-1].ratio, self.snapshots[-1].advantages = [], []
        self.snapshots.append(
            summarize(
                update, step, clip, stats.ratio.numpy(), advantages.numpy(), MAX_POINTS, self.rng
            )
        )

    def state_dict(self) -> dict[str, Any]:
        """The snapshots so far and the sampling RNG: a resumed run's figures cover it all."""
        return {"rng": self.rng.bit_generator.state, "snapshots": to_json(self.snapshots)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.snapshots = from_json(state["snapshots"])

    def updated(self, update: int, metrics: dict[str, float], result: TrainResult) -> None:
        """The figures every `tracking.figures_every` updates; those after the last update
        are logged when training has finished, after the model (small artifacts first)."""
        every = self.cfg.tracking.figures_every
        if self.enabled and every and update % every == 0 and update < self.cfg.num_updates:
            self.log(result)

    def finished(self, result: TrainResult, policy: Path | None) -> None:
        if self.enabled:
            self.log(result)

    def log(self, result: TrainResult) -> None:
        run = self.tracker.wait_for_run()
        assert run is not None
        data = RunData(
            label(*run),
            curves_from_history(result.history, result.episodes),
            snapshots=self.snapshots,
        )
        with tempfile.TemporaryDirectory() as tmp:
            page = self.cfg.tracking.figures is FiguresMode.full
            # Smallest first: a store that fills up fails on the ~5 MB page, not on the data.
            paths = sorted(
                write_figures(Path(tmp), data, page=page), key=lambda p: p.stat().st_size
            )
            for path in paths:
                folder = PurePosixPath(FIGURES_DIR, *path.parent.relative_to(tmp).parts)
                self.tracker.log_artifact(path, str(folder))


def figures_hint(cfg: TrainConfig, run_id: str) -> list[str]:
    """The closing summary's line on where the run's figures are."""
    if cfg.tracking.figures is FiguresMode.none:
        return []
    uri = tracking_uri(cfg.tracking)
    # The dashboard command opens the default store unless told another.
    store = "" if uri == default_tracking_uri() else f" --tracking-uri {shlex.quote(uri)}"
    return [
        f"figures: its Artifacts tab, {FIGURES_DIR}/; as files: "
        f"python -m ppo1.dashboard {run_id}{store}"
    ]

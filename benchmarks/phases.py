"""Each measure of the benchmark: env, rollout and update throughput, the matmul ceiling,
end to end, time to solve, tracking overhead."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.budget import Budget, Solved, SolveWatch
from ppo1.config import TrackingConfig, TrainConfig
from ppo1.core.backends import ppo_update
from ppo1.core.checkpoint import build_agent
from ppo1.core.envs import make_vector_env
from ppo1.core.fast.inference import FusedActorCritic
from ppo1.core.loop import next_batch, training_parts
from ppo1.tracked import train
from ppo1.utils.paths import project_root


def env_sps(cfg: TrainConfig, seed: int, steps: int, forward: bool) -> float:
    """Random actions through the training vector env, optionally plus one batched forward."""
    envs = make_vector_env(cfg.env, cfg.env.num_envs)
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(steps)]
    obs, _ = envs.reset(seed=seed)
    with torch.inference_mode():
        policy = FusedActorCritic(build_agent(cfg, envs))
        start = time.perf_counter()
        for action in actions:
            if forward:
                policy(torch.as_tensor(obs, dtype=torch.float32))
            obs, *_ = envs.step(action)
        seconds = time.perf_counter() - start
    envs.close()
    return steps * cfg.env.num_envs / seconds


def bench_config(cfg: TrainConfig, seed: int, timesteps: int, eval_every: int) -> TrainConfig:
    """cfg for one measured run: quiet, untracked, no checkpoint."""
    return replace(
        cfg,
        seed=seed,
        total_timesteps=timesteps,
        eval=replace(cfg.eval, every=eval_every),
        tracking=replace(cfg.tracking, enabled=False),
        verbose=False,
        log_every=0,
        save_model=False,
    )


def phase_sps(cfg: TrainConfig, seed: int, rollouts: int) -> tuple[float, float]:
    """(rollout-only, update-only) env-steps/s; GAE counts as rollout work, as in SB3."""
    envs, agent, optimizer, collector = training_parts(cfg, seed)
    rollout_s = update_s = 0.0
    for _ in range(rollouts):
        start = time.perf_counter()
        _, batch = next_batch(collector, cfg.algo)
        middle = time.perf_counter()
        ppo_update(agent, optimizer, batch, cfg.algo, cfg.algo.clip, cfg.algo.lr)
        rollout_s += middle - start
        update_s += time.perf_counter() - middle
    envs.close()
    steps = rollouts * cfg.batch_size
    return steps / rollout_s, steps / update_s


# The matrix products of an update (`torch.mm`, `torch.addmm`; F.linear arrives as addmm).
MATMULS = ("mm", "addmm")


# (shape, strides) of a tensor: a weight enters its product as a transposed view.
Layout = tuple[tuple[int, ...], tuple[int, ...]]


def _layout(tensor: torch.Tensor) -> Layout:
    return tuple(tensor.shape), tuple(tensor.stride())


@dataclass(frozen=True)
class MatmulCall:
    """A matrix product as an update calls it: `torch.<op>(*operands, out=<out>)`."""

    op: str
    operands: tuple[Layout, ...]
    out: Layout | None


class _MatmulRecorder(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch's is untyped
    """Counts every matrix product reaching ATen, by its operands' layouts."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: Counter[MatmulCall] = Counter()

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        op = func.overloadpacket.__name__
        if op in MATMULS:
            out = kwargs.get("out")
            self.calls[
                MatmulCall(
                    op,
                    tuple(_layout(a) for a in args if isinstance(a, torch.Tensor)),
                    None if out is None else _layout(out),
                )
            ] += 1
        return func(*args, **kwargs)


def update_matmuls(cfg: TrainConfig, seed: int) -> Counter[MatmulCall]:
    """Every matrix product one `ppo_update` calls, and how many times."""
    envs, agent, optimizer, collector = training_parts(cfg, seed)
    _, batch = next_batch(collector, cfg.algo)
    recorder = _MatmulRecorder()
    with recorder:
        ppo_update(agent, optimizer, batch, cfg.algo, cfg.algo.clip, cfg.algo.lr)
    envs.close()
    return recorder.calls


def replay_seconds(calls: Counter[MatmulCall], repeats: int = 200) -> float:
    """Seconds `calls` take replayed back to back on random operands of the same layouts: an
    update reduced to its matrix products, with no other kernel, Python or dispatch."""

    def tensor(layout: Layout) -> torch.Tensor:
        return torch.empty_strided(*layout).normal_()

    total = 0.0
    for call, count in calls.items():
        operands = [tensor(layout) for layout in call.operands]
        out = {} if call.out is None else {"out": tensor(call.out)}
        op = getattr(torch, call.op)
        for _ in range(repeats // 10):  # warm caches and the allocator
            op(*operands, **out)
        start = time.perf_counter()
        for _ in range(repeats):
            op(*operands, **out)
        total += (time.perf_counter() - start) / repeats * count
    return total


def ceiling_sps(cfg: TrainConfig, seed: int, raw_sps: float) -> float:
    """Env-steps/s of a run whose rollout ran at its raw limit (`raw_sps`, random actions +
    one forward a step) and whose update were nothing but its matrix products: what no
    implementation calling this CPU's BLAS for the same products can pass."""
    update_s = replay_seconds(update_matmuls(cfg, seed))
    return cfg.batch_size / (cfg.batch_size / raw_sps + update_s)


def rss_mib() -> float:
    """Resident set size of this process now (Linux /proc; nan elsewhere)."""
    statm = Path("/proc/self/statm")
    if not statm.exists():
        return float("nan")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def end_to_end_sps(cfg: TrainConfig, seed: int, timesteps: int) -> tuple[float, float | None]:
    """(env-steps/s, RSS growth in MiB from the first update to the last) of train().

    Untracked; evaluation (only after the last update) is not counted.
    """
    rss: list[float] = []

    def on_update(step: int, metrics: dict[str, float]) -> None:
        rss[1:] = [rss_mib()]

    result = train(bench_config(cfg, seed, timesteps, eval_every=10**9), on_update=on_update)
    last = result.history[-1]
    return last["step"] / last["time/train_seconds"], rss[-1] - rss[0]


def time_to_solve(cfg: TrainConfig, seed: int, budget: Budget) -> tuple[float, float] | None:
    """(env steps, training seconds without evaluation) until solved, or None within budget."""
    watch = SolveWatch()

    def on_update(step: int, metrics: dict[str, float]) -> None:
        ret = metrics.get("eval/mean_return")
        if ret is not None and watch.see(step, metrics["time/train_seconds"], ret):
            raise Solved

    run_cfg = bench_config(cfg, seed, budget.solve_timesteps, budget.eval_every_updates)
    with contextlib.suppress(Solved):
        train(run_cfg, on_update=on_update)
    return watch.solved_at


def tracking_overhead(
    cfg: TrainConfig,
    seed: int,
    timesteps: int,
    eval_every: int,
    uri: str,
    tracked_first: bool = True,
) -> float:
    """Wall time of train() with MLflow tracking over without, minus 1, in percent.

    The tracked run does all a default run does: metrics, figures, dashboard, checkpoint.
    """
    base = bench_config(cfg, seed, timesteps, eval_every)
    tracked = replace(
        base,
        save_model=cfg.save_model,
        tracking=TrackingConfig(enabled=True, uri=uri, experiment="ppo1-bench-tracking"),
    )
    walls = {}
    for run_cfg in (tracked, base) if tracked_first else (base, tracked):
        start = time.perf_counter()
        train(run_cfg)
        walls[run_cfg.tracking.enabled] = time.perf_counter() - start
    return 100.0 * (walls[True] / walls[False] - 1.0)


def train_process_seconds(overrides: Sequence[str], tracking_uri: str | None) -> float:
    """Wall time of `python -m ppo1.train` in a fresh process, as a user runs it: imports,
    setup, training and, tracked to `tracking_uri`, everything the run writes to MLflow."""
    tracking = ["tracking.enabled=false"]
    if tracking_uri is not None:
        tracking = [f"tracking.uri={tracking_uri}", "tracking.experiment=ppo1-bench-process"]
    command = [sys.executable, "-m", "ppo1.train", *overrides, *tracking, "verbose=false"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=project_root())
    return time.perf_counter() - start

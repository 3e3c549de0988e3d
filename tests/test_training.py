"""Real training runs: SB PPO1 semantics, determinism, MLflow logging, failure statuses."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from ppo1.config import AlgoConfig, TrackingConfig, TrainConfig, to_plain_dict
from ppo1.core.checkpoint import build_agent, load_checkpoint
from ppo1.core.envs import SameStepSyncEnv, make_vector_env
from ppo1.core.evaluation import evaluate
from ppo1.core.fast.optim import FlatAdam
from ppo1.core.fast.update import fast_update
from ppo1.core.loop import Loop
from ppo1.core.networks import ActorCritic
from ppo1.core.rollout import RolloutCollector
from ppo1.core.update import Batch, NonFiniteLossError
from ppo1.evaluate import main as evaluate_cli
from ppo1.report.progress import progress_line
from ppo1.tracked import train
from ppo1.tracking.resume import CHECKPOINT_TAG
from ppo1.tracking.store import _server_problem, open_client, tracking_uri
from ppo1.utils.paths import usable_cpus
from ppo1.utils.signals import (
    StopAfterUpdate,
    interrupts_deferred,
    signal_handlers,
    sigterm_as_interrupt,
)

from .conftest import CONF_DIR as CONF
from .conftest import (
    TINY,
    free_port,
    mlflow_serving,
    one_error_line,
    read_only,
    run_module,
    run_python,
    wait_until,
)

Compose = Callable[[list[str]], TrainConfig]

EXPECTED_METRICS = {
    "charts/episodic_return",
    "charts/episodic_length",
    "charts/SPS",
    "charts/learning_rate",
    "charts/clip_range",
    "losses/policy_loss",
    "losses/value_loss",
    "losses/entropy",
    "losses/approx_kl",
    "losses/kl",
    "losses/clipfrac",
    "losses/explained_variance",
    "eval/mean_return",
}


@pytest.mark.parametrize("total", [1024, 1000])
def test_sb_ppo1_anneals_lr_and_clip_linearly(compose_cfg: Compose, total: int) -> None:
    overrides = ["algo=sb_ppo1", f"total_timesteps={total}", *TINY[1:], "tracking.enabled=false"]
    history = train(compose_cfg(overrides)).history
    # Rollouts until at least T steps (1000 -> 4 of 256, as SB PPO1); the multiplier
    # max(1 - t/T, 0) is taken before each rollout: t = 0, 256, 512, 768.
    assert [h["step"] for h in history] == [256, 512, 768, 1024]
    mults = [1 - t / total for t in (0, 256, 512, 768)]
    assert [h["charts/clip_range"] for h in history] == pytest.approx([0.2 * m for m in mults])
    assert [h["charts/learning_rate"] for h in history] == pytest.approx([1e-3 * m for m in mults])


@pytest.mark.parametrize(("drop_last", "steps_per_epoch"), [(True, 3), (False, 4)])
def test_partial_minibatch_dropped_like_sb_ppo1(drop_last: bool, steps_per_epoch: int) -> None:
    torch.manual_seed(0)
    agent = ActorCritic(4, gym.spaces.Discrete(2), AlgoConfig().net)
    optimizer = FlatAdam(agent.parameters(), lr=1e-3)
    n = 250  # 250 / 64: three full minibatches and a partial one of 58
    obs = torch.randn(n, 4)
    with torch.no_grad():
        params, values = agent(obs)
    actions = agent.dist.sample(params)
    batch = Batch(
        obs,
        actions,
        agent.dist.log_prob(params, actions),
        values,
        params,
        torch.randn(n),
        torch.randn(n),
    )
    cfg = AlgoConfig(epochs=4, minibatch_size=64, drop_last=drop_last)
    stats = fast_update(agent, optimizer, batch, cfg, clip=0.2)
    assert optimizer.steps == 4 * steps_per_epoch and stats.epochs == 4
    assert stats.kl > 0 and stats.ratio.shape == (n,)


def test_same_seed_gives_identical_metrics(compose_cfg: Compose) -> None:
    overrides = ["total_timesteps=1024", *TINY[1:], "tracking.enabled=false", "seed=5"]
    runs = [train(compose_cfg(overrides)) for _ in range(2)]
    timing = {"charts/SPS", "time/train_seconds", "time/eval_seconds"}
    strip = [[{k: v for k, v in h.items() if k not in timing} for h in r.history] for r in runs]
    assert strip[0] == strip[1]
    assert [e.ret for e in runs[0].episodes] == [e.ret for e in runs[1].episodes]
    other = train(compose_cfg([*overrides[:-1], "seed=6"]))
    assert [e.ret for e in other.episodes] != [e.ret for e in runs[0].episodes]


def test_run_is_logged_to_mlflow_and_policy_reloads(
    compose_cfg: Compose, mlflow_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_cfg([*TINY, f"tracking.uri={mlflow_uri}", "algo.clip=0.15"])
    result = train(cfg, tags={"ppo1.command": "pytest"})
    client = MlflowClient(mlflow_uri)
    run = client.get_run(str(result.run_id))
    assert run.info.status == "FINISHED"
    assert run.data.params["algo.clip"] == "0.15"
    assert run.data.params["env.id"] == "CartPole-v1"
    assert run.data.params["algo.net.hidden"] == "[64, 64]"
    assert set(run.data.metrics) >= EXPECTED_METRICS
    assert run.data.tags["ppo1.command"] == "pytest"
    # Every metric is stepped by environment timesteps.
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "losses/kl")]
    assert steps == [256, 512]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model"} <= artifacts
    local = client.download_artifacts(run.info.run_id, "model/policy.pt", str(tmp_path))
    agent, loaded_cfg = load_checkpoint(Path(local))
    assert loaded_cfg.algo.clip == 0.15
    env = make_vector_env(loaded_cfg.env, 2)
    returns = evaluate(agent, env, episodes=2, seed=0)
    assert len(returns) == 2 and np.all(returns > 0)
    evaluate_cli([str(result.run_id), "--tracking-uri", mlflow_uri, "--episodes", "3"])
    assert "CartPole-v1: mean return" in capsys.readouterr().out


def test_observation_statistics_train_and_travel_with_the_policy(
    compose_cfg: Compose, mlflow_uri: str, tmp_path: Path
) -> None:
    overrides = ["env=pendulum", "env.normalize_obs=true", f"tracking.uri={mlflow_uri}"]
    cfg = compose_cfg([*overrides, *TINY])
    result = train(cfg)
    client = MlflowClient(mlflow_uri)
    local = client.download_artifacts(str(result.run_id), "model/policy.pt", str(tmp_path))
    agent, loaded_cfg = load_checkpoint(Path(local))
    assert loaded_cfg.env.normalize_obs and agent.obs_norm is not None
    # The one update's rollout (the Pendulum preset's 4 x 1024 observations) went into them.
    assert float(agent.obs_norm.count) == pytest.approx(4096 + 1e-4)
    # Pendulum observes (cos, sin, angular velocity): the velocity spreads much wider.
    assert agent.obs_norm.var[2] > 2 * agent.obs_norm.var[:2].max()
    # The saved statistics are used: evaluating with them differs from evaluating without.
    env = make_vector_env(loaded_cfg.env, 2)
    with_stats = evaluate(agent, env, episodes=2, seed=0)
    agent.obs_norm = None
    without = evaluate(agent, env, episodes=2, seed=0)
    assert with_stats.shape == (2,) and not np.array_equal(with_stats, without)


def test_reward_statistics_train_and_travel_with_the_policy(
    compose_cfg: Compose, mlflow_uri: str, tmp_path: Path
) -> None:
    overrides = ["env=pendulum", "env.normalize_reward=true", f"tracking.uri={mlflow_uri}"]
    result = train(compose_cfg([*overrides, *TINY]))
    client = MlflowClient(mlflow_uri)
    local = client.download_artifacts(str(result.run_id), "model/policy.pt", str(tmp_path))
    agent, loaded_cfg = load_checkpoint(Path(local))
    assert loaded_cfg.env.normalize_reward and agent.reward_norm is not None
    # One discounted return per env and step: 4 envs x 1024 steps.
    assert float(agent.reward_norm.stats.count) == pytest.approx(4096 + 1e-4)
    assert float(agent.reward_norm.stats.var) > 1.0  # Pendulum's returns spread by tens
    # Training episodes keep raw returns: an untrained Pendulum policy scores about -1200 per
    # 200-step episode; scaled rewards (about -0.3 each) would sum to about -60.
    assert np.mean([e.ret for e in result.episodes]) < -500


@pytest.mark.parametrize("env_name", sorted(p.stem for p in (CONF / "env").glob("*.yaml")))
def test_every_env_group_builds_and_steps(compose_cfg: Compose, env_name: str) -> None:
    cfg = compose_cfg([f"env={env_name}"])
    env = make_vector_env(cfg.env, 2)
    env.reset(seed=0)
    _, reward, *_ = env.step(env.action_space.sample())
    assert reward.shape == (2,)
    env.close()


def test_mujoco_warnings_are_printed_once_per_process() -> None:
    # MuJoCo 4 warns on every HalfCheetah model compiled (a deprecated attribute in
    # Gymnasium's XML): 6 identical warnings for these 2 x 3 envs without the handler.
    script = (
        "import mujoco\n"
        "from benchmarks.bench import compose_config\n"
        "from ppo1.core.envs import make_vector_env\n"
        "for _ in range(2):\n"
        "    make_vector_env(compose_config(['env=halfcheetah']).env, 3).close()\n"
        "print(mujoco.get_mju_user_warning() is not None)\n"
    )
    out = run_python(script, timeout=120, check=True)
    assert out.stdout.strip() == "True"  # the handler is in place
    warnings = [line for line in out.stderr.splitlines() if line.startswith("WARNING:")]
    assert len(warnings) == len(set(warnings)), out.stderr


def test_ctrl_c_marks_run_killed_and_keeps_metrics(compose_cfg: Compose, mlflow_uri: str) -> None:
    cfg = compose_cfg(["total_timesteps=2048", *TINY[1:], f"tracking.uri={mlflow_uri}"])

    def interrupt_after_two(step: int, _: dict[str, float]) -> None:
        if step >= 512:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_update=interrupt_after_two)
    run = MlflowClient(mlflow_uri).search_runs(["1"])[0]
    assert run.info.status == "KILLED"
    history = MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "losses/kl")
    assert [m.step for m in history] == [256, 512]


class NanRewardEnv(gym.Env[np.ndarray, int]):
    """Rewards turn NaN after 300 steps: training must stop with a clear error, run FAILED."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):  # type: ignore[override]
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action: int):  # type: ignore[override]
        NanRewardEnv.steps += 1
        reward = float("nan") if NanRewardEnv.steps > 300 else 1.0
        return np.zeros(2, np.float32), reward, False, False, {}


def test_nan_stops_training_and_marks_run_failed(compose_cfg: Compose, mlflow_uri: str) -> None:
    gym.register("tests/NanReward-v0", entry_point=NanRewardEnv, max_episode_steps=20)
    NanRewardEnv.steps = 0
    cfg = compose_cfg(
        [
            "env.id=tests/NanReward-v0",
            "env.num_envs=1",
            "algo.n_steps=256",
            "total_timesteps=2048",
            *TINY[1:],
            f"tracking.uri={mlflow_uri}",
        ]
    )
    with pytest.raises(NonFiniteLossError, match="non-finite loss"):
        train(cfg)
    client = MlflowClient(mlflow_uri)
    run = client.search_runs(["1"])[0]
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["ppo1.error"]
    # The first update (all rewards finite) was logged and kept.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "losses/kl")] == [256]


@pytest.mark.parametrize("tracked", [False, True])
def test_training_never_imports_mlflow(tmp_path: Path, tracked: bool) -> None:
    # `import mlflow` and the store's first open take seconds of the training core: an
    # untracked run never pays them, and a tracked one leaves them to its writer process.
    if tracked and usable_cpus() < 2:
        pytest.skip("a one-CPU job is its own MLflow client")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = [f"tracking.uri={uri}"] if tracked else ["tracking.enabled=false"]
    # run_module as __main__, like `python -m`: Hydra finds conf/ from the script's file (an
    # imported `main` looks for a `conf` package, fails, and no training would run at all).
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['ppo1.train', *{tracking!r}, *{TINY!r}, 'verbose=true']\n"
        "try:\n"
        "    runpy.run_module('ppo1.train', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    out = run_python(script, timeout=300, check=True)
    assert "final evaluation" in out.stdout, out.stderr  # the run trained
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    # Nothing else: not even MLflow's notes on creating the store, amid the progress lines.
    assert out.stderr == ""
    if tracked:  # and its writer stored all of it
        client = MlflowClient(uri)
        (run,) = client.search_runs(["1"])
        assert f"MLflow run {run.info.run_id}" in out.stdout
        assert run.info.status == "FINISHED" and run.data.params["algo.clip"] == "0.2"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "losses/kl")] == [
            256,
            512,
        ]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"config.yaml", "figures", "model"}
        figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
        assert "figures/ratio_snapshots.json" in figures


def test_continuous_actions_train_through_the_same_path(compose_cfg: Compose) -> None:
    # 4 envs x 64 steps (the preset's 1024 would make one update of the 512 steps).
    cfg = compose_cfg(["env=pendulum", "algo.n_steps=64", *TINY, "tracking.enabled=false"])
    result = train(cfg)
    assert len(result.history) == 2 and np.isfinite(result.final_eval)
    assert result.history[-1]["losses/kl"] > 0


def test_native_cartpole_autoresets_on_the_same_step(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["env.max_episode_steps=5"])
    env = make_vector_env(cfg.env, 3)
    obs, _ = env.reset(seed=0)
    for _ in range(4):
        obs, *_ = env.step(np.zeros(3, dtype=np.int64))
    obs, _, terminated, truncated, info = env.step(np.zeros(3, dtype=np.int64))
    done = terminated | truncated
    assert done.all() and info["_final_obs"].all()
    # Returned obs are fresh starts (|state| <= 0.05); the final obs moved away from them.
    assert np.abs(obs).max() <= 0.05
    assert not np.allclose(np.stack(info["final_obs"]), obs)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Acrobot-v1"])
def test_loop_env_matches_gymnasium_sync_vector_env(env_id: str) -> None:
    # A short time limit, and Acrobot's random policy, give truncations and terminations.
    ours = SameStepSyncEnv([lambda: gym.make(env_id, max_episode_steps=7) for _ in range(3)])
    theirs = gym.vector.SyncVectorEnv(
        [lambda: gym.make(env_id, max_episode_steps=7) for _ in range(3)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    assert ours.observation_space == theirs.observation_space
    assert ours.action_space == theirs.action_space
    np.testing.assert_array_equal(ours.reset(seed=5)[0], theirs.reset(seed=5)[0])
    theirs.action_space.seed(0)
    ends = 0
    for _ in range(30):
        action = theirs.action_space.sample()
        got, want = ours.step(action), theirs.step(action)
        for a, b in zip(got[:4], want[:4], strict=True):
            np.testing.assert_array_equal(a, b)
        done = want[2] | want[3]
        if done.any():
            ends += int(done.sum())
            np.testing.assert_array_equal(got[4]["_final_obs"], want[4]["_final_obs"])
            for i in np.flatnonzero(done):
                np.testing.assert_array_equal(got[4]["final_obs"][i], want[4]["final_obs"][i])
        else:
            assert "final_obs" not in got[4]
    assert ends >= 6


def test_async_envs_collect_the_same_rollout_as_the_loop(compose_cfg: Compose) -> None:
    # `async` is a Python keyword, yet the override must read as users type it.
    cfgs = [
        compose_cfg(["env=acrobot", "env.max_episode_steps=9", f"env.vectorization={mode}"])
        for mode in ("async", "sync")
    ]
    envs = [make_vector_env(cfg.env, 3) for cfg in cfgs]
    assert isinstance(envs[0], gym.vector.AsyncVectorEnv)
    assert isinstance(envs[1], SameStepSyncEnv)
    buffers = []
    for env in envs:
        torch.manual_seed(0)
        agent = ActorCritic(6, env.single_action_space, cfgs[0].algo.net)  # type: ignore[arg-type]
        collector = RolloutCollector(env, agent, n_steps=20, bootstrap_truncation=True, seed=4)
        collector.collect()
        buffers.append(collector.buffer)
        env.close()
    ours, loop = buffers
    assert loop.truncated.any()  # so the final-observation path is compared too
    for key in ("obs", "actions", "rewards", "dones", "truncated", "next_values"):
        assert torch.equal(getattr(ours, key), getattr(loop, key)), key


def test_truncation_bootstraps_from_the_final_observation(compose_cfg: Compose) -> None:
    cfg = compose_cfg(["env.max_episode_steps=5"])
    env = make_vector_env(cfg.env, 2)
    torch.manual_seed(0)
    agent = ActorCritic(4, env.single_action_space, cfg.algo.net)  # type: ignore[arg-type]
    collector = RolloutCollector(env, agent, n_steps=12, bootstrap_truncation=True, seed=0)
    collector.collect()
    buf = collector.buffer
    trunc = buf.truncated
    assert trunc.any() and not (buf.terminated & trunc).any()
    # At a truncation the next value is V(final obs), not V(reset obs) stored at t + 1.
    t, n = trunc.nonzero()[0].tolist()
    assert buf.next_values[t, n] == buf.final_values[t, n]
    assert buf.next_values[t, n] != buf.values[t + 1, n]

    sb = RolloutCollector(env, agent, n_steps=12, bootstrap_truncation=False, seed=0)
    sb.collect()
    assert (sb.buffer.terminated == sb.buffer.dones).all()


def run_train(
    *overrides: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_module("ppo1.train", *overrides, timeout=timeout, env=env)


@pytest.mark.parametrize(
    ("env_id", "message"),
    [
        ("FrozenLake-v1", "observations must be a flat Box, got Discrete(16)"),
        ("Blackjack-v1", "observations must be a flat Box, got Tuple("),
        ("CarRacing-v3", "observations must be a flat Box, got Box(0, 255, (96, 96, 3)"),
    ],
)
def test_unsupported_env_spaces_fail_before_any_run(
    tmp_path: Path, env_id: str, message: str
) -> None:
    db = tmp_path / "mlflow.db"
    proc = run_train(f"env.id={env_id}", f"tracking.uri=sqlite:///{db}", *TINY)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid config: env.id {env_id!r}: ")
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not db.exists()  # the envs are checked before the tracking store is opened


@pytest.mark.parametrize(
    ("uri", "cause"),
    [
        ("{tmp}/a-directory", "not a store ppo1 can use: give sqlite:///PATH/mlflow.db"),
        ("bogus://foo", "unsupported URI scheme 'bogus': give sqlite:///PATH/mlflow.db"),
        ("http://127.0.0.1:{port}", "no server answers at http://127.0.0.1:{port}/health"),
        ("sqlite:///{tmp}/missing/dir/mlflow.db", "directory {tmp}/missing/dir does not exist"),
    ],
)
def test_bad_tracking_uri_fails_fast_with_one_message(tmp_path: Path, uri: str, cause: str) -> None:
    port = free_port()
    uri, cause = (s.format(tmp=tmp_path, port=port) for s in (uri, cause))
    start = time.monotonic()
    # MLflow alone retried the dead server for ~250 s, then printed a ~90-line traceback.
    proc = run_train(f"tracking.uri={uri}", *TINY, timeout=60, env={"PPO1_HOME": str(tmp_path)})
    assert time.monotonic() - start < 60
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: invalid config: tracking.uri {uri!r}: ")
    assert cause in lines[0]
    assert not (tmp_path / "missing").exists()  # MLflow would have created it
    # Refused before training: no checkpoint folder (a bogus scheme used to train, then fail).
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("folder", ["mlruns", "mlruns/artifacts"])
def test_a_read_only_store_fails_before_training(tmp_path: Path, folder: str) -> None:
    # It failed once training had ended: 614 lines, 15 tracebacks, the trained policy lost.
    (tmp_path / "mlruns" / "artifacts").mkdir(parents=True)
    home = {"PPO1_HOME": str(tmp_path), "MLFLOW_TRACKING_URI": ""}
    with read_only(tmp_path / folder):
        proc = run_train(*TINY[:-1], "verbose=true", env=home)
    store = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    line = one_error_line(proc)
    assert line.startswith(f"error: invalid config: the default store {store!r}: ")
    assert f"cannot write in {tmp_path / folder} (Read-only file system)" in line
    assert "update" not in proc.stdout


def test_a_store_in_an_unwritable_directory_fails_fast() -> None:
    # MLflow alone retried for ~3.5 minutes, after training, then dropped the run.
    start = time.monotonic()
    proc = run_train("tracking.uri=sqlite:////proc/mlflow.db", *TINY[:-1], "verbose=true")
    assert time.monotonic() - start < 30
    assert "cannot write in /proc" in one_error_line(proc)
    assert "update" not in proc.stdout


def test_a_garbage_tracking_uri_from_the_environment_is_named_as_such() -> None:
    # MLflow took it for a file store and printed its page about that store's maintenance.
    proc = run_train(*TINY, env={"MLFLOW_TRACKING_URI": "garbage"})
    assert one_error_line(proc) == (
        "error: invalid config: $MLFLOW_TRACKING_URI 'garbage': not a store ppo1 can use: "
        "give sqlite:///PATH/mlflow.db (a SQLite file) or http://HOST:PORT (a tracking server)"
    )


def test_the_default_store_directory_is_still_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PPO1_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    open_client(tracking_uri(TrackingConfig()))
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_a_server_that_answers_passes_the_health_check() -> None:
    # Any HTTP answer (here a 404) means a live server: MLflow's own retries then apply.
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.handle_request)
    thread.start()
    try:
        assert _server_problem(f"http://127.0.0.1:{server.server_port}") is None
    finally:
        thread.join(timeout=10)
        server.server_close()
    assert "Connection refused" in str(_server_problem(f"http://127.0.0.1:{free_port()}"))


@pytest.mark.slow
@pytest.mark.parametrize("writer", [True, False])
def test_a_tracking_server_that_dies_mid_run_is_reported_as_such(
    tmp_path: Path, writer: bool
) -> None:
    writes = f"tracking.writer_process={str(writer).lower()}"
    # Without the writer, the trainer's own MLflow client retries for ~4 minutes first.
    retries = {} if writer else {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
    db = f"sqlite:///{tmp_path / 'server.db'}"
    server_args = ["server", "--backend-store-uri", db, "--workers", "1"]
    artifacts = ["--artifacts-destination", str(tmp_path / "artifacts")]
    with mlflow_serving([*server_args, *artifacts], tmp_path) as (url, server):
        checkpoints = f"checkpoint_dir={tmp_path / 'checkpoints'}"  # not the checkout's mlruns/
        done = run_train(
            f"tracking.uri={url}", writes, checkpoints, *TINY[:-1], "tracking.figures=none"
        )
        assert done.returncode == 0, done.stderr
        # `mlflow ui --backend-store-uri http://...` opens nothing: the server has its own UI.
        assert f"  this run: {url}/#/experiments/1/runs/" in done.stdout
        assert "mlflow ui" not in done.stdout
        assert "View run" not in done.stdout  # MLflow prints it there when its client ends a run
        (run,) = MlflowClient(db).search_runs(["1"])
        evaluated = run_module("ppo1.evaluate", run.info.run_id, "--tracking-uri", url)
        assert evaluated.returncode == 0, evaluated.stderr
        for proc in (done, evaluated):  # no "View run ... at:" lines, no download progress bar
            assert proc.stderr == ""

        long_run = [f"tracking.uri={url}", writes, checkpoints, "total_timesteps=1000000"]
        training = subprocess.Popen(
            [sys.executable, "-m", "ppo1.train", *long_run, "verbose=true"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **retries},
        )

        def both_runs_have_params() -> bool:
            # Not only the run: its params say its creator had the server's answer, so the
            # trainer knows the run's id (a run stored but never answered is nobody's to name).
            return sum(bool(r.data.params) for r in MlflowClient(db).search_runs(["1"])) == 2

        wait_until(both_runs_have_params, 120, training)
        assert training.stdout is not None and training.stdout.readline().startswith("update")
        os.killpg(server.pid, signal.SIGKILL)
        stdout, stderr = training.communicate(timeout=120)
    (running,) = MlflowClient(db).search_runs(["1"], "attributes.status = 'RUNNING'")
    line = one_error_line(subprocess.CompletedProcess([], training.returncode, stdout, stderr), 1)
    # It said "invalid config", exit 2, as if the URI had been wrong from the start.
    assert line == (
        f"error: the tracking server at {url} stopped answering: no server answers at "
        f"{url}/health ([Errno 111] Connection refused); the MLflow run {running.info.run_id} "
        "stays RUNNING (its end could not be stored); to resume: python -m ppo1.train "
        f"resume={running.info.run_id}"
    )


def test_ctrl_c_while_the_run_is_set_up_marks_it_killed(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = compose_cfg([*TINY, f"tracking.uri={mlflow_uri}"])

    log_batch = MlflowClient.log_batch
    calls = []

    def interrupted_once(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return log_batch(self, *args, **kwargs)

    # Logging the params: the run exists but Tracker.__enter__ has not returned.
    monkeypatch.setattr(MlflowClient, "log_batch", interrupted_once)
    with pytest.raises(KeyboardInterrupt) as err:
        train(cfg)
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert run.info.status == "KILLED"
    assert err.value.__notes__ == [f"the MLflow run {run.info.run_id} is marked KILLED"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_create_run_still_marks_the_run_killed(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch, signum: int
) -> None:
    cfg = compose_cfg([*TINY, f"tracking.uri={mlflow_uri}"])
    create_run = MlflowClient.create_run

    def signalled_before_returning(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        run = create_run(self, *args, **kwargs)
        os.kill(os.getpid(), signum)  # the run is stored, its id not yet known
        return run

    monkeypatch.setattr(MlflowClient, "create_run", signalled_before_returning)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        train(cfg)
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert run.info.status == "KILLED"


def test_a_second_stop_inside_a_store_write_waits_for_the_write(
    compose_cfg: Compose, mlflow_uri: str
) -> None:
    # A second Ctrl-C stops training at once, but not inside a write to the store: cut
    # mid-transaction, SQLite kept its write lock on the connection, and the run's end
    # failed 'database is locked' (the run left RUNNING; 2 in 25 double stops of a sweep).
    cfg = compose_cfg([*TINY, f"tracking.uri={mlflow_uri}", "tracking.writer_process=false"])
    inserts: list[str] = []

    def two_stops_inside_a_metrics_insert(_: Any, __: Any, statement: str, *rest: Any) -> None:
        if statement.startswith("INSERT INTO metrics") and not inserts:
            inserts.append(statement)
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    event.listen(Engine, "after_cursor_execute", two_stops_inside_a_metrics_insert)
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
            train(cfg)
    finally:
        event.remove(Engine, "after_cursor_execute", two_stops_inside_a_metrics_insert)
    assert inserts
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert run.info.status == "KILLED"
    assert run.data.metrics  # the cut batch's rows too, written whole before the stop


def test_a_stop_held_back_by_a_write_reaches_the_handler_it_was_meant_for() -> None:
    stop = StopAfterUpdate()  # training's: a first stop waits for the update's end
    with signal_handlers((signal.SIGINT,), stop):
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum is None
        assert stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt), interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # the second stops, once the write is whole


def test_a_stop_after_the_last_updates_check_is_not_lost(
    compose_cfg: Compose, mlflow_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM in the instant between the last update's check and the loop's handlers going:
    # held by them, it must still stop the run (a sweep once ended 0 and told its trial).
    cfg = compose_cfg([*TINY, f"tracking.uri={mlflow_uri}"])
    updates = Loop.updates

    def signalled_after_the_last_check(self: Loop, stop: StopAfterUpdate) -> None:
        updates(self, stop)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Loop, "updates", signalled_after_the_last_check)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        train(cfg)
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert run.info.status == "KILLED"


def interrupt_after_first_update(
    *overrides: str, signum: int = signal.SIGINT
) -> subprocess.CompletedProcess[str]:
    """`python -m ppo1.train` sent SIGINT (or `signum`) once its first progress line is out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ppo1.train", "total_timesteps=1000000", "verbose=true", *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("update")
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_ctrl_c_message_names_the_run_only_when_there_is_one(mlflow_uri: str) -> None:
    untracked = interrupt_after_first_update("tracking.enabled=false")
    assert untracked.returncode == 130 and untracked.stderr.strip() == "interrupted"
    tracked = interrupt_after_first_update(f"tracking.uri={mlflow_uri}", "tracking.figures=none")
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert tracked.returncode == 130 and run.info.status == "KILLED"
    # The last line: MLflow logs INFO lines of its own when it creates a store.
    last = tracked.stderr.strip().splitlines()[-1]
    run_id = run.info.run_id
    resume = f"to resume: python -m ppo1.train resume={run_id}"
    assert last == f"interrupted: the MLflow run {run_id} is marked KILLED; {resume}"


def test_sigterm_ends_the_run_killed_like_ctrl_c(mlflow_uri: str) -> None:
    # What a cluster scheduler sends at a time limit; by default it kills Python on the spot.
    done = interrupt_after_first_update(f"tracking.uri={mlflow_uri}", signum=signal.SIGTERM)
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert done.returncode == 130 and run.info.status == "KILLED"
    assert MlflowClient(mlflow_uri).get_metric_history(run.info.run_id, "losses/kl")
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: the MLflow run {run.info.run_id} is marked KILLED; ")


@pytest.mark.parametrize(
    ("command", "signum"),
    [(["nohup"], signal.SIGHUP), ([], signal.SIGINT)],
    ids=["nohup, then the terminal closes", "a background job, then Ctrl-C to its group"],
)
def test_a_signal_the_run_was_started_ignoring_stays_ignored(
    mlflow_uri: str, command: list[str], signum: int
) -> None:
    # nohup ignores SIGHUP; a shell without job control starts `cmd &` with SIGINT ignored.
    args = ["ppo1.train", "total_timesteps=16384", "verbose=true", "eval.every=100"]
    proc = subprocess.Popen(
        [*command, sys.executable, "-m", *args, f"tracking.uri={mlflow_uri}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # The shell's part, where nohup is not the one ignoring it.
        preexec_fn=None if command else lambda: signal.signal(signum, signal.SIG_IGN),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith("update")
    for _ in range(2):  # a second one would stop a run that handled the first at once
        proc.send_signal(signum)
        time.sleep(0.1)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-2000:]
    assert "final evaluation" in stdout
    (run,) = MlflowClient(mlflow_uri).search_runs(["1"])
    assert run.info.status == "FINISHED"


def test_divergence_message_mentions_no_run_when_untracked() -> None:
    script = (
        "import runpy, sys, gymnasium as gym\n"
        "from tests.test_training import NanRewardEnv\n"
        "gym.register('tests/NanReward-v0', entry_point=NanRewardEnv, max_episode_steps=20)\n"
        "sys.argv = ['ppo1.train', 'env.id=tests/NanReward-v0', 'env.num_envs=1',\n"
        "            'algo.n_steps=256', 'total_timesteps=2048', 'tracking.enabled=false',\n"
        f"            *{TINY[1:]!r}]\n"
        "runpy.run_module('ppo1.train', run_name='__main__')\n"
    )
    proc = run_python(script, timeout=120)
    assert proc.returncode == 1
    # (Before it, runpy warns that the test module imported ppo1.train.)
    assert proc.stderr.strip().splitlines()[-1].startswith("error: training diverged: non-finite")
    assert proc.stderr.strip().endswith("lower algo.lr or algo.clip")  # no run to name
    assert "Traceback" not in proc.stderr


def test_evaluate_refuses_what_it_cannot_evaluate_with_one_message(
    compose_cfg: Compose, mlflow_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A tracked run without a model artifact, as interrupted runs are: its resume.pt is
    # evaluated while its checkpoint folder is on this machine, and refused once it is not.
    no_model = train(compose_cfg([*TINY, f"tracking.uri={mlflow_uri}", "save_model=false"]))
    capsys.readouterr()
    evaluate_cli([str(no_model.run_id), "--tracking-uri", mlflow_uri, "--episodes", "2"])
    out = capsys.readouterr().out
    folder = Path(MlflowClient(mlflow_uri).get_run(str(no_model.run_id)).data.tags[CHECKPOINT_TAG])
    assert out.startswith(f"run {no_model.run_id} has no model artifact: evaluating {folder}/")
    assert "CartPole-v1: mean return" in out
    shutil.rmtree(folder)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    foreign = tmp_path / "weights.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    unknown = "0" * 32
    cases = [
        ([unknown], f"error: '{unknown}' is neither a file nor a run in {mlflow_uri}"),
        (["missing/policy.pt"], "error: 'missing/policy.pt' is neither a file nor a run in"),
        ([str(text)], f"error: {text} is not a ppo1 checkpoint (UnpicklingError"),
        ([str(foreign)], f"error: {foreign} is not a ppo1 checkpoint (KeyError: 'config')"),
        ([str(no_model.run_id)], f"error: run {no_model.run_id} has no saved model (model/"),
        ([str(foreign), "--episodes", "0"], "argument --episodes: must be >= 1, got 0"),
        ([str(foreign), "--num-envs", "0"], "argument --num-envs: must be >= 1, got 0"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_:
            evaluate_cli([*args, "--tracking-uri", mlflow_uri])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err, (args, err)
        assert "Traceback" not in err


def test_evaluate_refuses_checkpoints_of_another_shape_with_one_line(
    compose_cfg: Compose, tmp_path: Path
) -> None:
    # Each printed 53-61 lines of traceback (OmegaConf's, then torch's load_state_dict).
    cartpole = to_plain_dict(compose_cfg([]))
    pendulum_env = make_vector_env(compose_cfg(["env=pendulum"]).env, 1)
    pendulum = build_agent(compose_cfg(["env=pendulum"]), pendulum_env).state_dict()
    cases = {
        "empty.pt": ({}, cartpole, "its weights do not fit the CartPole-v1 policy"),
        "other-env.pt": (pendulum, cartpole, "size mismatch for pi_body.0.weight"),
        "unknown-key.pt": ({}, {**cartpole, "bogus": 1}, "ConfigKeyError: Key 'bogus' not in"),
    }
    for name, (state_dict, config, message) in cases.items():
        torch.save({"state_dict": state_dict, "config": config}, tmp_path / name)
        proc = run_module("ppo1.evaluate", str(tmp_path / name))
        line = one_error_line(proc)
        assert line.startswith(f"error: {tmp_path / name}: its ") and message in line, line


def test_progress_line_shows_a_dash_until_an_episode_ends(compose_cfg: Compose) -> None:
    cfg = compose_cfg([])
    metrics = {"losses/kl": 0.01, "losses/clipfrac": 0.1, "charts/SPS": 5000.0}
    line = progress_line(1, cfg, 256, metrics)
    assert "| return        - |" in line and "nan" not in line
    assert "| return    123.5 |" in progress_line(
        1, cfg, 256, {**metrics, "rollout/ep_rew_mean": 123.5}
    )

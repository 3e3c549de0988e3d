"""Saving a trained policy with its resolved config, and loading it back for evaluation."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from gymnasium.vector import VectorEnv
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ppo1.config import ConfigError, TrainConfig, to_plain_dict
from ppo1.core.envs import make_vector_env
from ppo1.core.networks import ActorCritic, ObsNormalizer, RewardNormalizer

RESUME_FILE = "resume.pt"
POLICY_FILE = "policy.pt"
# What a resume.pt holds (written by ppo1.core.loop.Loop.state).
STATE_KEYS = (
    "config",
    "update",
    "global_step",
    "agent",
    "optimizer",
    "torch_rng",
    "figures",
    "history",
    "episodes",
    "evals",
)


def build_agent(cfg: TrainConfig, env: VectorEnv) -> ActorCritic:
    obs_space = env.single_observation_space
    assert obs_space.shape is not None
    obs_dim = obs_space.shape[0]
    norm = ObsNormalizer(obs_dim, cfg.env.clip_obs) if cfg.env.normalize_obs else None
    # Sized by the config, not `env`: evaluation rebuilds the agent around a single env.
    reward_norm = (
        RewardNormalizer(cfg.env.num_envs, cfg.algo.gamma, cfg.env.clip_reward)
        if cfg.env.normalize_reward
        else None
    )
    return ActorCritic(obs_dim, env.single_action_space, cfg.algo.net, norm, reward_norm)  # type: ignore[arg-type]


def save_atomically(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename it over `path`: a process
    killed mid-write leaves the previous file whole, never a truncated one."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(payload, partial)
    os.replace(partial, path)


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create the checkpoint folder {folder}: {err}") from err


def save_checkpoint(path: Path, agent: ActorCritic, cfg: TrainConfig) -> None:
    """Plain tensors and containers only, so `torch.load(..., weights_only=True)` can read it."""
    save_atomically({"state_dict": agent.state_dict(), "config": to_plain_dict(cfg)}, path)


class CheckpointError(ValueError):
    """A file that is not a checkpoint `save_checkpoint` wrote."""


def _cause(err: BaseException) -> str:
    """An exception as one short clause: torch's and OmegaConf's messages run over lines."""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"


def load_payload(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """A checkpoint's contents, which must hold `keys`; anything else is a CheckpointError."""
    try:
        payload: dict[str, Any] = torch.load(path, weights_only=True)
        missing = [key for key in keys if key not in payload]
        if missing:
            raise KeyError(missing[0])
    except Exception as err:  # torch.load raises pickle, zip, EOF and runtime errors alike
        raise not_a_checkpoint(path, err) from err
    return payload


def not_a_checkpoint(path: Path, err: BaseException) -> CheckpointError:
    return CheckpointError(f"{path} is not a ppo1 checkpoint ({_cause(err)})")


def config_from_plain(config: dict[str, Any], where: str) -> TrainConfig:
    """The typed config a checkpoint was written with (its checks run again)."""
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), config))
    except (OmegaConfBaseException, ValueError) as err:  # ValueError: ConfigError included
        raise CheckpointError(f"{where}: its config is not a ppo1 config ({_cause(err)})") from err
    assert isinstance(cfg, TrainConfig)
    return cfg


def load_checkpoint(path: Path) -> tuple[ActorCritic, TrainConfig]:
    """The policy and the config it was trained with, from a policy.pt or a resume.pt (the
    last checkpointed update of an unfinished run); the env is rebuilt to size the network.

    A file of another shape (another program's, another version's) is a CheckpointError
    naming the part that does not fit.
    """
    payload = load_payload(path, ("config",))
    weights = "agent" if "agent" in payload else "state_dict"  # resume.pt, or policy.pt
    if weights not in payload:
        raise not_a_checkpoint(path, KeyError(weights))
    cfg = config_from_plain(payload["config"], str(path))
    env = make_vector_env(cfg.env, 1)
    agent = build_agent(cfg, env)
    env.close()
    try:
        agent.load_state_dict(payload[weights])
    except (RuntimeError, TypeError) as err:  # missing or misshapen weights; not a dict
        raise CheckpointError(
            f"{path}: its weights do not fit the {cfg.env.id} policy its config describes "
            f"({_cause(err)})"
        ) from err
    return agent, cfg

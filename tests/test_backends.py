"""One loss, two backends: every setting of the algo schema trains the same with both, or the
fast backend refuses it.

The settings are found by walking `dataclasses.fields(AlgoConfig)` (into `NetworkConfig`), and
each non-default value is built from the field's type alone: a field added to the schema is
checked without anyone listing it here. A loss term added to `losses.ppo_loss` without its
analytic gradient makes `algo.backend=fast` train something else than `autograd` does, and
its field fails here (docs/adding-a-loss-term.md).
"""

from __future__ import annotations

import math
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from enum import Enum
from typing import Any, Union, get_args, get_origin, get_type_hints

import gymnasium as gym
import pytest
import torch
from torch import Tensor

from ppo1.config import AlgoConfig, Backend, ConfigError, NetworkConfig, TrainConfig
from ppo1.core.backends import check_backend, make_optimizer, ppo_update
from ppo1.core.networks import ActorCritic
from ppo1.core.update import Batch, UpdateStats
from ppo1.tracked import train

# A base small enough to run per field: 48 samples in minibatches of 20 (a partial last one),
# from 2 envs of 24 (minibatch_per_env: 20 of each, then the last 4 of each).
BASE = AlgoConfig(epochs=2, minibatch_size=20, net=NetworkConfig(hidden=[16, 8], log_std_init=-0.3))
N_SAMPLES, N_ENVS, OBS_DIM = 48, 2, 5
SPACES = {"discrete": gym.spaces.Discrete(3), "box": gym.spaces.Box(-1.0, 1.0, (2,))}
# float64 end to end: the backends differ only in summation order, so this can be tight.
RTOL, ATOL = 1e-9, 1e-12


def varied(value: Any, hint: Any) -> list[Any]:
    """Values other than `value` for a field annotated `hint`: a bool flipped, a number moved,
    every other enum member, a list grown or changed, None and a value swapped for Optional."""
    if get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint):
        (inner,) = [arg for arg in get_args(hint) if arg is not type(None)]
        if value is None:
            return varied(inner(), inner)  # the zero of the type, moved
        return [None, *varied(value, inner)]
    if hint is bool:
        return [not value]
    if hint is int:
        return [value + 1]
    if hint is float:
        return [value * 0.5 + 0.05]
    if isinstance(hint, type) and issubclass(hint, Enum):
        return [member for member in hint if member is not value]
    if get_origin(hint) is list and get_args(hint) == (int,):
        return [[*value, 4], [value[0] + 3, *value[1:]]]
    raise TypeError(f"no rule to vary a {hint} field: add one to tests/test_backends.py")


def walk(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every non-default setting one field away from `cfg`."""
    hints = get_type_hints(type(cfg))
    out: list[tuple[str, Any]] = []
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out += walk(value, f"{prefix}{f.name}.")
        else:
            out += [(f"{prefix}{f.name}", v) for v in varied(value, hints[f.name])]
    return out


def with_setting(cfg: Any, key: str, value: Any) -> Any:
    """`cfg` with the dotted `key` set to `value` (dataclasses.replace runs the checks)."""
    name, _, rest = key.partition(".")
    return replace(cfg, **{name: with_setting(getattr(cfg, name), rest, value) if rest else value})


def test_the_walk_reaches_every_field_of_the_schema() -> None:
    keys = {key for key, _ in walk(BASE)}
    assert {"clip", "vf_coef", "clip_vf", "backend", "net.hidden", "net.activation"} <= keys
    assert len(keys) == len(fields(AlgoConfig)) - 1 + len(fields(NetworkConfig))


def off_policy_batch(agent: ActorCritic) -> Batch:
    """A batch whose old policy and values are off the agent's, so that both clips bind."""
    obs = torch.randn(N_SAMPLES, OBS_DIM, dtype=torch.float64) * 2.0
    with torch.no_grad():
        params, values = agent(obs)
    actions = agent.dist.sample(params)
    log_probs = agent.dist.log_prob(params, actions) + 0.3 * torch.randn_like(values)
    return Batch(
        obs,
        actions,
        log_probs,
        values + 0.3 * torch.randn_like(values),
        params,
        torch.randn_like(values),
        torch.randn_like(values),
        N_ENVS,
    )


def one_update(
    cfg: AlgoConfig, space: gym.Space[Any], backend: Backend
) -> tuple[list[Tensor], list[Tensor], UpdateStats]:
    """Parameters before and after one update of `backend` from seed-0 weights and batch, with
    the same minibatch permutations whatever the backend."""
    torch.manual_seed(0)
    agent = ActorCritic(OBS_DIM, space, cfg.net).double()  # type: ignore[arg-type]
    before = [p.detach().clone() for p in agent.parameters()]
    batch = off_policy_batch(agent)
    cfg = replace(cfg, backend=backend)
    check_backend(cfg)
    optimizer = make_optimizer(agent, cfg)
    torch.manual_seed(1)
    stats = ppo_update(agent, optimizer, batch, cfg, cfg.clip, cfg.lr)
    return before, [p.detach().clone() for p in agent.parameters()], stats


STAT_FIELDS = (
    "policy_loss",
    "value_loss",
    "entropy",
    "approx_kl",
    "clipfrac",
    "grad_norm",
    "kl",
    "epochs",
)


@pytest.mark.parametrize("space", SPACES.values(), ids=list(SPACES))
@pytest.mark.parametrize(
    ("key", "value"),
    [("(base)", None), *walk(BASE)],
    ids=lambda x: str(getattr(x, "name", x)),
)
def test_backends_agree_or_fast_refuses(key: str, value: Any, space: gym.Space[Any]) -> None:
    cfg = BASE if key == "(base)" else with_setting(BASE, key, value)
    setting = getattr(value, "name", value)  # as typed on the command line
    initial, auto_params, auto_stats = one_update(cfg, space, Backend.autograd)
    # The update trained, unless the target-KL rule stopped it before its first step (then
    # no gradient norm was measured).
    moved = [not torch.equal(a, b) for a, b in zip(initial, auto_params, strict=True)]
    assert any(moved) == (not math.isnan(auto_stats.grad_norm))
    try:
        _, fast_params, fast_stats = one_update(cfg, space, Backend.fast)
    except ConfigError as err:
        assert str(err) == (
            f"algo.{key}={setting} is not implemented by algo.backend=fast; "
            "use algo.backend=autograd"
        )
        return
    hint = (
        f"algo.{key}={setting}: algo.backend=fast trains another update than autograd; write its "
        "gradient in ppo1/core/fast/update.py or refuse it in fast_backend_problems "
        "(docs/adding-a-loss-term.md)"
    )
    for a, f in zip(auto_params, fast_params, strict=True):
        torch.testing.assert_close(f, a, rtol=RTOL, atol=ATOL, msg=lambda m: f"{hint}\n{m}")
    for field_name in STAT_FIELDS:
        auto_value, fast_value = getattr(auto_stats, field_name), getattr(fast_stats, field_name)
        assert fast_value == pytest.approx(auto_value, rel=RTOL, abs=ATOL, nan_ok=True), field_name
    torch.testing.assert_close(fast_stats.ratio, auto_stats.ratio, rtol=RTOL, atol=ATOL)


def test_fast_backend_refusal_is_one_line_and_exit_2_before_training() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ppo1.train", "algo.net.activation=elu", "tracking.enabled=false"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: invalid config: algo.net.activation=elu is not implemented by "
        "algo.backend=fast; use algo.backend=autograd"
    ]
    assert "update" not in proc.stdout  # no training step ran


def test_autograd_backend_trains_what_fast_refuses(compose_cfg: Callable[..., TrainConfig]) -> None:
    overrides = ["algo.net.activation=elu", "algo.backend=autograd", "tracking.enabled=false"]
    cfg = compose_cfg([*overrides, "total_timesteps=1024", "eval.episodes=2", "verbose=false"])
    result = train(cfg)
    assert len(result.history) == 4 and all(h["losses/kl"] > 0 for h in result.history)


@pytest.mark.slow
def test_autograd_backend_solves_cartpole(compose_cfg: Callable[..., TrainConfig]) -> None:
    # test_learning.py's budget for the fast backend: the same settings must learn the same.
    overrides = ["algo.backend=autograd", "total_timesteps=60000", "tracking.enabled=false"]
    result = train(compose_cfg([*overrides, "verbose=false"]))
    assert result.final_eval >= 475, result.evals

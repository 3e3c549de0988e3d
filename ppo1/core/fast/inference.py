"""The fused inference MLP: both towers of an ActorCritic as one, for acting in rollouts and
evaluation (the same function, half the calls)."""

from __future__ import annotations

import torch
from torch import Tensor

from ppo1.core.networks import ActorCritic


class FusedActorCritic:
    """Both towers of an ActorCritic as one MLP, for inference: the same function, fewer calls.

    Separate towers become one MLP whose first layer stacks both towers' weights and whose
    later layers (and the two heads) are block-diagonal, so a forward is L + 1 `addmm`s instead
    of 2 (L + 1); the output is [policy head | value]. The extra terms are exact zeros, so
    the result equals ActorCritic.forward up to float summation order. It is a snapshot of the
    weights: build a new one after every update.
    """

    def __init__(self, agent: ActorCritic) -> None:
        self.agent = agent
        pairs = list(zip(agent.pi_layers, agent.v_layers, strict=True))
        pairs.append((agent.pi_head, agent.v_head))
        self.layers: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            for i, (pi, v) in enumerate(pairs):
                is_head = i == len(pairs) - 1
                if agent.shared and not is_head:
                    weight = pi.weight
                elif agent.shared or i == 0:
                    weight = torch.cat([pi.weight, v.weight])
                else:
                    weight = torch.block_diag(pi.weight, v.weight)  # type: ignore[no-untyped-call]
                bias = pi.bias if agent.shared and not is_head else torch.cat([pi.bias, v.bias])
                # Stored as [in, out] so each layer is one addmm(bias, x, weight).
                self.layers.append((weight.T.contiguous(), bias.detach().clone()))

    def __call__(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """(dist params, value) of a [B, obs_dim] batch, as ActorCritic.forward returns them."""
        x = self.agent.normalize(obs)
        for weight, bias in self.layers[:-1]:
            x = self.agent.activation(torch.addmm(bias, x, weight))
        weight, bias = self.layers[-1]
        out = torch.addmm(bias, x, weight)
        return self.agent.head_params(out[:, :-1]), out[:, -1]

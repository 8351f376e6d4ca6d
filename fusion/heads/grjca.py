"""Gated recursive joint cross-attention (GRJCA): Praveen et al., ABAW8 2025.

When modalities complement each other weakly, cross-attended features can be
worse than the inputs; a gate chooses per time step. RJCA (see
`fusion.heads.rjca`, both variants) runs unchanged; per modality m the gate
reads the last attended features and weighs the l+1 candidates
{X^(0) (the encoder output), X_att^(1), ..., X_att^(l)}:

    g = softmax(FC_{d_m -> l+1}(X_att,m^(l)) / T)       per time step, T = `temperature` (0.1)
    out_m = act(sum_i g_i * candidate_i)                  each g_i a scalar broadcast over features

No public code exists, so the gate's input is a documented choice: the last
attended features, as in the authors' dynamic cross-attention gate primitive
(softmax(FC(X_att)/T)). `act` is `gate_activation`: "relu" (default, the
primitive's ReLU) or "identity". Invariants the tests check: the weights sum
to 1 per step; a gate forced to the last candidate reproduces RJCA exactly
(with "identity"; with "relu" it is RJCA's regressor applied to ReLU of RJCA's
attended features, since RJCA itself has no ReLU there).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_float, register_head
from .rjca import RJCAHead

GATE_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "identity": lambda t: t}


def gate_softmax(fc: nn.Linear, x: Tensor, temperature: float) -> Tensor:
    """Per-step candidate weights [B, L, n] that sum to 1."""
    return torch.softmax(fc(x) / temperature, dim=-1)


def mix(weights: Tensor, candidates: list[Tensor]) -> Tensor:
    """sum_i weights[..., i] * candidates[i], each weight broadcast over the feature axis."""
    out = weights[..., 0:1] * candidates[0]
    for i in range(1, len(candidates)):
        out = out + weights[..., i : i + 1] * candidates[i]
    return out


def gate_options(head: RJCAHead, cfg: dict[str, Any]) -> tuple[float, Callable[[Tensor], Tensor]]:
    temperature = check_float(cfg, "temperature", head.name, 0.0, low_open=True)
    act = cfg["gate_activation"]
    if act not in GATE_ACTIVATIONS:
        raise ValueError(f"fusion head {head.name!r}: gate_activation must be one of "
                         f"{', '.join(GATE_ACTIVATIONS)}, got {act!r}")
    return temperature, GATE_ACTIVATIONS[act]


@register_head("grjca")
class GRJCAHead(RJCAHead):
    options = {**RJCAHead.options, "temperature": 0.1, "gate_activation": "relu"}

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        self.temperature, self.act = gate_options(self, cfg)
        self.gates = nn.ModuleList([nn.Linear(dm, self.iterations + 1) for dm in dims.values()])

    def gate_weights(self, states: list[list[Tensor]]) -> list[Tensor]:
        """Per modality, [B, L, l+1] weights over {X^(0), X_att^(1..l)} (from `attend`)."""
        return [gate_softmax(fc, states[-1][m], self.temperature) for m, fc in enumerate(self.gates)]

    def forward(self, feats: list[Tensor]) -> Tensor:
        states = self.attend(feats)
        weights = self.gate_weights(states)
        fused = [self.act(mix(w, [s[m] for s in states])) for m, w in enumerate(weights)]
        return self.regressor(torch.cat(fused, dim=-1))

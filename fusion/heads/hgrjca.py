"""Hierarchical gated RJCA (HGRJCA): Praveen et al., ABAW8 2025, the two-level gating variant.

RJCA runs unchanged (the recursion chain is not gated, so attention sees the
same inputs as in RJCA). Per modality m and iteration i = 1..l, a low-level
gate chooses between that iteration's input and output:

    g^(i) = softmax(FC_i(X_att,m^(i)) / T)             (2 weights per step)
    G^(i) = act(g^(i)_0 * X^(i-1) + g^(i)_1 * X_att^(i))

and a high-level gate combines the gated outputs:

    u = softmax(FC_{d_m -> l}(G^(l)) / T),    out_m = act(sum_i u_i * G^(i))

Gate inputs are a documented choice (no public code): each gate reads the
newest features it weighs, like GRJCA's gate. Why 1 iteration equals GRJCA:
with l = 1 the softmax over a single candidate is identically 1, so the
high-level gate is not built (it would have no gradient), and act is
idempotent (ReLU(ReLU(z)) = ReLU(z)); what remains, act(g_0 X^(0) + g_1 X_att^(1))
with g = softmax(FC(X_att^(1)) / T), is GRJCA's formula term for term.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import register_head
from .grjca import gate_options, gate_softmax, mix
from .rjca import RJCAHead


@register_head("hgrjca")
class HGRJCAHead(RJCAHead):
    options = {**RJCAHead.options, "temperature": 0.1, "gate_activation": "relu"}

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        self.temperature, self.act = gate_options(self, cfg)
        self.gates = nn.ModuleList([
            nn.ModuleList([nn.Linear(dm, 2) for _ in range(self.iterations)]) for dm in dims.values()
        ])
        self.top_gates = (nn.ModuleList([nn.Linear(dm, self.iterations) for dm in dims.values()])
                          if self.iterations > 1 else None)

    def gate_weights(self, states: list[list[Tensor]]) -> tuple[list[list[Tensor]], list[Tensor] | None]:
        """(low-level weights [modality][iteration] -> [B, L, 2], high-level [modality] -> [B, L, l] or None)."""
        low, top, _ = self._gate(states)
        return low, top

    def _gate(self, states: list[list[Tensor]]):
        low: list[list[Tensor]] = []
        top: list[Tensor] | None = [] if self.top_gates is not None else None
        fused = []
        for m, fcs in enumerate(self.gates):
            weights = [gate_softmax(fc, states[i + 1][m], self.temperature) for i, fc in enumerate(fcs)]
            gated = [self.act(mix(w, [states[i][m], states[i + 1][m]])) for i, w in enumerate(weights)]
            low.append(weights)
            if self.top_gates is None:
                fused.append(gated[0])
            else:
                u = gate_softmax(self.top_gates[m], gated[-1], self.temperature)
                top.append(u)
                fused.append(self.act(mix(u, gated)))
        return low, top, fused

    def forward(self, feats: list[Tensor]) -> Tensor:
        _, _, fused = self._gate(self.attend(feats))
        return self.regressor(torch.cat(fused, dim=-1))

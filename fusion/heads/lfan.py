"""Leader-follower attentive fusion (LFAN): Zhang et al., "Continuous Emotion Recognition with
Audio-visual Leader-follower Attentive Fusion", ICCV Workshops (ABAW2) 2021, and its multi-head
form in the same authors' ABAW3 code (github.com/sucv/ABAW3, `MultimodalMultiheadAttention`).

Visual is the leader; every modality (visual included) is a follower. Per frame
(N = B*L frames), each modality's encoder output is projected to Q_m, K_m, V_m
of width D = `lfan_dim` (32) and stacked into (N, M, D):

- `lfan_heads=1` (ABAW2 form and code): S = softmax(K Q^T / sqrt(D)) in R^{M x M}
  (softmax over the last axis; K before Q, as in that code),
  F = LayerNorm_{(M, D)}(S V + V);
- `lfan_heads=h>1` (ABAW3 code; h=2 with head dim 16 there): per head j on the
  D/h-wide slices, A_j = S_j V_j + V_j with S_j = softmax(Q_j K_j^T / sqrt(D/h));
  the heads are concatenated over heads and modalities in ABAW3's order
  (head-major: [h, M, D/h] flattened to M*D), then
  F = LayerNorm_{M*D}(Dropout(O(concat))) with O = Linear(M*D, M*D) mixing all
  heads and modalities, and no residual after O (the residual is the + V inside
  each head). Earlier affpipe versions computed LayerNorm(Dropout(P(S V)) + V)
  with a shared Linear(D, D); that form is gone.

Output per frame: Linear(cat(h_visual, flatten(F))) (the tanh is in
`FusionModel`). Any window length works (attention is across modalities,
not time). ABAW3's released model also puts a BatchNorm1d on each TCN output
(`tcn_batchnorm`, on by default when `lfan_heads` >= 2; ABAW2's has none).

Remaining differences from the released code (none changes the function
class): ABAW3 computes Q, K, V with one fused Linear(d_m, 3D) whose columns
are interleaved per head ([q, k, v] of head 0, then head 1); here they are three
Linear(d_m, D), so copying weights across needs that column permutation. ABAW3
initialises those projections and O with all-ones weights and zero biases;
here they keep torch's default initialisation. The released regressor outputs
one dimension (one model per valence / arousal); here one Linear gives both.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import FusionHead, check_float, check_split_width, register_head

LEADER = "visual"


@register_head("lfan")
class LFANHead(FusionHead):
    options = {"lfan_heads": 1, "lfan_dim": 32, "lfan_dropout": 0.1}

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        if LEADER not in dims:
            raise ValueError(f"fusion head 'lfan' needs a {LEADER!r} modality as leader, "
                             f"got {', '.join(dims) or 'none'}")
        dim, heads = check_split_width(cfg, "lfan_dim", "lfan_heads", self.name)
        self.dim, self.heads = dim, heads
        self.leader = self.modalities.index(LEADER)
        self.q = nn.ModuleList([nn.Linear(dm, dim) for dm in dims.values()])
        self.k = nn.ModuleList([nn.Linear(dm, dim) for dm in dims.values()])
        self.v = nn.ModuleList([nn.Linear(dm, dim) for dm in dims.values()])
        n = len(dims)
        if heads > 1:  # ABAW3: O over all heads and modalities, dropout, LayerNorm over the flat M*D
            self.proj: nn.Linear | None = nn.Linear(n * dim, n * dim)
            self.drop = nn.Dropout(check_float(cfg, "lfan_dropout", self.name, 0.0, 1.0))
            self.norm = nn.LayerNorm(n * dim)
        else:  # ABAW2: LayerNorm over (M, D) of S V + V
            self.proj = None
            self.norm = nn.LayerNorm([n, dim])
        self.out = nn.Linear(dims[LEADER] + n * dim, 2)

    def follower(self, feats: list[Tensor]) -> Tensor:
        """The attended follower features, [B, L, M * lfan_dim]."""
        b, length = feats[0].shape[:2]
        q = torch.stack([f(x) for f, x in zip(self.q, feats)], dim=-2)  # [B, L, M, D]
        k = torch.stack([f(x) for f, x in zip(self.k, feats)], dim=-2)
        v = torch.stack([f(x) for f, x in zip(self.v, feats)], dim=-2)
        n = len(feats)
        if self.proj is None:
            scores = torch.softmax(k @ q.transpose(-1, -2) / math.sqrt(self.dim), dim=-1)  # [B, L, M, M]
            return self.norm(scores @ v + v).reshape(b, length, n * self.dim)
        h, dh = self.heads, self.dim // self.heads

        def split(t: Tensor) -> Tensor:  # [B, L, M, D] -> [B, L, h, M, dh]
            return t.reshape(b, length, n, h, dh).transpose(2, 3)

        qh, kh, vh = split(q), split(k), split(v)
        scores = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(dh), dim=-1)  # [B, L, h, M, M]
        att = (scores @ vh + vh).reshape(b, length, n * self.dim)  # head-major concatenation, as ABAW3
        return self.norm(self.drop(self.proj(att)))

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.out(torch.cat([feats[self.leader], self.follower(feats)], dim=-1))

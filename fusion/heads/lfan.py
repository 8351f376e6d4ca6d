"""Leader-follower attentive fusion (LFAN): Zhang et al., "Continuous Emotion Recognition with
Audio-visual Leader-follower Attentive Fusion", ICCV Workshops (ABAW2) 2021.

Visual is the leader; every modality (visual included) is a follower. Per frame
(N = B*L frames), each modality's encoder output is projected to K_m, Q_m, V_m
of width D = `lfan_dim` (32) and stacked into (N, M, D):

- `lfan_heads=1` (ABAW2 form): S = softmax(K Q^T / sqrt(D)) in R^{M x M} (softmax over
  the last axis; K before Q, as in the paper's code), F = LayerNorm_{(M, D)}(S V + V);
- `lfan_heads=h>1` (later form, h=2 with head dim 16): the same product per head on
  D/h-wide slices, heads concatenated, then an output projection and dropout
  before the residual LayerNorm: F = LayerNorm(Dropout(Proj(attn)) + V).

Output per frame: Linear(cat(h_visual, flatten(F))) (the tanh is in
`FusionModel`). Any window length works (attention is across modalities,
not time).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .base import FusionHead, check_float, check_int, register_head

LEADER = "visual"


@register_head("lfan")
class LFANHead(FusionHead):
    options = {"lfan_heads": 1, "lfan_dim": 32, "lfan_dropout": 0.1}

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        if LEADER not in dims:
            raise ValueError(f"fusion head 'lfan' needs a {LEADER!r} modality as leader, "
                             f"got {', '.join(dims) or 'none'}")
        dim = check_int(cfg, "lfan_dim", self.name)
        heads = check_int(cfg, "lfan_heads", self.name)
        if dim % heads:
            raise ValueError(f"fusion head 'lfan': lfan_dim ({dim}) must be divisible by lfan_heads ({heads})")
        self.dim, self.heads = dim, heads
        self.leader = self.modalities.index(LEADER)
        self.q = nn.ModuleList([nn.Linear(dm, dim) for dm in dims.values()])
        self.k = nn.ModuleList([nn.Linear(dm, dim) for dm in dims.values()])
        self.v = nn.ModuleList([nn.Linear(dm, dim) for dm in dims.values()])
        if heads > 1:
            self.proj = nn.Linear(dim, dim)
            self.drop = nn.Dropout(check_float(cfg, "lfan_dropout", self.name, 0.0, 1.0))
        else:
            self.proj = None
        n = len(dims)
        self.norm = nn.LayerNorm([n, dim])
        self.out = nn.Linear(dims[LEADER] + n * dim, 2)

    def follower(self, feats: list[Tensor]) -> Tensor:
        """The attended follower features, [B, L, M * lfan_dim]."""
        b, length = feats[0].shape[:2]
        q = torch.stack([f(x) for f, x in zip(self.q, feats)], dim=-2)  # [B, L, M, D]
        k = torch.stack([f(x) for f, x in zip(self.k, feats)], dim=-2)
        v = torch.stack([f(x) for f, x in zip(self.v, feats)], dim=-2)
        n, h, dh = len(feats), self.heads, self.dim // self.heads

        def split(t: Tensor) -> Tensor:  # [B, L, M, D] -> [B, L, h, M, dh]
            return t.reshape(b, length, n, h, dh).transpose(2, 3)

        scores = torch.softmax(split(k) @ split(q).transpose(-1, -2) / math.sqrt(dh), dim=-1)  # [B, L, h, M, M]
        att = (scores @ split(v)).transpose(2, 3).reshape(b, length, n, self.dim)
        if self.proj is not None:
            att = self.drop(self.proj(att))
        return self.norm(att + v).reshape(b, length, n * self.dim)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.out(torch.cat([feats[self.leader], self.follower(feats)], dim=-1))

"""AVT-CA: "Audio-Video Transformer with Cross Attention for Multimodal Emotion Recognition" (2024).

The paper classifies clips (CMU-MOSEI, RAVDESS, CREMA-D); its released code builds
on the intermediate-transformer fusion of Chumachenko et al. (ICPR 2022,
github.com/katerynaCh/multimodal-emotion-recognition, ``AttentionBlock``).
Kept: per-modality inputs (here the TCN outputs) projected to `d_model`,
`layers` rounds of cross-attention in every direction (each stream's queries
attend to the keys and values of the other streams; all streams updated from
the same round's inputs), then one multi-head self-attention shared by all
streams.

Cross-attention block, as the released code (`CrossAttentionBlock`): with
a = Proj(MHA(q = LN_q(x) W_q, k, v = LN_kv(y) W_kv)) (W_q, W_kv without bias,
Proj with bias, scale 1/sqrt(head dim)), the block returns a + MLP(LN(a)) and
the caller adds its input, so the stream becomes x + a + MLP(LN(a)). (Earlier
affpipe versions fed LN(x + a) to the MLP, a standard pre-LN transformer layer;
that differs by ~0.8 on one block and is gone.) MLP = Linear(d, r*d), GELU,
Dropout, Linear(r*d, d), Dropout, with r = `mlp_ratio` (2 in the released code).

Differences from the released code, for per-frame valence/arousal:

- no pooling before the output: frame t's prediction is Linear(concat_m stream_m[t]);
- the shared self-attention: the released code runs one nn.MultiheadAttention-
  style module on each stream separately, with no LayerNorm, MLP or residual
  around it, and its q/k/v projections have no bias. Here it is a pre-LN
  transformer block (LN, self-attention with biased q/k/v, residual, LN, MLP,
  residual) over the joint token sequence (all streams' frames, with a learned
  modality embedding so a token's stream is known), followed by a LayerNorm;
- a sinusoidal position encoding is added after the input projection (the
  same position for frame t of every stream), since attention alone is
  order-blind; any window length works;
- with more than two modalities each stream attends to the concatenation of
  all other streams' frames;
- dropout `attn_dropout` (0.1) on the attention weights, after Proj and in the
  MLP during training; the released defaults are 0 (no effect in eval);
- the released visual/audio front ends (EfficientFace and 1-D conv stages,
  split around the cross-attention) are replaced by affpipe's TCNs;
- an optional pooled classification head (`n_classes` > 0): `classify`
  averages the fused frames (valid frames only when a mask is given) and
  returns clip logits (the released classifier pools by the mean, too).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionHead, check_float, check_int, check_split_width, register_head


def sinusoidal(length: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Transformer position encoding [length, dim] (Vaswani et al.); odd dims are handled by truncation."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return pe.to(dtype)


class AttentionBlock(nn.Module):
    """Pre-LN self-attention + MLP, both residual (the shared block; see the module docstring)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        xn = self.norm_q(x)
        x = x + self.attn(xn, xn, xn, need_weights=False)[0]
        return x + self.mlp(self.norm_mlp(x))


def mlp(dim: int, ratio: int, dropout: float) -> nn.Sequential:
    """Linear -> GELU -> Dropout -> Linear -> Dropout (the timm / released-code MLP)."""
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(dim * ratio, dim), nn.Dropout(dropout))


class CrossAttentionBlock(nn.Module):
    """The released cross-attention block: returns x + a + MLP(LN(a)), a = Proj(MHA(LN(x) W_q, LN(y) W_kv)).

    Parameters are laid out as the released ``AttentionBlock`` (q: Linear(d, d, no
    bias); kv: Linear(d, 2d, no bias), keys in the first d outputs; proj with bias),
    so its weights copy across one to one; the outer residual (+ x), which the
    released code adds in the caller, is included here.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = mlp(dim, mlp_ratio, dropout)

    def attend(self, x: Tensor, y: Tensor) -> Tensor:
        """a: the projected attention output of x's queries over y's keys/values, [B, Lx, d]."""
        b, lq, d = x.shape
        h = self.heads
        q = self.q(self.norm_q(x)).reshape(b, lq, h, d // h).transpose(1, 2)  # [B, h, Lx, dh]
        k, v = self.kv(self.norm_kv(y)).reshape(b, y.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(a.transpose(1, 2).reshape(b, lq, d)))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        a = self.attend(x, y)
        return x + a + self.mlp(self.norm_mlp(a))


@register_head("avtca")
class AVTCAHead(FusionHead):
    options = {"d_model": 64, "heads": 4, "layers": 1, "mlp_ratio": 2, "attn_dropout": 0.1, "n_classes": 0}

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        if len(dims) < 2:
            raise ValueError(f"fusion head 'avtca' cross-attends between modalities and needs at least 2, "
                             f"got {', '.join(dims) or 'none'}")
        d, heads = check_split_width(cfg, "d_model", "heads", self.name)
        layers = check_int(cfg, "layers", self.name)
        ratio = check_int(cfg, "mlp_ratio", self.name)
        dropout = check_float(cfg, "attn_dropout", self.name, 0.0, 1.0)
        n_classes = check_int(cfg, "n_classes", self.name, low=0)
        n = len(dims)
        self.d_model = d
        self.inp = nn.ModuleList([nn.Linear(dm, d) for dm in dims.values()])
        self.modality_embedding = nn.Parameter(torch.randn(n, d) * 0.02)
        self.cross = nn.ModuleList([
            nn.ModuleList([CrossAttentionBlock(d, heads, ratio, dropout) for _ in range(n)])
            for _ in range(layers)
        ])
        self.shared = AttentionBlock(d, heads, ratio, dropout)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(n * d, 2)
        self.classifier = nn.Linear(n * d, n_classes) if n_classes else None

    def fuse(self, feats: list[Tensor]) -> Tensor:
        """Per-frame fused features [B, L, M * d_model] (input of both the regressor and the classifier)."""
        b, length = feats[0].shape[:2]
        pe = sinusoidal(length, self.d_model, feats[0].device, feats[0].dtype)
        streams = [proj(x) + pe for proj, x in zip(self.inp, feats)]
        for blocks in self.cross:
            streams = [
                block(s, torch.cat([o for j, o in enumerate(streams) if j != m], dim=1))
                for m, (block, s) in enumerate(zip(blocks, streams))
            ]
        tokens = torch.cat([s + self.modality_embedding[m] for m, s in enumerate(streams)], dim=1)
        tokens = self.norm(self.shared(tokens))  # [B, M*L, d]
        return tokens.reshape(b, len(feats), length, self.d_model).transpose(1, 2).reshape(b, length, -1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.out(self.fuse(feats))

    def classify(self, feats: list[Tensor], mask: Tensor | None = None) -> Tensor:
        """Clip logits [B, n_classes]: mean of the fused frames (masked-in frames only, when given)."""
        if self.classifier is None:
            raise RuntimeError("fusion head 'avtca' was built without a classifier: set n_classes > 0 in the model config")
        fused = self.fuse(feats)
        if mask is None:
            pooled = fused.mean(dim=1)
        else:
            w = mask.to(fused.dtype)[..., None]
            pooled = (fused * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)
        return self.classifier(pooled)

"""Recursive joint cross-attention (RJCA): Praveen et al., ICASSP 2023, built on JCA (CVPRW 2022).

Paper form (`variant="paper"`), one iteration, for each modality m, written in
this code's [B, L, d_m] layout (x_m = X_m^T, the paper's X_m is d_m x L):

- J = concat_m X_m                                  (d x L; d = sum_m d_m)
- C_m = tanh(X_m W_jm J^T / sqrt(d))                 (d_m x d;  W_jm in R^{L x L})
- H_m = ReLU(W_m X_m^T + W_cm C_m^T)                 (k x d_m;  W_m in R^{k x L}, W_cm in R^{k x d})
- X_att,m = (W_hm H_m)^T + X_m                       (d_m x L;  W_hm in R^{L x k})

The papers write ``W_m X_m`` for the attention-map term; only ``W_m X_m^T`` (time
contracted by W_m in R^{k x L}) makes the shapes agree with H_m in R^{k x d_m},
so that is what is built. The W's are plain matrices (no bias), as in the
equations.

Released-code form (`variant="dense"`, the authors' "dense co-attention" layer):

- J = concat_m X_m, then J <- Linear(d, d)(J) only when `project_joint`
  (default: only for exactly 2 modalities; the 3-modality code computes that
  projection and then feeds the raw J, so it is not built at all here);
- K_m = Linear_{L->L}(X_m) over the time axis (d_m x L), V_m = Linear_{d_m->d_m}(X_m^T) (L x d_m);
- C_m = Dropout(tanh(K_m J^T / sqrt(d)))             (d_m x d)
- W'_m = ReLU(tanh(V_m C_m))                         (L x d: a product, no additive term, no k)
- X_m <- X_m + Dropout(ReLU(Linear_{d->d_m}(W'_m)))
  All Linear layers have biases, as torch's default in that code.

Recursion: the attended features of iteration i are the inputs of iteration
i+1, with separate weights per iteration (as in the released code). The
prediction is concat_m X_att,m^(l) -> Linear -> BN -> LeakyReLU -> Linear (tanh in
`FusionModel`). Both forms own L x L matrices, so the window length is fixed at
build time (`fixed_window`).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FusionHead, Regressor, check_float, check_int, matrix, register_head

VARIANTS = ("paper", "dense")


class PaperJointAttention(nn.Module):
    """One iteration of the JCA equations for any number of modalities."""

    def __init__(self, dims: list[int], window: int, k: int):
        super().__init__()
        d = sum(dims)
        self.scale = math.sqrt(d)
        self.w_j = nn.ParameterList([matrix(window, window) for _ in dims])  # W_jm, L x L
        self.w_x = nn.ParameterList([matrix(k, window) for _ in dims])  # W_m, k x L
        self.w_c = nn.ParameterList([matrix(k, d) for _ in dims])  # W_cm, k x d
        self.w_h = nn.ParameterList([matrix(window, k) for _ in dims])  # W_hm, L x k

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        j = torch.cat(xs, dim=-1)  # [B, L, d] = J^T
        out = []
        for m, x in enumerate(xs):  # x: [B, L, d_m] = X_m^T
            c = torch.tanh(x.transpose(1, 2) @ self.w_j[m] @ j / self.scale)  # [B, d_m, d]
            h = F.relu(self.w_x[m] @ x + self.w_c[m] @ c.transpose(1, 2))  # [B, k, d_m]
            out.append(self.w_h[m] @ h + x)  # [B, L, d_m]
        return out


class DenseJointAttention(nn.Module):
    """One iteration of the released code's dense co-attention (see module docstring)."""

    def __init__(self, dims: list[int], window: int, dropout: float, project_joint: bool):
        super().__init__()
        d = sum(dims)
        self.scale = math.sqrt(d)
        self.joint = nn.Linear(d, d) if project_joint else None
        self.key = nn.ModuleList([nn.Linear(window, window) for _ in dims])
        self.value = nn.ModuleList([nn.Linear(dm, dm) for dm in dims])
        self.out = nn.ModuleList([nn.Linear(d, dm) for dm in dims])
        self.score_drop = nn.Dropout(dropout)
        self.out_drop = nn.Dropout(dropout)

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        j = torch.cat(xs, dim=-1)  # [B, L, d]
        if self.joint is not None:
            j = self.joint(j)
        out = []
        for m, x in enumerate(xs):
            key = self.key[m](x.transpose(1, 2))  # [B, d_m, L]
            value = self.value[m](x)  # [B, L, d_m]
            c = self.score_drop(torch.tanh(key @ j / self.scale))  # [B, d_m, d]
            w = F.relu(torch.tanh(value @ c))  # [B, L, d]
            out.append(x + self.out_drop(F.relu(self.out[m](w))))
        return out


@register_head("rjca")
class RJCAHead(FusionHead):
    """RJCA over any number (>= 2) of modalities; `iterations` layers with their own weights."""

    options = {"iterations": None, "variant": "paper", "k": 32, "hidden": 64, "attn_dropout": 0.1,
               "project_joint": None}
    fixed_window = True
    default_iterations = 2
    min_modalities = 2

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        if len(dims) < self.min_modalities:
            raise ValueError(f"fusion head {self.name!r} needs at least {self.min_modalities} modalities, "
                             f"got {len(dims)} ({', '.join(dims) or 'none'})")
        if cfg["iterations"] is None:
            cfg = {**cfg, "iterations": self.default_iterations}
        self.iterations = check_int(cfg, "iterations", self.name)
        variant = cfg["variant"]
        if variant not in VARIANTS:
            raise ValueError(f"fusion head {self.name!r}: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant
        widths = list(dims.values())
        if variant == "paper":
            k = check_int(cfg, "k", self.name)
            layers = [PaperJointAttention(widths, window, k) for _ in range(self.iterations)]
        else:
            dropout = check_float(cfg, "attn_dropout", self.name, 0.0, 1.0)
            project = cfg["project_joint"]
            if project is None:
                project = len(dims) == 2
            if not isinstance(project, bool):
                raise ValueError(f"fusion head {self.name!r}: project_joint must be true, false or null, got {project!r}")
            layers = [DenseJointAttention(widths, window, dropout, project) for _ in range(self.iterations)]
        self.layers = nn.ModuleList(layers)
        self.regressor = Regressor(sum(widths), check_int(cfg, "hidden", self.name))

    def attend(self, feats: list[Tensor]) -> list[list[Tensor]]:
        """All recursion states: [X^(0) (the inputs), X_att^(1), ..., X_att^(l)], each a per-modality list."""
        states = [list(feats)]
        for layer in self.layers:
            states.append(layer(states[-1]))
        return states

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.regressor(torch.cat(self.attend(feats)[-1], dim=-1))

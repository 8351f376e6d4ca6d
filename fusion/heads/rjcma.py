"""Recursive joint cross-modal attention (RJCMA): Praveen & Alam, ABAW6 (CVPRW 2024), arXiv:2403.13659.

The RJCA equations (see `fusion.heads.rjca`) with J = concat of audio, visual
and text features and 2 iterations by default. Names are not enforced (the
trainer may split audio into several streams), only that at least three
modalities are fused. In the `dense` variant the released 3-modality code
computes a Linear(d, d) projection of J and then feeds the raw J; that
projection is therefore not built (`project_joint` defaults to false for
3+ modalities).
"""
from __future__ import annotations

from .base import register_head
from .rjca import RJCAHead


@register_head("rjcma")
class RJCMAHead(RJCAHead):
    default_iterations = 2
    min_modalities = 3

"""Joint cross-attention (JCA): Praveen et al., "A Joint Cross-Attention Model for Audio-Visual
Fusion in Dimensional Emotion Recognition", CVPR Workshops (ABAW3) 2022, eqs. for C_m, H_m, X_att,m.

JCA is RJCA with a single iteration over exactly two modalities (audio and
visual in the paper), so it reuses `RJCAHead`'s layers; see `fusion.heads.rjca`
for the equations and how the `dense` (released-code) variant differs.
"""
from __future__ import annotations

from typing import Any

from .base import register_head
from .rjca import RJCAHead


@register_head("jca")
class JCAHead(RJCAHead):
    default_iterations = 1

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        if len(dims) != 2:
            raise ValueError(f"fusion head 'jca' fuses exactly 2 modalities, got {len(dims)} "
                             f"({', '.join(dims) or 'none'}); use 'rjca' or 'rjcma' for more")
        if cfg.get("iterations") not in (None, 1):
            raise ValueError(f"fusion head 'jca' has exactly 1 iteration, got iterations={cfg['iterations']!r}; "
                             "use 'rjca' for recursion")
        super().__init__(dims, window, cfg)

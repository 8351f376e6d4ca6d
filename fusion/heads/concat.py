"""Feature concatenation: the baseline every attention head has to beat.

No paper equation: concat_m X_m per frame -> the same regressor the JCA family
uses (Linear -> BN -> LeakyReLU -> Linear), so a comparison isolates the
attention itself.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import FusionHead, Regressor, check_int, register_head


@register_head("concat")
class ConcatHead(FusionHead):
    options = {"hidden": 64}

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__(dims, window, cfg)
        self.regressor = Regressor(sum(dims.values()), check_int(cfg, "hidden", self.name))

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.regressor(torch.cat(feats, dim=-1))

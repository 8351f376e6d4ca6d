"""IR-50: the ArcFace ResNet-50 "improved residual" face backbone (112x112 -> 512-d).

Written from the ArcFace paper (Deng et al., CVPR 2019, section 3.2 and its
"IR" unit: BN-Conv-BN-PReLU-Conv-BN, stride on the second conv) with module
names chosen so the state_dicts of the public face.evoLVe checkpoints
(``backbone_ir50_ms1m_epoch*.pth``) load strictly: ``input_layer.*``,
``body.<i>.shortcut_layer.*``, ``body.<i>.res_layer.*``, ``output_layer.*``.
LFAN's released code builds this architecture too, but loads its own
checkpoint (fine-tuned, with an output layer sized for its small crops); the
ms1m file is not LFAN's weights.

Stages of 3, 4, 14 and 3 units (64, 128, 256, 512 channels), each stage's first
unit downsampling by 2, so a 112x112 face ends as 512x7x7 before the embedding
head (BN, dropout, flatten, linear 25088->512, BN).
"""
from __future__ import annotations

import torch
from torch import nn

STAGES_50 = ((64, 3), (128, 4), (256, 14), (512, 3))


class IRUnit(nn.Module):
    """One improved-residual unit; the shortcut is a strided identity when widths match."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            # a 1x1 max-pool with stride is a parameter-free strided identity
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IR50(nn.Module):
    """IR-50 embedding network for 112x112 RGB faces normalised as (x - 127.5) / 127.5.

    That is face.evoLVe's input transform (ToTensor, then Normalize(mean 0.5, std 0.5)).

    `forward` returns the L2-normalised 512-d embedding, as the face.evoLVe
    feature extraction does (identity information lives in the direction).
    """

    input_size = 112
    dim = 512

    def __init__(self, dropout: float = 0.5):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units: list[nn.Module] = []
        in_channels = 64
        for depth, count in STAGES_50:
            units.append(IRUnit(in_channels, depth, 2))
            units.extend(IRUnit(depth, depth, 1) for _ in range(count - 1))
            in_channels = depth
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512), nn.Dropout(dropout), nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.output_layer(self.body(self.input_layer(x)))
        return nn.functional.normalize(x, p=2.0, dim=1)

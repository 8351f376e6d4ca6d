"""Causal temporal convolutional network: the per-modality temporal encoder of every fusion model.

Bai et al. (2018) residual blocks as used by LFAN / JCA / RJCMA: level i is two
causal dilated Conv1d (dilation 2^i), each padded by (k-1)*2^i on both sides
and then chomped on the right, so output t sees only inputs <= t. Causality
matters because windows are stitched back together at inference: a frame's
prediction must not depend on where the window happened to end.

`batch_norm=True` appends a BatchNorm1d over the output channels, as RJCMA's
model and ABAW3's LFAN do to each modality's TCN output before fusion: in
training it normalises each channel over all B*L frames of the batch (padded
frames included, as in that code), in eval it applies the running statistics.
"""
from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


class Chomp1d(nn.Module):
    """Drop the right-hand padding: what turns a symmetric-padded conv into a causal one."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return x[..., : -self.size].contiguous() if self.size else x


class TemporalBlock(nn.Module):
    """Two causal dilated convs with a residual; the 1x1 conv only exists when widths differ."""

    def __init__(self, n_in: int, n_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        pad = (kernel_size - 1) * dilation
        self.net = nn.Sequential(
            weight_norm(nn.Conv1d(n_in, n_out, kernel_size, padding=pad, dilation=dilation)),
            Chomp1d(pad),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
            weight_norm(nn.Conv1d(n_out, n_out, kernel_size, padding=pad, dilation=dilation)),
            Chomp1d(pad),
            nn.LeakyReLU(0.01),
            nn.Dropout(dropout),
        )
        self.downsample = nn.Conv1d(n_in, n_out, 1) if n_in != n_out else None
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, L]
        res = x if self.downsample is None else self.downsample(x)
        return self.act(self.net(x) + res)


class TemporalConvNet(nn.Module):
    """Stack of `len(channels)` temporal blocks; input and output are [B, L, C] (batch, time, channels)."""

    def __init__(self, in_dim: int, channels: list[int], kernel_size: int = 5, dropout: float = 0.1,
                 batch_norm: bool = False):
        super().__init__()
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"TCN channels must be a non-empty list of positive widths, got {channels!r}")
        if kernel_size < 1:
            raise ValueError(f"TCN kernel_size must be >= 1, got {kernel_size}")
        self.in_dim = in_dim
        self.channels = [int(c) for c in channels]
        self.kernel_size = kernel_size
        widths = [in_dim, *self.channels]
        self.blocks = nn.Sequential(*(
            TemporalBlock(widths[i], widths[i + 1], kernel_size, 2 ** i, dropout) for i in range(len(self.channels))
        ))
        self.norm = nn.BatchNorm1d(self.channels[-1]) if batch_norm else None

    @property
    def out_dim(self) -> int:
        return self.channels[-1]

    @property
    def receptive_field(self) -> int:
        """Frames that output t depends on (t - rf + 1 .. t): two convs per level, dilation 2^i."""
        return 1 + 2 * (self.kernel_size - 1) * (2 ** len(self.channels) - 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.blocks(x.transpose(1, 2))  # [B, C, L]
        if self.norm is not None:
            y = self.norm(y)
        return y.transpose(1, 2)


__all__ = ["TemporalConvNet", "TemporalBlock", "Chomp1d"]

"""The TCN: causal, with exactly the documented receptive field, and built as the spec describes."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from fusion.tcn import TemporalConvNet


@pytest.mark.parametrize("channels,kernel,rf", [
    ([8, 8, 6, 6], 5, 121),  # the spec's 4 levels, k = 5: 1 + 2*4*(2^4-1)
    ([5, 7], 3, 13),  # 1 + 2*2*(2^2-1)
    ([4], 2, 3),  # 1 + 2*1*1
])
def test_causal_with_documented_receptive_field(channels: list[int], kernel: int, rf: int) -> None:
    torch.manual_seed(0)
    tcn = TemporalConvNet(3, channels, kernel_size=kernel, dropout=0.1).double().eval()
    assert tcn.receptive_field == rf
    length = rf + 40
    x = torch.randn(2, length, 3, dtype=torch.float64)
    y = tcn(x)
    assert y.shape == (2, length, channels[-1])
    t = rf + 20

    def changed(at: slice) -> torch.Tensor:
        x2 = x.clone()
        x2[:, at] += 5 * torch.randn_like(x2[:, at])
        return tcn(x2)

    # the future never leaks: changing everything after t leaves outputs up to t unchanged
    assert torch.allclose(changed(slice(t + 1, None))[:, : t + 1], y[:, : t + 1], rtol=0, atol=1e-12)
    # the oldest frame in the field still matters; one frame older does not
    assert (changed(slice(t - rf + 1, t - rf + 2))[:, t] - y[:, t]).abs().max() > 1e-6
    assert torch.allclose(changed(slice(t - rf, t - rf + 1))[:, t], y[:, t], rtol=0, atol=1e-12)
    assert torch.allclose(changed(slice(0, t - rf + 1))[:, t], y[:, t], rtol=0, atol=1e-12)


def test_structure_matches_spec() -> None:
    tcn = TemporalConvNet(10, [16, 16, 8], kernel_size=5, dropout=0.25)
    convs = [m for m in tcn.modules() if isinstance(m, nn.Conv1d)]
    dilated = [c for c in convs if c.kernel_size == (5,)]
    assert [c.dilation[0] for c in dilated] == [1, 1, 2, 2, 4, 4]
    assert all(parametrize.is_parametrized(c, "weight") for c in dilated)  # weight norm
    # 1x1 residual convs exactly where widths change: 10 -> 16 and 16 -> 8
    assert [(c.in_channels, c.out_channels) for c in convs if c.kernel_size == (1,)] == [(10, 16), (16, 8)]
    assert tcn.blocks[1].downsample is None
    slopes = {m.negative_slope for m in tcn.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}
    assert {m.p for m in tcn.modules() if isinstance(m, nn.Dropout)} == {0.25}


def test_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match="channels"):
        TemporalConvNet(4, [])
    with pytest.raises(ValueError, match="channels"):
        TemporalConvNet(4, [8, 0])

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


def test_batchnorm_after_tcn_uses_batch_moments_in_training_and_running_ones_in_eval() -> None:
    """RJCMA / ABAW3-LFAN form: y = gamma * (tcn(x) - mu_c) / sqrt(var_c + eps) + beta per channel c."""
    torch.manual_seed(0)
    plain = TemporalConvNet(6, [8, 5], kernel_size=3, dropout=0.0).double()
    normed = TemporalConvNet(6, [8, 5], kernel_size=3, dropout=0.0, batch_norm=True).double()
    normed.load_state_dict(plain.state_dict(), strict=False)  # same convolutions; only the norm is extra
    bn = normed.norm
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
        bn.running_mean.uniform_(-2.0, 2.0)
        bn.running_var.uniform_(0.5, 3.0)
    x = torch.randn(3, 40, 6, dtype=torch.float64)
    h = plain.eval()(x)  # [B, L, C] before the norm
    gamma, beta = bn.weight.detach(), bn.bias.detach()

    # eval: the running statistics, never the batch's own
    expected = gamma * (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) + beta
    assert torch.allclose(normed.eval()(x), expected, rtol=0, atol=1e-10)
    # and so a single frame's output does not depend on the rest of the batch
    assert torch.allclose(normed(x[:1]), expected[:1], rtol=0, atol=1e-10)

    # training: each channel's mean and (biased) variance over all B*L frames
    mu = h.mean(dim=(0, 1))
    var = h.var(dim=(0, 1), unbiased=False)
    expected_train = gamma * (h - mu) / torch.sqrt(var + bn.eps) + beta
    assert torch.allclose(normed.train()(x), expected_train, rtol=0, atol=1e-10)
    assert TemporalConvNet(6, [8, 5]).norm is None  # off unless asked for

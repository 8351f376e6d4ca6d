"""CCC: closed forms on hand-computed examples, the constant-input rule, masking, and loss = 1 - CCC."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.ccc import ccc, ccc_loss, ccc_np


def test_hand_computed_example() -> None:
    # x = 1,2,3,4: mean 2.5, var 1.25.  y = 2,2,3,5: mean 3, deviations -1,-1,0,2 -> var 6/4 = 1.5.
    # cov = ((-1.5)(-1) + (-0.5)(-1) + 0.5*0 + 1.5*2) / 4 = 5/4.  den = 1.25 + 1.5 + 0.5^2 = 3.
    # ccc = 2 * 1.25 / 3 = 5/6.
    x, y = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 3.0, 5.0]
    assert ccc_np(np.array(x), np.array(y)) == pytest.approx(5 / 6, abs=1e-12)
    assert ccc(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)).item() == pytest.approx(5 / 6, abs=1e-12)


def test_perfect_negated_and_shifted() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=500)
    x -= x.mean()  # CCC(x, -x) = -1 only for zero-mean x (else the mean gap enters the denominator)
    assert ccc_np(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ccc_np(x, -x) == pytest.approx(-1.0, abs=1e-12)
    # a shift c: 2 var / (2 var + c^2) with population variance
    v = x.var()
    assert ccc_np(x, x + 0.5) == pytest.approx(2 * v / (2 * v + 0.25), abs=1e-12)
    t = torch.from_numpy(x)
    assert ccc(t, t).item() == pytest.approx(1.0, abs=1e-12)
    assert ccc(t, -t).item() == pytest.approx(-1.0, abs=1e-12)


def test_torch_matches_numpy_on_random_data() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(3, 40)), 0.5 * rng.normal(size=(3, 40)) + 0.2
    # the metric's definition written out: population moments
    mx, my = x.mean(), y.mean()
    want = 2 * ((x - mx) * (y - my)).mean() / (x.var() + y.var() + (mx - my) ** 2)
    assert ccc_np(x, y) == pytest.approx(want, abs=1e-12)
    assert ccc(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(want, abs=1e-12)


def test_constant_inputs_never_nan() -> None:
    c = torch.full((50,), 0.3, requires_grad=True)
    same = ccc(c, torch.full((50,), 0.3))
    assert same.item() == 1.0  # identical constants: perfect agreement (zero squared error)
    same.backward()
    assert torch.isfinite(c.grad).all()

    ramp = torch.linspace(-1, 1, 50)
    assert ccc(torch.full((50,), 0.3), ramp).item() == pytest.approx(0.0, abs=1e-7)  # one constant: no covariance
    assert ccc(torch.full((50,), 0.3), torch.full((50,), -0.2)).item() == 0.0  # different constants
    assert ccc_np(np.full(9, 0.7), np.full(9, 0.7)) == 1.0
    assert ccc_np(np.full(9, 0.7), np.full(9, 0.1)) == 0.0

    # float32 constant window inside a batch loss: finite loss and gradients
    pred = torch.zeros(2, 8, 2, requires_grad=True)
    loss = ccc_loss(pred, torch.zeros(2, 8, 2), torch.ones(2, 8, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


def test_masked_frames_are_ignored() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 30, generator=g, dtype=torch.float64), torch.randn(4, 30, generator=g, dtype=torch.float64)
    mask = torch.rand(4, 30, generator=g) > 0.4
    want = ccc_np(x.numpy()[mask.numpy()], y.numpy()[mask.numpy()])
    assert ccc(x, y, mask).item() == pytest.approx(want, abs=1e-12)
    assert ccc_np(x.numpy(), y.numpy(), mask.numpy()) == pytest.approx(want, abs=1e-12)
    # what the masked-out frames hold changes nothing, and they get no gradient
    x2 = torch.where(mask, x, torch.full_like(x, 1e3)).requires_grad_(True)
    out = ccc(x2, torch.where(mask, y, torch.full_like(y, -7.0)), mask)
    assert out.item() == pytest.approx(want, abs=1e-12)
    out.backward()
    assert (x2.grad[~mask] == 0).all() and (x2.grad[mask] != 0).any()


def test_ccc_loss_is_mean_of_one_minus_batch_ccc() -> None:
    g = torch.Generator().manual_seed(3)
    target = torch.rand(3, 20, 2, generator=g) * 2 - 1
    pred = (0.7 * target + 0.3 * torch.randn(3, 20, 2, generator=g)).requires_grad_(True)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 15:] = False  # padded tail of one window
    loss = ccc_loss(pred, target, mask)
    p, t, m = pred.detach().numpy(), target.numpy(), mask.numpy()
    # one CCC per dimension over all masked-in frames of the batch (not per window)
    want = np.mean([1 - ccc_np(p[..., d][m], t[..., d][m]) for d in range(2)])
    assert loss.item() == pytest.approx(want, abs=1e-6)
    assert ccc_loss(target, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert pred.grad.abs().sum() > 0 and (pred.grad[1, 15:] == 0).all()


def test_half_precision_is_computed_in_float32() -> None:
    x = torch.linspace(-1, 1, 64).half()
    out = ccc(x, x * 0.5)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(ccc_np(x.float().numpy(), (x * 0.5).float().numpy()), abs=1e-5)


def test_empty_selection_and_bad_shapes() -> None:
    x = torch.randn(10, requires_grad=True)
    none = torch.zeros(10, dtype=torch.bool)
    out = ccc(x, x.detach(), none)
    assert out.item() == 0.0
    out.backward()  # still differentiable (a window with no labelled frames must not break training)
    assert (x.grad == 0).all()
    with pytest.raises(ValueError, match="no frames"):
        ccc_np(np.ones(3), np.ones(3), np.zeros(3, dtype=bool))
    with pytest.raises(ValueError, match="same shape"):
        ccc_np(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="mask must be"):
        ccc_loss(torch.zeros(2, 5, 2), torch.zeros(2, 5, 2), torch.ones(2, 4, dtype=torch.bool))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_never_reads_as_perfect_agreement(bad: float) -> None:
    """A NaN/Inf denominator is not "constant and equal": CCC must be NaN, the loss NaN, never 1 / 0."""
    x = np.array([0.1, 0.2, bad, 0.4])
    y = np.array([0.1, 0.2, 0.3, 0.4])
    assert np.isnan(ccc_np(x, y))
    value = ccc(torch.tensor(x), torch.tensor(y))
    assert torch.isnan(value)
    loss = ccc_loss(torch.tensor(x).reshape(1, 4, 1), torch.tensor(y).reshape(1, 4, 1))
    assert torch.isnan(loss)
    # the exact constant-and-equal case keeps its rule
    same = torch.full((4,), 0.3, dtype=torch.float64)
    assert ccc(same, same).item() == 1.0

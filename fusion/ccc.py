"""Concordance correlation coefficient: the loss and the metric, defined once.

``ccc = 2 cov(x, y) / (var(x) + var(y) + (mean(x) - mean(y))^2)`` with
population (1/N) moments, over every selected element (a metric over a split
concatenates its trials first, then takes one CCC). ABAW2's released metric
(LFAN) uses sample (1/(N-1)) variances and covariance in the same formula; that
scales cov and the variances by N/(N-1) but not the squared mean difference d^2,
so the two agree exactly when the means are equal and otherwise differ by a
relative d^2 / (N (var(x) + var(y) + d^2)) < 1/N (1.4e-5 measured on a 300-frame
window with d = 0.03; negligible over a split). Population moments are kept.

The constant case is guarded explicitly instead of with an epsilon (one
released loss used 1e-50, which is 0 in float32 and turns a constant window into
NaN). The rule: the denominator is a sum of squares, so it is 0 only when both
inputs are constant *and* equal (up to underflow in the working precision).
Then CCC = 1. Why 1 and not 0: CCC equals ``1 - mean((x-y)^2) / denominator``,
and for identical inputs the squared error is 0, so the agreement is perfect and
the loss ``1 - CCC`` must be 0, not 1. Every other constant case (one input
constant, or two different constants) has a positive denominator and a zero
covariance, so it gives 0 with no special handling. A selection with no
elements has no agreement to measure: the torch function returns 0 (a
window with no labelled frames gives loss 1 and zero gradients); the numpy
metric raises, because a metric over zero frames is a bug upstream.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def ccc(x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
    """CCC over all (masked-in) elements of `x` and `y`; differentiable, never NaN for finite input.

    Non-finite input gives NaN (never 1): the trainer stops on a NaN loss instead of learning nothing.

    Half-precision inputs are computed in float32 (mixed-precision training
    would otherwise lose the variances of near-flat windows).
    """
    if x.shape != y.shape:
        raise ValueError(f"ccc: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    if mask is not None:
        if mask.shape != x.shape:
            raise ValueError(f"ccc: mask shape {tuple(mask.shape)} differs from the inputs' {tuple(x.shape)}")
        mask = mask.to(torch.bool)
        x, y = x[mask], y[mask]
    else:
        x, y = x.reshape(-1), y.reshape(-1)
    if x.numel() == 0:
        return x.sum() * 0.0  # keeps the graph (and device/dtype) so callers can still backprop
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    cov = (dx * dy).mean()
    den = (dx * dx).mean() + (dy * dy).mean() + (mx - my) ** 2
    # Only an exact 0 is "constant and equal": testing ``den > 0`` instead would send a NaN
    # denominator (NaN in the inputs) to the CCC-1 branch and score poisoned data as perfect.
    equal = den == 0
    # `where` on a safe denominator: a plain division would put NaN into the gradient even when masked.
    safe = torch.where(equal, torch.ones_like(den), den)
    return torch.where(equal, torch.ones_like(den), 2.0 * cov / safe)


def ccc_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over the last dimension (valence, arousal) of ``1 - CCC`` over all masked-in frames of the batch.

    `pred`, `target`: [B, L, D]; `mask`: [B, L] (True = labelled frame), None = all frames.
    One CCC per dimension over the whole batch (not per window): short windows
    have unstable moments, and the metric is also computed over many frames.
    """
    if pred.shape != target.shape:
        raise ValueError(f"ccc_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if mask is not None and mask.shape != pred.shape[:-1]:
        raise ValueError(f"ccc_loss: mask must be {tuple(pred.shape[:-1])}, got {tuple(mask.shape)}")
    losses = [1.0 - ccc(pred[..., d], target[..., d], mask) for d in range(pred.shape[-1])]
    return torch.stack(losses).mean()


def ccc_np(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> float:
    """CCC in float64 over all (masked-in) elements; same constant-case rule as `ccc`."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"ccc_np: x and y must have the same shape, got {x.shape} and {y.shape}")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != x.shape:
            raise ValueError(f"ccc_np: mask shape {mask.shape} differs from the inputs' {x.shape}")
        x, y = x[mask], y[mask]
    x, y = x.ravel(), y.ravel()
    if x.size == 0:
        raise ValueError("ccc_np: no frames to score (empty input or every frame masked out)")
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    den = (dx * dx).mean() + (dy * dy).mean() + (mx - my) ** 2
    if den == 0:  # exactly 0 only: NaN compares unequal, so NaN input gives NaN, never a perfect 1
        return 1.0
    return float(2.0 * (dx * dy).mean() / den)


__all__ = ["ccc", "ccc_loss", "ccc_np"]

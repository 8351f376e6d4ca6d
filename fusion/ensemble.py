"""Fold ensembling by CCC centering (the AVEC gold-standard procedure, used by LFAN).

For the fold predictions X_f (f = 1..F) of one trial and one dimension:

    m_f = mean_t X_f,t
    a_f = mean over g != f of CCC(X_f, X_g)              (how much fold f agrees with the others)
    w   = sum_f a_f m_f / sum_f a_f
    result_t = clip(mean_f X_f,t - mean_f m_f + w, -1, 1)

i.e. the plain frame-wise mean, re-centred on an agreement-weighted mean
level: folds that disagree with the rest pull the level less. Degenerate
cases, documented rather than NaN: one fold returns its prediction (clipped);
when sum_f a_f <= 0 (no fold agrees with the others on balance, so the weights
mean nothing) w falls back to the unweighted mean of m_f, i.e. the plain
frame-wise mean. CCC uses `ccc_np` (identical constant predictions agree: 1).
"""
from __future__ import annotations

import numpy as np

from .ccc import ccc_np


def center_ensemble(preds: list[np.ndarray]) -> np.ndarray:
    """Merge F fold predictions [T] of one trial and dimension into one [T] series in [-1, 1]."""
    if not preds:
        raise ValueError("center_ensemble: no predictions to merge")
    arrays = [np.asarray(p, dtype=np.float64) for p in preds]
    for i, a in enumerate(arrays):
        if a.ndim != 1 or a.shape != arrays[0].shape:
            raise ValueError(f"center_ensemble: prediction {i} has shape {a.shape}; all must be [T] with "
                             f"T = {arrays[0].shape}")
    x = np.stack(arrays)  # [F, T]
    n = len(arrays)
    if n == 1:
        return np.clip(x[0], -1.0, 1.0)
    means = x.mean(axis=1)
    agree = np.array([np.mean([ccc_np(x[f], x[g]) for g in range(n) if g != f]) for f in range(n)])
    total = agree.sum()
    level = float((agree * means).sum() / total) if total > 0 else float(means.mean())
    return np.clip(x.mean(axis=0) - means.mean() + level, -1.0, 1.0)


def center_ensemble_va(preds: list[np.ndarray]) -> np.ndarray:
    """`center_ensemble` applied per column of [T, D] predictions (valence, arousal)."""
    if not preds:
        raise ValueError("center_ensemble_va: no predictions to merge")
    arrays = [np.asarray(p) for p in preds]
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape != arrays[0].shape:
            raise ValueError(f"center_ensemble_va: prediction {i} has shape {a.shape}; all must be [T, D] with "
                             f"[T, D] = {arrays[0].shape}")
    return np.stack([center_ensemble([a[:, d] for a in arrays]) for d in range(arrays[0].shape[1])], axis=1)


__all__ = ["center_ensemble", "center_ensemble_va"]

"""Fold splitting (LFAN practice, fold 0 = official split) and CCC-centering fold ensembling."""
from __future__ import annotations

from fractions import Fraction as Fr

import numpy as np
import pytest

from fusion.ccc import ccc_np
from fusion.ensemble import center_ensemble, center_ensemble_va
from fusion.folds import make_folds

# ---------------------------------------------------------------- ensembling


def test_centering_worked_example() -> None:
    # s = 0.1, 0.2, 0.3, 0.4 (mean 0.25, population var 0.0125, so 2 var = 0.025)
    # X1 = s, X2 = s + 0.1, X3 = s + 0.3: pairwise CCC of s and s + c is 0.025 / (0.025 + c^2):
    #   CCC(1,2) = 5/7, CCC(1,3) = 0.025/0.115 = 5/23, CCC(2,3) = 0.025/0.065 = 5/13
    # a_1 = (5/7 + 5/23)/2 = 75/161, a_2 = (5/7 + 5/13)/2 = 50/91, a_3 = (5/23 + 5/13)/2 = 90/299
    # m = 1/4, 7/20, 11/20;  w = sum a m / sum a;  result = mean_f X_f - mean m + w = s + 2/15 - 23/60 + w
    s = np.array([0.1, 0.2, 0.3, 0.4])
    a = [Fr(75, 161), Fr(50, 91), Fr(90, 299)]
    m = [Fr(1, 4), Fr(7, 20), Fr(11, 20)]
    w = sum(ai * mi for ai, mi in zip(a, m)) / sum(a)
    want = s + float(Fr(2, 15) - Fr(23, 60) + w)  # = s - 0.25 + w, w ~= 0.36034
    got = center_ensemble([s, s + 0.1, s + 0.3])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # the agreement weighting matters: the plain mean would give s + 2/15
    assert not np.allclose(got, s + 2 / 15)


def formula(preds: list[np.ndarray]) -> np.ndarray:
    """The spec's formula in loops, without clipping."""
    n = len(preds)
    m = [p.mean() for p in preds]
    a = [sum(ccc_np(preds[f], preds[g]) for g in range(n) if g != f) / (n - 1) for f in range(n)]
    w = sum(af * mf for af, mf in zip(a, m)) / sum(a)
    return sum(preds) / n - sum(m) / n + w


def test_centering_matches_formula_and_clips() -> None:
    rng = np.random.default_rng(0)
    base = np.sin(np.linspace(0, 6, 200))
    # three close, high folds and two noisy, low ones that still saturate at the peaks: the level moves
    # towards the agreeing (high) folds, so frames where every fold says 1 end above 1 before clipping
    preds = ([np.clip(base + 0.6 + 0.05 * rng.normal(size=200), -1, 1) for _ in range(3)]
             + [np.clip(3 * base - 1.0 + 0.5 * rng.normal(size=200), -1, 1) for _ in range(2)])
    raw = formula(preds)
    assert raw.max() > 1  # the example exercises the clipping
    got = center_ensemble(preds)
    np.testing.assert_allclose(got, np.clip(raw, -1, 1), rtol=0, atol=1e-12)
    assert got.min() >= -1 and got.max() <= 1


def test_centering_degenerate_cases() -> None:
    x = np.array([0.2, -0.4, 0.9, 0.1])
    np.testing.assert_array_equal(center_ensemble([x]), x)  # one fold: itself
    np.testing.assert_array_equal(center_ensemble([np.array([1.5, -2.0])]), [1.0, -1.0])
    np.testing.assert_allclose(center_ensemble([x, x, x]), x, atol=1e-15)  # identical folds: unchanged
    # s, s + 0.1, reversed s: agreements -1/7, 0, -6/7 sum to -1 <= 0 -> unweighted level = plain mean
    s = np.array([0.1, 0.2, 0.3, 0.4])
    preds = [s, s + 0.1, s[::-1].copy()]
    np.testing.assert_allclose(center_ensemble(preds), np.mean(preds, axis=0), atol=1e-15)
    # constant folds do not produce NaN
    assert np.isfinite(center_ensemble([np.zeros(5), np.full(5, 0.2), np.linspace(0, 1, 5)])).all()
    with pytest.raises(ValueError, match="shape"):
        center_ensemble([x, x[:3]])
    with pytest.raises(ValueError, match="no predictions"):
        center_ensemble([])


def test_centering_va_is_per_dimension() -> None:
    rng = np.random.default_rng(1)
    preds = [np.tanh(rng.normal(size=(50, 2)) + 0.2 * f) for f in range(4)]
    got = center_ensemble_va(preds)
    assert got.shape == (50, 2)
    for d in range(2):
        np.testing.assert_array_equal(got[:, d], center_ensemble([p[:, d] for p in preds]))


# ---------------------------------------------------------------- folds

def test_fold_zero_is_the_official_split() -> None:
    train = [f"tr{i:03d}" for i in range(351)]  # ABAW2-sized: 351 train + 71 validation videos
    val = [f"va{i:02d}" for i in range(71)]
    tr, va = make_folds(train + val, n_folds=6, fold=0, n_val=len(val))
    assert tr == train and va == val


def test_folds_follow_roll_and_partition_the_trials() -> None:
    ids = [f"t{i:02d}" for i in range(15)]  # 12 train + 3 val
    # training part cut into 5 chunks by array_split (3,3,2,2,2), validation the 6th chunk
    chunks = [ids[0:3], ids[3:6], ids[6:8], ids[8:10], ids[10:12], ids[12:15]]
    seen = []
    for f in range(6):
        tr, va = make_folds(ids, 6, f, n_val=3)
        rolled = [chunks[(i - f) % 6] for i in range(6)]  # numpy roll semantics, written out
        assert va == rolled[-1]
        assert tr == [t for t in ids if t not in va]  # manifest order kept
        seen.extend(va)
    assert sorted(seen) == ids  # every trial validated by exactly one fold
    assert make_folds(ids, 6, 1, n_val=3)[1] == ids[10:12]  # fold 1 validates the last training chunk


def test_folds_without_official_split() -> None:
    ids = [f"t{i}" for i in range(13)]  # array_split(13, 6): 3,2,2,2,2,2
    assert make_folds(ids, fold=0)[1] == ids[11:13]
    assert make_folds(ids, fold=5)[1] == ids[0:3]
    assert make_folds(ids, n_folds=6, fold=2)[1] == ids[7:9]


def test_fold_errors_are_clear() -> None:
    ids = [f"t{i}" for i in range(10)]
    with pytest.raises(ValueError, match="duplicate trial id"):
        make_folds(ids + ["t3"])
    with pytest.raises(ValueError, match=r"fold must be an integer in \[0, 5\]"):
        make_folds(ids, fold=6)
    with pytest.raises(ValueError, match="cannot make 6 folds"):
        make_folds(ids[:4])
    with pytest.raises(ValueError, match="n_val must be"):
        make_folds(ids, n_val=10)
    with pytest.raises(ValueError, match="cannot fill 5 training chunks"):
        make_folds(ids, n_val=7)

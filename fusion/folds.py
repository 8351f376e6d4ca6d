"""Cross-validation folds over train+validation trials (LFAN practice).

The trials are cut into `n_folds` chunks; fold f = roll(chunks, f) (numpy's
roll: the list shifted right by f), the first n_folds-1 chunks train and the
last validates. So fold f validates chunk (n_folds-1-f) mod n_folds and every
trial is validated by exactly one fold.

Fold 0 is the official split by construction when the caller says where it
is: pass the trials in manifest order as *official train trials, then official
validation trials* and ``n_val`` = the number of validation trials. The
training part is then cut into n_folds-1 near-equal chunks (numpy
`array_split`: earlier chunks one longer) and the validation trials form the
last chunk whole, so roll(chunks, 0) validates exactly the official
validation set. Without `n_val` all trials are cut into n_folds near-equal
chunks, and fold 0 validates the last ~1/n_folds of the list.
Returned id lists keep the input (manifest) order.
"""
from __future__ import annotations

import numpy as np


def _chunks(n: int, n_folds: int, n_val: int | None) -> list[np.ndarray]:
    idx = np.arange(n)
    if n_val is None:
        return np.array_split(idx, n_folds)
    return [*np.array_split(idx[: n - n_val], n_folds - 1), idx[n - n_val:]]


def make_folds(trial_ids: list[str], n_folds: int = 6, fold: int = 0, *,
               n_val: int | None = None) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of fold `fold` (0 = official split when `n_val` is given; see module docstring)."""
    ids = list(trial_ids)
    if len(set(ids)) != len(ids):
        dup = sorted({t for t in ids if ids.count(t) > 1})
        raise ValueError(f"make_folds: duplicate trial id(s) {', '.join(map(str, dup[:5]))}")
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or n_folds < 2:
        raise ValueError(f"make_folds: n_folds must be an integer >= 2, got {n_folds!r}")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < n_folds:
        raise ValueError(f"make_folds: fold must be an integer in [0, {n_folds - 1}], got {fold!r}")
    if n_val is None:
        if len(ids) < n_folds:
            raise ValueError(f"make_folds: {len(ids)} trial(s) cannot make {n_folds} folds (need at least one per fold)")
    else:
        if isinstance(n_val, bool) or not isinstance(n_val, int) or not 1 <= n_val < len(ids):
            raise ValueError(f"make_folds: n_val must be an integer in [1, {len(ids) - 1}] "
                             f"(the official validation trials at the end of the list), got {n_val!r}")
        if len(ids) - n_val < n_folds - 1:
            raise ValueError(f"make_folds: {len(ids) - n_val} training trial(s) cannot fill {n_folds - 1} "
                             "training chunks (need at least one per chunk)")
    chunks = _chunks(len(ids), n_folds, n_val)
    rolled = [chunks[(i - fold) % n_folds] for i in range(n_folds)]  # == np.roll(chunks, fold)
    val = set(rolled[-1].tolist())
    train_ids = [t for i, t in enumerate(ids) if i not in val]
    val_ids = [t for i, t in enumerate(ids) if i in val]
    return train_ids, val_ids


__all__ = ["make_folds"]

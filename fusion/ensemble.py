"""Fold ensembling: the CCC-centering merge, and `affpipe ensemble` over run or submission folders.

The merge is the AVEC gold-standard procedure (used by LFAN).

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

Inputs of `ensemble` are run folders (their raw ``predictions/<split>/<trial>.csv``,
written by `affpipe predict` / training) or submission folders (``<trial>.txt``).
Raw predictions are preferred: merging values already rounded to three
decimals and clipped loses a little. The output has the submission format.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .ccc import ccc_np
from .predict import HEADER, output_folder, write_submission
from .runs import FusionError
from .train import read_prediction_csv


# -- the merge ----------------------------------------------------------------------------------------
def center_ensemble(preds: list[np.ndarray]) -> np.ndarray:
    """Merge F fold predictions [T] of one trial and dimension into one [T] series in [-1, 1]."""
    arrays = _same_shape("center_ensemble", [np.asarray(p, dtype=np.float64) for p in preds], ndim=1)
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
    arrays = _same_shape("center_ensemble_va", [np.asarray(p) for p in preds], ndim=2)
    return np.stack([center_ensemble([a[:, d] for a in arrays]) for d in range(arrays[0].shape[1])], axis=1)


def _same_shape(fn: str, arrays: list[np.ndarray], ndim: int) -> list[np.ndarray]:
    """`arrays` when there is at least one and all share one shape of rank `ndim` ([T] or [T, D]); else ValueError."""
    if not arrays:
        raise ValueError(f"{fn}: no predictions to merge")
    form = "[T]" if ndim == 1 else "[T, D]"
    name = "T" if ndim == 1 else form
    for i, a in enumerate(arrays):
        if a.ndim != ndim or a.shape != arrays[0].shape:
            raise ValueError(f"{fn}: prediction {i} has shape {a.shape}; all must be {form} with "
                             f"{name} = {arrays[0].shape}")
    return arrays


# -- merging folders into a submission -----------------------------------------------------------------
def _read_submission_txt(path: Path) -> np.ndarray:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].lstrip("\ufeff").strip() != HEADER:
        raise FusionError(f"{path}:1: header must be {HEADER!r}")
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        try:
            v, a = (float(x) for x in line.split(","))
        except ValueError:
            raise FusionError(f"{path}:{i}: expected two numbers, got {line!r}") from None
        rows.append((v, a))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


def read_source(folder: Path, split: str) -> dict[str, np.ndarray]:
    """Per-trial predictions of one input folder (run folder or submission folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FusionError(f"{folder}: not a folder")
    if (folder / "config.json").is_file():
        pred_dir = folder / "predictions" / split
        files = sorted(pred_dir.glob("*.csv")) if pred_dir.is_dir() else []
        if not files:
            raise FusionError(f"{folder}: no {split} predictions in the run; run "
                              f"`affpipe predict {folder} --split {split} ...` first")
        return {p.stem: read_prediction_csv(p) for p in files}
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FusionError(f"{folder}: neither a run folder (config.json) nor a submission folder (*.txt)")
    return {p.stem: _read_submission_txt(p) for p in files}


@dataclass
class EnsembleResult:
    out: Path
    files: list[Path]
    n_inputs: int


def ensemble(run_dirs: Sequence[str | Path], out: str | Path, split: str = "test") -> EnsembleResult:
    """Merge the same trials' predictions from every input; all inputs must cover the same trials."""
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise FusionError("ensemble needs at least two runs (or submission folders)")
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise FusionError("ensemble: the same folder is given twice")
    output_folder(out)  # before reading: a bad --out is said at once, in one line
    sources = [read_source(d, split) for d in dirs]
    trials = set(sources[0])
    for d, src in zip(dirs[1:], sources[1:]):
        if set(src) != trials:
            only_first = sorted(trials - set(src))
            only_here = sorted(set(src) - trials)
            detail = []
            if only_first:
                detail.append(f"missing {', '.join(only_first[:5])}")
            if only_here:
                detail.append(f"extra {', '.join(only_here[:5])}")
            raise FusionError(f"{d}: covers other trials than {dirs[0]} ({'; '.join(detail)})")
    merged = {}
    for t in sorted(trials):
        arrays = [src[t] for src in sources]
        lengths = {a.shape[0] for a in arrays}
        if len(lengths) != 1:
            detail = ", ".join(f"{d.name}: {a.shape[0]}" for d, a in zip(dirs, arrays))
            raise FusionError(f"trial {t}: inputs disagree on the frame count ({detail})")
        merged[t] = center_ensemble_va(arrays) if arrays[0].shape[0] else arrays[0]
    files = write_submission(out, merged)
    return EnsembleResult(Path(out), files, len(dirs))


__all__ = ["center_ensemble", "center_ensemble_va", "ensemble", "read_source", "EnsembleResult"]

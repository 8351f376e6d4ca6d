"""Synthetic feature shards at the real cache keys: for the trainer's benchmark and tests.

Extracting 3M frames of real features takes hours; measuring the loader and the
heads does not need real faces, only real *files*: HDF5 shards in the cache
layout, at the keys the reader computes from the manifest and config, read back
through `pipeline.engine.reader` exactly like extracted ones. The features carry a
known signal (valence and arousal mixed into each stage with noise), so a
model trained on them must learn something, which tests can check.

Shards already in the cache (e.g. real probe and labels shards written by
`pipeline.extract`) are kept; only missing ones are synthesised. A face-derived
stage (visual) gets a faces shard beside it, as extraction would leave, with
every frame the subject's (identity 0): the trainer reads identities from it.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.sources.manifest import Trial
from pipeline.engine.shards import write_shard
from pipeline.engine.store import CacheStore


def smooth_curves(rng: np.random.Generator, n: int, fps: float = 30.0, k: int = 2) -> np.ndarray:
    """k slowly varying series in [-0.9, 0.9] (a few sine waves of 2-20 s periods)."""
    t = np.arange(n) / fps
    out = np.zeros((n, k))
    for j in range(k):
        for _ in range(3):
            period = rng.uniform(2.0, 20.0)
            out[:, j] += rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))
    return np.clip(out, -0.9, 0.9)


def write_synthetic_cache(cache: str | Path, trials: Sequence[Trial], lengths: dict[str, int],
                          dims: dict[str, int], config: dict[str, Any] | str | Path | None = None, *,
                          fps: float = 30.0, seed: int = 0, noise: float = 0.5, invalid_fraction: float = 0.05,
                          feature_dtype: Any = np.float16, progress: Any = None) -> dict[str, int]:
    """Write probe, labels, feature shards (stage -> width in `dims`) and their faces shards, where missing.

    `lengths` gives each trial's frame count where no probe shard exists yet;
    with an existing probe shard its count wins. Returns shards written per stage.
    """
    from pipeline.engine.config import build_stages
    from pipeline.engine.plan import stage_order
    from pipeline.engine.reader import open_cache
    from pipeline.engine.shards import read_shard

    reader = open_cache(cache, list(trials), config)
    store = CacheStore(cache)
    stage_objs = build_stages(config)
    face_derived = "faces" not in dims and any("faces" in stage_order([s], stage_objs) for s in dims)  # else below
    written = {s: 0 for s in ["probe", "labels", *(["faces"] if face_derived else []), *dims]}
    rng_master = np.random.default_rng(seed)
    mixing = {s: rng_master.normal(0, 1, size=(2, d)).astype(np.float32) for s, d in dims.items()}
    for trial in trials:
        t = trial.trial
        rng = np.random.default_rng([seed, zlib.crc32(t.encode())])  # per trial, stable across processes

        def path(stage: str) -> Path:
            return store.shard_path(stage, t, reader.key(t, stage))

        if reader.has(t, "probe"):
            probe = read_shard(path("probe"))
            n, time_grid = probe.n_frames, probe.time
        else:
            n = int(lengths[t])
            time_grid = np.arange(n, dtype=np.float64) / fps
            _write(path("probe"), t, "probe", reader.key(t, "probe"), time_grid, None, None,
                   {"fps": fps, "n_decoded": n, "n_container": n, "synthetic": True})
            written["probe"] += 1
        va = smooth_curves(rng, n, fps)
        if reader.has(t, "labels"):
            lab = read_shard(path("labels"))
            va = np.where(lab.valid[:, None], lab.features, va) if lab.valid is not None else lab.features
        else:
            labelled = np.ones(n, dtype=bool)
            if n > 20 and invalid_fraction > 0:
                k = max(1, int(n * invalid_fraction))
                s0 = int(rng.integers(0, n - k))
                labelled[s0:s0 + k] = False  # a run of unlabelled frames, as Aff-Wild2 has
            feats = np.where(labelled[:, None], va, 0.0).astype(np.float32)
            _write(path("labels"), t, "labels", reader.key(t, "labels"), time_grid, feats, labelled,
                   {"policy": "truncate", "n_decoded": n, "synthetic": True})
            written["labels"] += 1
        if face_derived and not reader.has(t, "faces") and reader.key(t, "faces"):
            _write(path("faces"), t, "faces", reader.key(t, "faces"), time_grid, None, np.ones(n, dtype=bool),
                   {"mode": "detect", "synthetic": True}, extras={"identity": np.zeros(n, dtype=np.int32)})
            written["faces"] += 1
        for s, d in dims.items():
            if reader.has(t, s):
                continue
            if s == "text":  # the text stage stores one embedding per segment plus a per-frame index
                _write_text(path(s), t, reader.key(t, s), time_grid, va, mixing[s], rng, noise, fps,
                            feature_dtype)
                written[s] += 1
                continue
            x = va.astype(np.float32) @ mixing[s] + noise * rng.standard_normal((n, d), dtype=np.float32)
            valid = np.ones(n, dtype=bool)
            if n > 20 and invalid_fraction > 0:
                valid[rng.random(n) < invalid_fraction] = False
                x[~valid] = 0.0
            _write(path(s), t, s, reader.key(t, s), time_grid, x.astype(feature_dtype), valid,
                   {"n_decoded": n, "synthetic": True})
            written[s] += 1
        if progress is not None:
            progress()
    return written


def _write_text(path: Path, trial: str, key: str, time_grid: np.ndarray, va: np.ndarray, mixing: np.ndarray,
                rng: np.random.Generator, noise: float, fps: float, dtype: Any) -> None:
    """Segments of 1-3 s with 0.2-1 s pauses; each embedding mixes the segment's mean valence/arousal."""
    from pipeline.stages.text import assign_frames

    n = int(time_grid.shape[0])
    duration = n / fps
    intervals, t0 = [], float(rng.uniform(0.0, 0.5))
    while t0 < duration:
        t1 = min(duration, t0 + float(rng.uniform(1.0, 3.0)))
        intervals.append((t0, t1))
        t0 = t1 + float(rng.uniform(0.2, 1.0))
    iv = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    index = assign_frames(np.asarray(time_grid, dtype=np.float64), iv)
    emb = np.zeros((len(iv), mixing.shape[1]), dtype=np.float32)
    for i in range(len(iv)):
        rows = index == i
        level = va[rows].mean(axis=0) if rows.any() else np.zeros(2)
        emb[i] = level.astype(np.float32) @ mixing + noise * rng.standard_normal(mixing.shape[1], dtype=np.float32)
    n_seg = len(iv)
    write_shard(path, frame=np.arange(n, dtype=np.int64), time=np.asarray(time_grid, dtype=np.float64),
                features=None, valid=index >= 0,
                extras={"segment_embeddings": emb.astype(dtype), "segment_intervals": iv,
                        "segment_text": np.array([f"segment {i}" for i in range(n_seg)], dtype=object),
                        "segment_index": index},
                attrs={"trial": trial, "stage": "text", "key": key, "dim": int(mixing.shape[1]),
                       "n_segments": n_seg, "frame_keyed_extras": ["segment_index"], "synthetic": True})


def _write(path: Path, trial: str, stage: str, key: str, time_grid: np.ndarray, features: np.ndarray | None,
           valid: np.ndarray | None, attrs: dict[str, Any], extras: dict[str, np.ndarray] | None = None) -> None:
    n = int(time_grid.shape[0])
    write_shard(path, frame=np.arange(n, dtype=np.int64), time=np.asarray(time_grid, dtype=np.float64),
                features=features, valid=valid, extras=extras or {},
                attrs={"trial": trial, "stage": stage, "key": key, **attrs})


__all__ = ["write_synthetic_cache", "smooth_curves"]

"""Read cached shards back as arrays aligned on one frame grid (the trainer's only door to features).

The reader recomputes the same keys the extractor would (from the manifest,
the config and the input files' metadata), so it can only ever return shards
that match the settings asked for: a stale shard from older settings is simply
not found, rather than silently used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import build_stages
from .manifest import Trial, read_manifest
from .plan import Task, make_plan, stage_order
from .shards import read_shard
from .stage import STAGES
from .store import CacheStore


class MissingShardsError(LookupError):
    """Shards the caller needs are not in the cache; the message names trials and stages."""


@dataclass
class TrialArrays:
    """One trial's arrays on the probe frame grid; features are float32, valid masks bool."""

    trial: str
    frame: np.ndarray
    time: np.ndarray
    features: dict[str, np.ndarray] = field(default_factory=dict)
    valid: dict[str, np.ndarray] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frame.shape[0])


class CacheReader:
    """Look up and load shards of a cache for the trials of a manifest and one config."""

    def __init__(self, cache: str | Path, trials: list[Trial], config: dict[str, Any] | str | Path | None = None):
        self.store = CacheStore(cache)
        self.trials = {t.trial: t for t in trials}
        self.config = config
        self._stages = build_stages(config)
        self._tasks: dict[tuple[str, str], Task] = {}
        order = stage_order(list(STAGES))
        for task in make_plan(trials, self._stages, order, self.store):
            self._tasks[(task.trial.trial, task.stage)] = task

    def key(self, trial: str, stage: str) -> str:
        return self._tasks[(trial, stage)].key

    def has(self, trial: str, stage: str) -> bool:
        task = self._tasks.get((trial, stage))
        return task is not None and task.status == "cached"

    def missing(self, stages: Sequence[str], trials: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Trials lacking a cached shard, per stage (empty lists when all are there)."""
        ids = list(trials) if trials is not None else list(self.trials)
        return {s: [t for t in ids if not self.has(t, s)] for s in stages}

    def require(self, stages: Sequence[str], trials: Sequence[str] | None = None) -> None:
        missing = {s: ts for s, ts in self.missing(stages, trials).items() if ts}
        if missing:
            parts = []
            for s, ts in missing.items():
                shown = ", ".join(ts[:5]) + (f" and {len(ts) - 5} more" if len(ts) > 5 else "")
                parts.append(f"{s}: {shown}")
            raise MissingShardsError(f"{self.store.root}: no cached shards for " + "; ".join(parts)
                                     + " (run `affpipe extract` with the same manifest and config)")

    def shard_path(self, trial: str, stage: str) -> Path:
        self.require([stage], [trial])
        return self._tasks[(trial, stage)].path  # type: ignore[return-value]

    def dim(self, stage: str) -> int:
        """Feature width of a stage, read from the first cached shard."""
        for trial in self.trials:
            if self.has(trial, stage):
                feats, _ = self._frame_arrays(stage, read_shard(self.shard_path(trial, stage)))
                return int(feats.shape[1])
        raise MissingShardsError(f"{self.store.root}: no cached shard of stage {stage!r}")

    def _frame_arrays(self, stage: str, shard: Any) -> tuple[np.ndarray, np.ndarray]:
        feats, valid = STAGES[stage].frame_arrays(shard)
        feats = np.asarray(feats, dtype=np.float32)
        if feats.ndim == 1:
            feats = feats[:, None]
        elif feats.ndim > 2:
            feats = feats.reshape(feats.shape[0], -1)
        return feats, np.asarray(valid, dtype=bool)

    def load(self, trial: str, stages: Sequence[str]) -> TrialArrays:
        """Arrays of `stages` for one trial, all on the probe's frame grid."""
        self.require(list(stages), [trial])
        probe = read_shard(self.shard_path(trial, "probe"))
        out = TrialArrays(trial, probe.frame, probe.time)
        for stage in stages:
            shard = read_shard(self.shard_path(trial, stage))
            if shard.n_frames != probe.n_frames:
                raise MissingShardsError(f"{shard.path}: {shard.n_frames} frames, probe has {probe.n_frames}")
            out.features[stage], out.valid[stage] = self._frame_arrays(stage, shard)
            out.keys[stage] = shard.key
            out.attrs[stage] = shard.attrs
        return out


def open_cache(cache: str | Path, trials: list[Trial] | str | Path,
               config: dict[str, Any] | str | Path | None = None) -> CacheReader:
    """Reader over `cache` for the trials of a manifest (list or CSV path) and a config."""
    if not isinstance(trials, list):
        trials = read_manifest(trials)
    return CacheReader(cache, trials, config)


def unavailable(reader: CacheReader, stages: Sequence[str]) -> dict[str, tuple[str, str, str]]:
    """Trials that cannot have one of `stages` because the plan marks it failed before or blocked.

    trial -> (the first such stage, ledger kind, message); the kind and message
    are the cause's (a `visual` blocked by a faceless `faces` reads ``no-face``).
    Trials whose shards are merely not extracted yet are not listed (`require` says so).
    """
    out: dict[str, tuple[str, str, str]] = {}
    for trial in reader.trials:
        for stage in stages:
            task = reader._tasks.get((trial, stage))
            if task is not None and task.status in ("failed-before", "blocked"):
                out[trial] = (stage, task.error_kind or "unknown", task.error)
                break
    return out

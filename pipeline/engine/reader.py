"""Read cached shards back as arrays aligned on one frame grid (the trainer's only door to features).

Shards are found from the manifest and the config alone; the inputs (videos,
annotations, weight files) need not be on this machine. For each (trial,
stage) the reader computes the recipe (`pipeline.engine.plan.recipe_of`) and:

- when every input file of the stage is at hand, computes the exact key, as
  extract would, so a changed input is never answered with an old shard
  (reported as stale instead);
- otherwise asks the cache index for the most recent version extract produced
  for that recipe and those upstream shards whose recorded fingerprints agree
  with whatever inputs *are* at hand.

A shard from other settings is never returned: settings are in the recipe.
Trials whose stage failed with an input verdict (no face, corrupt media) are
reported as such (`unavailable`), so a trainer can skip them knowingly.

With ``subject_only`` (the trainer's default), frames where the tracked face is
someone else's (the faces shard's per-frame ``identity`` != 0; extracted with
``faces.other_identities: keep``, the default) are invalid in every
face-derived stage (`faces`, and any stage that reads it, directly or through
another stage: `visual`): another person's face is not the subject's affect.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .config import build_stages, fingerprint_mode
from .identity import FingerprintMemo
from .index import TrialIndex
from ..sources.manifest import Trial, read_manifest
from .plan import recipe_of, stage_order, task_key
from .shards import read_shard
from .stage import STAGES, Stage
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


@dataclass
class Resolved:
    """Where one (trial, stage) stands in the cache, as far as a reader can tell."""

    status: str  # cached | missing | stale | failed-before | blocked
    key: str = ""  # the shard's key when cached, or computed from inputs at hand
    path: Path | None = None
    kind: str = ""  # the ledger's error kind for failed-before / blocked
    message: str = ""
    exact: bool = False  # every input was at hand, so the key was computed, not looked up


def _agrees(recorded: list[Any], at_hand: list[dict[str, Any] | None], mode: str) -> bool:
    """Recorded fingerprints match every input we could fingerprint here (and use the same mode)."""
    if len(recorded) < len(at_hand):
        return False
    at_hand = at_hand + [None] * (len(recorded) - len(at_hand))
    for rec, now in zip(recorded, at_hand):
        if now is not None and rec != now:
            return False
        if now is None and isinstance(rec, dict) and rec.get("kind") == "file" and mode not in rec:
            return False
    return True


class CacheReader:
    """Look up and load shards of a cache for the trials of a manifest and one config."""

    def __init__(self, cache: str | Path, trials: list[Trial], config: dict[str, Any] | str | Path | None = None,
                 *, subject_only: bool = False):
        self.store = CacheStore(cache)
        self.subject_only = subject_only  # see the module doc and `other_identity_frames`
        self.trials = {t.trial: t for t in trials}
        self.config = config
        self._stages = build_stages(config)
        self._mode = fingerprint_mode(config)
        self._memo = FingerprintMemo(self.store.root / "fingerprints.json", self._mode)
        self._index = TrialIndex(self.store.root)
        self._verdicts = {}
        for e in self.store.ledger():  # latest input verdict per (trial, stage, recipe)
            if e.sticky and e.recipe:
                self._verdicts[(e.trial, e.stage, e.recipe)] = e
        self._tasks: dict[tuple[str, str], Resolved] = {}
        order = stage_order(list(STAGES))
        for trial in trials:
            self._resolve_trial(trial, order)
        self._memo.save()

    def _resolve_trial(self, trial: Trial, order: list[str]) -> None:
        recipes: dict[str, str] = {}
        for name in order:
            stage = self._stages[name]
            recipe = recipe_of(stage, trial, {d: recipes[d] for d in stage.inputs if d in recipes})
            recipes[name] = recipe
            ups = {d: self._tasks[(trial.trial, d)] for d in stage.inputs}
            dead = [d for d, r in ups.items() if r.status in ("failed-before", "blocked")] + \
                   [d for d, r in ups.items() if not r.key]
            if dead:
                cause = ups[dead[0]]
                self._tasks[(trial.trial, name)] = Resolved("blocked", kind=cause.kind,
                                                            message=f"{dead[0]}: {cause.message or cause.status}")
                continue
            self._tasks[(trial.trial, name)] = self._resolve(trial, name, stage, recipe,
                                                             {d: r.key for d, r in ups.items()})

    def _resolve(self, trial: Trial, name: str, stage: Stage, recipe: str, upstream: dict[str, str]) -> Resolved:
        at_hand: list[dict[str, Any] | None] = []
        for f in stage.input_files(trial):
            try:
                at_hand.append(self._memo.fingerprint(f))
            except OSError:
                at_hand.append(None)
        versions = [v for v in self._index.versions(trial.trial, name, recipe) if v.get("upstream") == upstream
                    and self.store.shard_path(name, trial.trial, v["key"]).exists()]
        exact = all(fp is not None for fp in at_hand)
        key = task_key(stage, trial, upstream, at_hand) if exact else ""  # type: ignore[arg-type]
        if exact and self.store.shard_path(name, trial.trial, key).exists():
            return Resolved("cached", key, self.store.shard_path(name, trial.trial, key), exact=True)
        # Inputs appended last (weight files) may be absent here: compare what is at hand.
        found = [v for v in versions if _agrees(v.get("inputs", []), at_hand, self._mode)]
        if found:
            latest = max(found, key=lambda v: v.get("time", 0))
            return Resolved("cached", latest["key"], self.store.shard_path(name, trial.trial, latest["key"]))
        if versions:
            return Resolved("stale", message="its input files changed since they were extracted")
        verdict = self._verdicts.get((trial.trial, name, recipe))
        if verdict is not None and (not exact or verdict.key == key):
            return Resolved("failed-before", key, kind=verdict.kind, message=verdict.message, exact=exact)
        # `key` (when exact) is where extract would write it: the shard is simply not there yet.
        return Resolved("missing", key, exact=exact)

    def status(self, trial: str, stage: str) -> Resolved:
        return self._tasks[(trial, stage)]

    def unavailable(self, stages: Sequence[str], trials: Sequence[str] | None = None
                    ) -> dict[str, tuple[str, str, str]]:
        """trial -> (stage, kind, message) for trials an input verdict keeps from `stages` (no face, ...)."""
        out: dict[str, tuple[str, str, str]] = {}
        for t in (list(trials) if trials is not None else list(self.trials)):
            for s in stages:
                res = self._tasks[(t, s)]
                if res.status in ("failed-before", "blocked") and res.kind:
                    out[t] = (s, res.kind, res.message)
                    break
        return out

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
                stale = [t for t in ts if self._tasks[(t, s)].status == "stale"]
                parts.append(f"{s}: {shown}" + (f" ({len(stale)} stale: inputs changed since extraction)"
                                                 if stale else ""))
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

    def masked_stages(self, stages: Sequence[str]) -> list[str]:
        """Those of `stages` whose frames of other people's faces `load` masks: with `subject_only`,
        `faces` and every stage that reads it, directly or through others (`visual`)."""
        if not self.subject_only:
            return []
        return [s for s in stages if "faces" in stage_order([s], self._stages)]

    def other_identity_frames(self, trial: str) -> np.ndarray | None:
        """Frames [n] bool where the faces shard tracked someone other than the subject (``identity`` != 0).

        None when the shard records no identities: `aligned_faces` trials (their
        images are the subject's own crops, so every valid frame counts as the
        subject's) and faces shards written before identities were recorded;
        their frames are then taken as the subject's, as they always were.
        Frames without a face (identity -1) are invalid in face-derived stages anyway.
        """
        return self._others_in(read_shard(self.shard_path(trial, "faces")))

    @staticmethod
    def _others_in(faces: Any) -> np.ndarray | None:
        identity = faces.extras.get("identity")
        return None if identity is None else np.asarray(identity) != 0

    def load(self, trial: str, stages: Sequence[str]) -> TrialArrays:
        """Arrays of `stages` for one trial, all on the probe's frame grid.

        With `subject_only`, face-derived stages are invalid where `other_identity_frames` says so.
        """
        masked = self.masked_stages(stages)
        self.require(list(stages) + (["faces"] if masked else []), [trial])
        probe = read_shard(self.shard_path(trial, "probe"))
        out = TrialArrays(trial, probe.frame, probe.time)
        faces = None
        for stage in stages:
            shard = read_shard(self.shard_path(trial, stage))
            if stage == "faces":
                faces = shard
            if shard.n_frames != probe.n_frames:
                raise MissingShardsError(f"{shard.path}: {shard.n_frames} frames, probe has {probe.n_frames}")
            out.features[stage], out.valid[stage] = self._frame_arrays(stage, shard)
            out.keys[stage] = shard.key
            out.attrs[stage] = shard.attrs
        others = None
        if masked:  # the faces shard once, whether it was among `stages` or not
            others = self._others_in(faces) if faces is not None else self.other_identity_frames(trial)
        if others is not None:
            if others.shape[0] != probe.n_frames:
                raise MissingShardsError(f"{self.shard_path(trial, 'faces')}: {others.shape[0]} identity rows, "
                                         f"probe has {probe.n_frames} frames")
            for stage in masked:
                out.valid[stage] = out.valid[stage] & ~others
        return out


def open_cache(cache: str | Path, trials: list[Trial] | str | Path,
               config: dict[str, Any] | str | Path | None = None, *, subject_only: bool = False) -> CacheReader:
    """Reader over `cache` for the trials of a manifest (list or CSV path) and a config (`subject_only`: see
    the module doc)."""
    if not isinstance(trials, list):
        trials = read_manifest(trials)
    return CacheReader(cache, trials, config, subject_only=subject_only)


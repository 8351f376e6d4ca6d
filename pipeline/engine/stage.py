"""The stage contract: what one extraction step declares and computes.

A stage only computes. The engine around it (`pipeline.engine.plan`, `pipeline.engine.runner`)
owns keys, storage, retries, locking and scheduling, so adding a stage is one
module under `pipeline/stages/` plus its `@register_stage` decorator.

Everything that changes a stage's numbers must enter its cache key: its
`version`, the key-relevant fields of its `Settings` dataclass, the keys of its
upstream shards, the fingerprint of the files named by `input_files`, and
`trial_params`. Settings that only change speed (batch size, device) are
declared with ``field(metadata=NOT_IN_KEY)`` so changing them recomputes nothing.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..sources.manifest import Trial

NOT_IN_KEY = {"key": False}


class StageError(RuntimeError):
    """A trial-level failure with a one-line message (goes to the failure ledger).

    `kind` is a short, stable category ("missing-file", "corrupt-media",
    "no-audio", "bad-annotation", "missing-weights", ...) so users can filter
    the ledger.
    """

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


@dataclass
class StageOutput:
    """What `Stage.run` returns for one trial.

    Frame-keyed arrays have exactly one row per decoded frame of the trial
    (the probe stage's grid). `features` may be ``None`` for stages that only
    store extras (probe). `extras` are written as further datasets (frame-keyed
    or not: text stores its segments there). `attrs` become root attributes
    (JSON-encoded when not scalar).
    """

    features: np.ndarray | None
    valid: np.ndarray | None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)
    time: np.ndarray | None = None  # only the probe stage sets this; others inherit the probe grid


@dataclass
class ShardData:
    """A shard read back into memory (upstream input of a stage, or a reader result)."""

    stage: str
    key: str
    path: Path
    frame: np.ndarray
    time: np.ndarray
    features: np.ndarray | None
    valid: np.ndarray | None
    extras: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def n_frames(self) -> int:
        return int(self.frame.shape[0])


class Stage(ABC):
    """Base class of all extraction stages (see module docstring)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    inputs: ClassVar[tuple[str, ...]] = ("probe",)
    Settings: ClassVar[type]
    #: Dask resources a task of this stage asks for when it runs on CUDA.
    gpu_capable: ClassVar[bool] = False

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else self.Settings()

    # -- what enters the key -------------------------------------------------
    def key_settings(self) -> dict[str, Any]:
        """Settings fields that change results (fields marked NOT_IN_KEY are left out)."""
        out = {}
        for f in dataclasses.fields(self.settings):
            if f.metadata.get("key", True):
                out[f.name] = getattr(self.settings, f.name)
        return out

    def input_files(self, trial: Trial) -> list[Path]:
        """Files (or folders) whose content this stage reads; fingerprinted into the key."""
        return [trial.video]

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        """Per-trial manifest values that change this stage's output."""
        return {"trial": trial.trial}

    def dim(self) -> int | None:
        """Width of `features`, when known without running (used for empty outputs)."""
        return None

    @classmethod
    def frame_arrays(cls, shard: ShardData) -> tuple[np.ndarray, np.ndarray]:
        """Per-frame (features, valid) of a shard, as the cache reader hands them to the trainer.

        Stages that store something more compact than one row per frame (text keeps
        segment embeddings plus a per-frame index) override this to expand it.
        """
        if shard.features is None:
            raise ValueError(f"{shard.path}: stage {cls.name!r} stores no per-frame features")
        valid = shard.valid if shard.valid is not None else np.ones(shard.n_frames, dtype=bool)
        return shard.features, valid

    # -- compute ---------------------------------------------------------------
    @abstractmethod
    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        """Compute this stage for one trial; raise `StageError` for bad input."""

    # -- frame-range splitting (pipeline.engine.ranges) ---------------------------------
    def splits(self, trial: Trial) -> bool:
        """Whether frames [a, b) of this trial can be computed alone, and the parts assembled into exactly
        the shard `run` writes. Stages that say yes implement `run_range` (and `assemble` if plain
        concatenation of the parts is not that shard)."""
        return False

    def split_align(self, trial: Trial) -> int:
        """Part boundaries fall on multiples of this many frames (besides the engine's decode chunk): a
        stage whose state restarts every R frames (guided faces) says R, so each part starts afresh."""
        return 1

    def run_range(self, trial: Trial, upstream: dict[str, ShardData], start: int, stop: int) -> StageOutput:
        """Rows for frames start..stop-1 only (what `assemble` needs of them)."""
        raise NotImplementedError(f"stage {self.name!r} does not split into frame ranges")

    def assemble(self, trial: Trial, upstream: dict[str, ShardData], parts: list[ShardData]) -> StageOutput:
        """The whole trial's output from its parts in frame order: by default their rows concatenated."""
        def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
            return None if arrays[0] is None else np.concatenate(arrays)

        return StageOutput(features=cat([p.features for p in parts]), valid=cat([p.valid for p in parts]),
                           extras={k: np.concatenate([p.extras[k] for p in parts]) for k in parts[0].extras},
                           attrs=dict(parts[0].attrs.get("stage_attrs") or {}))


STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage available by its `name` (config, CLI, graph)."""
    if cls.name in STAGES and STAGES[cls.name] is not cls:
        raise ValueError(f"stage {cls.name!r} registered twice")
    STAGES[cls.name] = cls
    return cls


def settings_from_dict(stage_cls: type[Stage], values: dict[str, Any] | None) -> Any:
    """A stage's Settings from config values, type-checked (see `pipeline.engine.settings`): equal settings, equal keys."""
    from .settings import build_settings

    return build_settings(stage_cls.Settings, values, stage_cls.name)

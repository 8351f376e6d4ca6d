"""A run's trials opened in the shard cache: the one input path of train, evaluate and predict.

Every command that feeds a model must decide the same things the same way,
or a model would be evaluated on inputs it was not trained on:

- which trials: a split of the manifest, or the splits a run recorded (a fold
  run's val is its fold's, not the manifest's);
- which of them to leave out: a trial whose extraction ended in an input
  verdict (``no-face``, ``corrupt-media``) can never get its shards, so it is
  skipped with one warning, or refused with ``--strict``; predict skips nothing
  (a submission needs every trial);
- that every needed shard is there (`CacheReader.require`), before minutes of loading;
- whether the arrays are held in memory (when their estimated size fits the
  memory budget) or read lazily by every DataLoader worker;
- which frames of a face-derived modality (visual) count: unless
  ``train.keep_other_identities`` is set, frames where the tracked face is
  another person's (the faces shard's ``identity`` != 0) are missing, in the
  statistics, in training, in evaluation and in prediction alike (see
  `pipeline.engine.reader` for shards that record no identities);
- where the normalisation statistics come from: computed over the training
  trials when a run starts, the run's own ``norm.npz`` afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .config import TrainConfig
from .data import (NormStats, RawTrial, ReaderSpec, WindowDataset, compute_stats, estimate_bytes, itemsizes,
                   labels_of_arrays, preload, probe_lengths, shard_identity, shard_keys_of, stats_keys_of)
from .runs import FusionError, RunInfo


class LoadProgress(Protocol):
    """What loading reports to (`pipeline.engine.progress.PhaseProgress` is one)."""

    def phase(self, title: str, total: int | None) -> None: ...

    def tick(self, n: int = 1) -> None: ...


def _few(ids: Sequence[str]) -> str:
    """The first five of `ids`, and how many more."""
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def split_trial_ids(run: RunInfo, trials: Sequence[Any], split: str) -> list[str]:
    """Trials of `split` as the run defined it (a fold run's val is its fold's val, not the manifest's)."""
    from pipeline.engine.names import SPLITS

    if split not in SPLITS:
        raise FusionError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    in_manifest = {t.trial for t in trials}
    if split in run.splits:
        ids = run.splits[split]
        absent = [t for t in ids if t not in in_manifest]
        if absent:
            raise FusionError(f"{run.path}: {split} trials of the run are not in the manifest: {_few(absent)}")
    else:
        ids = [t.trial for t in trials if t.split == split]
    if not ids:
        raise FusionError(f"no {split} trials in the manifest")
    return ids


def skip_verdicts(reader: Any, ids: Sequence[str], stages: Sequence[str], strict: bool,
                  warn: Callable[[str], None]) -> list[str]:
    """`ids` without the trials whose `stages` failed with an input verdict (no-face, corrupt-media...).

    Such a trial can never get those shards (the ledger's verdict is correct),
    so it must not block the others: it is left out with one warning line, or,
    with `strict`, refused. Trials failed by a real error are kept: `require`
    then stops the run and `affpipe failures` tells how to retry them.
    """
    from pipeline.engine.verdicts import is_verdict

    verdicts = {t: v for t, v in reader.unavailable(stages).items() if t in set(ids) and is_verdict(v[1])}
    if not verdicts:
        return list(ids)
    listed = ", ".join(f"{t} ({stage}: {kind})" for t, (stage, kind, _msg) in sorted(verdicts.items()))
    if strict:
        raise FusionError(f"--strict: {len(verdicts)} trial(s) have no usable shards because of input "
                          f"verdicts in the failure ledger: {listed}")
    warn(f"skipping {len(verdicts)} trial(s) whose inputs failed extraction (see `affpipe failures`): {listed}")
    return [t for t in ids if t not in verdicts]


@dataclass
class CacheInputs:
    """The trials of one or more splits, opened in the cache and checked; arrays once `load` ran."""

    reader: Any  # pipeline.engine.reader.CacheReader
    cache: Path
    extract_config: dict[str, Any] | None
    trials: list[Any]  # manifest records of the kept trials (each DataLoader worker opens its own reader)
    splits: dict[str, list[str]]  # split name -> kept trial ids, in order
    stages: list[str]  # feature stages, in modality order
    label_stage: str | None  # None: no labels read (predict)
    dims: dict[str, int]  # stage -> shard width
    lengths: dict[str, int] = field(default_factory=dict)  # trial -> frames (probe), set by `load`
    raw: dict[str, RawTrial] | None = None  # the arrays when held in memory, set by `load`

    @property
    def ids(self) -> list[str]:
        """Every kept trial, split after split."""
        return [t for ids in self.splits.values() for t in ids]

    @property
    def in_memory(self) -> bool:
        return self.raw is not None

    def shard_keys(self) -> dict[str, dict[str, str]]:
        """stage -> trial -> shard key of every stage read (probe and labels included)."""
        return shard_keys_of(self.reader, self.ids, self.needed)

    @property
    def needed(self) -> list[str]:
        return ["probe"] + self.stages + ([self.label_stage] if self.label_stage else [])

    @property
    def identity_masked(self) -> list[str]:
        """Feature stages whose frames of other people's faces are masked (none when the reader keeps them)."""
        return self.reader.masked_stages(self.stages)

    def load(self, memory_budget_mb: float, progress: LoadProgress | None = None,
             title: str = "loading trials") -> None:
        """Frame counts of every trial, and its arrays when they fit `memory_budget_mb` (else read lazily)."""
        ids = self.ids
        self.lengths = dict(zip(ids, probe_lengths(self.reader, ids)))
        need = estimate_bytes(list(self.lengths.values()), self.dims, itemsizes(self.reader, ids[0], self.stages))
        if need <= memory_budget_mb * 2 ** 20:
            if progress is not None:
                progress.phase(title, len(ids))
            self.raw = preload(self.reader, ids, self.stages, self.label_stage,
                               progress.tick if progress is not None else None)

    def training_stats(self, split: str, *, fold_label: str, progress: Callable[[], None] | None = None,
                       warn: Callable[[str], None] | None = None) -> NormStats:
        """Normalisation statistics over the valid frames of `split` (the training trials), cached in the cache.

        `progress` ticks once per trial read from the cache (held arrays are not read again).
        """
        ids = self.splits[split]
        if self.raw is not None:
            raw = self.raw
            load: Callable[[str], Any] = lambda t: raw[t]  # noqa: E731
        else:
            load = lambda t: self.reader.load(t, self.stages)  # noqa: E731
        return compute_stats(load, self.dims, ids, self.stages, fold=fold_label, cache_dir=self.cache,
                             progress=None if self.raw is not None else progress, warn=warn,
                             **self._stats_sources(ids))

    def stats_keys(self, split: str, *, fold_label: str) -> dict[str, str]:
        """stage -> the key `training_stats` would give its statistics now (nothing is read but file metadata).

        Equal keys mean the same shard files (size, mtime, inode) under the same keys, masked the same way.
        """
        ids = self.splits[split]
        return stats_keys_of(ids, self.stages, fold=fold_label, **self._stats_sources(ids))

    def _stats_sources(self, ids: Sequence[str]) -> dict[str, Any]:
        """What statistics over `ids` are keyed by: shard keys, shard files, and the faces shards that mask."""
        def faces(t: str) -> list[Any]:
            return [self.reader.key(t, "faces"), shard_identity(self.reader.shard_path(t, "faces"))]

        files = {s: {t: shard_identity(self.reader.shard_path(t, s)) for t in ids} for s in self.stages}
        masks = {t: faces(t) for t in ids} if self.identity_masked else {}
        return {"shard_keys": self.shard_keys(), "shard_files": files,
                "masked_by": {s: masks for s in self.identity_masked}}

    def input_dims(self, modalities: Sequence[str], cfg: TrainConfig) -> dict[str, int]:
        """Model input width per modality: its stage's shard width, plus the valid channel."""
        return {m: self.dims[cfg.stage_of(m)] + (1 if cfg.valid_channel else 0) for m in modalities}

    def dataset(self, split: str, modalities: Sequence[str], cfg: TrainConfig, stats: NormStats) -> WindowDataset:
        """The windows of `split`, normalised with `stats`, with labels when they were read."""
        ids = self.splits[split]
        source: dict[str, Any] = ({"preloaded": self.raw} if self.raw is not None else
                                  {"spec": ReaderSpec(self.cache, tuple(self.trials), self.extract_config,
                                                      self.reader.subject_only)})
        return WindowDataset(ids, [self.lengths[t] for t in ids], list(modalities), cfg.stage_map, stats,
                             cfg.window, cfg.hop, with_labels=self.label_stage is not None,
                             label_stage=cfg.label_stage, valid_channel=cfg.valid_channel, **source)

    def labels(self, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """trial -> (labels [n, 2], labelled mask [n]) of every trial of `split`."""
        return {t: self.trial_labels(t) for t in self.splits[split]}

    def trial_labels(self, trial: str) -> tuple[np.ndarray, np.ndarray]:
        """(labels [n, 2], labelled mask [n]) of one trial: held in memory, or read from its label shard."""
        if self.label_stage is None:
            raise ValueError("labels were not read (opened without a label stage)")
        if self.raw is not None:
            raw = self.raw[trial]
            return raw.labels, raw.label_mask  # type: ignore[return-value]
        return labels_of_arrays(trial, self.reader.load(trial, [self.label_stage]), self.label_stage)


def open_inputs(trials: Sequence[Any], splits: dict[str, list[str]], cache: str | Path,
                extract_config: dict[str, Any] | None, stages: Sequence[str], label_stage: str | None, *,
                warn: Callable[[str], None] | None, strict: bool = False,
                subject_only: bool = False) -> CacheInputs:
    """Open the cache for the trials of `splits` and check that their shards are there.

    With `warn`, trials with input verdicts are skipped (told through `warn`) or,
    with `strict`, refused; a split left empty is an error. Without `warn`
    (predict: a submission needs every trial) every trial must have its shards.
    With `subject_only` (``not train.keep_other_identities``), other people's face
    frames are missing in face-derived stages, whose faces shards must then be there too.
    """
    from pipeline.engine.reader import open_cache

    wanted = {t for ids in splits.values() for t in ids}
    used = [t for t in trials if t.trial in wanted]
    extract_config = extract_config or None
    reader = open_cache(cache, used, extract_config, subject_only=subject_only)
    inputs = CacheInputs(reader, Path(cache), extract_config, used, {k: list(v) for k, v in splits.items()},
                         list(stages), label_stage, {})
    if warn is not None:
        kept = set(skip_verdicts(reader, inputs.ids, inputs.needed, strict, warn))
        inputs.splits = {name: [t for t in ids if t in kept] for name, ids in inputs.splits.items()}
        for name, ids in inputs.splits.items():
            if not ids:
                raise FusionError(f"no {name} trial left after skipping the trials with input verdicts")
        inputs.trials = [t for t in used if t.trial in kept]
    reader.require(inputs.needed, inputs.ids)
    lacking = reader.missing(["faces"], inputs.ids)["faces"] if inputs.identity_masked else []
    if lacking:
        raise FusionError(f"{cache}: no cached faces shards for {_few(lacking)}: they tell which frames show another "
                          f"person, whose face {', '.join(inputs.identity_masked)} must not be read as the "
                          "subject's (run `affpipe extract`, or set train.keep_other_identities: true)")
    inputs.dims = {s: reader.dim(s) for s in inputs.stages}
    return inputs


def run_norm_stats(run: RunInfo) -> NormStats:
    """The normalisation statistics a run was trained with (inference must reuse them, never recompute)."""
    norm_path = run.path / "norm.npz"
    if not norm_path.is_file():
        raise FusionError(f"{run.path}: norm.npz missing (the run did not finish its setup)")
    return NormStats.load(norm_path)


def open_run_split(run: RunInfo, manifest: str | Path, cache: str | Path, split: str, *, with_labels: bool,
                   warn: Callable[[str], None] | None = None, strict: bool = False
                   ) -> tuple[CacheInputs, NormStats]:
    """One split of a run, opened with the run's extraction config and checked against its input widths.

    See `open_inputs` for `warn` and `strict`. The arrays are not loaded yet (`CacheInputs.load`).
    """
    from pipeline.sources.manifest import read_manifest

    trials = read_manifest(manifest)
    ids = split_trial_ids(run, trials, split)
    cfg = run.train
    stages = [cfg.stage_of(m) for m in run.modalities]
    inputs = open_inputs(trials, {split: ids}, cache, run.extract_config, stages,
                         cfg.label_stage if with_labels else None, warn=warn, strict=strict,
                         subject_only=not cfg.keep_other_identities)
    stats = run_norm_stats(run)
    widths = inputs.input_dims(run.modalities, cfg)
    for m, s in zip(run.modalities, stages):
        if widths[m] != run.input_dims[m]:
            extra = 1 if cfg.valid_channel else 0
            raise FusionError(f"{cache}: stage {s!r} has width {widths[m] - extra}, the run was trained on "
                              f"{run.input_dims[m] - extra} (different extraction settings?)")
    return inputs, stats


__all__ = ["CacheInputs", "open_inputs", "open_run_split", "run_norm_stats", "split_trial_ids", "skip_verdicts"]

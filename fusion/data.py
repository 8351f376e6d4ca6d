"""From cached shards to model windows: windowing, normalisation statistics, Dataset.

The trainer reads only the shard cache (through `pipeline.engine.reader`), never the
videos. Three decisions live here because every consumer (training, val
inference, test prediction, the benchmark) must make them identically:

- windows: `window` frames every `hop`, plus one tail window ``[n-window, n)``
  so every frame is covered; trials shorter than a window are zero-padded and
  the padding is masked. At inference each frame averages all its windows.
- normalisation: per-feature mean/std over the *valid* frames of the training
  trials only (val/test statistics would leak), accumulated chunk by chunk
  (Chan/Welford in float64) so 3M x 1024 never has to be in memory at once,
  and cached in ``<cache>/stats/`` under a key of (shard keys, each shard file's
  size/mtime/inode, fold, and the faces shards whose identities masked frames
  out, see `fusion.inputs`): a shard recomputed with new settings gets new
  statistics, a re-run gets the old ones, and a shard file replaced under the
  same key (repaired after damage) gets fresh ones instead of the poisoned
  statistics of its predecessor. Cached statistics are checked on load (finite,
  right width) and never written when non-finite; a read-only cache gets them
  computed in memory.
- finiteness: NaN/Inf in the features of a valid frame, or in a label the label
  stage flags valid, stops the run naming trial and stage (`NonFiniteError`):
  one poisoned frame would otherwise turn the statistics, the loss and every
  weight into NaN while the run reports success.
  Invalid frames (no face, no speech) become 0 = the training mean after
  normalisation, and the valid flag is appended as a channel so the model can
  tell "average face" from "no face".
- labels: frames with a value below -1 (Aff-Wild2 writes -5) or flagged invalid
  by the label stage are masked out of loss and metric; they still get
  predictions.

Raw features are held in their shard dtype (float16 embeddings stay float16)
and normalised per window: cheaper in memory than holding normalised float32,
and identical between the in-memory and the lazy path.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

STATS_VERSION = 2  # bump when the statistics' definition changes (invalidates cached .npz files)
STATS_CHUNK = 65536  # rows per float64 chunk while accumulating statistics
MIN_STD = 1e-6  # features constant over the training set are centred, not blown up


# --------------------------------------------------------------------------------------------
# windows
# --------------------------------------------------------------------------------------------
def window_starts(n: int, window: int, hop: int) -> list[int]:
    """First frame of every window of a trial of `n` frames.

    Regular windows start every `hop` frames while they fit; when the last one
    stops short of the end, a tail window ``[n-window, n)`` is added. A trial
    of at most `window` frames has a single (padded) window at 0.
    """
    if window < 1 or hop < 1:
        raise ValueError("window and hop must be >= 1")
    if n <= 0:
        return []
    if n <= window:
        return [0]
    starts = list(range(0, n - window + 1, hop))
    if starts[-1] + window < n:
        starts.append(n - window)
    return starts


def window_index(lengths: Sequence[int], window: int, hop: int) -> np.ndarray:
    """All (trial position, start) pairs of a list of trials, as an int64 array [N, 2]."""
    rows = [(i, s) for i, n in enumerate(lengths) for s in window_starts(int(n), window, hop)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------------
# reader protocol (pipeline.engine.reader.CacheReader satisfies it)
# --------------------------------------------------------------------------------------------
class TrialArraysLike(Protocol):
    trial: str
    frame: np.ndarray
    features: dict[str, np.ndarray]
    valid: dict[str, np.ndarray]
    keys: dict[str, str]


class NonFiniteError(ValueError):
    """NaN/Inf in data a run would consume; the message names the trial, the stage and where."""


def check_finite(trial: str, stage: str, x: np.ndarray, valid: np.ndarray | None, where: str = "") -> None:
    """Raise `NonFiniteError` when a row flagged valid holds NaN/Inf (invalid rows are zeroed later)."""
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.size == 0:
        return
    bad_rows = ~np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if valid is not None:
        bad_rows &= np.asarray(valid, dtype=bool)
    if bad_rows.any():
        idx = np.flatnonzero(bad_rows)
        raise NonFiniteError(f"trial {trial}, stage {stage}: NaN/Inf in {idx.size} valid frame(s) "
                             f"(first: frame {int(idx[0])}){where}; the shard is damaged: recompute it "
                             "(delete it and run `affpipe extract`)")


class ReaderLike(Protocol):
    def load(self, trial_id: str, stages: Sequence[str]) -> TrialArraysLike: ...

    def dim(self, stage: str) -> int: ...


# --------------------------------------------------------------------------------------------
# normalisation statistics
# --------------------------------------------------------------------------------------------
class RunningStats:
    """Per-feature mean and population variance, merged chunk by chunk (Chan et al.)."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        for lo in range(0, x.shape[0], STATS_CHUNK):
            chunk = np.asarray(x[lo:lo + STATS_CHUNK], dtype=np.float64)
            n_b = chunk.shape[0]
            if n_b == 0:
                continue
            mean_b = chunk.mean(axis=0)
            m2_b = ((chunk - mean_b) ** 2).sum(axis=0)
            total = self.count + n_b
            delta = mean_b - self.mean
            self.mean += delta * (n_b / total)
            self.m2 += m2_b + delta ** 2 * (self.count * n_b / total)
            self.count = total

    @property
    def std(self) -> np.ndarray:
        if self.count == 0:
            return np.ones_like(self.mean)
        return np.sqrt(self.m2 / self.count)


@dataclass
class NormStats:
    """Mean/std per feature for each stage, and where they came from."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]  # already guarded: never below MIN_STD
    count: dict[str, int]
    keys: dict[str, str] = field(default_factory=dict)  # stage -> stats cache key

    def save(self, path: Path) -> Path:
        """One .npz with every stage (the run folder's copy: predict must reuse training statistics)."""
        arrays: dict[str, Any] = {}
        for s in self.mean:
            arrays[f"mean/{s}"] = self.mean[s]
            arrays[f"std/{s}"] = self.std[s]
            arrays[f"count/{s}"] = np.asarray(self.count[s])
        arrays["keys"] = np.asarray(json.dumps(self.keys, sort_keys=True))
        _save_npz_atomic(path, arrays)
        return path

    @classmethod
    def load(cls, path: Path) -> "NormStats":
        """A run's statistics; damaged or non-finite ones are an error, never used."""
        try:
            with np.load(path) as z:
                stages = sorted({k.split("/", 1)[1] for k in z.files if k.startswith("mean/")})
                stats = cls(
                    mean={s: z[f"mean/{s}"] for s in stages},
                    std={s: z[f"std/{s}"] for s in stages},
                    count={s: int(z[f"count/{s}"]) for s in stages},
                    keys=json.loads(str(z["keys"])) if "keys" in z.files else {},
                )
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise NonFiniteError(f"{path}: cannot read normalisation statistics ({exc})") from None
        for s in stages:
            problem = stats_problem(stats.mean[s], stats.std[s], stats.count[s], None)
            if problem:
                raise NonFiniteError(f"{path}: statistics of stage {s} are unusable ({problem}); "
                                     "retrain the run")
        return stats


def _save_npz_atomic(path: Path, arrays: dict[str, Any]) -> None:
    from pipeline.engine.atomic import atomic_path

    with atomic_path(path) as tmp, tmp.open("wb") as fh:  # a file object: np.savez adds no ".npz"
        np.savez(fh, **arrays)


def stats_problem(mean: np.ndarray, std: np.ndarray, count: int, dim: int | None) -> str:
    """Why statistics cannot be used ("" when they can): wrong width, non-finite, or a bad std."""
    mean, std = np.asarray(mean), np.asarray(std)
    if mean.ndim != 1 or std.shape != mean.shape or (dim is not None and mean.shape[0] != dim):
        return f"shape {mean.shape}/{std.shape}, expected ({dim},)" if dim is not None else "shape mismatch"
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        return "NaN/Inf values"
    if (std < MIN_STD).any() or count < 0:
        return "std below the guard or negative count"
    return ""


def shard_identity(path: Path | None) -> list[int] | None:
    """Size, mtime and inode of a shard file: changes whenever the file is rewritten or replaced.

    The key alone does not: a shard repaired after damage is recomputed under the
    same key, and statistics keyed by key only would outlive the bad data.
    """
    if path is None:
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def stats_key(stage: str, fold: str, shard_keys: dict[str, str],
              files: dict[str, list[int] | None] | None = None, masked_by: dict[str, Any] | None = None) -> str:
    """Cache key of one stage's statistics: the exact shards (and shard files) they came from, the fold,
    and (`masked_by`, trial -> the faces shard's key and file) the identities that masked frames out."""
    fields: dict[str, Any] = {"version": STATS_VERSION, "stage": stage, "fold": fold,
                              "shards": sorted(shard_keys.items()), "files": sorted((files or {}).items())}
    if masked_by:  # absent otherwise: the keys of unmasked statistics stay what they were
        fields["masked_by"] = sorted(masked_by.items())
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def stats_keys_of(trial_ids: Sequence[str], stages: Sequence[str], *, shard_keys: dict[str, dict[str, str]],
                  fold: str, shard_files: dict[str, dict[str, list[int] | None]] | None = None,
                  masked_by: dict[str, dict[str, Any]] | None = None) -> dict[str, str]:
    """stage -> `stats_key` of the statistics of `stages` over `trial_ids` (see `compute_stats` for the maps)."""
    files, masks = shard_files or {}, masked_by or {}
    return {s: stats_key(s, fold, {t: shard_keys[s][t] for t in trial_ids},
                         {t: files[s][t] for t in trial_ids} if s in files else None,
                         {t: masks[s][t] for t in trial_ids} if s in masks else None) for s in stages}


def compute_stats(load: Callable[[str], Any], dims: dict[str, int], trial_ids: Sequence[str],
                  stages: Sequence[str], *, shard_keys: dict[str, dict[str, str]], fold: str,
                  cache_dir: Path | None, progress: Callable[[], None] | None = None,
                  shard_files: dict[str, dict[str, list[int] | None]] | None = None,
                  masked_by: dict[str, dict[str, Any]] | None = None,
                  warn: Callable[[str], None] | None = None) -> NormStats:
    """Statistics over the valid frames of `trial_ids` (the training trials), cached per stage.

    `load(trial_id)` returns an object with ``features`` and ``valid`` dicts
    (a `RawTrial`, or the reader's `TrialArrays`); it is only called when some
    stage's statistics are not cached yet. `shard_keys` is stage -> trial -> key,
    `shard_files` stage -> trial -> `shard_identity` (enters the cache key), and
    `masked_by` stage -> trial -> what masked frames of that stage out (the faces
    shard behind an identity mask; enters the key, so masked and unmasked
    statistics of the same shards never share a cache file).
    A cached file that is unreadable, of the wrong width or non-finite is
    recomputed (and replaced); statistics that come out non-finite raise
    `NonFiniteError` and are not written. When the cache cannot be written
    (read-only), the statistics are used from memory and `warn` is told once.
    """
    stages = list(stages)
    mean: dict[str, np.ndarray] = {}
    std: dict[str, np.ndarray] = {}
    count: dict[str, int] = {}
    stat_keys = stats_keys_of(trial_ids, stages, shard_keys=shard_keys, fold=fold, shard_files=shard_files,
                              masked_by=masked_by)
    todo: list[str] = []
    for s in stages:
        path = Path(cache_dir) / "stats" / f"{s}.{stat_keys[s]}.npz" if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                with np.load(path) as z:
                    m, sd, c = z["mean"], z["std"], int(z["count"])
                if not stats_problem(m, sd, c, dims[s]):
                    mean[s], std[s], count[s] = m, sd, c
                    continue
            except (OSError, KeyError, ValueError, EOFError):
                pass  # a damaged or poisoned cache file is recomputed, not trusted
        todo.append(s)
    if todo:
        running = {s: RunningStats(dims[s]) for s in todo}
        for t in trial_ids:
            arrays = load(t)
            for s in todo:
                x = arrays.features[s]
                v = arrays.valid.get(s)
                if not isinstance(arrays, RawTrial):  # a RawTrial was checked by `load_raw`
                    check_finite(t, s, x, v)
                running[s].update(x if v is None or v.all() else x[v])
            if progress is not None:
                progress()
        unwritable = None
        for s in todo:
            r = running[s]
            mean[s] = r.mean
            std[s] = np.where(r.std < MIN_STD, 1.0, r.std)
            count[s] = r.count
            problem = stats_problem(mean[s], std[s], count[s], dims[s])
            if problem:
                raise NonFiniteError(f"stage {s}: normalisation statistics over {len(trial_ids)} training "
                                     f"trial(s) are unusable ({problem}); not cached")
            if cache_dir is not None and unwritable is None:
                try:
                    _save_npz_atomic(Path(cache_dir) / "stats" / f"{s}.{stat_keys[s]}.npz",
                                     {"mean": mean[s], "std": std[s], "count": np.asarray(count[s]),
                                      "fold": np.asarray(fold), "trials": np.asarray(sorted(trial_ids))})
                except OSError as exc:
                    unwritable = exc
        if unwritable is not None and warn is not None:
            warn(f"{Path(cache_dir) / 'stats'}: cannot cache normalisation statistics "  # type: ignore[arg-type]
                 f"({unwritable.strerror or unwritable}); computed in memory for this run")
    return NormStats(mean=mean, std=std, count=count, keys=stat_keys)


# --------------------------------------------------------------------------------------------
# trial arrays held by the dataset
# --------------------------------------------------------------------------------------------
@dataclass
class RawTrial:
    """What the dataset needs of one trial, in the shard's dtype."""

    trial: str
    n: int
    features: dict[str, np.ndarray]  # stage -> [n, d]
    valid: dict[str, np.ndarray]  # stage -> [n] bool
    labels: np.ndarray | None  # [n, 2] float32
    label_mask: np.ndarray | None  # [n] bool

    @property
    def nbytes(self) -> int:
        total = sum(a.nbytes for a in self.features.values()) + sum(a.nbytes for a in self.valid.values())
        if self.labels is not None:
            total += self.labels.nbytes + self.label_mask.nbytes  # type: ignore[union-attr]
        return total


def label_mask_of(labels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Labelled frames: flagged valid by the label stage and both values within [-1, 1]."""
    ok = np.isfinite(labels).all(axis=1) & (labels >= -1.0).all(axis=1) & (labels <= 1.0).all(axis=1)
    return ok if valid is None else (ok & np.asarray(valid, dtype=bool))


def compact(x: np.ndarray) -> np.ndarray:
    """float16 when that is lossless (features extracted as float16 come back from the reader as
    float32): half the memory, bit-identical values, so the in-memory and lazy paths agree."""
    if x.dtype != np.float32 or x.size == 0:
        return x
    x16 = x.astype(np.float16)
    return x16 if np.array_equal(x16.astype(np.float32), x) else x


def labels_of_arrays(trial_id: str, arrays: TrialArraysLike, label_stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels float32 [n, 2], labelled mask [n]) of loaded arrays; NaN/Inf in a valid label stops the run."""
    labels = np.asarray(arrays.features[label_stage], dtype=np.float32)
    check_finite(trial_id, label_stage, labels, arrays.valid.get(label_stage))
    return labels, label_mask_of(labels, arrays.valid.get(label_stage))


def load_raw(reader: ReaderLike, trial_id: str, stages: Sequence[str], label_stage: str | None,
             shrink: bool = True) -> RawTrial:
    """One trial's arrays; `shrink` stores features as float16 where lossless (for trials held long)."""
    wanted = list(stages) + ([label_stage] if label_stage else [])
    arrays = reader.load(trial_id, wanted)
    n = int(arrays.frame.shape[0])
    valid = {s: (np.ones(n, dtype=bool) if arrays.valid.get(s) is None else np.asarray(arrays.valid[s], bool))
             for s in stages}
    for s in stages:  # on the reader's float32 (numpy's isfinite is ~5x slower on float16)
        check_finite(trial_id, s, arrays.features[s], valid[s])
    feats = {s: compact(np.asarray(arrays.features[s])) if shrink else np.asarray(arrays.features[s])
             for s in stages}
    labels = mask = None
    if label_stage:
        labels, mask = labels_of_arrays(trial_id, arrays, label_stage)
    return RawTrial(trial_id, n, feats, valid, labels, mask)


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReaderSpec:
    """How a worker process opens its own reader (HDF5 handles do not survive fork/pickle)."""

    cache_dir: Path
    trials: tuple[Any, ...]  # pipeline.sources.manifest.Trial records
    config: Any  # dict | Path | None, as given to open_cache
    subject_only: bool = False  # other people's face frames are invalid (see pipeline.engine.reader)

    def open(self) -> ReaderLike:
        from pipeline.engine.reader import open_cache

        return open_cache(self.cache_dir, list(self.trials), self.config, subject_only=self.subject_only)


class WindowDataset(Dataset):
    """Windows of the given trials, normalised, padded and masked; one item per (trial, start).

    Item: ``inputs`` {modality: float32 [W, d]}, ``labels`` float32 [W, 2],
    ``mask`` bool [W] (labelled frames inside the trial), ``inside`` bool [W],
    ``trial`` (position in `trial_ids`), ``start``.

    With `preloaded` the trials are already in memory; otherwise each worker
    process opens its own reader from `spec` and keeps the `lru` most recent
    trials (the `TrialBlockSampler` keeps consecutive windows on few trials).
    """

    def __init__(self, trial_ids: Sequence[str], lengths: Sequence[int], modalities: Sequence[str],
                 stage_map: dict[str, str], stats: NormStats, window: int, hop: int, *,
                 with_labels: bool, label_stage: str = "labels", valid_channel: bool = True,
                 preloaded: dict[str, RawTrial] | None = None, spec: ReaderSpec | None = None,
                 lru: int = 8):
        if preloaded is None and spec is None:
            raise ValueError("WindowDataset needs preloaded trials or a ReaderSpec")
        self.trial_ids = list(trial_ids)
        self.lengths = [int(n) for n in lengths]
        self.modalities = list(modalities)
        self.stage_map = dict(stage_map)
        self.stages = [self.stage_map.get(m, m) for m in self.modalities]
        self.window, self.hop = int(window), int(hop)
        self.with_labels = with_labels
        self.label_stage = label_stage
        self.valid_channel = valid_channel
        self.index = window_index(self.lengths, self.window, self.hop)
        self._mean = {s: stats.mean[s].astype(np.float32) for s in self.stages}
        self._inv_std = {s: (1.0 / stats.std[s]).astype(np.float32) for s in self.stages}
        self._preloaded = preloaded
        self._spec = spec
        self._lru_size = max(1, lru)
        self._cache: OrderedDict[str, RawTrial] = OrderedDict()
        self._reader: ReaderLike | None = None
        self._reader_pid = -1

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def in_memory(self) -> bool:
        """True when the trials are held in memory (else each worker reads them lazily)."""
        return self._preloaded is not None

    def windows_of(self, trial_pos: int) -> np.ndarray:
        """Dataset indices of one trial's windows (in start order)."""
        return np.nonzero(self.index[:, 0] == trial_pos)[0]

    def _trial(self, trial_id: str) -> RawTrial:
        if self._preloaded is not None:
            return self._preloaded[trial_id]
        hit = self._cache.get(trial_id)
        if hit is not None:
            self._cache.move_to_end(trial_id)
            return hit
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = self._spec.open()  # type: ignore[union-attr]
            self._reader_pid = os.getpid()
            self._cache.clear()
        raw = load_raw(self._reader, trial_id, self.stages, self.label_stage if self.with_labels else None,
                       shrink=False)  # short-lived in the LRU: not worth the float16 pass
        self._cache[trial_id] = raw
        while len(self._cache) > self._lru_size:
            self._cache.popitem(last=False)
        return raw

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        raise_batch_error(batch)
        return {"inputs": {m: x[0] for m, x in batch["inputs"].items()}, "labels": batch["labels"][0],
                "mask": batch["mask"][0], "inside": batch["inside"][0], "trial": int(batch["trial"][0]),
                "start": int(batch["start"][0])}

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """A whole batch, written straight into preallocated arrays (no per-item tensors, no torch.stack).

        The DataLoader calls this instead of `__getitem__` per item; `collate_windows`
        passes the result through. Building batches in numpy keeps the loader off
        torch's intra-op thread pool, which on a busy machine made stacking 100x slower.

        In a DataLoader worker, a `NonFiniteError` comes back as ``{"error": message}``
        (see `raise_batch_error`): raised there, torch would wrap it in a multi-line
        worker traceback instead of the one line that names trial and stage.
        """
        try:
            return self._build(indices)
        except NonFiniteError as exc:
            from torch.utils.data import get_worker_info

            if get_worker_info() is None:
                raise
            return {"error": str(exc)}

    def _build(self, indices: Sequence[int]) -> dict[str, Any]:
        w, b = self.window, len(indices)
        extra = 1 if self.valid_channel else 0
        inputs = {m: np.zeros((b, w, self._mean[s].shape[0] + extra), dtype=np.float32)
                  for m, s in zip(self.modalities, self.stages)}
        labels = np.zeros((b, w, 2), dtype=np.float32)
        mask = np.zeros((b, w), dtype=bool)
        inside = np.zeros((b, w), dtype=bool)
        trial = np.zeros(b, dtype=np.int64)
        starts = np.zeros(b, dtype=np.int64)
        for j, i in enumerate(indices):
            pos, start = (int(v) for v in self.index[i])
            raw = self._trial(self.trial_ids[pos])
            stop = min(start + w, raw.n)
            k = stop - start
            trial[j], starts[j] = pos, start
            inside[j, :k] = True
            for m, s in zip(self.modalities, self.stages):
                out = inputs[m][j]
                d = out.shape[1] - extra
                x = out[:k, :d]
                np.subtract(raw.features[s][start:stop], self._mean[s], out=x, casting="unsafe")
                x *= self._inv_std[s]
                v = raw.valid[s][start:stop]
                x[~v] = 0.0
                if extra:
                    out[:k, d] = v
            if self.with_labels and raw.labels is not None:
                lm = raw.label_mask[start:stop]  # type: ignore[index]
                mask[j, :k] = lm
                labels[j, :k][lm] = raw.labels[start:stop][lm]
        return {"inputs": {m: torch.from_numpy(x) for m, x in inputs.items()}, "labels": torch.from_numpy(labels),
                "mask": torch.from_numpy(mask), "inside": torch.from_numpy(inside),
                "trial": torch.from_numpy(trial), "start": torch.from_numpy(starts)}


def raise_batch_error(batch: dict[str, Any]) -> None:
    """Re-raise, in the main process, a `NonFiniteError` a DataLoader worker returned in place of a batch."""
    if "error" in batch:
        raise NonFiniteError(batch["error"])


def collate_windows(batch: Any) -> Any:
    """DataLoader collate for `WindowDataset`: its batches arrive already built by `__getitems__`."""
    if isinstance(batch, dict):
        return batch
    from torch.utils.data import default_collate

    return default_collate(batch)


class TrialBlockSampler(Sampler[int]):
    """Shuffled windows, drawn from a few trials at a time, reproducible per (seed, epoch).

    Trials are shuffled and taken `block` at a time; windows inside a block are
    shuffled. With everything in memory use `block` >= the number of trials
    (a plain shuffle); lazily loaded trials then stay hot in the worker's LRU.
    The permutation depends only on (seed, epoch), so a resumed run sees the
    same batches as an uninterrupted one.
    """

    def __init__(self, dataset: WindowDataset, seed: int, block: int):
        self.dataset = dataset
        self.seed = int(seed)
        self.block = max(1, int(block))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Iterator[int]:
        g = np.random.default_rng([self.seed, self.epoch])
        n_trials = len(self.dataset.trial_ids)
        order = g.permutation(n_trials)
        by_trial: dict[int, list[int]] = {}
        for i, (pos, _start) in enumerate(self.dataset.index):
            by_trial.setdefault(int(pos), []).append(i)
        for lo in range(0, n_trials, self.block):
            idx = [i for pos in order[lo:lo + self.block] for i in by_trial.get(int(pos), [])]
            yield from (idx[j] for j in g.permutation(len(idx)))


def estimate_bytes(lengths: Sequence[int], dims: dict[str, int], itemsize: dict[str, int] | None = None) -> int:
    """Memory the raw trials would take in memory (features + valid flags + labels)."""
    frames = int(sum(lengths))
    per_frame = sum(d * (itemsize or {}).get(s, 4) for s, d in dims.items())
    return frames * (per_frame + len(dims) + 2 * 4 + 1)


def itemsizes(reader: ReaderLike, trial_id: str, stages: Sequence[str]) -> dict[str, int]:
    """Bytes per value each stage will take in memory (2 where float16 holds it losslessly), from one trial."""
    arrays = reader.load(trial_id, list(stages))
    return {s: compact(np.asarray(arrays.features[s])).dtype.itemsize for s in stages}



# --------------------------------------------------------------------------------------------
# assembling a run's inputs from the cache
# --------------------------------------------------------------------------------------------
def probe_lengths(reader: Any, trial_ids: Sequence[str]) -> list[int]:
    """Decoded frame count of each trial, from the probe shards' attributes (no arrays read)."""
    from pipeline.engine.shards import read_attrs

    return [int(read_attrs(reader.shard_path(t, "probe"))["n_frames"]) for t in trial_ids]


def shard_keys_of(reader: Any, trial_ids: Sequence[str], stages: Sequence[str]) -> dict[str, dict[str, str]]:
    """stage -> trial -> shard key: exactly which cached arrays a run consumes (recorded in config.json)."""
    return {s: {t: reader.key(t, s) for t in trial_ids} for s in stages}


def preload(reader: ReaderLike, trial_ids: Sequence[str], stages: Sequence[str], label_stage: str | None,
            progress: Callable[[], None] | None = None) -> dict[str, RawTrial]:
    out = {}
    for t in trial_ids:
        out[t] = load_raw(reader, t, stages, label_stage)
        if progress is not None:
            progress()
    return out

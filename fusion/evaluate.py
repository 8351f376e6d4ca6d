"""Inference over whole trials and the challenge metric.

At inference every frame averages the predictions of all windows that cover
it (hop < window, so most frames have two). The metric is the challenge's:
population CCC over all labelled frames of a split concatenated (not a mean of
per-trial CCCs, which over-weights short trials), per dimension and averaged;
per-trial CCCs are reported beside it to find the trials that drag it down.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import (NonFiniteError, NormStats, ReaderSpec, WindowDataset, collate_windows, estimate_bytes, itemsizes, preload,
                   probe_lengths, raise_batch_error)
from .runs import FusionError, RunInfo, open_run

SPLITS = ("train", "val", "test")


def autocast_for(device: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA only: CPU runs stay float32 (and bit-for-bit reproducible)."""
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def batch_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    return {
        "inputs": {m: x.to(device, non_blocking=non_blocking) for m, x in batch["inputs"].items()},
        "labels": batch["labels"].to(device, non_blocking=non_blocking),
        "mask": batch["mask"].to(device, non_blocking=non_blocking),
        "inside": batch["inside"],
        "trial": batch["trial"],
        "start": batch["start"],
    }


@torch.no_grad()
def predict_frames(model: torch.nn.Module, dataset: WindowDataset, device: torch.device, *, batch_size: int,
                   num_workers: int = 0, amp: bool = False,
                   progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Per-frame predictions [n, 2] of every trial of `dataset`, averaged over covering windows."""
    model.eval()
    sums = [np.zeros((n, 2), dtype=np.float64) for n in dataset.lengths]
    counts = [np.zeros(n, dtype=np.int64) for n in dataset.lengths]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=collate_windows,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(0))
    for batch in loader:
        raise_batch_error(batch)
        b = batch_to(batch, device)
        with autocast_for(device, amp):
            pred = model(b["inputs"])
        pred = pred.float().cpu().numpy()
        inside = batch["inside"].numpy()
        for j in range(pred.shape[0]):
            pos, start = int(batch["trial"][j]), int(batch["start"][j])
            k = int(inside[j].sum())
            sums[pos][start:start + k] += pred[j, :k]
            counts[pos][start:start + k] += 1
        if progress is not None:
            progress(pred.shape[0])
    out = {}
    for pos, t in enumerate(dataset.trial_ids):
        if dataset.lengths[pos] and (counts[pos] == 0).any():
            raise AssertionError(f"{t}: frames without a covering window (windowing bug)")
        out[t] = (sums[pos] / np.maximum(counts[pos], 1)[:, None]).astype(np.float32)
        if not np.isfinite(out[t]).all():
            raise NonFiniteError(f"trial {t}: the model predicts NaN/Inf (its weights are not finite: "
                                 "retrain the run)")
    return out


def _ccc(x: np.ndarray, y: np.ndarray) -> float | None:
    from .ccc import ccc_np

    if x.shape[0] < 2:
        return None
    return float(ccc_np(x.astype(np.float64), y.astype(np.float64)))


def ccc_report(preds: dict[str, np.ndarray], labels: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Population CCC over the concatenated labelled frames, plus per-trial CCCs.

    `labels` maps trial -> (labels [n, 2], labelled mask [n]).
    """
    xs, ys, per_trial = [], [], {}
    for t, pred in preds.items():
        lab, mask = labels[t]
        x, y = pred[mask], lab[mask]
        xs.append(x)
        ys.append(y)
        v, a = _ccc(x[:, 0], y[:, 0]), _ccc(x[:, 1], y[:, 1])
        per_trial[t] = {"ccc_v": v, "ccc_a": a, "mean": None if v is None or a is None else (v + a) / 2,
                        "n_labelled": int(mask.sum()), "n_frames": int(pred.shape[0])}
    x = np.concatenate(xs) if xs else np.zeros((0, 2))
    y = np.concatenate(ys) if ys else np.zeros((0, 2))
    v, a = _ccc(x[:, 0], y[:, 0]), _ccc(x[:, 1], y[:, 1])
    return {"ccc_v": v, "ccc_a": a, "mean": None if v is None or a is None else (v + a) / 2,
            "n_trials": len(preds), "n_labelled": int(x.shape[0]), "per_trial": per_trial}


# -- a run's inputs for one split --------------------------------------------------------------------
def split_trial_ids(run: RunInfo, trials: Sequence[Any], split: str) -> list[str]:
    """Trials of `split` as the run defined it (a fold run's val is its fold's val, not the manifest's)."""
    if split not in SPLITS:
        raise FusionError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    in_manifest = {t.trial for t in trials}
    if split in run.splits:
        ids = run.splits[split]
        absent = [t for t in ids if t not in in_manifest]
        if absent:
            shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
            raise FusionError(f"{run.path}: {split} trials of the run are not in the manifest: {shown}")
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


def open_split(run: RunInfo, manifest: str | Path, cache: str | Path, split: str, *, with_labels: bool,
               progress: Callable[[], None] | None = None, warn: Callable[[str], None] | None = None,
               strict: bool = False) -> tuple[WindowDataset, Any]:
    """Dataset of one split of a run: its normalisation, its extraction config, its windows.

    With `warn`, trials with input verdicts are skipped (told through `warn`) or,
    with `strict`, refused; without it (predict: a submission needs every trial)
    every trial must have its shards.
    """
    from pipeline.sources.manifest import read_manifest
    from pipeline.engine.reader import open_cache

    trials = read_manifest(manifest)
    ids = split_trial_ids(run, trials, split)
    used = [t for t in trials if t.trial in set(ids)]
    cfg = run.train
    extract_config = run.extract_config or None
    reader = open_cache(cache, used, extract_config)
    stages = [cfg.stage_of(m) for m in run.modalities]
    needed = ["probe"] + stages + ([cfg.label_stage] if with_labels else [])
    if warn is not None:
        ids = skip_verdicts(reader, ids, needed, strict, warn)
        if not ids:
            raise FusionError(f"no {split} trial left after skipping the trials with input verdicts")
    reader.require(needed, ids)
    norm_path = run.path / "norm.npz"
    if not norm_path.is_file():
        raise FusionError(f"{run.path}: norm.npz missing (the run did not finish its setup)")
    stats = NormStats.load(norm_path)
    lengths = probe_lengths(reader, ids)
    dims = {s: reader.dim(s) for s in stages}
    want = {m: run.input_dims[m] - (1 if cfg.valid_channel else 0) for m in run.modalities}
    for m, s in zip(run.modalities, stages):
        if dims[s] != want[m]:
            raise FusionError(f"{cache}: stage {s!r} has width {dims[s]}, the run was trained on {want[m]} "
                              "(different extraction settings?)")
    need = estimate_bytes(lengths, dims, itemsizes(reader, ids[0], stages))
    fits = need <= cfg.memory_budget_mb * 2 ** 20
    label_stage = cfg.label_stage if with_labels else None
    kwargs = dict(with_labels=with_labels, label_stage=cfg.label_stage, valid_channel=cfg.valid_channel)
    if fits:
        raw = preload(reader, ids, stages, label_stage, progress)
        ds = WindowDataset(ids, lengths, run.modalities, cfg.stage_map, stats, cfg.window, cfg.hop,
                           preloaded=raw, **kwargs)
    else:
        spec = ReaderSpec(Path(cache), tuple(used), extract_config)
        ds = WindowDataset(ids, lengths, run.modalities, cfg.stage_map, stats, cfg.window, cfg.hop,
                           spec=spec, **kwargs)
    return ds, reader


def labels_of(dataset: WindowDataset, reader: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from .data import check_finite, label_mask_of

    out = {}
    for t in dataset.trial_ids:
        if dataset._preloaded is not None:
            raw = dataset._preloaded[t]
            out[t] = (raw.labels, raw.label_mask)
        else:
            arr = reader.load(t, [dataset.label_stage])
            lab = np.asarray(arr.features[dataset.label_stage], dtype=np.float32)
            check_finite(t, dataset.label_stage, lab, arr.valid.get(dataset.label_stage))
            out[t] = (lab, label_mask_of(lab, arr.valid.get(dataset.label_stage)))
    return out


@dataclass
class EvalResult:
    split: str
    report: dict[str, Any]
    predictions: dict[str, np.ndarray]
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"split": self.split, **self.report}


def run_on_split(run: str | Path, manifest: str | Path, cache: str | Path, split: str, *, with_labels: bool,
                 device: str | None, progress: bool, title: str, warn: Callable[[str], None] | None = None,
                 strict: bool = False) -> tuple[RunInfo, dict[str, np.ndarray], Any, Any]:
    """A run's best checkpoint over every window of one split: (run info, per-frame predictions, dataset, reader)."""
    from pipeline.engine.resources import resolve_device

    info = open_run(run)
    dev = torch.device(resolve_device(device or info.train.device))
    with _progress(progress, f"{title} {split}") as bar:
        ds, reader = open_split(info, manifest, cache, split, with_labels=with_labels, progress=bar.tick_trial,
                                warn=warn, strict=strict)
        bar.start_windows(len(ds))
        model = info.build_model().to(dev)
        preds = predict_frames(model, ds, dev, batch_size=info.train.batch_size, amp=info.train.amp,
                               num_workers=info.train.workers_for(dev.type), progress=bar.tick_windows)
    return info, preds, ds, reader


def evaluate(run: str | Path, manifest: str | Path, cache: str | Path, split: str = "val",
             device: str | None = None, progress: bool = False, strict: bool = False) -> EvalResult:
    """CCC of a run's best checkpoint on one split (per dimension, mean, and per trial).

    Trials with input verdicts in the ledger are skipped (listed in `warnings`), or refused with `strict`.
    """
    warnings: list[str] = []
    _info, preds, ds, reader = run_on_split(run, manifest, cache, split, with_labels=True, device=device,
                                            progress=progress, title="evaluate", warn=warnings.append,
                                            strict=strict)
    report = ccc_report(preds, labels_of(ds, reader))
    if report["n_labelled"] == 0:
        raise FusionError(f"no labelled frames in the {split} trials (a test split has no annotations: "
                          "use `affpipe predict`)")
    return EvalResult(split, report, preds, warnings)


class _Bar:
    """Rich progress for load-then-infer commands (a no-op when disabled)."""

    def __init__(self, progress: Any = None, title: str = ""):
        self.p = progress
        self.title = title
        self.task = progress.add_task(f"{title}: loading trials", total=None) if progress else None

    def tick_trial(self) -> None:
        if self.p:
            self.p.advance(self.task)

    def start_windows(self, total: int) -> None:
        if self.p:
            self.p.update(self.task, description=f"{self.title}: windows", total=total, completed=0)

    def tick_windows(self, n: int) -> None:
        if self.p:
            self.p.advance(self.task, n)


@contextlib.contextmanager
def _progress(enabled: bool, title: str):
    if not enabled:
        yield _Bar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # stderr: stdout carries only results (`affpipe evaluate --json`), progress never mixes in
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True, console=Console(stderr=True)) as p:
        yield _Bar(p, title)

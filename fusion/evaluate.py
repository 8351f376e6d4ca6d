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
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from .data import NonFiniteError, WindowDataset, collate_windows, raise_batch_error
from .inputs import CacheInputs, open_run_split
from .runs import FusionError, RunInfo, open_run


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
                 strict: bool = False) -> tuple[RunInfo, dict[str, np.ndarray], CacheInputs]:
    """A run's best checkpoint over every window of one split: (run info, per-frame predictions, its inputs).

    `warn` and `strict`: see `fusion.inputs.open_inputs` (without `warn` every trial must have its shards).
    """
    from pipeline.engine.progress import PhaseProgress
    from pipeline.engine.resources import resolve_device

    info = open_run(run)
    dev = torch.device(resolve_device(device or info.train.device))
    with PhaseProgress(progress) as bar:
        bar.phase(f"{title} {split}: loading trials", None)
        inputs, stats = open_run_split(info, manifest, cache, split, with_labels=with_labels, warn=warn,
                                       strict=strict)
        inputs.load(info.train.memory_budget_mb, bar, f"{title} {split}: loading trials")
        ds = inputs.dataset(split, info.modalities, info.train, stats)
        bar.phase(f"{title} {split}: windows", len(ds))
        model = info.build_model().to(dev)
        preds = predict_frames(model, ds, dev, batch_size=info.train.batch_size, amp=info.train.amp,
                               num_workers=info.train.workers_for(dev.type), progress=bar.tick)
    return info, preds, inputs


def evaluate(run: str | Path, manifest: str | Path, cache: str | Path, split: str = "val",
             device: str | None = None, progress: bool = False, strict: bool = False) -> EvalResult:
    """CCC of a run's best checkpoint on one split (per dimension, mean, and per trial).

    Trials with input verdicts in the ledger are skipped (listed in `warnings`), or refused with `strict`.
    """
    warnings: list[str] = []
    _info, preds, inputs = run_on_split(run, manifest, cache, split, with_labels=True, device=device,
                                        progress=progress, title="evaluate", warn=warnings.append,
                                        strict=strict)
    report = ccc_report(preds, inputs.labels(split))
    if report["n_labelled"] == 0:
        raise FusionError(f"no labelled frames in the {split} trials (a test split has no annotations: "
                          "use `affpipe predict`)")
    return EvalResult(split, report, preds, warnings)

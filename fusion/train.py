"""The training loop: one fusion head on cached features, into a self-describing run folder.

AdamW with a linear warm-up over the first steps, then ReduceLROnPlateau on
the validation mean CCC (the quantity the challenge ranks), early stopping on
the same, gradient clipping, AMP on CUDA only. Every epoch ends with an
atomically written ``last.pt`` that holds everything the next epoch depends on
(model, optimiser, scheduler, early-stopping counters, RNG states, history),
and batches are drawn from a permutation that depends only on (seed, epoch);
so ``--resume`` after a kill continues exactly where the run would have been,
and on CPU (deterministic algorithms) reproduces an uninterrupted run's
metrics bit for bit.
"""
from __future__ import annotations

import os

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.engine.atomic import atomic_write_text

from .config import ConfigError, TrainConfig, load_config, train_config_from_dict
from .data import (NonFiniteError, NormStats, ReaderSpec, WindowDataset, TrialBlockSampler, collate_windows,
                   compute_stats, estimate_bytes, itemsizes, preload, probe_lengths, raise_batch_error,
                   shard_identity, shard_keys_of)
from .evaluate import autocast_for, batch_to, ccc_report, labels_of, predict_frames, skip_verdicts
from .runs import (FusionError, load_checkpoint, rng_state, save_checkpoint_atomic, seed_everything,
                   set_rng_state, write_json_atomic)

PLOT_EVERY_S = 30.0  # curves.png is redrawn at most this often during a run, and once at its end
FEW_STEPS = 5  # fewer optimizer steps per epoch than this: warm-up, plateau and early stopping act on noise

#: Settings that may differ when a run is resumed (they change speed or length, not the numbers so far).
RESUMABLE_CHANGES = {"epochs", "device", "num_workers", "memory_budget_mb", "early_stopping_patience",
                     "plot_trials"}


@dataclass
class RunResult:
    """What `train` returns; the run folder holds the same and more."""

    run_dir: Path
    epochs_run: int
    best_epoch: int | None
    best: dict[str, Any] | None
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed_from: int | None = None
    warnings: list[str] = field(default_factory=list)  # the lines printed as warnings (skipped trials, ...)


def parse_modalities(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if not items:
        raise FusionError("--modalities names no modality")
    if len(set(items)) != len(items):
        raise FusionError(f"--modalities repeats a modality: {','.join(items)}")
    return items


def _resolve_config(config: str | Path | dict | TrainConfig | None) -> tuple[TrainConfig, dict[str, Any]]:
    """(train settings, extraction config) from a file path, a whole-file dict, or a TrainConfig."""
    if config is None:
        return TrainConfig(), {}
    if isinstance(config, TrainConfig):
        return config.validate(), {}
    if isinstance(config, dict):
        cfg = train_config_from_dict(config.get("train"), source="config")
        return cfg, {k: v for k, v in config.items() if k != "train"}
    cfg, data = load_config(config)
    return cfg, {k: v for k, v in data.items() if k != "train"}


def _check_fusion(fusion: str) -> None:
    from .models import list_heads

    heads = list(list_heads())
    if fusion not in heads:
        raise FusionError(f"unknown fusion {fusion!r} (known: {', '.join(heads)})")


def _splits(trials: list[Any], fold: int | None, n_folds: int) -> tuple[list[str], list[str]]:
    train_ids = [t.trial for t in trials if t.split == "train"]
    val_ids = [t.trial for t in trials if t.split == "val"]
    if fold is not None:
        from .folds import make_folds

        if not 0 <= fold < n_folds:
            raise FusionError(f"--fold {fold} is out of range (0..{n_folds - 1})")
        try:
            # official train then official val, n_val given: fold 0 reproduces the official split
            tr, va = make_folds(train_ids + val_ids, n_folds=n_folds, fold=fold, n_val=len(val_ids) or None)
        except ValueError as exc:
            raise FusionError(f"cannot make {n_folds} folds: {exc}") from None
        train_ids, val_ids = list(tr), list(va)
    if not train_ids:
        raise FusionError("the manifest has no train trials")
    if not val_ids:
        raise FusionError("the manifest has no val trials (or use --fold K to validate on a fold)")
    return train_ids, val_ids


def _versions() -> dict[str, str]:
    from pipeline.engine.worker import library_versions

    return {**library_versions(), "python": sys.version.split()[0]}


def _restore_or_fresh_config(out: Path, resume: bool, cfg: TrainConfig, extract_config: dict[str, Any],
                             fusion: str, modalities: list[str] | None, fold: int | None,
                             config_given: bool, epochs: int | None, seed: int | None = None,
                             device: str | None = None) -> tuple[TrainConfig, dict, str, int | None, bool]:
    """On resume the saved run defines everything but its length; refuse silent changes."""
    saved_path = out / "config.json"
    if not saved_path.is_file():
        if (out / "last.pt").is_file():
            raise FusionError(f"{out}: last.pt without config.json; not a run folder affpipe wrote")
        return cfg, extract_config, fusion, fold, False
    if not resume:
        raise FusionError(f"{out}: already holds a run; pass --resume to continue it or choose another --out")
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    if fusion != saved["fusion"]:
        raise FusionError(f"{out}: the run trains {saved['fusion']!r}, not {fusion!r}")
    if fold != saved.get("fold"):
        raise FusionError(f"{out}: the run uses fold {saved.get('fold')}, not {fold}")
    if modalities is not None and modalities != saved["modalities"]:
        raise FusionError(f"{out}: the run uses modalities {','.join(saved['modalities'])}, "
                          f"not {','.join(modalities)}")
    saved_cfg = train_config_from_dict(saved["train"], source=str(saved_path))
    if seed is not None and seed != saved_cfg.seed:
        raise FusionError(f"{out}: the run uses seed {saved_cfg.seed}, not {seed}")
    if config_given:
        a, b = saved_cfg.to_dict(), cfg.to_dict()
        changed = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
        if changed or (extract_config and extract_config != saved.get("extract_config")):
            what = ", ".join(changed) if changed else "extraction settings"
            raise FusionError(f"{out}: --config changes {what} of the run being resumed")
        for k in RESUMABLE_CHANGES:
            setattr(saved_cfg, k, getattr(cfg, k))
    if epochs is not None:
        saved_cfg.epochs = epochs
    if device is not None:
        saved_cfg.device = device
    return saved_cfg, dict(saved.get("extract_config") or {}), fusion, fold, True


@dataclass
class Inputs:
    """Everything a run reads from the cache, ready for the loop."""

    reader: Any
    train_ds: WindowDataset
    val_ds: WindowDataset
    stats: NormStats
    dims: dict[str, int]  # stage -> shard width
    input_dims: dict[str, int]  # modality -> model input width
    keys: dict[str, dict[str, str]]  # stage -> trial -> shard key
    fold_label: str
    in_memory: bool


def prepare_inputs(manifest: str | Path, cache: str | Path, cfg: TrainConfig, extract_config: dict[str, Any],
                   fold: int | None, *, fusion: str | None = None, bar: "_TrainProgress | None" = None,
                   expect_keys: dict | None = None, stats_path: Path | None = None,
                   strict: bool = False) -> Inputs:
    """Splits, shard checks, statistics and datasets of a run (also used by bench/train.py).

    Trials are held in memory when their estimated size fits `cfg.memory_budget_mb`,
    else every DataLoader worker opens its own reader and loads trials lazily.
    Trials with input verdicts in the ledger are skipped (or refused: `strict`).
    """
    from pipeline.sources.manifest import read_manifest
    from pipeline.engine.reader import open_cache

    bar = bar or _TrainProgress(False)
    trials = read_manifest(manifest)
    train_ids, val_ids = _splits(trials, fold, cfg.n_folds)
    used_ids = set(train_ids) | set(val_ids)
    used = [t for t in trials if t.trial in used_ids]
    reader = open_cache(cache, used, extract_config or None)
    stages = [cfg.stage_of(m) for m in cfg.modalities]
    needed = ["probe"] + stages + [cfg.label_stage]
    kept = set(skip_verdicts(reader, train_ids + val_ids, needed, strict, bar.warn))
    train_ids = [t for t in train_ids if t in kept]
    val_ids = [t for t in val_ids if t in kept]
    if not train_ids or not val_ids:
        raise FusionError(f"no {'train' if not train_ids else 'val'} trial left after skipping the trials "
                          "with input verdicts")
    used_ids = set(train_ids) | set(val_ids)
    used = [t for t in used if t.trial in used_ids]
    reader.require(needed, train_ids + val_ids)
    dims = {s: reader.dim(s) for s in stages}
    input_dims = {m: dims[s] + (1 if cfg.valid_channel else 0) for m, s in zip(cfg.modalities, stages)}
    if fusion is not None:  # a bad model config fails now, not after minutes of loading
        from .models import build_model

        try:
            build_model(fusion, input_dims, cfg.window, cfg.model or None)
        except ValueError as exc:
            raise FusionError(str(exc)) from None
    keys = shard_keys_of(reader, train_ids + val_ids, ["probe"] + stages + [cfg.label_stage])
    if expect_keys is not None and expect_keys != keys:
        raise FusionError("cached features changed since the run started (different shards for the same "
                          "trials); start a new run")
    lengths = dict(zip(train_ids + val_ids, probe_lengths(reader, train_ids + val_ids)))
    fold_label = "official" if fold is None else f"{cfg.n_folds}fold-{fold}"

    need = estimate_bytes(list(lengths.values()), dims, itemsizes(reader, train_ids[0], stages))
    raw = None
    if need <= cfg.memory_budget_mb * 2 ** 20:
        bar.phase("loading trials", len(used_ids))
        raw = preload(reader, train_ids + val_ids, stages, cfg.label_stage, bar.tick)
    if stats_path is not None and stats_path.is_file():
        stats = NormStats.load(stats_path)
    else:
        bar.phase("normalisation statistics", len(train_ids))
        load = (lambda t: raw[t]) if raw is not None else (lambda t: reader.load(t, stages))
        files = {s: {t: shard_identity(reader.shard_path(t, s)) for t in train_ids} for s in stages}
        stats = compute_stats(load, dims, train_ids, stages, shard_keys=keys, fold=fold_label,
                              cache_dir=Path(cache), progress=None if raw is not None else bar.tick,
                              shard_files=files, warn=bar.warn)
    common: dict[str, Any] = dict(label_stage=cfg.label_stage, valid_channel=cfg.valid_channel, with_labels=True)
    if raw is not None:
        common["preloaded"] = raw
    else:
        common["spec"] = ReaderSpec(Path(cache), tuple(used), extract_config or None)
    train_ds = WindowDataset(train_ids, [lengths[t] for t in train_ids], cfg.modalities, cfg.stage_map,
                             stats, cfg.window, cfg.hop, **common)
    val_ds = WindowDataset(val_ids, [lengths[t] for t in val_ids], cfg.modalities, cfg.stage_map,
                           stats, cfg.window, cfg.hop, **common)
    _check_learnable(reader, raw, train_ids, cfg, len(train_ds), bar.warn)
    return Inputs(reader, train_ds, val_ds, stats, dims, input_dims, keys, fold_label, raw is not None)


def _check_learnable(reader: Any, raw: dict | None, train_ids: Sequence[str], cfg: TrainConfig, n_windows: int,
                     warn: Callable[[str], None]) -> None:
    """Refuse a run with no labelled training frame; warn when an epoch has too few optimizer steps."""
    from pipeline.engine.shards import read_attrs

    labelled = 0
    for t in train_ids:
        if raw is not None:
            labelled += int(raw[t].label_mask.sum())
        else:
            attrs = read_attrs(reader.shard_path(t, cfg.label_stage))
            labelled += int(attrs.get("n_labelled_frames", 1))  # no count recorded: found at the first batch
        if labelled:
            break
    if not labelled:
        raise FusionError(f"the {len(train_ids)} train trial(s) have no labelled frame (stage "
                          f"{cfg.label_stage!r}): check the manifest's annotation column")
    steps = math.ceil(n_windows / cfg.batch_size)
    if steps < FEW_STEPS:
        warn(f"only {n_windows} training window(s) per epoch = {steps} optimizer step(s) at batch_size "
             f"{cfg.batch_size} (window {cfg.window}, hop {cfg.hop}): warm-up, the plateau schedule and early "
             "stopping will act on noise; use a smaller train.window/hop or batch_size, or more trials")


def train(manifest: str | Path, cache: str | Path, fusion: str, out: str | Path,
          modalities: str | Sequence[str] | None = None, epochs: int | None = None, fold: int | None = None,
          config: str | Path | dict | TrainConfig | None = None, resume: bool = False, *,
          seed: int | None = None, device: str | None = None, progress: bool = False,
          strict: bool = False) -> RunResult:
    """Train `fusion` on the manifest's train split (or fold), validating every epoch; see module doc.

    Trials whose extraction ended in an input verdict (ledger kind such as
    ``no-face``) are skipped with a warning, or refused with `strict`.
    """
    from pipeline.engine.resources import resolve_device

    out = Path(out)
    cfg, extract_config = _resolve_config(config)
    mods = parse_modalities(modalities)
    if mods is not None:
        cfg.modalities = mods
    if epochs is not None:
        if epochs < 0:
            raise FusionError("--epochs must be >= 0")
        cfg.epochs = epochs
    if seed is not None:
        cfg.seed = seed
    if device is not None:
        cfg.device = device
    cfg, extract_config, fusion, fold, resuming = _restore_or_fresh_config(
        out, resume, cfg, extract_config, fusion, mods, fold, config is not None, epochs, seed, device)
    cfg.validate()
    _check_fusion(fusion)

    # on resume the shards read must still be the ones the run started on
    saved = json.loads((out / "config.json").read_text(encoding="utf-8")) if resuming else {}
    dev = torch.device(resolve_device(cfg.device))
    with _TrainProgress(progress) as bar:
        try:
            inp = prepare_inputs(manifest, cache, cfg, extract_config, fold, fusion=fusion, bar=bar,
                                 expect_keys=saved.get("shard_keys") if resuming else None,
                                 stats_path=out / "norm.npz" if resuming else None, strict=strict)
        except FusionError as exc:
            if resuming and "changed since the run started" in str(exc):
                raise FusionError(f"{out}: {exc}") from None
            raise
        train_ds, val_ds, stats = inp.train_ds, inp.val_ds, inp.stats
        train_ids, val_ids = train_ds.trial_ids, val_ds.trial_ids
        input_dims, dims, keys, fold_label = inp.input_dims, inp.dims, inp.keys, inp.fold_label
        raw = train_ds._preloaded
        reader = inp.reader

        val_labels = labels_of(val_ds, reader)
        if not any(mask.any() for _lab, mask in val_labels.values()):
            raise FusionError(f"the {len(val_ids)} val trial(s) have no labelled frame: validation could never "
                              "pick a best epoch (check the manifest's annotation column)")
        if not resuming:
            out.mkdir(parents=True, exist_ok=True)
            stats.save(out / "norm.npz")
        write_json_atomic(out / "config.json", {
            "fusion": fusion,
            "modalities": cfg.modalities,
            "fold": fold,
            "fold_label": fold_label,
            "train": cfg.to_dict(),
            "extract_config": extract_config,
            "input_dims": input_dims,
            "feature_dims": dims,
            "splits": {"train": train_ids, "val": val_ids},
            "shard_keys": keys,
            "norm_stats": stats.keys,
            "in_memory": raw is not None,
            "manifest": str(Path(manifest).resolve()),
            "cache": str(Path(cache).resolve()),
            "device": str(dev),
            "versions": _versions(),
        })
        result = _fit(out, fusion, cfg, input_dims, train_ds, val_ds, val_labels, dev, resuming, bar)
        result.warnings = list(bar.warnings)
        return result


def _fit(out: Path, fusion: str, cfg: TrainConfig, input_dims: dict[str, int], train_ds: WindowDataset,
         val_ds: WindowDataset, val_labels: dict[str, tuple[np.ndarray, np.ndarray]], dev: torch.device,
         resuming: bool, bar: "_TrainProgress") -> RunResult:
    from .ccc import ccc_loss
    from .models import build_model, load_weights
    from .plots import plot_curves

    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        seed_everything(cfg.seed)
        model = build_model(fusion, input_dims, cfg.window, cfg.model or None).to(dev)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
        use_amp = cfg.amp and dev.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
        preloaded = train_ds._preloaded is not None
        sampler = TrialBlockSampler(train_ds, cfg.seed, block=len(train_ds.trial_ids) if preloaded else 8)
        workers = cfg.workers_for(dev.type)
        loader_gen = torch.Generator()
        loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                            collate_fn=collate_windows,
                            pin_memory=dev.type == "cuda", persistent_workers=workers > 0, generator=loader_gen,
                            prefetch_factor=4 if workers > 0 else None)
        steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
        warmup_steps = math.ceil(cfg.warmup_epochs * steps_per_epoch)

        state = {"epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": None, "bad_epochs": 0,
                 "stopped": False, "history": []}
        resumed_from = None
        for leftover in out.glob(".*.tmp"):  # files a killed run was writing; never read
            leftover.unlink(missing_ok=True)
        if resuming and (out / "last.pt").is_file():
            ckpt = load_checkpoint(out / "last.pt")
            load_weights(model, ckpt["model"], out / "last.pt")
            optimizer.load_state_dict(ckpt["optimizer"])
            plateau.load_state_dict(ckpt["plateau"])
            scaler.load_state_dict(ckpt["scaler"])
            for k in state:
                state[k] = ckpt[k]
            set_rng_state(ckpt["rng"])
            resumed_from = int(state["epoch"])
            # a resumed run may raise the patience (or turn early stopping off) to train further
            patience = cfg.early_stopping_patience
            state["stopped"] = bool(patience) and state["bad_epochs"] >= patience
        # metrics.jsonl mirrors the checkpoint's history: lines of an epoch that was cut off are dropped
        _write_metrics(out / "metrics.jsonl", state["history"])
        last_plot = time.time()

        while state["epoch"] < cfg.epochs and not state["stopped"]:
            epoch = int(state["epoch"])
            started = time.time()
            sampler.set_epoch(epoch)
            loader_gen.manual_seed(cfg.seed * 100003 + epoch)
            model.train()
            losses = []
            bar.phase(f"epoch {epoch + 1}/{cfg.epochs}", steps_per_epoch)
            for batch in loader:
                raise_batch_error(batch)
                gs = int(state["global_step"])
                if gs < warmup_steps:
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.lr * (gs + 1) / warmup_steps
                state["global_step"] = gs + 1
                bar.tick()
                if not bool(batch["mask"].any()):
                    continue  # no labelled frame in this batch: nothing to learn from
                b = batch_to(batch, dev)
                with autocast_for(dev, use_amp):
                    pred = model(b["inputs"])
                loss = ccc_loss(pred.float(), b["labels"], b["mask"])
                if not bool(torch.isfinite(loss)):
                    _non_finite_loss(loss, pred, epoch, gs, batch, train_ds)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                losses.append(float(loss.detach()))
            lr_used = float(optimizer.param_groups[0]["lr"])
            bar.phase(f"epoch {epoch + 1}/{cfg.epochs}: validating", len(val_ds))
            preds = predict_frames(model, val_ds, dev, batch_size=cfg.batch_size, amp=use_amp,
                                   num_workers=0 if preloaded else workers, progress=bar.tick_n)
            report = ccc_report(preds, val_labels)
            score = report["mean"] if report["mean"] is not None else -math.inf
            if state["global_step"] >= warmup_steps:
                plateau.step(score)
            lr_next = float(optimizer.param_groups[0]["lr"])
            if lr_next < lr_used and state["global_step"] >= warmup_steps:
                bar.warn(f"epoch {epoch + 1}: val mean CCC has not improved for {cfg.plateau_patience + 1} "
                         f"epoch(s): learning rate cut {lr_used:.2e} -> {lr_next:.2e}"
                         + (" (train.min_lr reached)" if lr_next <= cfg.min_lr else ""))
            improved = score > state["best_score"]
            state["epoch"] = epoch + 1
            if improved:
                state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch + 1, 0
            else:
                state["bad_epochs"] += 1
            line = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
                    "ccc_v": report["ccc_v"], "ccc_a": report["ccc_a"], "mean": report["mean"],
                    "lr": lr_used, "best": improved, "time": round(time.time() - started, 3)}
            state["history"].append(line)
            if cfg.early_stopping_patience and state["bad_epochs"] >= cfg.early_stopping_patience:
                state["stopped"] = True
            if improved:
                save_checkpoint_atomic(out / "best.pt", {"model": model.state_dict(), "epoch": epoch + 1,
                                                         "metrics": line, "fusion": fusion})
            save_checkpoint_atomic(out / "last.pt", {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "plateau": plateau.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                **{k: state[k] for k in state}, "fusion": fusion})
            _append_metrics(out / "metrics.jsonl", line)
            bar.log(line)
            if time.time() - last_plot >= PLOT_EVERY_S:  # long runs: a fresh curve to look at now and then
                plot_curves(state["history"], out / "plots" / "curves.png")
                last_plot = time.time()

        if state["history"]:
            plot_curves(state["history"], out / "plots" / "curves.png")
        # final artefacts from the best checkpoint: val predictions and plots
        if (out / "best.pt").is_file():
            model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
            bar.phase("predicting val with best.pt", len(val_ds))
            preds = predict_frames(model, val_ds, dev, batch_size=cfg.batch_size, amp=use_amp,
                                   num_workers=0 if preloaded else workers, progress=bar.tick_n)
            write_predictions(out / "predictions" / "val", preds)
            _plot_val(out, preds, val_labels, cfg.plot_trials)
        history = state["history"]
        best = next((h for h in history if h["epoch"] == state["best_epoch"]), None)
        return RunResult(out, int(state["epoch"]), state["best_epoch"], best, bool(state["stopped"]),
                         list(history), resumed_from)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)


def _non_finite_loss(loss: torch.Tensor, pred: torch.Tensor, epoch: int, step: int, batch: dict[str, Any],
                     train_ds: WindowDataset) -> None:
    """Stop on a NaN/Inf loss with one line: which epoch, step and trials, and what likely caused it.

    The inputs were checked finite when loaded, so a non-finite loss means the
    model itself produced NaN/Inf (diverged) rather than bad data.
    """
    trials = sorted({train_ds.trial_ids[int(i)] for i in batch["trial"]})
    where = "predictions" if not bool(torch.isfinite(pred).all()) else "loss"
    raise NonFiniteError(f"epoch {epoch + 1}, step {step + 1}: the {where} became NaN/Inf on a batch of trial(s) "
                         f"{', '.join(trials)} (inputs are finite: the model diverged; lower train.lr or "
                         "keep train.grad_clip on)")


def _plot_val(out: Path, preds: dict[str, np.ndarray], labels: dict, n: int) -> None:
    from .plots import plot_prediction

    ranked = sorted(preds, key=lambda t: -int(labels[t][1].sum()))[:n]  # the best-labelled trials
    for t in ranked:
        lab, mask = labels[t]
        plot_prediction(t, preds[t], lab, mask, out / "plots" / f"pred_{t}.png")


def write_predictions(folder: Path, preds: dict[str, np.ndarray]) -> None:
    """Raw per-frame predictions (6 decimals, unclipped) for ensembling and analysis."""
    folder.mkdir(parents=True, exist_ok=True)
    for t, p in preds.items():
        frames = np.arange(p.shape[0])
        body = "\n".join(f"{i},{v:.6f},{a:.6f}" for i, (v, a) in zip(frames, p.astype(np.float64)))
        atomic_write_text(folder / f"{t}.csv", "frame,valence,arousal\n" + body + ("\n" if body else ""))


def read_prediction_csv(path: Path) -> np.ndarray:
    """[n, 2] float64 from a file written by `write_predictions`."""
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise FusionError(f"{path}: cannot read predictions ({exc})") from None
    if data.size == 0:
        return np.zeros((0, 2))
    if data.shape[1] != 3:
        raise FusionError(f"{path}: expected columns frame,valence,arousal")
    return data[:, 1:3]


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(h, sort_keys=True) + "\n" for h in history))


def _append_metrics(path: Path, line: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line, sort_keys=True) + "\n")


class _TrainProgress:
    """Rich progress bars for the CLI (one bar per phase) and one printed line per epoch."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.p = None
        self.task = None
        self.warnings: list[str] = []

    def __enter__(self) -> "_TrainProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            from rich.console import Console

            # stderr: stdout carries only results (`affpipe ... --json`), progress never mixes in
            self.p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeRemainingColumn(), transient=True, console=Console(stderr=True))
            self.p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)

    def phase(self, title: str, total: int | None) -> None:
        if self.p is None:
            return
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(title, total=total)

    def tick(self) -> None:
        if self.p is not None and self.task is not None:
            self.p.advance(self.task)

    def tick_n(self, n: int) -> None:
        if self.p is not None and self.task is not None:
            self.p.advance(self.task, n)

    def warn(self, message: str) -> None:
        """One warning line on stderr (plain text: messages may hold ``[...]``), kept for the result."""
        self.warnings.append(message)
        if self.enabled:
            import click

            click.echo(f"warning: {message}", err=True)

    def log(self, line: dict[str, Any]) -> None:
        if self.p is None:
            return

        def f(x: Any) -> str:
            return "  nan" if x is None else f"{x:.4f}"

        self.p.console.print(f"epoch {line['epoch']:3d}  loss {f(line['loss'])}  val ccc_v {f(line['ccc_v'])}  "
                             f"ccc_a {f(line['ccc_a'])}  mean {f(line['mean'])}  lr {line['lr']:.2e}  "
                             f"{line['time']:.1f}s" + ("  *" if line["best"] else ""), soft_wrap=True)


__all__ = ["train", "RunResult", "write_predictions", "read_prediction_csv", "parse_modalities", "ConfigError"]

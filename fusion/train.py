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

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.engine.atomic import atomic_write_text

from .config import ConfigError, TrainConfig, load_config, train_config_from_dict
from pipeline.engine.progress import PhaseProgress

from .data import NonFiniteError, NormStats, TrialBlockSampler, WindowDataset, collate_windows, raise_batch_error
from .evaluate import autocast_for, batch_to, ccc_report, predict_frames
from .inputs import CacheInputs, open_inputs
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

    cache: CacheInputs  # the opened trials (reader, arrays or lazy readers, labels)
    train_ds: WindowDataset
    val_ds: WindowDataset
    stats: NormStats
    input_dims: dict[str, int]  # modality -> model input width
    fold_label: str

    @property
    def in_memory(self) -> bool:
        return self.cache.in_memory

    @property
    def dims(self) -> dict[str, int]:
        """stage -> shard width"""
        return self.cache.dims

    @property
    def keys(self) -> dict[str, dict[str, str]]:
        """stage -> trial -> shard key"""
        return self.cache.shard_keys()


def prepare_inputs(manifest: str | Path, cache: str | Path, cfg: TrainConfig, extract_config: dict[str, Any],
                   fold: int | None, *, fusion: str | None = None, bar: "_TrainProgress | None" = None,
                   expect_keys: dict | None = None, stats_path: Path | None = None,
                   expect_stats_keys: dict | None = None, strict: bool = False) -> Inputs:
    """Splits, shard checks, statistics and datasets of a run (also used by bench/train.py).

    Trials are held in memory when their estimated size fits `cfg.memory_budget_mb`,
    else every DataLoader worker opens its own reader and loads trials lazily.
    Trials with input verdicts in the ledger are skipped (or refused: `strict`).
    `stats_path` is a resumed run's ``norm.npz``: see `_resumed_stats`. When it is gone,
    `expect_stats_keys` (the keys the run recorded) must still match the shard files, which
    is checked from file metadata before anything is loaded: otherwise the statistics the run
    trained with cannot be recomputed, and the run is refused.
    """
    from pipeline.sources.manifest import read_manifest

    bar = bar or _TrainProgress(False)
    trials = read_manifest(manifest)
    train_ids, val_ids = _splits(trials, fold, cfg.n_folds)
    stages = [cfg.stage_of(m) for m in cfg.modalities]
    opened = open_inputs(trials, {"train": train_ids, "val": val_ids}, cache, extract_config, stages,
                         cfg.label_stage, warn=bar.warn, strict=strict, subject_only=not cfg.keep_other_identities)
    input_dims = opened.input_dims(cfg.modalities, cfg)
    if fusion is not None:  # a bad model config fails now, not after minutes of loading
        from .models import build_model

        try:
            build_model(fusion, input_dims, cfg.window, cfg.model or None)
        except ValueError as exc:
            raise FusionError(str(exc)) from None
    if expect_keys is not None and expect_keys != opened.shard_keys():
        raise FusionError("cached features changed since the run started (different shards for the same "
                          "trials); start a new run")
    fold_label = "official" if fold is None else f"{cfg.n_folds}fold-{fold}"
    norm_lost = stats_path is not None and not stats_path.is_file()
    if norm_lost and expect_stats_keys and expect_stats_keys != opened.stats_keys("train", fold_label=fold_label):
        raise FusionError("norm.npz is missing and the shard files changed since the run started: "
                          "the statistics it trained with cannot be checked; start a new run")
    opened.load(cfg.memory_budget_mb, bar)
    if stats_path is not None and stats_path.is_file():
        stats = _resumed_stats(opened, stats_path, fold_label, bar)
    else:
        bar.phase("normalisation statistics", len(opened.splits["train"]))
        stats = opened.training_stats("train", fold_label=fold_label, progress=bar.tick, warn=bar.warn)
    train_ds = opened.dataset("train", cfg.modalities, cfg, stats)
    val_ds = opened.dataset("val", cfg.modalities, cfg, stats)
    _check_learnable(opened, cfg, len(train_ds), bar.warn)
    return Inputs(opened, train_ds, val_ds, stats, input_dims, fold_label)


def _resumed_stats(opened: CacheInputs, norm: Path, fold_label: str, bar: "_TrainProgress") -> NormStats:
    """A resumed run's own statistics, when the shard files are still the ones they were computed from.

    The check is the stats cache's: shard keys, each shard file's size/mtime/inode,
    fold, identity masks (`CacheInputs.stats_keys`). When those differ (a shard
    rewritten under the same key, or a cache copied elsewhere) the statistics are
    computed again: equal values (a mere copy) continue the run, other values mean
    the data the run started on is gone, and continuing would mix two datasets.
    """
    saved = NormStats.load(norm)
    if saved.keys == opened.stats_keys("train", fold_label=fold_label):
        return saved
    bar.phase("normalisation statistics (shard files changed: checking)", len(opened.splits["train"]))
    fresh = opened.training_stats("train", fold_label=fold_label, progress=bar.tick, warn=bar.warn)
    changed = [s for s in sorted(set(saved.mean) | set(fresh.mean))
               if s not in saved.mean or s not in fresh.mean or not np.array_equal(saved.mean[s], fresh.mean[s])
               or not np.array_equal(saved.std[s], fresh.std[s])]
    if changed:
        raise FusionError(f"{norm.parent}: shard files were rewritten since the run started and their "
                          f"normalisation statistics changed ({', '.join(changed)}): norm.npz no longer "
                          "matches the data; start a new run")
    return fresh


def _check_learnable(opened: CacheInputs, cfg: TrainConfig, n_windows: int, warn: Callable[[str], None]) -> None:
    """Refuse a run with no labelled training frame; warn when an epoch has too few optimizer steps.

    Held trials are counted in memory; lazily read ones have their label shards
    read (until the first labelled frame): a shard's own count attribute may be
    absent, and assuming frames are labelled would start a run that learns nothing.
    """
    train_ids = opened.splits["train"]
    labelled = 0
    for t in train_ids:
        labelled += int(opened.trial_labels(t)[1].sum())
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
                                 stats_path=out / "norm.npz" if resuming else None,
                                 expect_stats_keys=saved.get("norm_stats"), strict=strict)
        except FusionError as exc:
            if resuming and "changed since the run started" in str(exc):
                raise FusionError(f"{out}: {exc}") from None
            raise
        train_ds, val_ds, stats = inp.train_ds, inp.val_ds, inp.stats
        train_ids, val_ids = train_ds.trial_ids, val_ds.trial_ids
        input_dims, dims, keys, fold_label = inp.input_dims, inp.dims, inp.keys, inp.fold_label

        val_labels = inp.cache.labels("val")
        if not any(mask.any() for _lab, mask in val_labels.values()):
            raise FusionError(f"the {len(val_ids)} val trial(s) have no labelled frame: validation could never "
                              "pick a best epoch (check the manifest's annotation column)")
        out.mkdir(parents=True, exist_ok=True)
        stats.save(out / "norm.npz")  # on resume too: recomputed ones (norm.npz lost) must reach evaluate/predict
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
            "in_memory": inp.in_memory,
            "manifest": str(Path(manifest).resolve()),
            "cache": str(Path(cache).resolve()),
            "device": str(dev),
            "versions": _versions(),
        })
        result = _fit(out, fusion, cfg, input_dims, train_ds, val_ds, val_labels, dev, resuming, bar)
        result.warnings = list(bar.warnings)
        return result


@dataclass
class _Loop:
    """The objects a run steps through its epochs, and `state`: the counters last.pt saves beside them."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    sampler: TrialBlockSampler
    loader: DataLoader
    loader_gen: torch.Generator
    use_amp: bool
    infer_workers: int  # DataLoader workers for val inference (0 when the trials are in memory)
    steps_per_epoch: int
    warmup_steps: int
    state: dict[str, Any] = field(default_factory=lambda: {
        "epoch": 0, "global_step": 0, "best_score": -math.inf, "best_epoch": None, "bad_epochs": 0,
        "stopped": False, "history": []})


def _fit(out: Path, fusion: str, cfg: TrainConfig, input_dims: dict[str, int], train_ds: WindowDataset,
         val_ds: WindowDataset, val_labels: dict[str, tuple[np.ndarray, np.ndarray]], dev: torch.device,
         resuming: bool, bar: "_TrainProgress") -> RunResult:
    """Epochs until `cfg.epochs` or early stopping (resuming from last.pt), then the best epoch's artefacts."""
    from .plots import plot_curves

    with _cpu_determinism(dev, cfg):
        loop = _build_loop(fusion, cfg, input_dims, train_ds, dev)
        resumed_from = _restore(out, loop, cfg, resuming)
        # metrics.jsonl mirrors the checkpoint's history: lines of an epoch that was cut off are dropped
        _write_metrics(out / "metrics.jsonl", loop.state["history"])
        last_plot = time.time()
        while loop.state["epoch"] < cfg.epochs and not loop.state["stopped"]:
            _run_epoch(out, fusion, cfg, loop, train_ds, val_ds, val_labels, dev, bar)
            if time.time() - last_plot >= PLOT_EVERY_S:  # long runs: a fresh curve to look at now and then
                plot_curves(loop.state["history"], out / "plots" / "curves.png")
                last_plot = time.time()
        if loop.state["history"]:
            plot_curves(loop.state["history"], out / "plots" / "curves.png")
        _best_artefacts(out, cfg, loop, val_ds, val_labels, dev, bar)
        state = loop.state
        history = state["history"]
        best = next((h for h in history if h["epoch"] == state["best_epoch"]), None)
        return RunResult(out, int(state["epoch"]), state["best_epoch"], best, bool(state["stopped"]),
                         list(history), resumed_from)


@contextlib.contextmanager
def _cpu_determinism(dev: torch.device, cfg: TrainConfig) -> Iterator[None]:
    """On CPU: deterministic algorithms and `cfg.threads` threads for the run (a resumed run then
    reproduces an uninterrupted one bit for bit); torch's settings are restored afterwards."""
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.set_num_threads(threads_before)


def _build_loop(fusion: str, cfg: TrainConfig, input_dims: dict[str, int], train_ds: WindowDataset,
                dev: torch.device) -> _Loop:
    """Seeded model, AdamW, plateau schedule, AMP scaler and the train loader of a fresh run."""
    from .models import build_model

    seed_everything(cfg.seed)
    model = build_model(fusion, input_dims, cfg.window, cfg.model or None).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=cfg.min_lr)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())
    in_memory = train_ds.in_memory
    sampler = TrialBlockSampler(train_ds, cfg.seed, block=len(train_ds.trial_ids) if in_memory else 8)
    workers = cfg.workers_for(dev.type)
    loader_gen = torch.Generator()
    loader = DataLoader(train_ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_windows,
                        pin_memory=dev.type == "cuda", persistent_workers=workers > 0, generator=loader_gen,
                        prefetch_factor=4 if workers > 0 else None)
    steps_per_epoch = math.ceil(len(train_ds) / cfg.batch_size)
    return _Loop(model, optimizer, plateau, scaler, sampler, loader, loader_gen, use_amp,
                 infer_workers=0 if in_memory else workers, steps_per_epoch=steps_per_epoch,
                 warmup_steps=math.ceil(cfg.warmup_epochs * steps_per_epoch))


def _restore(out: Path, loop: _Loop, cfg: TrainConfig, resuming: bool) -> int | None:
    """Load last.pt into `loop` when resuming (the epoch it ends after, else None); drop half-written files."""
    from .models import load_weights

    for leftover in out.glob(".*.tmp"):  # files a killed run was writing; never read
        leftover.unlink(missing_ok=True)
    if not (resuming and (out / "last.pt").is_file()):
        return None
    ckpt = load_checkpoint(out / "last.pt")
    load_weights(loop.model, ckpt["model"], out / "last.pt")
    loop.optimizer.load_state_dict(ckpt["optimizer"])
    loop.plateau.load_state_dict(ckpt["plateau"])
    loop.scaler.load_state_dict(ckpt["scaler"])
    for k in loop.state:
        loop.state[k] = ckpt[k]
    set_rng_state(ckpt["rng"])
    # a resumed run may raise the patience (or turn early stopping off) to train further
    patience = cfg.early_stopping_patience
    loop.state["stopped"] = bool(patience) and loop.state["bad_epochs"] >= patience
    return int(loop.state["epoch"])


def _run_epoch(out: Path, fusion: str, cfg: TrainConfig, loop: _Loop, train_ds: WindowDataset,
               val_ds: WindowDataset, val_labels: dict[str, tuple[np.ndarray, np.ndarray]], dev: torch.device,
               bar: "_TrainProgress") -> None:
    """One epoch: train, validate, schedule the learning rate, record, checkpoint."""
    epoch = int(loop.state["epoch"])
    started = time.time()
    losses = _train_epoch(cfg, loop, epoch, train_ds, dev, bar)
    lr_used = float(loop.optimizer.param_groups[0]["lr"])
    bar.phase(f"epoch {epoch + 1}/{cfg.epochs}: validating", len(val_ds))
    report = ccc_report(_predict_val(cfg, loop, val_ds, dev, bar), val_labels)
    score = report["mean"] if report["mean"] is not None else -math.inf
    _step_plateau(cfg, loop, epoch, score, lr_used, bar)
    improved = _record_score(loop.state, epoch, score)
    line = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else None,
            "ccc_v": report["ccc_v"], "ccc_a": report["ccc_a"], "mean": report["mean"],
            "lr": lr_used, "best": improved, "time": round(time.time() - started, 3)}
    loop.state["history"].append(line)
    if cfg.early_stopping_patience and loop.state["bad_epochs"] >= cfg.early_stopping_patience:
        loop.state["stopped"] = True
    _save_epoch(out, fusion, loop, line)
    bar.log(line)


def _train_epoch(cfg: TrainConfig, loop: _Loop, epoch: int, train_ds: WindowDataset, dev: torch.device,
                 bar: "_TrainProgress") -> list[float]:
    """One pass over the train windows in the (seed, epoch) order; the loss of every optimizer step."""
    from .ccc import ccc_loss

    loop.sampler.set_epoch(epoch)
    loop.loader_gen.manual_seed(cfg.seed * 100003 + epoch)
    loop.model.train()
    losses = []
    bar.phase(f"epoch {epoch + 1}/{cfg.epochs}", loop.steps_per_epoch)
    for batch in loop.loader:
        raise_batch_error(batch)
        gs = int(loop.state["global_step"])
        _warm_up(cfg, loop, gs)
        loop.state["global_step"] = gs + 1
        bar.tick()
        if not bool(batch["mask"].any()):
            continue  # no labelled frame in this batch: nothing to learn from
        b = batch_to(batch, dev)
        with autocast_for(dev, loop.use_amp):
            pred = loop.model(b["inputs"])
        loss = ccc_loss(pred.float(), b["labels"], b["mask"])
        if not bool(torch.isfinite(loss)):
            _non_finite_loss(loss, pred, epoch, gs, batch, train_ds)
        loop.optimizer.zero_grad(set_to_none=True)
        loop.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            loop.scaler.unscale_(loop.optimizer)
            torch.nn.utils.clip_grad_norm_(loop.model.parameters(), cfg.grad_clip)
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        losses.append(float(loss.detach()))
    return losses


def _warm_up(cfg: TrainConfig, loop: _Loop, global_step: int) -> None:
    """Linear warm-up of the learning rate over the first `loop.warmup_steps` optimizer steps."""
    if global_step < loop.warmup_steps:
        for group in loop.optimizer.param_groups:
            group["lr"] = cfg.lr * (global_step + 1) / loop.warmup_steps


def _predict_val(cfg: TrainConfig, loop: _Loop, val_ds: WindowDataset, dev: torch.device,
                 bar: "_TrainProgress") -> dict[str, np.ndarray]:
    """Per-frame predictions of the current model on every val trial."""
    return predict_frames(loop.model, val_ds, dev, batch_size=cfg.batch_size, amp=loop.use_amp,
                          num_workers=loop.infer_workers, progress=bar.tick)


def _step_plateau(cfg: TrainConfig, loop: _Loop, epoch: int, score: float, lr_used: float,
                  bar: "_TrainProgress") -> None:
    """After warm-up, let ReduceLROnPlateau see the val score; say when it cuts the learning rate."""
    warm = loop.state["global_step"] >= loop.warmup_steps
    if warm:
        loop.plateau.step(score)
    lr_next = float(loop.optimizer.param_groups[0]["lr"])
    if lr_next < lr_used and warm:
        bar.warn(f"epoch {epoch + 1}: val mean CCC has not improved for {cfg.plateau_patience + 1} "
                 f"epoch(s): learning rate cut {lr_used:.2e} -> {lr_next:.2e}"
                 + (" (train.min_lr reached)" if lr_next <= cfg.min_lr else ""))


def _record_score(state: dict[str, Any], epoch: int, score: float) -> bool:
    """Close `epoch` in `state` with its val `score`: a new best (True), or one more bad epoch."""
    improved = score > state["best_score"]
    state["epoch"] = epoch + 1
    if improved:
        state["best_score"], state["best_epoch"], state["bad_epochs"] = score, epoch + 1, 0
    else:
        state["bad_epochs"] += 1
    return improved


def _save_epoch(out: Path, fusion: str, loop: _Loop, line: dict[str, Any]) -> None:
    """best.pt on a new best, then last.pt (all a resume needs) and the epoch's metrics line."""
    if line["best"]:
        save_checkpoint_atomic(out / "best.pt", {"model": loop.model.state_dict(), "epoch": line["epoch"],
                                                 "metrics": line, "fusion": fusion})
    save_checkpoint_atomic(out / "last.pt", {
        "model": loop.model.state_dict(), "optimizer": loop.optimizer.state_dict(),
        "plateau": loop.plateau.state_dict(), "scaler": loop.scaler.state_dict(), "rng": rng_state(),
        **{k: loop.state[k] for k in loop.state}, "fusion": fusion})
    _append_metrics(out / "metrics.jsonl", line)


def _best_artefacts(out: Path, cfg: TrainConfig, loop: _Loop, val_ds: WindowDataset,
                    val_labels: dict[str, tuple[np.ndarray, np.ndarray]], dev: torch.device,
                    bar: "_TrainProgress") -> None:
    """Val predictions and plots of the best checkpoint (none when no epoch validated)."""
    if not (out / "best.pt").is_file():
        return
    loop.model.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    bar.phase("predicting val with best.pt", len(val_ds))
    preds = _predict_val(cfg, loop, val_ds, dev, bar)
    write_predictions(out / "predictions" / "val", preds)
    _plot_val(out, preds, val_labels, cfg.plot_trials)


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


class _TrainProgress(PhaseProgress):
    """The CLI's bars (one per phase), one printed line per epoch, and the warnings of the run."""

    def __init__(self, enabled: bool):
        super().__init__(enabled)
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        """One warning line on stderr (plain text: messages may hold ``[...]``), kept for the result."""
        self.warnings.append(message)
        if self.enabled:
            import click

            click.echo(f"warning: {message}", err=True)

    def log(self, line: dict[str, Any]) -> None:
        def f(x: Any) -> str:
            return "  nan" if x is None else f"{x:.4f}"

        self.print(f"epoch {line['epoch']:3d}  loss {f(line['loss'])}  val ccc_v {f(line['ccc_v'])}  "
                   f"ccc_a {f(line['ccc_a'])}  mean {f(line['mean'])}  lr {line['lr']:.2e}  "
                   f"{line['time']:.1f}s" + ("  *" if line["best"] else ""))


__all__ = ["train", "RunResult", "write_predictions", "read_prediction_csv", "parse_modalities", "ConfigError"]

"""Trainer benchmark: loader throughput, training steps/s per head, one epoch, on an Aff-Wild2-sized cache.

    .venv/bin/python bench/train.py                       # ~3M frames, like Aff-Wild2 (needs ~8 GB disk)
    .venv/bin/python bench/train.py --frames 200000        # scaled down
    .venv/bin/python bench/train.py --heads concat,lfan --devices cpu --workers 0,2

The synthetic cache is real HDF5 shards (visual 512 + audio 128 float16, text
384 as segment embeddings) at the keys `pipeline.engine.reader` computes, in a temp
dir (or --keep DIR to reuse it), read through the same code path as training.
The table answers one question first: is the loader faster than the fastest
head trains? (It must be: a GPU waiting on HDF5 is money burnt.)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

AFFWILD2_FRAMES = 3_000_000
AFFWILD2_TRIALS = 432  # train + validation (356 + 76); the test split does not enter training
DIMS = {"visual": 512, "audio": 128, "text": 384}


def make_dataset(root: Path, frames: int, trials: int, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """Manifest of `trials` train/val trials (Aff-Wild2 proportions) whose lengths sum to `frames`."""
    from pipeline.sources.manifest import Trial, write_manifest

    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, 0.6, size=trials)
    lengths = np.maximum(60, np.round(weights / weights.sum() * frames)).astype(int)
    n_val = max(1, round(trials * 76 / 432))
    rows, out = [], {}
    videos = root / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(lengths):
        name = f"trial{i:04d}"
        video = videos / f"{name}.mp4"
        if not video.exists():  # keys fingerprint the files' content; the bench never decodes them
            video.touch()
        rows.append(Trial(trial=name, video=video, split="val" if i >= trials - n_val else "train"))
        out[name] = int(n)
    path = write_manifest(rows, root / "manifest.csv")
    return path, out


def build_cache(root: Path, frames: int, trials: int) -> tuple[Path, Path, dict[str, int]]:
    from rich.progress import Progress

    from synthetic.cache import write_synthetic_cache
    from pipeline.sources.manifest import read_manifest

    manifest, lengths = make_dataset(root, frames, trials)
    cache = root / "cache"
    stamp = root / "bench-cache.json"
    want = {"frames": frames, "trials": trials, "dims": DIMS, "faces_shards": True}  # older caches lack them
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return manifest, cache, lengths
    started = time.time()
    with Progress(transient=True) as p:
        task = p.add_task("writing synthetic shards", total=trials)
        write_synthetic_cache(cache, read_manifest(manifest), lengths, DIMS, progress=lambda: p.advance(task))
    size = sum(f.stat().st_size for f in cache.rglob("*.h5"))
    print(f"synthetic cache: {sum(lengths.values()):,} frames, {trials} trials, {size / 2**30:.2f} GiB "
          f"in {time.time() - started:.0f} s ({cache})")
    stamp.write_text(json.dumps(want))
    return manifest, cache, lengths


def loader_rate(inputs, cfg, workers: int, max_batches: int) -> tuple[float, int]:
    """Windows/s of the training DataLoader alone (batches built and collated, nothing trained)."""
    import torch
    from torch.utils.data import DataLoader

    from fusion.data import TrialBlockSampler, collate_windows

    ds = inputs.train_ds
    sampler = TrialBlockSampler(ds, 0, block=len(ds.trial_ids) if inputs.in_memory else 8)
    loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_windows, persistent_workers=False, prefetch_factor=4 if workers else None,
                        pin_memory=torch.cuda.is_available())
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    n, started = 0, time.perf_counter()
    for i, batch in enumerate(it):
        n += batch["labels"].shape[0]
        if i + 1 >= max_batches:
            break
    return n / max(time.perf_counter() - started, 1e-9), n


def train_rate(head: str, input_dims: dict[str, int], cfg, device: str, steps: int) -> float:
    """Training steps/s of one head on batches already on the device (forward, CCC loss, backward, AdamW)."""
    import torch

    from fusion.ccc import ccc_loss
    from fusion.evaluate import autocast_for
    from fusion.models import build_model

    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(head, input_dims, cfg.window, cfg.model or None).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = {m: torch.randn(cfg.batch_size, cfg.window, d, device=dev) for m, d in input_dims.items()}
    y = torch.rand(cfg.batch_size, cfg.window, 2, device=dev) * 2 - 1
    mask = torch.ones(cfg.batch_size, cfg.window, dtype=torch.bool, device=dev)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    def step() -> None:
        with autocast_for(dev, use_amp):
            pred = model(x)
        loss = ccc_loss(pred.float(), y, mask)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def epoch_time(manifest: Path, cache: Path, head: str, cfg_dict: dict, device: str, out: Path) -> dict:
    """One real epoch through `fusion.train.train` (setup, train, validation), timed."""
    from fusion.train import train

    started = time.perf_counter()
    result = train(manifest, cache, head, out, config={"train": {**cfg_dict, "device": device}}, epochs=1,
                   progress=False)
    total = time.perf_counter() - started
    return {"total_s": total, "epoch_s": result.history[0]["time"], "mean": result.history[0]["mean"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=AFFWILD2_FRAMES, help="total frames (default: Aff-Wild2's ~3M)")
    ap.add_argument("--trials", type=int, help="number of trials (default: scaled from Aff-Wild2's 432 train+val)")
    ap.add_argument("--heads", default="all", help="comma-separated heads, or 'all'")
    ap.add_argument("--devices", default="auto", help="cpu, cuda or both (default: cpu, plus cuda when present)")
    ap.add_argument("--workers", default="0,2,4", help="DataLoader worker counts to measure")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--window", type=int, default=300)
    ap.add_argument("--hop", type=int, default=200)
    ap.add_argument("--loader-batches", type=int, default=100, help="batches per loader measurement")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per head and device")
    ap.add_argument("--epoch-head", default="concat", help="head for the one-epoch timing ('' to skip)")
    ap.add_argument("--epoch-devices", help="devices for the epoch timing (default: --devices)")
    ap.add_argument("--lazy", action="store_true", help="also measure the lazy (per-worker reader) loader")
    ap.add_argument("--keep", type=Path, help="build (or reuse) the synthetic cache here instead of a temp dir")
    args = ap.parse_args(argv)

    import torch
    from rich.console import Console
    from rich.table import Table

    from fusion.config import train_config_from_dict
    from fusion.models import list_heads
    from fusion.train import prepare_inputs

    console = Console()
    trials = args.trials or max(6, round(AFFWILD2_TRIALS * args.frames / AFFWILD2_FRAMES))
    heads = list_heads() if args.heads == "all" else [h.strip() for h in args.heads.split(",") if h.strip()]
    devices = (["cpu"] + (["cuda"] if torch.cuda.is_available() else [])) if args.devices == "auto" \
        else [d.strip() for d in args.devices.split(",")]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    tmp = None
    if args.keep:
        root = args.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="affpipe-bench-")
        root = Path(tmp.name)
    try:
        manifest, cache, _lengths = build_cache(root, args.frames, trials)
        cfg_dict = {"window": args.window, "hop": args.hop, "batch_size": args.batch_size,
                    "modalities": list(DIMS), "num_workers": 0}
        cfg = train_config_from_dict(cfg_dict)
        info = [f"torch {torch.__version__}", f"{os.cpu_count()} CPU cores",
                torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"]
        console.print("bench/train.py: " + ", ".join(info))

        loader_table = Table(title="loader alone (train windows, batch %d)" % cfg.batch_size)
        for col in ("mode", "workers", "windows/s", "batches/s", "setup s"):
            loader_table.add_column(col, justify="right")
        best_loader = 0.0
        modes = [("memory", cfg.memory_budget_mb)] + ([("lazy", 0)] if args.lazy else [])
        input_dims = None
        for mode, budget in modes:
            mcfg = train_config_from_dict({**cfg_dict, "memory_budget_mb": budget})
            started = time.perf_counter()
            inputs = prepare_inputs(manifest, cache, mcfg, {}, None)
            setup = time.perf_counter() - started
            if mode == "memory" and not inputs.in_memory:
                mode = "lazy (over budget)"
            input_dims = inputs.input_dims
            for w in workers:
                rate, _n = loader_rate(inputs, mcfg, w, args.loader_batches)
                best_loader = max(best_loader, rate)
                loader_table.add_row(mode, str(w), f"{rate:,.0f}", f"{rate / cfg.batch_size:,.1f}", f"{setup:.1f}")
                console.print(f"  loader {mode}, {w} worker(s): {rate:,.0f} windows/s")
        console.print(loader_table)

        train_table = Table(title=f"training steps (batch {cfg.batch_size} x {cfg.window} frames, inputs on device)")
        for col in ("head", "device", "params", "steps/s", "windows/s", "loader headroom"):
            train_table.add_column(col, justify="right")
        from fusion.models import build_model

        for dev in devices:
            for head in heads:
                dims, label = input_dims, head
                try:
                    build_model(head, dims, cfg.window)
                except ValueError:  # two-modality heads (jca): audio-visual
                    dims = {m: d for m, d in input_dims.items() if m in ("visual", "audio")}
                    label = f"{head} (visual+audio)"
                n_params = sum(p.numel() for p in build_model(head, dims, cfg.window).parameters())
                try:
                    sps = train_rate(head, dims, cfg, dev, args.steps)
                except torch.OutOfMemoryError:
                    train_table.add_row(label, dev, f"{n_params:,}", "OOM", "", "")
                    continue
                wps = sps * cfg.batch_size
                headroom = best_loader / wps if wps else math.inf
                flag = "" if headroom >= 1.5 else "  [red]loader-bound[/red]"
                train_table.add_row(label, dev, f"{n_params:,}", f"{sps:.2f}", f"{wps:,.0f}", f"{headroom:.1f}x{flag}")
                console.print(f"  {label} on {dev}: {sps:.2f} steps/s")
        console.print(train_table)

        if args.epoch_head:
            epoch_table = Table(title=f"one epoch of {args.epoch_head!r} through fusion.train.train")
            for col in ("device", "epoch s (train+val)", "total s (incl. setup)", "val mean CCC"):
                epoch_table.add_column(col, justify="right")
            for dev in (args.epoch_devices.split(",") if args.epoch_devices else devices):
                r = epoch_time(manifest, cache, args.epoch_head, cfg_dict, dev, root / f"run-{dev}-{time.time():.0f}")
                epoch_table.add_row(dev, f"{r['epoch_s']:.1f}", f"{r['total_s']:.1f}", f"{r['mean']:.3f}")
            console.print(epoch_table)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

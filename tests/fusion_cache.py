"""A small real cache for the trainer's tests (built once per test session).

Videos are written here (PyAV), then `pipeline.extract` computes the real
probe, labels and audio (MFCC) shards; the visual shards are synthesised at the
keys the reader computes (`synthetic.cache`), because real face
embeddings need faces and minutes of MTCNN. The visual features mix the real
labels with noise, so training on them must learn.

Layout: 3 train, 2 val (one shorter than a window), 2 test trials (no annotation).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FPS = 25
WINDOW, HOP = 32, 16
LENGTHS = {"tr0": 120, "tr1": 150, "tr2": 180, "va0": 110, "va1": 24, "te0": 75, "te1": 40}
SPLITS = {"tr0": "train", "tr1": "train", "tr2": "train", "va0": "val", "va1": "val", "te0": "test", "te1": "test"}
TRAIN_CFG = {
    "window": WINDOW, "hop": HOP, "batch_size": 8, "epochs": 4, "lr": 0.1, "warmup_epochs": 1,
    "plateau_patience": 0, "plateau_factor": 0.5, "early_stopping_patience": 0,
    "modalities": ["visual", "audio"], "plot_trials": 1,
    "model": {"tcn": {"visual": [8, 8], "audio": [8, 8]}, "hidden": 16, "dropout": 0.2},
}


@dataclass(frozen=True)
class FusionCache:
    root: Path
    manifest: Path
    cache: Path
    config: Path  # JSON config file with the train section above


_BUILT: dict[str, FusionCache] = {}


def _curves(rng: np.random.Generator, n: int) -> np.ndarray:
    t = np.arange(n) / FPS
    out = np.zeros((n, 2))
    for j in range(2):
        for _ in range(2):
            out[:, j] += rng.uniform(0.2, 0.4) * np.sin(2 * np.pi * t / rng.uniform(1.0, 6.0) + rng.uniform(0, 6.3))
    return np.clip(out, -1, 1)


def build(root: Path) -> FusionCache:
    """Write videos, annotations and a manifest under `root`, then extract and synthesise the cache."""
    from pipeline import extract, read_manifest
    from synthetic.media import moving_frames, write_video

    from synthetic.cache import write_synthetic_cache

    root.mkdir(parents=True, exist_ok=True)
    rows = ["trial,video,split,annotation"]
    for i, (trial, n) in enumerate(LENGTHS.items()):
        rng = np.random.default_rng(i)
        va = _curves(rng, n)
        sr = 16000
        t = np.arange(int(n / FPS * sr)) / sr
        arousal = np.interp(t, np.arange(n) / FPS, va[:, 1])
        audio = (0.05 + 0.3 * (arousal + 1) / 2) * np.sin(2 * np.pi * 300 * t)
        video = write_video(root / f"{trial}.mp4", moving_frames(n, 32, 96, seed=i), FPS,
                            audio=audio.astype(np.float32), sr=sr)
        annotation = ""
        if SPLITS[trial] != "test":
            lines = ["valence,arousal"] + [f"{v:.3f},{a:.3f}" for v, a in va]
            lines[4] = "-5,-5"  # an unlabelled frame, as Aff-Wild2 writes them
            (root / f"{trial}.txt").write_text("\n".join(lines) + "\n")
            annotation = f"{trial}.txt"
        rows.append(f"{trial},{video.name},{SPLITS[trial]},{annotation}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    cache = root / "cache"
    summary = extract(manifest, cache=cache, stages=["labels", "audio"], scheduler="sync", progress=False)
    assert summary.ok, summary.failures
    write_synthetic_cache(cache, read_manifest(manifest), {}, {"visual": 16}, seed=0, noise=0.6)
    config = root / "config.json"
    config.write_text(json.dumps({"train": TRAIN_CFG}, indent=1))
    return FusionCache(root, manifest, cache, config)


def get(tmp_path_factory) -> FusionCache:
    """The session's cache (built on first use; both test modules share it)."""
    if "cache" not in _BUILT:
        _BUILT["cache"] = build(tmp_path_factory.mktemp("fusion_cache"))
    return _BUILT["cache"]


def get_run(tmp_path_factory, name: str, **kwargs) -> Path:
    """A training run on the session cache, trained once per session per `name`."""
    from fusion.train import train

    key = f"run:{name}"
    if key not in _BUILT:
        fc = get(tmp_path_factory)
        out = tmp_path_factory.mktemp("runs") / name
        train(fc.manifest, fc.cache, kwargs.pop("fusion", "concat"), out, config=kwargs.pop("config", fc.config),
              **kwargs)
        _BUILT[key] = out  # type: ignore[assignment]
    return _BUILT[key]  # type: ignore[return-value]


def history(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time"} for line in lines]


def one_line_error(result) -> str:
    """A CLI result that failed with exit status 1 and exactly one ``Error:`` line (warning lines aside)."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [x for x in result.output.strip().splitlines() if x.strip() and not x.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, result.output
    return lines[0]

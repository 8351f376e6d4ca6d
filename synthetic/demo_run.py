"""The main job on the embedded default dataset: build it, extract every stage, train, evaluate, predict.

This is what `affpipe demo` (and the README's first command) runs. The dataset
encodes valence in the face's appearance and words, arousal in the voice and
head motion (synthetic/demo_data.py), so a good CCC on its held-out trials shows the
whole chain — decoding, faces, backbone, audio, text, cache, trainer — learns.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Training settings sized for 8 six-second trials on a 2-core CPU (about a minute). Batch 4: the 5
#: training trials give 25 windows, so 7 optimizer steps per epoch (batch 8 gave 4, under `FEW_STEPS`).
DEMO_TRAIN = {
    "window": 50,
    "hop": 25,
    "batch_size": 4,
    "epochs": 40,
    "lr": 3e-3,
    "early_stopping_patience": 10,
    "plateau_patience": 4,
    "seed": 0,
    "model": {"tcn": {"visual": [32, 32], "audio": [32, 32], "text": [32, 32]}, "dropout": 0.1},
}


@dataclass
class DemoResult:
    manifest: Path
    cache: Path
    run: Path
    submission: Path
    extract: dict[str, Any]
    test: dict[str, Any]
    val: dict[str, Any]


def run_demo(root: str | Path = "demo", cache: str | Path = "cache", fusion: str = "rjcma",
             scheduler: str = "processes", workers: int | None = 2, epochs: int | None = None,
             progress: bool = True, console: Any = None, trials: int = 8, seconds: float = 6.0) -> DemoResult:
    """Build (or reuse) the demo data, extract into `cache`, train `fusion`, evaluate and predict.

    `trials` and `seconds` size the dataset (the default is the README's demo); a
    smaller one (3 trials of 2 s: one per split) runs the same chain in a fraction
    of the time, which is what the tests use.
    """
    from synthetic.demo_data import build_demo_dataset
    from pipeline.engine.runner import extract

    from fusion.evaluate import evaluate
    from fusion.predict import predict, validate_submission
    from fusion.train import train

    root = Path(root)
    say = console.print if console is not None else (lambda *a, **k: None)
    manifest = build_demo_dataset(root / "data", n_trials=trials, seconds=seconds)
    say(f"[bold]1/4[/bold] demo dataset: {manifest}")
    config = root / "config.json"
    train_cfg = dict(DEMO_TRAIN, **({"epochs": epochs} if epochs is not None else {}))
    config.write_text(json.dumps({"stages": {}, "train": train_cfg}, indent=2))
    say(f"[bold]2/4[/bold] extracting every stage into {Path(cache).resolve()}")
    summary = extract(manifest, cache=cache, config=config, scheduler=scheduler, workers=workers,
                      progress=progress, console=console)
    if not summary.ok:
        raise RuntimeError(f"extraction failed for {len(summary.failures)} (trial, stage): "
                           + "; ".join(f"{f['trial']}/{f['stage']}: {f['message']}" for f in summary.failures[:3]))
    run = root / "runs" / fusion
    say(f"[bold]3/4[/bold] training {fusion} -> {run}")
    # a second `make demo` continues (or simply reuses) the finished run instead of refusing the folder
    train(manifest, cache, fusion, run, config=config, progress=progress, resume=(run / "last.pt").exists())
    say("[bold]4/4[/bold] evaluating and writing the test submission")
    val = evaluate(run, manifest, cache, split="val").report
    test = evaluate(run, manifest, cache, split="test").report
    submission = root / "submission"
    predict(run, manifest, cache, submission, split="test")
    problems = validate_submission(submission, manifest, cache, split="test")
    if problems:
        raise RuntimeError(f"demo submission does not validate: {problems}")
    return DemoResult(manifest, Path(cache).resolve(), run.resolve(), submission.resolve(), summary.to_dict(),
                      test, val)

"""ABAW submission files: writing them from a run, and checking them before upload.

Format (docs/affwild2.md, "Test submission"): one ``<trial>.txt`` per trial of
the split, header ``valence,arousal``, then one ``v,a`` line per decoded video
frame (faceless frames included), values clipped to [-1, 1], three decimals.
The frame count is the trial's probe shard's: the same grid every feature was
extracted on, so a mismatch here means a bug upstream, not a rounding issue.

The validator reports every problem (file:line) rather than stopping at the
first: a submission is uploaded a few times a day at most, so a complete list
of what is wrong saves a round trip.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.engine.atomic import atomic_write_text

from .evaluate import run_on_split
from .runs import FusionError
from .train import write_predictions

HEADER = "valence,arousal"
MAX_PROBLEMS_PER_FILE = 20  # beyond this a file is clearly broken; the rest are counted, not listed


def format_submission(pred: np.ndarray) -> str:
    """Text of one submission file: clipped, three decimals, no negative zero."""
    vals = np.round(np.clip(np.asarray(pred, dtype=np.float64), -1.0, 1.0), 3) + 0.0
    lines = [HEADER] + [f"{v:.3f},{a:.3f}" for v, a in vals]
    return "\n".join(lines) + "\n"


def output_folder(out: str | Path) -> Path:
    """Create the output folder before any work, or say in one line why it cannot be
    (a path below a regular file, /proc, a read-only mount): minutes of inference must not end in a traceback."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".affpipe-write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise FusionError(f"{out}: cannot write the output folder ({exc.strerror or exc})") from None
    return out


def write_submission(out: str | Path, preds: dict[str, np.ndarray]) -> list[Path]:
    out = output_folder(out)
    written = []
    for t, p in preds.items():
        path = out / f"{t}.txt"
        atomic_write_text(path, format_submission(p))
        written.append(path)
    return written


@dataclass
class PredictResult:
    out: Path
    files: list[Path]
    n_frames: int


def predict(run: str | Path, manifest: str | Path, cache: str | Path, out: str | Path, split: str = "test",
            device: str | None = None, progress: bool = False) -> PredictResult:
    """Write one submission file per trial of `split` from the run's best checkpoint.

    The raw (unclipped, 6-decimal) predictions also go to
    ``<run>/predictions/<split>/`` for `affpipe ensemble`.
    """
    output_folder(out)
    info, preds, _inputs = run_on_split(run, manifest, cache, split, with_labels=False, device=device,
                                        progress=progress, title="predict")
    write_predictions(info.path / "predictions" / split, preds)
    files = write_submission(out, preds)
    return PredictResult(Path(out), files, int(sum(p.shape[0] for p in preds.values())))


# -- validation ---------------------------------------------------------------------------------------
def expected_frames(manifest: str | Path, cache: str | Path, split: str,
                    config: dict[str, Any] | str | Path | None = None) -> dict[str, int]:
    """Trial -> decoded frame count (probe shard) for every trial of `split` in the manifest."""
    from pipeline.sources.manifest import read_manifest
    from pipeline.engine.reader import open_cache

    from .data import probe_lengths

    trials = [t for t in read_manifest(manifest) if t.split == split]
    if not trials:
        raise FusionError(f"{manifest}: no {split} trials")
    reader = open_cache(cache, trials, config)
    ids = [t.trial for t in trials]
    reader.require(["probe"], ids)
    return dict(zip(ids, probe_lengths(reader, ids)))


def check_file(path: Path, n_frames: int) -> list[str]:
    """Problems of one submission file (empty when it is sound)."""
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return [f"{path}:1: not UTF-8 text"]
    except OSError as exc:
        return [f"{path}: cannot read ({exc.strerror or exc})"]
    lines = text.splitlines()
    if not lines:
        return [f"{path}:1: empty file (expected header {HEADER!r} and {n_frames} lines)"]
    header = lines[0].lstrip("\ufeff").strip()
    if header != HEADER:
        problems.append(f"{path}:1: header is {lines[0]!r}, expected {HEADER!r}")
    body = lines[1:]
    bad = 0
    for i, line in enumerate(body, start=2):
        msg = _check_line(line)
        if msg:
            bad += 1
            if bad <= MAX_PROBLEMS_PER_FILE:
                problems.append(f"{path}:{i}: {msg}")
    if bad > MAX_PROBLEMS_PER_FILE:
        problems.append(f"{path}: {bad - MAX_PROBLEMS_PER_FILE} more bad line(s) not listed")
    if len(body) != n_frames:
        where = len(body) + 1
        problems.append(f"{path}:{where}: {len(body)} prediction line(s), the trial has {n_frames} frame(s) "
                        "(probe shard)")
    return problems


def _check_line(line: str) -> str | None:
    parts = line.split(",")
    if len(parts) != 2:
        return f"expected 2 comma-separated values, got {len(parts)} in {line!r}"
    for name, raw in zip(("valence", "arousal"), parts):
        try:
            v = float(raw)
        except ValueError:
            return f"{name} {raw.strip()!r} is not a number"
        if not np.isfinite(v):
            return f"{name} is {raw.strip()}"
        if not -1.0 <= v <= 1.0:
            return f"{name} {raw.strip()} is outside [-1, 1]"
    return None


def validate_submission(folder: str | Path, manifest: str | Path, cache: str | Path, split: str = "test",
                        config: dict[str, Any] | str | Path | None = None) -> list[str]:
    """Every problem of a submission folder, as ``file:line: message`` strings (empty = valid)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FusionError(f"{folder}: submission folder not found")
    frames = expected_frames(manifest, cache, split, config)
    problems: list[str] = []
    for t, n in frames.items():
        path = folder / f"{t}.txt"
        if not path.is_file():
            problems.append(f"{path}: missing (trial {t} of the {split} split, {n} frames)")
            continue
        problems.extend(check_file(path, n))
    for path in sorted(folder.glob("*.txt")):
        if path.stem not in frames:
            problems.append(f"{path}: not a {split} trial of {manifest}")
    return problems


__all__ = ["predict", "validate_submission", "write_submission", "format_submission", "check_file",
           "PredictResult", "HEADER"]

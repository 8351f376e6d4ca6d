"""`affpipe transcripts export`: the `asr` stage's words as files a person can read and correct.

Which shard belongs to a trial is decided by the cache reader (manifest + config, resolved
through the cache index, so the videos need not be here), so the export is always of the words
the text stage would read for that config, never of a stale shard left by other settings.
Trials whose `asr` shard is not in the cache are reported, not guessed; trials the stage skipped
because the manifest already has their transcript are listed apart. With ``manifest_out`` a copy of the manifest is written whose `transcript` column
points at the exported files for trials that had none: correct the files, extract with that
manifest, and the corrected transcripts win over recognition.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..sources.manifest import read_manifest, write_manifest
from ..engine.reader import open_cache
from ..engine.shards import read_shard
from .words import words_from_extras, write_transcript

FORMATS = ("json", "srt")


@dataclass
class ExportReport:
    written: dict[str, Path] = field(default_factory=dict)  # trial -> file
    empty: list[str] = field(default_factory=list)  # no words recognised (SRT: nothing written)
    missing: list[str] = field(default_factory=list)  # no asr shard for this config in the cache
    skipped: list[str] = field(default_factory=list)  # the manifest has their transcript: not recognised
    manifest: Path | None = None


def export_transcripts(manifest: str | Path, cache: str | Path, out: str | Path, fmt: str = "json",
                       config: Any = None, manifest_out: str | Path | None = None) -> ExportReport:
    """Write ``out/<trial>.<fmt>`` for every trial with a cached `asr` shard (see module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown transcript format {fmt!r} (use {' or '.join(FORMATS)})")
    trials = read_manifest(manifest)
    reader = open_cache(cache, trials, config)
    out = Path(out)
    report = ExportReport()
    for trial in trials:
        res = reader.status(trial.trial, "asr")
        if res.status != "cached" or res.path is None:
            report.missing.append(trial.trial)
            continue
        shard = read_shard(res.path)
        if shard.attrs.get("skipped"):
            report.skipped.append(trial.trial)
            continue
        words = words_from_extras(shard.extras)
        if not words:
            report.empty.append(trial.trial)
            if fmt == "srt":  # SubRip cannot say "no speech": an empty file is not a transcript
                continue
        source = {"stage": "asr", "key": shard.key, "backend": shard.attrs.get("backend"),
                  "model": shard.attrs.get("model"), "video": str(trial.video)}
        report.written[trial.trial] = write_transcript(out / f"{trial.trial}.{fmt}", words, source)
    if manifest_out is not None:
        filled = [t if t.transcript is not None or t.trial not in report.written
                  else dataclasses.replace(t, transcript=report.written[t.trial].resolve()) for t in trials]
        report.manifest = write_manifest(filled, manifest_out)
    return report

"""Recognised words: their shard layout, their grouping into segments, and JSON/SRT export.

One function, `transcript_segments`, turns stored words into the `Segment`s the text stage
embeds, and the exporters write exactly those segments, so a transcript exported with
`affpipe transcripts export` and read back through the manifest's `transcript` column gives the
text stage the same units it built from the `asr` shard (JSON keeps the word timings; SRT keeps
one cue per segment, so it only serves text granularity ``segment``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.transcripts import Segment, Word


@dataclass(frozen=True)
class AsrWord:
    """One recognised word on the video's time axis (seconds); `segment` = the speech region it came from."""

    start: float
    end: float
    text: str
    confidence: float
    segment: int = 0


def words_to_extras(words: list[AsrWord], regions: np.ndarray) -> dict[str, np.ndarray]:
    """Shard datasets of a transcript (none of them frame-keyed)."""
    return {
        "word_text": np.array([w.text for w in words], dtype=object),
        "word_times": np.array([[w.start, w.end] for w in words], dtype=np.float64).reshape(-1, 2),
        "word_confidence": np.array([w.confidence for w in words], dtype=np.float32),
        "word_segment": np.array([w.segment for w in words], dtype=np.int32),
        "speech_regions": np.asarray(regions, dtype=np.float64).reshape(-1, 2),
    }


def words_from_extras(extras: dict[str, Any]) -> list[AsrWord]:
    """The words of an `asr` shard (its `extras`), in time order."""
    texts = [str(t) for t in np.atleast_1d(extras.get("word_text", np.array([], dtype=object)))]
    times = np.asarray(extras.get("word_times", np.zeros((0, 2)))).reshape(-1, 2)
    conf = np.asarray(extras.get("word_confidence", np.zeros(0))).reshape(-1)
    seg = np.asarray(extras.get("word_segment", np.zeros(0, dtype=np.int32))).reshape(-1)
    if not (len(texts) == times.shape[0] == conf.shape[0] == seg.shape[0]):
        raise ValueError(f"asr shard word arrays disagree in length: text {len(texts)}, times {times.shape[0]}, "
                         f"confidence {conf.shape[0]}, segment {seg.shape[0]}")
    return [AsrWord(float(a), float(b), t, float(c), int(s))
            for t, (a, b), c, s in zip(texts, times, conf, seg)]


def _groups(words: list[AsrWord]) -> list[list[AsrWord]]:
    """Runs of consecutive words that share a speech region."""
    out: list[list[AsrWord]] = []
    for w in words:
        if out and out[-1][-1].segment == w.segment:
            out[-1].append(w)
        else:
            out.append([w])
    return out


def transcript_segments(words: list[AsrWord]) -> list[Segment]:
    """One `Segment` per speech region (consecutive words sharing `segment`), each with its words."""
    return [Segment(g[0].start, max(x.end for x in g), " ".join(x.text for x in g),
                    tuple(Word(x.start, x.end, x.text) for x in g)) for g in _groups(words)]


def to_json(words: list[AsrWord], source: dict[str, Any] | None = None) -> str:
    """Whisper-style ``{"segments": [{start, end, text, words: [{word, start, end, probability}]}]}``."""
    segments = [{"start": g[0].start, "end": max(x.end for x in g), "text": " ".join(x.text for x in g),
                 "words": [{"word": x.text, "start": x.start, "end": x.end, "probability": round(x.confidence, 4)}
                           for x in g]}
                for g in _groups(words)]
    return json.dumps({"source": source or {}, "segments": segments}, indent=1) + "\n"


def _srt_time(t: float) -> str:
    ms = int(round(t * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(words: list[AsrWord]) -> str:
    """SubRip, one cue per speech region (times rounded to milliseconds, as SRT stores them)."""
    cues = [f"{i}\n{_srt_time(s.start)} --> {_srt_time(s.end)}\n{s.text}\n"
            for i, s in enumerate(transcript_segments(words), start=1)]
    return "\n".join(cues)


def write_transcript(path: Path, words: list[AsrWord], source: dict[str, Any] | None = None) -> Path:
    """Write `words` as .json or .srt (by the suffix of `path`)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        text = to_json(words, source)
    elif path.suffix.lower() == ".srt":
        text = to_srt(words)
    else:
        raise ValueError(f"{path}: transcripts export as .json or .srt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path

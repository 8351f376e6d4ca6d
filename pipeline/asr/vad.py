"""Where to listen: speech regions from Silero VAD, cut into bounded, overlapping decode windows.

Why a neural VAD in front of the recogniser: pocketsphinx (like Whisper) turns anything it is
given into words; on synthetic music it produced runs of words with confidences up to 1.0, and
on digital silence it "heard" one. Silero VAD (the `silero-vad` package ships its weights)
found no speech in those signals, in white noise, or in silence, and found the one utterance of
every shared GRID/CREMA-D clip. So the recogniser only ever sees speech regions plus context.

Why bounded windows: a decode window never exceeds ``max_chunk_s + 2 * overlap_s`` seconds,
whatever the video's length, so recogniser memory is flat. Silero splits speech longer than
``max_chunk_s`` (at its longest internal pause, else hard). Where a region touches its neighbour
(a split inside speech) it is decoded with ``overlap_s`` of audio added on that side, so a word cut
by the split is still heard whole; at an edge Silero found (silence beyond) only
`EDGE_CONTEXT_S` is added, for an onset or tail the VAD trimmed. (A first version added the full
overlap everywhere: on 1-2 s utterances that more than doubled the audio decoded.) Stitching by time (`stitch`): windows are taken in order; a window keeps
its words whose midpoint lies before its right edge (the midpoint of the gap to the next region,
exactly the split point for a hard split) and at or after the end of the last word already kept.
So a word heard by two overlapping windows is kept once, and a word that straddles a hard split
is kept even when the two windows place it on different sides of the split (a plain
"midpoint in my half" rule lost "jacket" that way on a CREMA-D clip cut at 1.0 s).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .words import AsrWord

SAMPLE_RATE = 16000  # both recognisers and Silero VAD work on 16 kHz mono
#: Silero's own defaults, fixed here so a library default change cannot move cached results.
MIN_SPEECH_MS = 250
MIN_SILENCE_MS = 100
SPEECH_PAD_MS = 30
#: Audio added at a region edge that Silero found (silence beyond it): room for the word onset or
#: tail the VAD trimmed. Hard splits (speech on both sides) get the full `overlap_s` instead.
EDGE_CONTEXT_S = 0.3
#: Regions closer than this are one stretch of speech that Silero split for length.
_TOUCHING = int(0.05 * SAMPLE_RATE)


@dataclass(frozen=True)
class Window:
    """Samples [a, b) to decode; words with midpoint past `own_hi` (seconds, track time) are the next window's."""

    a: int
    b: int
    own_hi: float
    region: int


def silero_path() -> Path:
    """The TorchScript Silero VAD model inside the installed package (its file enters the cache key).

    Found without importing silero_vad, which imports torch: planning asks once per trial.
    """
    from ..models.weight_files import package_folder

    return package_folder("silero_vad") / "data" / "silero_vad.jit"


def load_vad() -> Any:
    import warnings

    from silero_vad import load_silero_vad

    with warnings.catch_warnings():  # deprecation notices of torch.jit.load and silero_vad, once per worker
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # importlib.resources.path inside silero_vad
        return load_silero_vad(onnx=False)


def speech_regions(samples: np.ndarray, model: Any, threshold: float, max_chunk_s: float) -> np.ndarray:
    """[R, 2] int64 sample spans of speech in a 16 kHz track (none for silence, noise, music)."""
    import torch
    from silero_vad import get_speech_timestamps

    if samples.size < 512:  # shorter than one VAD window
        return np.zeros((0, 2), dtype=np.int64)
    with torch.inference_mode():
        spans = get_speech_timestamps(torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)), model,
                                      threshold=threshold, sampling_rate=SAMPLE_RATE,
                                      min_speech_duration_ms=MIN_SPEECH_MS, min_silence_duration_ms=MIN_SILENCE_MS,
                                      speech_pad_ms=SPEECH_PAD_MS, max_speech_duration_s=max_chunk_s)
    return np.array([[s["start"], s["end"]] for s in spans], dtype=np.int64).reshape(-1, 2)


def decode_windows(regions: np.ndarray, n_samples: int, overlap_s: float) -> list[Window]:
    """One window per region, widened by `overlap_s` at splits, `EDGE_CONTEXT_S` elsewhere; right edges at gap midpoints."""
    regions = np.asarray(regions, dtype=np.int64).reshape(-1, 2)
    split_pad = int(round(overlap_s * SAMPLE_RATE))
    edge_pad = min(split_pad, int(round(EDGE_CONTEXT_S * SAMPLE_RATE)))
    out = []
    for i, (a, b) in enumerate(regions):
        left = split_pad if i > 0 and a - regions[i - 1][1] < _TOUCHING else edge_pad
        right = split_pad if i + 1 < len(regions) and regions[i + 1][0] - b < _TOUCHING else edge_pad
        hi = np.inf if i == len(regions) - 1 else (b + regions[i + 1][0]) / 2 / SAMPLE_RATE
        out.append(Window(max(0, int(a) - left), min(n_samples, int(b) + right), float(hi), i))
    return out


def stitch(window: Window, words: list[AsrWord], frontier: float) -> tuple[list[AsrWord], float]:
    """The words of `window` to keep after everything kept so far ended at `frontier` (see module docstring).

    Returns them (tagged with the window's region) and the new frontier.
    """
    kept = []
    for w in sorted(words, key=lambda x: (x.start, x.end)):
        mid = (w.start + w.end) / 2
        if frontier <= mid < window.own_hi:
            kept.append(AsrWord(w.start, w.end, w.text, w.confidence, window.region))
            frontier = max(frontier, w.end)
    return kept, frontier

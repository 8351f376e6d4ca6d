"""The `text` stage: sentence embeddings of a timed transcript, laid on the probe's frame grid.

Why segments, not frames: a spoken segment covers dozens to hundreds of frames with one
embedding, so copying it per frame would store the same 384 numbers over and over (an hour
at 30 fps is 108k rows). The shard keeps one float16 row per segment plus an int32 index per
frame; `expand_text` turns that into the per-frame matrix a trainer wants, on read.

Frame rule: frame t (time from the probe's decoder timestamps) belongs to the segment with
``start < time(t) <= end``; times are compared in whole microseconds so a frame that falls
exactly on a word boundary (1.44 s in GRID's 1/25000 s units vs 36 x 0.04 s) lands in one
segment deterministically instead of by float rounding. Where segments overlap, the one that
starts latest wins (ties: later in the file). A frame in no segment has valid = 0.

Where the words come from: the manifest's `transcript` file when the trial has one; otherwise,
with ``asr_fallback`` (the default), the words the `asr` stage recognised (one segment per
speech region, each with its timed words, exactly what `affpipe transcripts export` writes).
A trial with neither (``asr_fallback: false``, or no speech) is legitimate: it gets an
all-invalid output with the model's width, not an error. The stage graph always orders `asr`
before `text`; with ``asr_fallback: false`` text keys do not depend on it and it is not read.

The model is loaded only when a trial has text to embed: the width of an empty output is read
from the model folder's module configs (`declared_dim`), so an extract of transcript-less
trials never loads the transformer. Loading silences transformers' "Loading weights" progress
bars (one per worker otherwise).

Identical texts are embedded once and shared, so the same word always maps to the very same
vector (batched encoding with different padding would otherwise differ in the last bits).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..asr.words import transcript_segments, words_from_extras
from ..sources.manifest import Trial
from ..engine.resources import get_model, resolve_device
from ..models.text_encoder import (DEFAULT_MODEL, declared_dim, load_encoder, model_dim, model_weight_files,
                                   resolve_model_path, weights_identity)
from ..engine.stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage
from ..sources.transcripts import Segment, TranscriptError, read_transcript

GRANULARITIES = ("segment", "word")


@register_stage
class TextStage(Stage):
    """Per-segment sentence embeddings of the trial's transcript (see module docstring)."""

    name = "text"
    version = 1
    inputs = ("probe", "asr")  # per instance: ("probe",) when asr_fallback is off

    @classmethod
    def frame_arrays(cls, shard: ShardData) -> tuple[np.ndarray, np.ndarray]:
        """Segment embeddings expanded to one row per frame (the shard stores them once per segment)."""
        return expand_text(shard)
    gpu_capable = True

    @dataclass
    class Settings:
        model: str = DEFAULT_MODEL
        granularity: str = "segment"  # "segment": one embedding per cue; "word": one per timed word
        asr_fallback: bool = True  # trials without a manifest transcript use the asr stage's words
        batch_size: int = field(default=64, metadata=NOT_IN_KEY)
        device: str = field(default="auto", metadata=NOT_IN_KEY)

        def __post_init__(self) -> None:
            # here, not in the stage's __init__: `affpipe config show` must refuse what extract refuses
            if self.granularity not in GRANULARITIES:
                raise ValueError(f"text granularity {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
            if int(self.batch_size) < 1:
                raise ValueError(f"text batch_size must be >= 1, got {self.batch_size}")
            if not isinstance(self.asr_fallback, bool):
                raise ValueError(f"text asr_fallback must be true or false, got {self.asr_fallback!r}")

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.inputs = ("probe", "asr") if self.settings.asr_fallback else ("probe",)

    # -- key ---------------------------------------------------------------------
    def input_files(self, trial: Trial) -> list[Path]:
        # The model's weights are an input like any file: replacing them must recompute.
        files = [trial.transcript] if trial.transcript else []
        return files + model_weight_files(self.settings.model)

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        return {"trial": trial.trial, "has_transcript": trial.transcript is not None}

    # -- model -------------------------------------------------------------------
    def model(self) -> Any:
        device = resolve_device(self.settings.device)
        name = self.settings.model
        return get_model(("sentence-transformers", resolve_model_path(name), device),
                         lambda: load_encoder(name, device))

    def dim(self) -> int:
        """The embedding width; loads the model only where its folder does not declare it."""
        declared = get_model(("sentence-transformers-dim", resolve_model_path(self.settings.model)),
                             lambda: declared_dim(self.settings.model))
        return declared if declared is not None else model_dim(self.model())

    # -- compute -------------------------------------------------------------------
    def _segments(self, trial: Trial, upstream: dict[str, ShardData]) -> tuple[list[Segment], str | None]:
        """The trial's timed segments and where they came from (manifest file, asr shard, none)."""
        path = trial.transcript
        if path is None:
            asr = upstream.get("asr")
            if asr is None:
                return [], None
            return transcript_segments(words_from_extras(asr.extras)), f"asr {asr.attrs.get('backend')} {asr.key}"
        if not Path(path).is_file():
            raise StageError("missing-file", f"{path}: transcript file not found (trial {trial.trial})")
        try:
            return read_transcript(path), str(path)
        except TranscriptError as exc:
            raise StageError("bad-transcript", str(exc)) from None

    def _units(self, trial: Trial, upstream: dict[str, ShardData]) -> tuple[list[Segment], str | None]:
        """The timed units to embed: the segments, or their words; and their source."""
        segments, source = self._segments(trial, upstream)
        path = source
        if self.settings.granularity == "segment":
            return segments, source
        units = []
        for seg in segments:
            if seg.words is None:
                raise StageError("no-word-timing", f"{path}:{seg.line}: segment has no word timings; "
                                                   "use text granularity 'segment' or a word-timed transcript")
            units.extend(Segment(w.start, w.end, w.text, (w,), w.line) for w in seg.words)
        return units, source

    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        probe = upstream["probe"]
        units, source = self._units(trial, upstream)
        texts = [u.text for u in units]
        unique = sorted(set(texts))
        model = self.model() if unique else None  # lazily: transcript-less trials need only the width
        dim = model_dim(model) if model is not None else self.dim()
        emb = np.zeros((len(units), dim), dtype=np.float16)
        if model is not None:
            vecs = model.encode(unique, batch_size=int(self.settings.batch_size), convert_to_numpy=True,
                                show_progress_bar=False)
            row = {t: i for i, t in enumerate(unique)}
            emb = np.asarray(vecs, dtype=np.float32)[[row[t] for t in texts]].astype(np.float16)
        intervals = np.array([[u.start, u.end] for u in units], dtype=np.float64).reshape(-1, 2)
        index = assign_frames(np.asarray(probe.time, dtype=np.float64), intervals)

        return StageOutput(
            features=None,
            valid=index >= 0,
            extras={
                "segment_embeddings": emb,
                "segment_intervals": intervals,
                "segment_text": np.array(texts, dtype=object),
                "segment_index": index,
            },
            attrs={
                "model": self.settings.model,
                "dim": dim,
                "granularity": self.settings.granularity,
                "weights": weights_identity(self.settings.model),
                "n_segments": len(units),
                "n_frames_with_text": int((index >= 0).sum()),
                "transcript": source,
                # Only this extra has one row per frame; the others have one per segment, even
                # when S happens to equal n (readers slicing rows must not slice those).
                "frame_keyed_extras": ["segment_index"],
            },
        )


def assign_frames(time: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """segment_index [n] int32: the segment with start < time <= end (latest start wins), else -1."""
    n = time.shape[0]
    index = np.full(n, -1, dtype=np.int32)
    if n == 0 or intervals.shape[0] == 0:
        return index
    t_us = np.round(time * 1e6).astype(np.int64)
    order_t = np.argsort(t_us, kind="stable")  # tolerate a non-monotonic grid
    sorted_t = t_us[order_t]
    bounds = np.round(intervals * 1e6).astype(np.int64)
    lo = np.searchsorted(sorted_t, bounds[:, 0], side="right")  # first frame with t > start
    hi = np.searchsorted(sorted_t, bounds[:, 1], side="right")  # first frame with t > end
    for i in np.lexsort((np.arange(len(bounds)), bounds[:, 0])):  # by start, then file order
        if hi[i] > lo[i]:
            index[order_t[lo[i]:hi[i]]] = i
    return index


def expand_text(shard: ShardData | StageOutput) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame features [n, dim] float32 (zero where no segment) and valid [n] from a text shard.

    Works on a shard read whole or on a row window (`segment_index` is sliced, the per-segment
    arrays are not).
    """
    index = np.asarray(shard.extras["segment_index"]).astype(np.int64)
    emb = np.asarray(shard.extras["segment_embeddings"])
    dim = int(emb.shape[1]) if emb.ndim == 2 else int(shard.attrs["dim"])
    valid = index >= 0
    features = np.zeros((index.shape[0], dim), dtype=np.float32)
    if valid.any():
        features[valid] = emb[index[valid]].astype(np.float32)
    return features, valid

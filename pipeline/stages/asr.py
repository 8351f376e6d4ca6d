"""The `asr` stage: word-level timed transcripts (word, start, end, confidence) by speech recognition.

Why: the text modality needs timed transcripts and Aff-Wild2 ships none (RJCMA and GRJCA
obtained theirs by speech recognition). The text stage reads this stage's words for every
trial whose manifest row has no `transcript` (a manifest transcript always wins), and
`affpipe transcripts export` writes them as JSON/SRT for a person to inspect or correct.

Audio: decoded exactly as the audio stage decodes it (`pipeline.media.decode.read_audio`, mono,
16 kHz, placed on the video's time axis), so word times share the probe's clock. Then Silero
VAD finds speech, long speech is cut into bounded overlapping windows and stitched by time
(`pipeline.asr.vad`), and each window goes to the recogniser (`pipeline.asr.backends`).
Recogniser memory is flat in the video's length; the decoded track is not (bench/asr.py measured
peak RSS growing ~12 MiB a minute with the whole-track decode), as in the audio stage.

Edge cases: silence, noise and music give no speech regions and so no words; a video without
an audio track gives an empty, valid transcript (``has_audio = False``), not a failure. A word
the recogniser places before video time 0 (audio that starts before the video stream, as in
CREMA-D's FLVs at -0.027 s) is clamped to start at 0, because transcripts cannot hold negative
times.

Shard: no per-frame arrays; extras `word_text`, `word_times` [W, 2] (seconds), `word_confidence`,
`word_segment` (speech region of each word, the text stage's "segment") and `speech_regions`
[R, 2] (seconds); attrs say backend, model, weights and counts. The key covers the backend,
model, every setting that changes words, and the model files (the pocketsphinx wheel's model,
the Silero VAD file, a faster-whisper model.bin).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..asr import backends, vad
from ..asr.words import AsrWord, words_to_extras
from ..media.decode import read_audio
from ..sources.manifest import Trial
from ..engine.resources import get_model, resolve_device
from ..engine.stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage

BACKENDS = ("pocketsphinx", "faster-whisper")


@register_stage
class AsrStage(Stage):
    """Timed words of the trial's speech (see module docstring)."""

    name = "asr"
    version = 1
    inputs = ("probe",)
    gpu_capable = False  # set per instance: only faster-whisper uses a GPU

    @dataclass
    class Settings:
        backend: str = "pocketsphinx"  # pocketsphinx | faster-whisper
        model: str = ""  # faster-whisper: CTranslate2 model folder (else $AFFPIPE_WHISPER_MODEL); pocketsphinx: ""
        language: str = "en"  # faster-whisper only; the pocketsphinx model is US English
        beam_size: int = 5  # faster-whisper only
        compute_type: str = "default"  # faster-whisper (CTranslate2) precision: default, int8, float16, ...
        vad_threshold: float = 0.5  # Silero speech probability above which audio is speech
        max_chunk_s: float = 30.0  # longest speech region decoded at once (longer speech is split)
        overlap_s: float = 1.0  # audio added on each side of a split inside speech before decoding
        min_confidence: float = 0.0  # words below this confidence are dropped
        #: "untranscribed": only trials without a manifest transcript (the text stage reads the manifest's
        #: words for the others, so recognising them would only cost time); "all": every trial
        trials: str = "untranscribed"
        device: str = field(default="auto", metadata=NOT_IN_KEY)

        def __post_init__(self) -> None:
            if self.backend not in BACKENDS:
                raise ValueError(f"asr.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
            if self.backend == "pocketsphinx" and self.model:
                raise ValueError("asr.model is for faster-whisper; pocketsphinx uses the en-US model in its wheel")
            if self.backend == "pocketsphinx" and self.language != "en":
                raise ValueError(f"asr backend pocketsphinx is US English only, asr.language is {self.language!r}")
            if not 0.0 < float(self.vad_threshold) < 1.0:
                raise ValueError(f"asr.vad_threshold must be in (0, 1), got {self.vad_threshold}")
            if float(self.max_chunk_s) < 1.0:
                raise ValueError(f"asr.max_chunk_s must be >= 1 s, got {self.max_chunk_s}")
            if not 0.0 <= float(self.overlap_s) <= float(self.max_chunk_s):
                raise ValueError(f"asr.overlap_s must be in [0, max_chunk_s], got {self.overlap_s}")
            if int(self.beam_size) < 1:
                raise ValueError("asr.beam_size must be >= 1")
            if self.trials not in ("untranscribed", "all"):
                raise ValueError(f"asr.trials must be 'untranscribed' or 'all', got {self.trials!r}")

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.gpu_capable = self.settings.backend == "faster-whisper"

    def _skips(self, trial: Trial) -> bool:
        return self.settings.trials == "untranscribed" and trial.transcript is not None

    # -- key ---------------------------------------------------------------------
    def trial_params(self, trial: Trial) -> dict[str, Any]:
        return {"trial": trial.trial, "skipped": self._skips(trial)}

    def input_files(self, trial: Trial) -> list[Path]:
        if self._skips(trial):
            return []  # nothing is read: an empty transcript, so a broken video cannot block text
        files = [trial.video, vad.silero_path()]
        if self.settings.backend == "pocketsphinx":
            files += backends.pocketsphinx_model_files()
        else:
            try:  # the model's content is part of what the words depend on
                files.append(backends.resolve_whisper_model(self.settings.model) / "model.bin")
            except StageError:
                pass  # reported by run(), per trial, with where to get a model
        return files

    # -- models ------------------------------------------------------------------
    def recognizer(self) -> Any:
        """The backend, loaded once per worker thread (decoders keep per-utterance state)."""
        s = self.settings
        thread = threading.get_ident()
        if s.backend == "pocketsphinx":
            return get_model(("asr-pocketsphinx", thread), backends.PocketSphinx)
        model_dir = backends.resolve_whisper_model(s.model)
        device = resolve_device(s.device)
        compute_type = s.compute_type
        return get_model(("asr-faster-whisper", str(model_dir), device, compute_type, thread),
                         lambda: backends.FasterWhisper(model_dir, s.language, int(s.beam_size), compute_type, device))

    # -- compute -------------------------------------------------------------------
    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        s = self.settings
        if self._skips(trial):
            return StageOutput(features=None, valid=None, extras=words_to_extras([], np.zeros((0, 2))),
                               attrs={"backend": s.backend, "skipped": "the manifest has a transcript",
                                      "frame_keyed_extras": [], "n_words": 0})
        recognizer = self.recognizer()  # first: a missing model is a config error, even for silent videos
        attrs: dict[str, Any] = {"backend": s.backend, **recognizer.identity(), "sample_rate": vad.SAMPLE_RATE,
                                 "vad": "silero-vad", "frame_keyed_extras": []}
        try:
            track = read_audio(trial.video, vad.SAMPLE_RATE)
        except StageError as exc:
            if exc.kind != "no-audio":
                raise
            track = None
        attrs["has_audio"] = track is not None
        if track is None:
            attrs.update(audio_start=None, audio_seconds=0.0, speech_seconds=0.0, n_words=0)
            return StageOutput(features=None, valid=None, extras=words_to_extras([], np.zeros((0, 2))), attrs=attrs)
        words, regions = transcribe_track(track.samples, recognizer, s)
        shift = track.start
        words = [AsrWord(max(0.0, w.start + shift), max(0.0, w.end + shift), w.text, w.confidence, w.segment)
                 for w in words]
        region_times = regions / vad.SAMPLE_RATE + shift
        attrs.update(audio_start=track.start, audio_seconds=track.duration,
                     speech_seconds=float((regions[:, 1] - regions[:, 0]).sum() / vad.SAMPLE_RATE),
                     n_words=len(words))
        return StageOutput(features=None, valid=None, extras=words_to_extras(words, region_times), attrs=attrs)


def transcribe_track(samples: np.ndarray, recognizer: Any, settings: Any) -> tuple[list[AsrWord], np.ndarray]:
    """Words (track time, seconds) and speech regions (samples) of a whole 16 kHz track.

    Speech regions come from Silero VAD; each is decoded in its widened window and the windows
    are stitched by time (`pipeline.asr.vad.stitch`). Words under `min_confidence` are dropped
    before stitching, so a confident word in the overlap is not shadowed by a dropped one.
    """
    model = get_model(("silero-vad", str(vad.silero_path()), threading.get_ident()), vad.load_vad)
    regions = vad.speech_regions(samples, model, float(settings.vad_threshold), float(settings.max_chunk_s))
    words: list[AsrWord] = []
    frontier = -np.inf
    for win in vad.decode_windows(regions, len(samples), float(settings.overlap_s)):
        heard = [w for w in recognizer.transcribe(samples[win.a:win.b], win.a / vad.SAMPLE_RATE)
                 if w.confidence >= float(settings.min_confidence)]
        kept, frontier = vad.stitch(win, heard, frontier)
        words.extend(kept)
    return words, regions

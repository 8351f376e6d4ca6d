"""Recognisers: one window of 16 kHz mono audio in, timed words out.

- `PocketSphinx`: CMU PocketSphinx 5 with the US-English acoustic model, 3-gram language model
  and CMUdict shipped inside the `pocketsphinx` wheel, so it runs offline everywhere. Words
  come from the decoder's best-path segmentation (10 ms frames); confidence is the word's
  posterior probability from the lattice. Fillers (``<s>``, ``<sil>``, ``[NOISE]``...) are
  dropped and alternate-pronunciation markers (``jacket(2)``) removed. Cepstral mean
  normalisation is live in PocketSphinx and would carry over from whatever the worker decoded
  before; it is reset to the model's initial value for every window, so a trial's words do not
  depend on which trials the same worker processed first.
- `FasterWhisper`: a CTranslate2 Whisper model from a local folder (`asr.model` or
  ``$AFFPIPE_WHISPER_MODEL``), ``word_timestamps=True``, its own VAD off (ours runs first),
  ``condition_on_previous_text=False`` (each window stands alone, as our stitching assumes).
  Confidence is Whisper's word probability. `faster_whisper` is imported only when used.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..engine.stage import StageError
from ..models.weights import WeightsSource, memo_sha256
from .vad import SAMPLE_RATE
from .words import AsrWord

WHISPER_ENV = "AFFPIPE_WHISPER_MODEL"


def _whisper_folder_problem(path: Path) -> str | None:
    if (path / "model.bin").is_file():
        return None
    return "does not exist" if not path.exists() else "has no model.bin, so is not a CTranslate2 model folder"


WHISPER_MODEL = WeightsSource(
    "faster-whisper model folder",
    "get one with `ct2-transformers-converter --model openai/whisper-small --output_dir DIR "
    "--copy_files tokenizer.json --quantization int8` (package ctranslate2 + transformers) or copy a "
    "ready folder such as Systran/faster-whisper-small from the Hugging Face hub (and `pip install faster-whisper`)",
    stage="asr", setting="model", env=WHISPER_ENV, kind="folder", problem=_whisper_folder_problem)

_ALT_PRON = re.compile(r"\(\d+\)$")


# -- pocketsphinx -----------------------------------------------------------------------------

def pocketsphinx_model_files() -> list[Path]:
    """Acoustic model folder, language model and dictionary shipped in the wheel (fingerprinted into the key)."""
    from pocketsphinx import get_model_path

    root = Path(get_model_path())
    return [root / "en-us" / "en-us", root / "en-us" / "en-us.lm.bin", root / "en-us" / "cmudict-en-us.dict"]


class PocketSphinx:
    """PocketSphinx decoder with the packaged en-US models (see module docstring)."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        hmm, lm, dic = pocketsphinx_model_files()
        self.decoder = Decoder(hmm=str(hmm), lm=str(lm), dict=str(dic), samprate=SAMPLE_RATE, loglevel="FATAL")
        self.frame_rate = int(self.decoder.get_config()["frate"])
        self.initial_cmn = self.decoder.get_cmn()

    def identity(self) -> dict[str, str]:
        import importlib.metadata as md

        return {"model": "en-us (shipped in the pocketsphinx wheel)", "weights": f"pocketsphinx {md.version('pocketsphinx')}"}

    def transcribe(self, samples: np.ndarray, offset: float) -> list[AsrWord]:
        """Words of one window; `offset` = track time of samples[0]."""
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        d = self.decoder
        d.set_cmn(self.initial_cmn)
        d.start_utt()
        d.process_raw(pcm.tobytes(), full_utt=True)
        d.end_utt()
        out = []
        for seg in d.seg():
            word = seg.word
            if word.startswith(("<", "[", "+")):
                continue
            out.append(AsrWord(offset + seg.start_frame / self.frame_rate, offset + (seg.end_frame + 1) / self.frame_rate,
                               _ALT_PRON.sub("", word), float(seg.prob)))
        return out


# -- faster-whisper ---------------------------------------------------------------------------

def resolve_whisper_model(setting: str | None) -> Path:
    """The CTranslate2 model folder from the setting or the env var; `missing-weights` when absent."""
    return WHISPER_MODEL.resolve(setting).resolve()


def whisper_words(segments: Iterable[Any], offset: float) -> list[AsrWord]:
    """faster-whisper segments (each with `.words` of `.start`, `.end`, `.word`, `.probability`) to `AsrWord`s.

    Whisper words carry their leading space and punctuation (" jacket."); the space is dropped,
    the punctuation kept (sentence embeddings use it). Words that are empty after stripping are dropped.
    """
    out = []
    for seg in segments:
        for w in seg.words or ():
            text = str(w.word).strip()
            if text and w.start is not None and w.end is not None:
                out.append(AsrWord(offset + float(w.start), offset + float(w.end), text, float(w.probability)))
    return out


class FasterWhisper:
    """faster-whisper on a local CTranslate2 model folder (see module docstring)."""

    name = "faster-whisper"

    def __init__(self, model_dir: Path, language: str, beam_size: int, compute_type: str, device: str) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise StageError("missing-dependency", "asr backend faster-whisper needs the package: "
                                                   "`pip install faster-whisper`") from None
        self.model_dir = model_dir
        self.language = language
        self.beam_size = beam_size
        self.model = WhisperModel(str(model_dir), device=device, compute_type=compute_type, local_files_only=True)

    def identity(self) -> dict[str, str]:
        return {"model": str(self.model_dir), "weights": memo_sha256(self.model_dir / "model.bin")}

    def transcribe(self, samples: np.ndarray, offset: float) -> list[AsrWord]:
        segments, _info = self.model.transcribe(np.ascontiguousarray(samples, dtype=np.float32), language=self.language,
                                                beam_size=self.beam_size, word_timestamps=True, vad_filter=False,
                                                condition_on_previous_text=False)
        return whisper_words(segments, offset)

"""The `audio` stage: one audio feature row per decoded video frame (MFCC, VGGish log-mel, VGGish).

Alignment: the audio is decoded with decord and placed on the video's time axis
(`pipeline.media.decode.read_audio`: video time t plays sample round((t - start) * sr);
the start offset comes from the stream timestamps, so a track that starts late or
early lands on the right frames). Frame i's time t_i is the probe's decoder
timestamp, so variable frame rate is handled by time, not index.

Models (``settings.model``):
- ``mfcc`` (39-d, LFAN): 13 MFCCs from 40 HTK mel bands (25 ms Hann window,
  10 ms hop, 512-point FFT, log(mel + 1e-6), orthonormal DCT-II), plus deltas and
  delta-deltas (torchaudio ComputeDeltas, window 5). Row j is centred at audio
  time j * 10 ms; frame i takes row round((t_i - start) / 0.01), LFAN's
  round(i / fps / 0.01) generalised to real timestamps and audio offsets.
- ``logmel`` (96 x 64 = 6144-d, float16, RJCMA): VGGish's front end
  (`pipeline.models.vggish.log_mel`), one 0.96 s patch of 96 rows per frame. Choice:
  the patch is CENTRED on the frame time (rows j0 .. j0+95 with the span's
  centre nearest t_i), so a frame sees the speech around it. The uncentred
  framing (patch i starting at frame i's time, what VGGish run at hop 1/fps
  from the track start gives, as in LFAN) lets a frame see only the 0.96 s that
  follow it; centring shifts every feature 0.48 s earlier than that.
- ``vggish`` (128-d): the VGGish network on that same centred patch, i.e. a
  0.96 s window with hop = the frame period, as LFAN used. ``embedding``
  selects the output: ``linear`` (default, version 2 on) is the last layer
  before any activation, as RJCMA's preprocessing (ReLU commented out) and
  ABAW2's slim model use; ``relu`` is torchvggish's forward (version 1's only
  output). AudioSet's PCA/quantisation post-processing is off, as in both seeds.

Edges (audio stage version 2): windows are padded at the track's edges as the
reference front ends do, so a frame is invalid only when it has no audio. MFCC
rows use torchaudio's ``center=True`` with reflect padding (librosa's default, as
LFAN's MFCCs); logmel/vggish patches see silence (zero samples, VGGish's log-mel of
digital silence) beyond either end. Reflection over 0.48 s would invent speech;
over MFCC's 25 ms it is the usual choice. Version 1 required the whole window
inside the samples, so frame 0 never had audio (and the first and last ~0.48 s
for logmel/vggish).

valid[i] = 1 only when frame i's time falls inside the decoded samples (its centre
sample exists) and the part of its window inside the samples is not digital
silence (peak below `SILENCE_PEAK`: encoder padding, an empty track). Invalid rows
are zeros. A video without an audio track is legitimate (a silent video): every
row is invalid and ``has_audio = False``; not an error.

Long audio is processed in blocks of `BLOCK_ROWS` 10 ms rows (block edges carry
enough context that blockwise and whole-track results agree to float rounding,
~1e-7; the block size is fixed, so results are reproducible).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..models import vggish_params as vg
from ..media.decode import AudioTrack, read_audio
from ..sources.manifest import Trial
from ..engine.resources import get_model, resolve_device
from ..engine.stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage

MODELS = ("mfcc", "logmel", "vggish")


def _vggish():
    """`pipeline.models.vggish` (torch), imported when audio is computed, not when settings are checked."""
    from ..models import vggish

    return vggish

DIMS = {"mfcc": 39, "logmel": vg.PATCH_FRAMES * vg.N_MELS, "vggish": vg.EMBEDDING_DIM}
WINDOW_S = 0.025
HOP_S = 0.010
N_MFCC = 13
N_MELS_MFCC = 40
MFCC_FFT = 512
DELTA_WIN = 5
#: A window whose absolute sample peak stays below one 16-bit step (-90 dBFS) is digital silence:
#: no recording's noise floor is that low, a decoder's rendering of zeros is (MP3: ~1e-13).
#: Version 1 used 1e-4 (-80 dBFS), which also rejected the quiet onset of real recordings
#: (CREMA-D 1001_DFA_FEA_XX's first 40 ms peak at 8.5e-5).
SILENCE_PEAK = 1.0 / 32768
#: 10 ms rows computed at once (10 minutes): bounds the STFT's memory on long videos.
BLOCK_ROWS = 60_000


# -- helpers -------------------------------------------------------------------------

def _loud_prefix(samples: np.ndarray) -> np.ndarray:
    """cs[k] = number of non-silent samples in samples[:k]; a window [a, b) is silent iff cs[b] == cs[a]."""
    return np.concatenate([[0], np.cumsum(np.abs(samples) >= SILENCE_PEAK, dtype=np.int64)])


def _covered(centre: np.ndarray, a: np.ndarray, b: np.ndarray, n: int, loud: np.ndarray) -> np.ndarray:
    """Frames with audio: centre sample inside [0, n) and some non-silent sample in [a, b) ∩ [0, n).

    The window may reach past either end of the track; the features see padding there.
    """
    ok = (centre >= 0) & (centre < n)
    a, b = np.clip(a, 0, n), np.clip(b, 0, n)
    out = np.zeros(a.shape, dtype=bool)
    out[ok] = loud[b[ok]] > loud[a[ok]]
    return out


def _zero_padded(samples: np.ndarray, a: int, b: int, pad: int) -> np.ndarray:
    """Samples [a, b) of `samples` with `pad` zeros before and after it (no copy of the whole track)."""
    n = len(samples)
    lo, hi = max(a - pad, 0), min(b - pad, n)
    out = np.zeros(b - a, dtype=np.float32)
    if hi > lo:
        out[lo + pad - a:hi + pad - a] = samples[lo:hi]
    return out


def _mfcc_transforms(sr: int) -> tuple[Any, Any]:
    import torchaudio

    win, hop = int(round(WINDOW_S * sr)), int(round(HOP_S * sr))
    mfcc = torchaudio.transforms.MFCC(
        sample_rate=sr, n_mfcc=N_MFCC, dct_type=2, norm="ortho", log_mels=True,
        melkwargs=dict(n_fft=max(MFCC_FFT, win), win_length=win, hop_length=hop, n_mels=N_MELS_MFCC,
                       center=True, pad_mode="reflect", mel_scale="htk", f_min=0.0, f_max=sr / 2),
    )
    deltas = torchaudio.transforms.ComputeDeltas(win_length=DELTA_WIN)
    return mfcc.eval(), deltas


def mfcc_rows(samples: np.ndarray, sr: int, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """[T, 39] MFCC + deltas + delta-deltas, row j centred on sample j * hop (T = 1 + n // hop)."""
    import torch

    mfcc, deltas = get_model(("audio-mfcc", sr), lambda: _mfcc_transforms(sr))
    hop = int(round(HOP_S * sr))
    n = len(samples)
    total = 1 + n // hop
    reflect = max(MFCC_FFT, int(round(WINDOW_S * sr))) // 2 + 1
    if n < reflect:  # reflect padding needs more samples than half the FFT: complete a tiny track with silence
        samples = _zero_padded(samples, 0, reflect, 0)
        n = reflect
    # Context rows at block edges: 2 for each delta order, plus the STFT's half-window
    # (rows near a slice edge see its reflect padding, not the real neighbours).
    margin = 2 * (DELTA_WIN // 2) + int(np.ceil(max(MFCC_FFT, WINDOW_S * sr) / 2 / hop)) + 1
    out = np.empty((total, 3 * N_MFCC), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    with torch.inference_mode():
        for r0 in range(0, total, block_rows):
            r1 = min(total, r0 + block_rows)
            c0, c1 = max(0, r0 - margin), min(total, r1 + margin)
            a, b = c0 * hop, min(n, (c1 - 1) * hop + 1) if c1 < total else n
            c = mfcc(x[a:b])  # [13, rows of the slice], slice row k = global row c0 + k
            d1 = deltas(c)
            d2 = deltas(d1)
            feats = torch.cat([c, d1, d2], dim=0).T.numpy()
            out[r0:r1] = feats[r0 - c0:r1 - c0]
    return out


#: Samples in one log-mel patch (96 rows of 10 ms, 25 ms windows): 15600 = 0.975 s.
PATCH_SPAN = (vg.PATCH_FRAMES - 1) * vg.HOP + vg.WINDOW
#: Log-mel rows of silence before and after the track: half a patch plus rounding margin, so the
#: patch centred on any sample of the track fits in the padded table.
PATCH_PAD_ROWS = vg.PATCH_FRAMES // 2 + 4


def log_mel_rows(samples: np.ndarray, block_rows: int = BLOCK_ROWS, pad_rows: int = 0) -> np.ndarray:
    """VGGish log-mel rows of the track with `pad_rows` rows of zero samples before and after it: [R, 64].

    Row j covers padded samples [j*160, j*160 + 400); computed in blocks (bounded memory).
    """
    pad = pad_rows * vg.HOP
    n = len(samples) + 2 * pad
    total = 0 if n < vg.WINDOW else 1 + (n - vg.WINDOW) // vg.HOP
    out = np.empty((total, vg.N_MELS), dtype=np.float32)
    for r0 in range(0, total, block_rows):
        r1 = min(total, r0 + block_rows)
        out[r0:r1] = _vggish().log_mel(_zero_padded(samples, r0 * vg.HOP, (r1 - 1) * vg.HOP + vg.WINDOW, pad))
    return out


def patch_starts(track: AudioTrack, times: np.ndarray) -> np.ndarray:
    """First log-mel row (of the unpadded track; negative before its start) of the patch centred on each time."""
    centre = (np.asarray(times, dtype=np.float64) - track.start) * track.sample_rate
    return np.rint((centre - PATCH_SPAN / 2) / vg.HOP).astype(np.int64)


# -- the stage ----------------------------------------------------------------------

@register_stage
class AudioStage(Stage):
    """Per-frame audio features aligned by timestamps (see module docstring)."""

    name = "audio"
    #: 2: the vggish embedding is the pre-activation output by default (was post-ReLU), and windows
    #: are padded at the track's edges (frame 0 has audio).
    version = 2
    inputs = ("probe",)
    gpu_capable = False  # set per instance: only the VGGish network benefits from a GPU

    @dataclass
    class Settings:
        model: str = "mfcc"  # mfcc | logmel | vggish
        weights: str | None = None  # VGGish checkpoint (vggish-10086976.pth); else $AFFPIPE_VGGISH_WEIGHTS
        embedding: str = "linear"  # vggish only: linear (pre-activation, as the seeds) | relu (torchvggish)
        sample_rate: int = 16000
        batch_size: int = field(default=64, metadata=NOT_IN_KEY)
        device: str = field(default="auto", metadata=NOT_IN_KEY)

        def __post_init__(self) -> None:
            if self.model not in MODELS:
                raise ValueError(f"audio.model must be one of {', '.join(MODELS)}, got {self.model!r}")
            if int(self.sample_rate) < 8000:
                raise ValueError(f"audio.sample_rate must be >= 8000, got {self.sample_rate}")
            if self.model != "mfcc" and int(self.sample_rate) != vg.SAMPLE_RATE:
                raise ValueError(f"audio.model {self.model!r} is defined at {vg.SAMPLE_RATE} Hz; "
                                 f"audio.sample_rate is {self.sample_rate}")
            if self.embedding not in vg.EMBEDDINGS:
                raise ValueError(f"audio.embedding must be one of {', '.join(vg.EMBEDDINGS)}, got {self.embedding!r}")
            if int(self.batch_size) < 1:
                raise ValueError("audio.batch_size must be >= 1")

    def __init__(self, settings: Any = None):
        super().__init__(settings)
        self.gpu_capable = self.settings.model == "vggish"

    def dim(self) -> int:
        return DIMS[self.settings.model]

    def input_files(self, trial: Trial) -> list[Path]:
        files = [trial.video]
        if self.settings.model == "vggish":
            from ..models.weight_files import vggish_weights_file  # no torch: planning asks once per trial

            weights = vggish_weights_file(self.settings.weights)  # its content is what the features depend on
            if weights is not None:  # else reported by run(), per trial, with download instructions
                files.append(weights)
        return files

    # -- compute ---------------------------------------------------------------------------------
    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        s = self.settings
        probe = upstream["probe"]
        times = np.asarray(probe.time, dtype=np.float64)
        n = probe.n_frames
        attrs: dict[str, Any] = {"model": s.model, "dim": self.dim(), "weights": "none",
                                 "sample_rate": int(s.sample_rate),
                                 "window_s": WINDOW_S if s.model == "mfcc" else vg.PATCH_FRAMES * HOP_S,
                                 "alignment": "row round((t - audio_start) / 0.01), 10 ms hop"
                                 if s.model == "mfcc" else "0.96 s patch centred on t, hop = frame period"}
        model = None
        if s.model == "vggish":  # weights first: a missing file is a config error, even for silent videos
            path = _vggish().resolve_weights(s.weights)
            device = resolve_device(s.device)
            model, sha = get_model(("audio-vggish", str(path.resolve()), device, s.embedding),
                                   lambda: _vggish().load_vggish(path, device, s.embedding))
            attrs.update(weights=sha, weights_file=path.name, embedding=s.embedding, postprocess="none")

        try:
            track = read_audio(trial.video, int(s.sample_rate))
        except StageError as exc:
            if exc.kind != "no-audio":
                raise
            track = None
        dtype = np.float16 if s.model == "logmel" else np.float32
        features = np.zeros((n, self.dim()), dtype=dtype)
        valid = np.zeros(n, dtype=bool)
        attrs["has_audio"] = track is not None
        if track is None:
            attrs.update(audio_start=None, n_valid=0)
            return StageOutput(features=features, valid=valid, attrs=attrs)
        attrs.update(audio_start=track.start, audio_seconds=track.duration)

        loud = _loud_prefix(track.samples)
        if s.model == "mfcc":
            self._mfcc(track, times, loud, features, valid)
        else:
            self._patches(track, times, loud, features, valid, model)
        attrs["n_valid"] = int(valid.sum())
        return StageOutput(features=features, valid=valid, attrs=attrs)

    def _mfcc(self, track: AudioTrack, times: np.ndarray, loud: np.ndarray,
              features: np.ndarray, valid: np.ndarray) -> None:
        sr = track.sample_rate
        win, hop = int(round(WINDOW_S * sr)), int(round(HOP_S * sr))
        rows = np.rint((times - track.start) / HOP_S).astype(np.int64)
        a = rows * hop - win // 2
        valid[:] = _covered(track.index_at(times), a, a + win, len(track.samples), loud)
        if valid.any():
            table = mfcc_rows(track.samples, sr)
            # A centre in the track's last half hop rounds to one row past the table: its last row
            # (centred under 10 ms away) is the nearest there is.
            features[valid] = table[np.minimum(rows[valid], len(table) - 1)]

    def _patches(self, track: AudioTrack, times: np.ndarray, loud: np.ndarray,
                 features: np.ndarray, valid: np.ndarray, model: Any) -> None:
        starts = patch_starts(track, times)
        a = starts * vg.HOP
        valid[:] = _covered(track.index_at(times), a, a + PATCH_SPAN, len(track.samples), loud)
        idx = np.flatnonzero(valid)
        if idx.size == 0:
            return
        table = log_mel_rows(track.samples, pad_rows=PATCH_PAD_ROWS)
        starts = starts + PATCH_PAD_ROWS  # rows of the padded table
        assert starts[idx].min() >= 0 and starts[idx].max() + vg.PATCH_FRAMES <= len(table)
        offsets = np.arange(vg.PATCH_FRAMES)
        if model is None:  # logmel: store the patches themselves
            for b0 in range(0, idx.size, 4096):
                sel = idx[b0:b0 + 4096]
                features[sel] = table[starts[sel, None] + offsets].reshape(len(sel), -1)
            return
        import torch

        device = next(model.parameters()).device
        bs = int(self.settings.batch_size)
        with torch.inference_mode():
            for b0 in range(0, idx.size, bs):
                sel = idx[b0:b0 + bs]
                x = torch.from_numpy(table[starts[sel, None] + offsets]).unsqueeze(1).to(device)
                features[sel] = model(x).float().cpu().numpy()


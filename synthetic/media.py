"""Write small, real video files for tests (PyAV encodes; the product itself decodes with decord).

Tests need media with properties the shared clips lack: no audio track, an audio
track that starts late, variable frame rate, a beep at a known time. Encoding
them on the fly keeps the repository free of binary fixtures and makes every
property explicit in the test that relies on it.

API (all times in seconds, audio as float32 mono in [-1, 1]):

- ``write_video(path, frames, fps, audio=None, sr=16000, codec="mpeg4", ...)``
  encodes ``frames`` (uint8 ``[n, H, W, 3]`` RGB, H and W even) into the
  container given by the suffix of ``path`` (.mp4, .avi, .mkv, ...). Frame i is
  stamped at ``times[i]`` when ``times`` is given (variable frame rate), else at
  ``i / fps``. ``audio`` starts ``audio_start`` seconds after video time 0; an empty
  ``audio`` array gives an audio stream without packets.
- ``write_audio(path, audio, sr)``: an audio-only file (not a video).
- ``moving_frames(n, height, width, seed)``: distinct frames that carry their
  own index; ``frame_index(frame)`` reads it back from a decoded frame, so tests
  can tell which source frame a decoder returned.
- ``tone(duration, sr, freq, amp)`` and ``beep_track(duration, sr, beeps)``:
  sine audio, silent except where a beep is placed.
"""
from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

#: Audio codec used per container suffix when the caller does not choose one.
DEFAULT_AUDIO_CODEC = {".mp4": "aac", ".mov": "aac", ".mkv": "aac", ".avi": "pcm_s16le", ".flv": "mp3"}


def write_video(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float,
    audio: np.ndarray | None = None,
    sr: int = 16000,
    codec: str = "mpeg4",
    *,
    audio_codec: str | None = None,
    audio_start: float = 0.0,
    times: Sequence[float] | None = None,
    bit_rate: int = 2_000_000,
    container_options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB `frames` (and optional mono `audio`) into a new file at `path`; return the path.

    `codec` is any FFmpeg video encoder PyAV ships (mpeg4, libx264, mjpeg, flv, ...);
    `audio_codec` defaults per container (`DEFAULT_AUDIO_CODEC`; pcm_s16le in .mkv
    gives sample-exact audio with no encoder delay). `times` (seconds, increasing,
    one per frame) makes a variable-frame-rate file; `audio_start` (>= 0) delays the
    audio stream relative to video time 0, as some real recordings do;
    `container_options` go to the muxer (``{"movflags": "faststart"}`` puts an MP4's
    index first, the layout whose truncated copies still open). Video timestamps are
    stored in milliseconds (non-integer periods, e.g. 29.97 fps, round per frame).
    """
    import av  # test/dev helper only: the product decodes with decord

    path = Path(path)
    frame_iter = iter(frames)  # streamed: a long HD video never sits in memory whole
    first = next(frame_iter, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    h, w = first.shape[:2]
    if times is not None and hasattr(frames, "__len__") and len(times) != len(frames):
        raise ValueError(f"times has {len(times)} entries for {len(frames)} frames")
    if audio_start < 0:
        raise ValueError("audio_start must be >= 0 (delay of the audio relative to the video)")
    rate = Fraction(fps).limit_denominator(1001)
    suffix = path.suffix.lower()
    if suffix == ".avi" and (times is not None or audio_start):
        raise ValueError("AVI stores neither per-frame timestamps nor an audio offset; use .mp4 or .mkv")
    # Millisecond stamps represent any VFR schedule and stay within MPEG-4 Part 2's
    # 16-bit time-base limit; AVI only knows "frame i at i / fps".
    tb = Fraction(1, 1000) if suffix != ".avi" else 1 / rate

    with av.open(str(path), mode="w", options=container_options or {}) as out:
        vs = out.add_stream(codec, rate=rate)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p" if codec not in ("mjpeg",) else "yuvj420p"
        vs.bit_rate = bit_rate
        vs.time_base = tb
        vs.codec_context.time_base = tb
        astream = None
        if audio is not None:
            ac = audio_codec or DEFAULT_AUDIO_CODEC.get(path.suffix.lower(), "aac")
            astream = out.add_stream(ac, rate=sr, layout="mono")
            astream.time_base = Fraction(1, sr)

        for i, img in enumerate(itertools.chain([first], frame_iter)):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
            t = float(times[i]) if times is not None else float(i / rate)
            vf.pts = int(round(t / tb))
            vf.time_base = tb
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)

        if astream is not None:
            _encode_audio(out, astream, np.asarray(audio, dtype=np.float32), sr, audio_start)
    return path


def _encode_audio(out, stream, audio: np.ndarray, sr: int, start: float) -> None:
    """Feed the encoder in codec-sized frames, stamped from `start` so the offset survives muxing."""
    import av

    fmt = stream.codec_context.format.name  # e.g. fltp for aac, s16 for pcm
    frame_size = stream.codec_context.frame_size or 1024
    offset = int(round(start * sr))
    for a in range(0, len(audio), frame_size):
        chunk = audio[a:a + frame_size]
        if len(chunk) < frame_size and stream.codec_context.frame_size:
            chunk = np.pad(chunk, (0, frame_size - len(chunk)))
        if fmt.startswith("s16"):
            data = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)[None, :]
        elif fmt.startswith("s32"):
            data = (np.clip(chunk, -1, 1) * 2147483520).astype(np.int32)[None, :]
        else:
            data = chunk.astype(np.float32)[None, :]
        af = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        af.sample_rate = sr
        af.pts = offset + a
        af.time_base = Fraction(1, sr)
        for pkt in stream.encode(af):
            out.mux(pkt)
    for pkt in stream.encode():
        out.mux(pkt)


def write_audio(path: str | Path, audio: np.ndarray, sr: int = 16000, codec: str | None = None) -> Path:
    """An audio-only file (no video stream), e.g. ``.wav`` (PCM) or ``.m4a`` (AAC)."""
    import av

    path = Path(path)
    with av.open(str(path), mode="w") as out:
        ac = codec or {".wav": "pcm_s16le", ".m4a": "aac", ".mp3": "mp3", ".flac": "flac"}.get(
            path.suffix.lower(), "pcm_s16le")
        stream = out.add_stream(ac, rate=sr, layout="mono")
        stream.time_base = Fraction(1, sr)
        _encode_audio(out, stream, np.asarray(audio, dtype=np.float32), sr, 0.0)
    return path


def moving_frames(n: int, height: int = 64, width: int = 96, seed: int = 0) -> np.ndarray:
    """`n` distinct RGB frames that carry their own index (read it back with `frame_index`).

    The top `INDEX_ROWS` rows hold the index as `INDEX_BITS` black/white bars, wide
    enough to survive lossy codecs; below, a bar moves one step per frame over a
    fixed noise background so encoders cannot drop frames as duplicates.
    """
    if width < 8 * INDEX_BITS or height < 2 * INDEX_ROWS:
        raise ValueError(f"frames must be at least {8 * INDEX_BITS}x{2 * INDEX_ROWS} to carry an index")
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    bw = width // INDEX_BITS
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        f = base.copy()
        x = INDEX_ROWS + (4 * i) % max(1, width - 8)
        f[INDEX_ROWS:, x % width:x % width + 8, 0] = 255
        for b in range(INDEX_BITS):
            f[:INDEX_ROWS, b * bw:(b + 1) * bw] = 255 if (i >> b) & 1 else 0
        out[i] = f
    return out


INDEX_BITS = 12  # up to 4096 frames
INDEX_ROWS = 8


def frame_index(frame: np.ndarray) -> int:
    """The index `moving_frames` wrote into `frame` (an [H, W, 3] uint8 decoded frame)."""
    bw = frame.shape[1] // INDEX_BITS
    bits = [frame[1:INDEX_ROWS - 1, b * bw + 2:(b + 1) * bw - 2].mean() > 127 for b in range(INDEX_BITS)]
    return int(sum(1 << b for b, on in enumerate(bits) if on))


def tone(duration: float, sr: int = 16000, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """A sine of `duration` seconds (float32 mono)."""
    t = np.arange(int(round(duration * sr))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def beep_track(duration: float, sr: int = 16000, beeps: Iterable[tuple[float, float]] = (),
               freq: float = 1000.0, amp: float = 0.5) -> np.ndarray:
    """Silence of `duration` seconds with sine beeps at each (start, length) in seconds."""
    y = np.zeros(int(round(duration * sr)), dtype=np.float32)
    for start, length in beeps:
        a = int(round(start * sr))
        b = tone(length, sr, freq, amp)
        y[a:a + len(b)] = b[: max(0, len(y) - a)]
    return y


def chord_music(duration: float, sr: int = 16000, seed: int = 0, note_s: float = 0.5) -> np.ndarray:
    """Synthetic music: a random three-note chord (5 harmonics, decaying) every `note_s` seconds.

    Speech recognisers alone turn this into confident words (pocketsphinx did); a voice activity
    detector should call it non-speech.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration * sr))) / sr
    out = np.zeros_like(t)
    notes = 220 * 2 ** (np.arange(24) / 12)
    for k in range(int(np.ceil(duration / note_s))):
        seg = (t >= k * note_s) & (t < (k + 1) * note_s)
        for f in rng.choice(notes, 3):
            for h in range(1, 6):
                out[seg] += np.sin(2 * np.pi * f * h * t[seg]) / h * np.exp(-3 * (t[seg] - k * note_s))
    return (0.3 * out / max(1e-9, float(np.abs(out).max()))).astype(np.float32)

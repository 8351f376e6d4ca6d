"""Video and audio decoding with decord: the probe (what really decodes), frame chunks, aligned audio.

Why the probe decodes every frame: decord's ``len(vr)`` is the number of video
*packets* its index found, and a damaged file can hold packets that never decode
(a corrupt AVI measured here: ``len(vr) == 119``, zero frames decode). Reading
past the real end with ``get_batch`` can block in native code. So the probe
counts frames by decoding sequentially (``vr.next()`` until ``StopIteration``),
and every later reader stops at that count. A decoder error part-way fails the
probe (``corrupt-media``) rather than keeping the frames before it: decord's
decoder thread can report the error before the earlier frames are consumed, so
that prefix is not reproducible by a later reader. Known blind spot: when
packets silently yield no picture, decord's ``next()`` seeks back and may hand
out a repeated frame to make up the count; Python cannot see frame pts to tell.

Cost (measured on this 2-core box, one decoder thread): 480x360 VP6 and
360x288 MPEG-1 clips ~0.6 ms/frame; 720p H.264 ~10 ms/frame at full size. The
count is taken on a reader that scales frames to 32x32 (same decoder, same
packets, so the same count) which cuts the 720p cost to ~6 ms/frame.

Why the probe runs in a child process: a decoder that hangs or crashes in native
code cannot be interrupted from Python. The child reports JSON; the parent kills
it after a size-dependent timeout and reports ``corrupt-media``. Starting it
costs ~0.7 s per video, negligible next to decoding.

Time axis: decord stamps frame i with ``(pts_i - start_time) * time_base`` of the
video stream (sorted by pts, so variable frame rate is handled by time, not by
index). Video time 0 is therefore the video stream's ``start_time``.

Audio alignment (read decord/audio_reader.py and src/audio/audio_reader.cc):
decord decodes the whole audio stream into memory from its first *decoded*
frame, and records that frame's absolute pts as "padding" (only when positive);
``add_padding()`` would zero-pad to absolute time 0 (and it mis-updates the
duration: it adds samples * rate). We never pad: we read the padding in samples
and express the track's start on the video's time axis,
``start = padding / rate - video_start_time``, so video time t is sample
``round((t - start) * rate)``. The real clips need this: CREMA-D's FLV video
stream starts at 0.027 s, its audio at 0, so ``start = -0.027``. Packet pts are
not used because AAC priming is dropped by the decoder in MP4 (first packet
-0.064 s, first decoded frame 0.0 s) but not always (a delayed AAC track keeps
its priming); the first decoded frame is what the samples really start with.
The video stream's ``start_time`` (a header value; decord does not expose it) is
read with PyAV, which opens the container but decodes nothing. Limit: decord
clamps a negative first audio pts to 0, so audio that starts before absolute
time 0 is placed up to that amount late (not seen in MP4/MKV/FLV/MPEG-PS here).

decord's timestamps are float32; `_exact_times` snaps them back to the stream's
time base where that is unambiguous.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .stage import StageError

#: Decoder threads per reader. One by default: workers already run one task per core.
DECODE_THREADS = int(os.environ.get("AFFPIPE_DECODE_THREADS", "1"))
#: Size of the frames the counting reader produces (only the count matters there).
_COUNT_SIZE = 32


@dataclass
class VideoProbe:
    """What a video really holds; `time` has one entry per decodable frame."""

    path: str
    n_decoded: int
    n_container: int  # decord's len(vr): packets in the video stream, not frames that decode
    fps: float  # container average frame rate (falls back to the median frame period)
    width: int
    height: int
    time: np.ndarray  # float64 [n_decoded], seconds from the video stream's start
    has_audio: bool
    audio_sample_rate: int | None  # native rate of the audio stream
    audio_start: float | None  # seconds of video time at which audio sample 0 plays
    video_start: float  # absolute start of the video stream (the origin of `time`)

    def to_json(self) -> str:
        d = asdict(self)
        d["time"] = [float(x) for x in self.time]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> "VideoProbe":
        d = json.loads(text)
        d["time"] = np.asarray(d["time"], dtype=np.float64)
        return cls(**d)


@dataclass
class AudioTrack:
    """Mono audio on the video's time axis: video time t is sample round((t - start) * sample_rate)."""

    samples: np.ndarray  # float32 [n]
    sample_rate: int
    start: float

    def index_at(self, t: np.ndarray | float) -> np.ndarray:
        """Sample index (may be negative or past the end) that plays at video time `t`."""
        return np.rint((np.asarray(t, dtype=np.float64) - self.start) * self.sample_rate).astype(np.int64)

    @property
    def duration(self) -> float:
        return len(self.samples) / float(self.sample_rate)


# -- errors ------------------------------------------------------------------------

_LOG_PREFIX = re.compile(r"\[\d\d:\d\d:\d\d\]\s*\S+:\d+:\s*")


def _native_message(exc: BaseException) -> str:
    """decord's errors carry log prefixes and C++ stack traces; keep the first meaningful line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _LOG_PREFIX.sub("", text)
    return text.replace("Check failed: ", "").strip()[:200]


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise StageError("missing-file", f"{path}: file not found")
    if path.is_dir():
        raise StageError("corrupt-media", f"{path}: is a folder, not a video file")


def _corrupt(path: Path, what: str) -> StageError:
    return StageError("corrupt-media", f"{path}: {what}")


# -- container headers (PyAV, no decoding) ------------------------------------------

@dataclass
class _Streams:
    video_start: float
    video_time_base: float | None
    has_video: bool
    has_audio: bool
    audio_sample_rate: int | None


def _stream_info(path: Path) -> _Streams:
    import av

    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0] if c.streams.video else None
            if vs is not None:
                try:
                    vs = c.streams.best("video") or vs  # the stream decord picks (av_find_best_stream)
                except Exception:  # noqa: BLE001 - older PyAV without best(): first video stream
                    pass
            a = c.streams.audio[0] if c.streams.audio else None
            vstart = float(vs.start_time * vs.time_base) if vs is not None and vs.start_time is not None else 0.0
            rate = None
            if a is not None:
                rate = int(a.sample_rate or a.codec_context.sample_rate or 0) or None
            tb = float(vs.time_base) if vs is not None and vs.time_base else None
            return _Streams(vstart, tb, vs is not None, a is not None, rate)
    except av.error.FileNotFoundError:
        raise StageError("missing-file", f"{path}: file not found") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)[:120]
        raise _corrupt(path, f"not a readable media file ({reason})") from None


# -- video -------------------------------------------------------------------------

def _open_video(path: Path, width: int = -1, height: int = -1):
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height,
                                  num_threads=DECODE_THREADS)
    except Exception as exc:  # decord raises RuntimeError or DECORDError (a RuntimeError subclass)
        raise _corrupt(path, f"cannot open as video ({_native_message(exc)})") from None


def _probe_in_process(path: Path) -> VideoProbe:
    """The probe itself (runs in the child process; see module docstring)."""
    streams = _stream_info(path)
    if not streams.has_video:
        raise _corrupt(path, "no video stream")
    vr = _open_video(path)
    n_container = len(vr)
    try:
        first = vr.next()
    except StopIteration:
        raise _corrupt(path, f"no frame decodes (container lists {n_container})") from None
    except Exception as exc:
        raise _corrupt(path, f"decoding failed at frame 0 of {n_container} ({_native_message(exc)})") from None
    height, width = int(first.shape[0]), int(first.shape[1])
    fps = float(vr.get_avg_fps())
    stamps = vr.get_frame_timestamp(range(n_container))[:, 0] if n_container else np.zeros(0)
    del vr, first

    counter = _open_video(path, _COUNT_SIZE, _COUNT_SIZE)
    n = 0
    while True:
        try:
            counter.next()
        except StopIteration:
            break
        except Exception as exc:
            # The prefix before a decoder error is not reproducible (decord's decoder thread
            # can report it before the main thread has consumed the earlier frames), so a
            # mid-stream error fails the trial instead of silently shortening it.
            raise _corrupt(path, f"decoding failed after {n} of {n_container} frames "
                                 f"({_native_message(exc)})") from None
        n += 1
    del counter
    if n == 0:
        raise _corrupt(path, f"no frame decodes (container lists {n_container})")

    time = _exact_times(np.asarray(stamps[:n], dtype=np.float64), streams.video_time_base)
    if not np.isfinite(fps) or fps <= 0:
        diffs = np.diff(time)
        fps = float(1.0 / np.median(diffs)) if diffs.size and np.median(diffs) > 0 else 0.0

    audio_start = None
    has_audio = streams.has_audio
    if has_audio:
        try:
            audio_start = _audio_start(path, streams, 16000)[1]
        except StageError as exc:
            # An empty track is no audio; an undecodable one fails the audio stage, not the probe.
            has_audio = exc.kind != "no-audio"
    return VideoProbe(path=str(path), n_decoded=n, n_container=int(n_container), fps=fps,
                      width=width, height=height, time=time, has_audio=has_audio,
                      audio_sample_rate=streams.audio_sample_rate, audio_start=audio_start,
                      video_start=streams.video_start)


def _exact_times(stamps: np.ndarray, time_base: float | None) -> np.ndarray:
    """Undo decord's float32 rounding by snapping to whole ticks of the stream's time base.

    Only where float32 resolution at the largest time is well under a tick, so the
    nearest tick is certainly the true one (else the float32 values are kept).
    """
    if time_base is None or time_base <= 0 or stamps.size == 0:
        return stamps
    ulp = float(np.spacing(np.float32(max(abs(stamps).max(), 1e-9))))
    if ulp >= time_base / 8:
        return stamps
    return np.rint(stamps / time_base) * time_base


def probe_timeout(path: Path) -> float:
    """Seconds the probe may take: generous for a slow decode (10 s per MB), fatal for a hang."""
    fixed = os.environ.get("AFFPIPE_PROBE_TIMEOUT")
    if fixed:
        return float(fixed)
    return 60.0 + 10.0 * path.stat().st_size / 1e6


def probe_video(path: str | Path, *, isolate: bool = True, timeout: float | None = None) -> VideoProbe:
    """Count the frames that really decode and read the time axis and stream facts of `path`.

    With `isolate` (default) the decoding runs in a child process that is killed
    after `timeout` seconds (default `probe_timeout`), so a decoder that hangs or
    crashes becomes a one-line ``corrupt-media`` error instead of a stuck worker.
    """
    path = Path(path)
    _check_exists(path)
    if not isolate:
        return _probe_in_process(path)
    limit = probe_timeout(path) if timeout is None else float(timeout)
    root = str(Path(__file__).resolve().parents[1])
    code = (f"import sys; sys.path.insert(0, {root!r}); "
            f"from {__package__}.decode import _probe_main; _probe_main()")
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                              timeout=limit, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise _corrupt(path, f"decoder did not finish within {limit:.0f} s (hung); probe abandoned") from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:160]
        raise _corrupt(path, f"decoder crashed (exit code {proc.returncode}){': ' + tail if tail else ''}")
    result = json.loads(lines[-1])
    if "error" in result:
        raise StageError(result["error"], result["message"])
    return VideoProbe.from_json(json.dumps(result["probe"]))


def _probe_main() -> None:
    """Child-process entry point: print one JSON line (the probe, or the error)."""
    import warnings

    warnings.filterwarnings("ignore")
    try:
        probe = _probe_in_process(Path(sys.argv[1]))
        out = {"probe": json.loads(probe.to_json())}
    except StageError as exc:
        out = {"error": exc.kind, "message": str(exc)}
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    sys.stdout.flush()


def iter_frames(path: str | Path, n_frames: int, chunk: int = 64) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_index, uint8 [c, H, W, 3] RGB)`` for frames 0..n_frames-1, `chunk` at a time.

    Sequential ``next()`` decoding, the path the probe verified, so no index at or past
    `n_frames` is ever requested and nothing is seeked. Memory is one chunk (plus the
    decoder's own buffers) whatever the video's length: 64 x 1080p RGB is ~400 MB, so
    callers on HD video pass a smaller `chunk`.
    """
    path = Path(path)
    _check_exists(path)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    if n_frames <= 0:
        return
    vr = _open_video(path)
    try:
        for start in range(0, n_frames, chunk):
            count = min(chunk, n_frames - start)
            out: np.ndarray | None = None
            for j in range(count):
                try:
                    frame = vr.next().asnumpy()
                except StopIteration:
                    raise _corrupt(path, f"only {start + j} frames decode, the probe counted {n_frames}") from None
                except Exception as exc:
                    raise _corrupt(path, f"decoding failed at frame {start + j} ({_native_message(exc)})") from None
                if out is None:
                    out = np.empty((count,) + frame.shape, dtype=np.uint8)
                out[j] = frame
            yield start, out
    finally:
        del vr


# -- audio -------------------------------------------------------------------------

def _audio_start(path: Path, streams: _Streams, sample_rate: int):
    """Decode the audio (mono, `sample_rate`) and return (samples, start on the video time axis)."""
    import decord

    try:
        ar = decord.AudioReader(str(path), ctx=decord.cpu(0), sample_rate=sample_rate, mono=True)
        # decord's public getters index sample by sample through Python lists; the decoded
        # array is already in memory as `_array` [channels, samples].
        samples = np.asarray(ar._array, dtype=np.float32).reshape(-1)
        padding = int(ar._AudioReader__get_num_padding())  # ceil(first decoded pts * rate), >= 0
    except Exception as exc:
        if not _audio_has_packets(path):  # decord fails the same way on a track with no samples
            raise StageError("no-audio", f"{path}: audio stream is empty") from None
        raise _corrupt(path, f"audio stream does not decode ({_native_message(exc)})") from None
    return samples, padding / float(sample_rate) - streams.video_start


def _audio_has_packets(path: Path) -> bool:
    import av

    try:
        with av.open(str(path)) as c:
            return any(pkt.size for pkt in c.demux(c.streams.audio[0]))
    except Exception:  # noqa: BLE001 - unreadable: let the caller report corrupt media
        return True


def read_audio(path: str | Path, sample_rate: int = 16000) -> AudioTrack:
    """Mono audio resampled to `sample_rate`, positioned on the video time axis (see `AudioTrack`).

    Raises ``StageError("no-audio")`` when the file has no audio stream (or an empty one): callers decide
    whether that is an error (the audio stage treats it as a legitimately silent video).
    """
    path = Path(path)
    _check_exists(path)
    streams = _stream_info(path)
    if not streams.has_audio:
        raise StageError("no-audio", f"{path}: no audio stream")
    samples, start = _audio_start(path, streams, sample_rate)
    return AudioTrack(samples=samples, sample_rate=int(sample_rate), start=float(start))

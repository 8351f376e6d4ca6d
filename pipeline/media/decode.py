"""Video and audio decoding: the probe (what really decodes), frame chunks, aligned audio.

Video frames are decoded with PyAV (FFmpeg's libavcodec, one frame per picture the
decoder presents, each with its own presentation timestamp), not decord. Why: decord
numbers frames by *packets* and makes up the difference. Measured here: an MP4 whose
first three packets carry negative timestamps (encoder priming / an edit list, which
FFmpeg discards) was read as 98 frames instead of 95, the last three repeating frame
94, and stamped with the first 98 packet times (every frame 125 ms early); on every
GRID MPEG-1 clip decord's rows 0-62 were FFmpeg's frames 12-74 followed by 12 copies of
frame 74 (a 0.48 s shift of all pixels against their times); on CREMA-D's VP6 its
pixels drift from FFmpeg's (mean |diff| up to 0.2 grey levels). Python cannot see a
decord frame's pts, so none of this was detectable. With PyAV the grid *is* the
decoder's output: frame i is the i-th decoded picture and `time[i]` its own pts.

The probe decodes every frame (no colour conversion) and records each frame's pts;
every later reader (`iter_frames`) runs the same decode loop (`_Decoder`) and stops at
that count, so faces, visual, audio and text all see one frame grid. Cost, measured on
this 2-core box with one decoder thread (in-process, no child start-up): the 13 shared
clips probe at ~550 frames/s (decord's decode-to-count: ~340) and decode to RGB at
~490 frames/s (decord: ~275); a 720p H.264 clip of noise probes at ~60 frames/s (decord
~60) and decodes to RGB at ~74 frames/s (decord ~37). A decoder or demuxer error
part-way fails the probe (``corrupt-media``) rather than keeping the frames before
it: a damaged stream is not trusted to train on. A file that simply ends early (a
truncated download) is not an error: the frames that decode are the video.

Why the probe runs in a child process: a decoder that hangs or crashes in native
code cannot be interrupted from Python. The parent kills it after a size-dependent
timeout and reports ``corrupt-media``. The child stays up between videos
(`_ProbeHelper`), so a worker pays the ~0.7 s interpreter start once, not per video.

Time axis: frame i is stamped ``(pts_i - start_time) * time_base`` of the video
stream, where pts_i is the i-th smallest pts among the decoded pictures (frames
dropped by an edit list never appear), so variable frame rate is handled by time,
not by index. Sorting changes nothing where the container stores presentation
times (MP4, MKV, FLV, MPEG-PS: the decoded pts already increase); AVI stores none,
and an H.264 AVI with B-frames hands pictures the packet stamps in decode order
(measured: 1, 4, 3, 5, 2, ...), which FFmpeg's own best-effort guess turns into
repeated times; sorted, they are the frame grid. Video time 0 is the video stream's
``start_time``. pts are integers, so times are exact in float64.

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
The video stream's ``start_time`` (a header value) is read with PyAV. Limit:
decord clamps a negative first audio pts to 0, so audio that starts before
absolute time 0 is placed up to that amount late (not seen in MP4/MKV/FLV/MPEG-PS here).
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from ..engine.stage import StageError

#: Decoder threads per reader. One by default: workers already run one task per core.
DECODE_THREADS = int(os.environ.get("AFFPIPE_DECODE_THREADS", "1"))


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
    video_start: float  # seconds (video_start_pts * video_time_base)
    video_start_pts: int
    video_time_base: Fraction | None
    video_rate: float  # the container's average frame rate (0 when unknown)
    has_video: bool
    has_audio: bool
    audio_sample_rate: int | None


def _video_stream(container):
    """The stream FFmpeg itself would pick (av_find_best_stream), else the first; None if no video."""
    if not container.streams.video:
        return None
    return container.streams.best("video") or container.streams.video[0]


def _open_container(path: Path, what: str):
    """av.open with one-line errors (`what` says what the file should have been)."""
    import av

    try:
        return av.open(str(path))
    except av.error.FileNotFoundError:
        raise StageError("missing-file", f"{path}: file not found") from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)[:120]
        raise _corrupt(path, f"{what} ({reason})") from None


def _stream_info(path: Path) -> _Streams:
    with _open_container(path, "not a readable media file") as c:
        vs = _video_stream(c)
        a = c.streams.audio[0] if c.streams.audio else None
        start_pts = int(vs.start_time) if vs is not None and vs.start_time is not None else 0
        tb = Fraction(vs.time_base) if vs is not None and vs.time_base else None
        rate = None
        if a is not None:
            rate = int(a.sample_rate or a.codec_context.sample_rate or 0) or None
        vstart = float(start_pts * tb) if tb is not None else 0.0
        vrate = float(vs.average_rate) if vs is not None and vs.average_rate else 0.0
        return _Streams(vstart, start_pts, tb, vrate, vs is not None, a is not None, rate)


# -- video -------------------------------------------------------------------------

class _Decoder:
    """Every picture FFmpeg presents for the video stream, in order: the one decode loop all readers share.

    Iterating yields ``(pts, av.VideoFrame)``. Frames dropped by the container (edit lists,
    priming packets flagged discard) never appear; a demuxer or decoder error raises
    ``corrupt-media`` naming how many frames came before it. `n_packets` counts the
    non-empty video packets demuxed so far (what decord's ``len()`` reported).
    """

    def __init__(self, path: Path):
        self.path = path
        self.n_packets = 0

    def __iter__(self) -> Iterator[tuple[int, object]]:
        import av

        path = self.path
        with _open_container(path, "cannot open as video") as container:
            vs = _video_stream(container)
            if vs is None:
                raise _corrupt(path, "no video stream")
            vs.thread_count = DECODE_THREADS
            n = 0
            packets = container.demux(vs)
            while True:
                try:
                    packet = next(packets)
                    self.n_packets += 1 if packet.size else 0
                    frames = packet.decode()
                except StopIteration:
                    return
                except (av.error.FFmpegError, ValueError) as exc:
                    reason = getattr(exc, "strerror", None) or str(exc)[:120]
                    raise _corrupt(path, f"decoding failed after {n} frames ({reason})") from None
                for frame in frames:
                    if frame.pts is None:
                        raise _corrupt(path, f"frame {n} has no timestamp; cannot place it in time")
                    yield int(frame.pts), frame
                    n += 1


def _probe_in_process(path: Path) -> VideoProbe:
    """The probe itself (runs in the child process; see module docstring)."""
    streams = _stream_info(path)
    if not streams.has_video:
        raise _corrupt(path, "no video stream")
    decoder = _Decoder(path)
    pts: list[int] = []
    width = height = 0
    for stamp, frame in decoder:
        if not pts:
            width, height = int(frame.width), int(frame.height)
        pts.append(stamp)
    if not pts:
        raise _corrupt(path, f"no frame decodes (container lists {decoder.n_packets})")
    tb = streams.video_time_base or Fraction(1, 1)
    # Integer ticks times an exact rational: one rounding, so times are exact to float64.
    # Sorted: pictures leave the decoder in presentation order, but AVI (no pts field) hands
    # B-frame pictures the stamps of packets in decode order; the sorted stamps are the grid.
    ticks = np.sort(np.asarray(pts, dtype=np.int64)) - streams.video_start_pts
    time = ticks.astype(np.float64) * tb.numerator / tb.denominator
    fps = streams.video_rate
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
    return VideoProbe(path=str(path), n_decoded=len(pts), n_container=decoder.n_packets, fps=fps,
                      width=width, height=height, time=time, has_audio=has_audio,
                      audio_sample_rate=streams.audio_sample_rate, audio_start=audio_start,
                      video_start=streams.video_start)


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
    helper = _helper()
    try:
        result = helper.ask(str(path), limit)
    except TimeoutError:
        helper.stop()
        raise _corrupt(path, f"decoder did not finish within {limit:.0f} s (hung); probe abandoned") from None
    except EOFError:
        code, tail = helper.stop()
        raise _corrupt(path, f"decoder crashed (exit code {code}){': ' + tail if tail else ''}") from None
    if "error" in result:
        raise StageError(result["error"], result["message"])
    return VideoProbe.from_json(json.dumps(result["probe"]))


class _ProbeHelper:
    """A child interpreter that probes one video per request (one JSON line in, one out), kept between videos.

    Why a long-lived child: starting an interpreter that imports numpy and PyAV cost ~0.7 s
    per video (what the probe paid before), a tenth of a short clip's whole extraction.
    Isolation is unchanged: a hang is killed after the timeout, a crash ends the child
    (the caller sees EOF); either way the next probe starts a fresh one. FFmpeg's log goes
    to a file, never to a pipe that could fill up and block the child.
    """

    def __init__(self) -> None:
        import subprocess
        import tempfile

        root = str(Path(__file__).resolve().parents[2])  # the folder holding the `pipeline` package
        code = (f"import sys; sys.path.insert(0, {root!r}); "
                f"from {__package__}.decode import _probe_serve; _probe_serve()")
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.buffer = bytearray()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, path: str, limit: float) -> dict:
        import select
        import time

        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write((json.dumps(path) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            raise EOFError from None
        deadline = time.monotonic() + limit
        fd = self.proc.stdout.fileno()
        while True:  # own line buffer: select() cannot see what a buffered reader already holds
            nl = self.buffer.find(b"\n")
            if nl >= 0:
                line = bytes(self.buffer[:nl])
                del self.buffer[:nl + 1]
                if line.startswith(b"{"):
                    return json.loads(line)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError
            self.buffer += chunk

    def stop(self) -> tuple[int | None, str]:
        """End the child; its exit code and the last line it logged."""
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait()
        self.log.seek(0)
        lines = self.log.read().decode(errors="replace").strip().splitlines()
        self.log.close()
        return code, (lines[-1][:160] if lines else "")


_HELPERS = None


def _helper() -> _ProbeHelper:
    """This thread's probe child (threads of one worker probe in parallel), started when needed."""
    global _HELPERS
    import threading

    if _HELPERS is None:
        _HELPERS = threading.local()
    helper = getattr(_HELPERS, "helper", None)
    if helper is None or not helper.alive():
        helper = _HELPERS.helper = _ProbeHelper()
    return helper


def _probe_serve() -> None:
    """Child-process loop: a JSON path per line in, a JSON line (the probe, or the error) out; ends at EOF."""
    import warnings

    warnings.filterwarnings("ignore")
    while True:
        line = sys.stdin.buffer.readline()  # not `for line in sys.stdin`: that reads ahead and waits
        if not line:
            return
        try:
            probe = _probe_in_process(Path(json.loads(line)))
            out = {"probe": json.loads(probe.to_json())}
        except StageError as exc:
            out = {"error": exc.kind, "message": str(exc)}
        sys.stdout.write("\n" + json.dumps(out) + "\n")
        sys.stdout.flush()


def estimate_frames(path: str | Path) -> int:
    """Frames the container claims (header only, no decoding): enough to decide how to split work.

    Never used as the frame grid (the probe counts what really decodes); 0 when unknown.
    """
    try:
        with _open_container(Path(path), "not a readable media file") as c:
            vs = _video_stream(c)
            if vs is None:
                return 0
            if vs.frames:
                return int(vs.frames)
            rate = float(vs.average_rate) if vs.average_rate else 0.0
            seconds = float(vs.duration * vs.time_base) if vs.duration and vs.time_base else (
                c.duration / 1e6 if c.duration else 0.0)
            return int(seconds * rate)
    except StageError:
        return 0


def _grid_ticks(times: np.ndarray, streams: _Streams) -> np.ndarray | None:
    """The probe's times back as the stream's integer pts (exact: times are ticks x time base)."""
    tb = streams.video_time_base
    if tb is None:
        return None
    return np.rint(np.asarray(times, dtype=np.float64) / float(tb)).astype(np.int64) + streams.video_start_pts


def _frames_from(path: Path, start: int, times: np.ndarray | None) -> Iterator[object]:
    """Decoded pictures from frame `start` on, frame i being the probe's frame i.

    With `start` > 0 and the probe's grid at hand, the demuxer seeks to the keyframe at or
    before frame `start`'s pts and decoding runs forward from there, so a frame range costs
    its own share of the video. Pictures are matched to the grid by pts: the first one must
    be frame `start` and each next one the next pts of the grid. Where that does not hold
    (an AVI with B-frames hands pictures the stamps of packets in decode order, a seek that
    lands past the frame), it decodes from the start and counts instead: exact either way,
    only slower.
    """
    if start > 0 and times is not None and start < len(times):
        yielded = 0
        try:
            import av

            streams = _stream_info(path)
            ticks = _grid_ticks(times, streams)
            if ticks is not None and np.all(np.diff(ticks) > 0):
                with _open_container(path, "cannot open as video") as container:
                    vs = _video_stream(container)
                    vs.thread_count = DECODE_THREADS
                    container.seek(int(ticks[start]), stream=vs, backward=True, any_frame=False)
                    i = start
                    for packet in container.demux(vs):
                        for frame in packet.decode():
                            if frame.pts is None:
                                raise LookupError
                            if i == start and frame.pts < ticks[start]:
                                continue  # before the range: decoded only to reach it
                            if i >= len(ticks) or frame.pts != ticks[i]:
                                raise LookupError
                            yield frame
                            yielded += 1
                            i += 1
                    if i < len(ticks):
                        raise LookupError
                    return
        except (LookupError, av.error.FFmpegError, ValueError):
            start += yielded  # frames already handed out are not handed out again
    i = 0
    for _, frame in _Decoder(path):
        if i >= start:
            yield frame
        i += 1


#: Decoded RGB a process keeps for the next reader of the same video (MiB; 0 turns reuse off).
FRAME_CACHE_MB = int(os.environ.get("AFFPIPE_FRAME_CACHE_MB", "256"))


class _FrameCache:
    """The RGB chunks of the videos this process last decoded whole, for the next stage that reads them.

    Why: faces and visual each decode every frame of a trial, and a trial's visual task runs
    on the worker that ran its faces task (Dask places a task where its inputs were computed),
    a few trials later at most (the runner's priorities run faces tasks first). On the short
    shared clips decoding to RGB was a third of the visual stage's CPU time, and 11 of 13
    visual tasks found their frames kept on a 2-worker run. A video is kept only when all
    of its frames fit the budget (`FRAME_CACHE_MB`, least recently used out first), so long
    or HD videos, where keeping them would cost gigabytes, are decoded again as before.

    Exactness: an entry serves only a reader of the same file *content* (full sha256, checked
    on every hit: ~1 ms per MB, and only files whose frames fit the budget qualify) asking for
    at most the frames the decode that filled it delivered; chunks are cut at the same
    multiples, so the reader gets the same arrays a decode would give. Stored chunks are
    read-only and readers get copies, so no reader can change what the next one sees.
    """

    def __init__(self) -> None:
        import threading
        from collections import OrderedDict

        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int], tuple[str, int, list[np.ndarray]]] = OrderedDict()
        #: readers served from kept frames, and videos kept (benchmarks read these)
        self.hits = self.kept = 0

    @staticmethod
    def _identity(path: Path) -> str:
        from ..engine.identity import content_fingerprint

        return content_fingerprint(path, "full")["full"]

    def get(self, path: Path, chunk: int, n_frames: int) -> list[np.ndarray] | None:
        """The chunks of frames 0.. (at least `n_frames`) of `path`, or None."""
        key = (str(path.resolve()), chunk)
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[1] < n_frames:
            return None
        try:
            if self._identity(path) != entry[0]:
                return None
        except OSError:
            return None
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
            self.hits += 1
        return entry[2]

    def put(self, path: Path, chunk: int, n_frames: int, identity: str, chunks: list[np.ndarray]) -> None:
        budget = FRAME_CACHE_MB << 20
        size = sum(c.nbytes for c in chunks)
        if size > budget:
            return
        for c in chunks:
            c.setflags(write=False)
        with self._lock:
            self._entries[(str(path.resolve()), chunk)] = (identity, n_frames, chunks)
            self.kept += 1
            while sum(sum(c.nbytes for c in e[2]) for e in self._entries.values()) > budget:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


FRAME_CACHE = _FrameCache()


def iter_frames(path: str | Path, n_frames: int, chunk: int = 64, start: int = 0,
                times: np.ndarray | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(start_index, uint8 [c, H, W, 3] RGB)`` for frames start..n_frames-1, `chunk` at a time.

    The probe's decode loop (`_Decoder`), so frame i here is the frame the probe stamped
    ``time[i]``; decoding stops after `n_frames`. Chunks end at multiples of `chunk` counted
    from frame 0, whatever `start` is, so a frame range sees the same chunks (and the stages
    the same batches) as a whole-video pass: that keeps split work bit-identical. With
    `start` > 0 pass the probe's `times` so decoding seeks to the range (`_frames_from`).
    RGB is PyAV's ``to_ndarray(format="rgb24")`` (FFmpeg's swscale). Memory is one chunk
    (plus the decoder's own buffers) whatever the video's length: 64 x 1080p RGB is ~400 MB,
    so callers on HD video pass a smaller `chunk`. A short video decoded whole is kept for
    the next reader in this process (`_FrameCache`): the same frames, decoded once.
    """
    path = Path(path)
    _check_exists(path)
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    if n_frames <= start:
        return
    cached = FRAME_CACHE.get(path, chunk, n_frames) if FRAME_CACHE_MB > 0 else None
    if cached is not None:
        for k in range(start // chunk, (n_frames - 1) // chunk + 1):
            lo, hi = max(start, k * chunk), min(n_frames, (k + 1) * chunk)
            yield lo, cached[k][lo - k * chunk:hi - k * chunk].copy()
        return
    keep: list[np.ndarray] | None = [] if start == 0 and FRAME_CACHE_MB > 0 else None
    identity = ""
    for first, out in _decoded_chunks(path, n_frames, chunk, start, times):
        if keep is not None and not keep:  # first chunk: keep the video only if all of it fits
            identity = _cacheable_identity(path, out.nbytes * -(-n_frames // chunk))
            keep = [] if identity else None
        if keep is not None:
            keep.append(out)
            out = out.copy()
        yield first, out
    if keep is not None:
        FRAME_CACHE.put(path, chunk, n_frames, identity, keep)


def _cacheable_identity(path: Path, rgb_bytes: int) -> str:
    """The content identity of a video whose frames (`rgb_bytes`) and file fit the frame cache, else ""."""
    budget = FRAME_CACHE_MB << 20
    try:
        if rgb_bytes > budget or path.stat().st_size > budget:
            return ""
        return _FrameCache._identity(path)
    except OSError:
        return ""


def _decoded_chunks(path: Path, n_frames: int, chunk: int, start: int,
                    times: np.ndarray | None) -> Iterator[tuple[int, np.ndarray]]:
    """`iter_frames` without the cache: decode and cut into chunks."""
    out: np.ndarray | None = None
    i = start
    first = start
    for frame in _frames_from(path, start, times):
        rgb = frame.to_ndarray(format="rgb24")
        if out is None:
            first = i
            end = min((i // chunk + 1) * chunk, n_frames)
            out = np.empty((end - i,) + rgb.shape, dtype=np.uint8)
        out[i - first] = rgb
        i += 1
        if i - first == len(out):
            yield first, out
            out = None
            if i == n_frames:
                return
    raise _corrupt(path, f"only {i} frames decode, the probe counted {n_frames}")


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

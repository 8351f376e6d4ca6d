"""The built-in demo dataset: Aff-Wild2-shaped trials synthesised offline from a real face photo.

`affpipe demo` must run end to end on a fresh machine with no data, no network and
no licence (Aff-Wild2 is per-user EULA), and a model trained on it must learn
something measurable, or the demo proves nothing. So the ground truth is made
first and then *rendered into what the extractors see and hear*:

- valence -> the face's appearance, which survives face alignment (alignment removes
  translation, scale and rotation, so position cues would be lost): face-region
  brightness and a warm/cool tint, plus a mouth-corner warp (smile up, frown down);
- arousal -> the voice (loudness, which MFCC c0 tracks, and pitch) and the amount of
  head jitter (visible to box/landmark motion, not to aligned crops);
- valence -> the words of a timed transcript (positive / neutral / negative words).

The face is matplotlib's bundled Grace Hopper portrait (a real photo that MTCNN
detects), so nothing is downloaded. Videos are written with PyAV (MPEG-4 part 2 + AAC in
.mp4) through `synthetic.media.write_video`; the product decodes them with
decord like any user video.

Frame-exactness: every video has exactly ``round(seconds * fps)`` frames and each
annotation file has one line per frame, so the label grid and the decoded grid agree.
A short run of frames per trial has the subject out of view and is marked -5
(unlabelled), as Aff-Wild2 does for frames without a face.

Notes for wiring ``affpipe demo`` (the CLI owns orchestration, this module only builds):
``manifest = build_demo_dataset(out_dir)`` -> run extraction on ``manifest`` into the
shard cache -> train the fusion model on the train/val trials -> evaluate on the test
trial (its annotation is included for that purpose, unlike a real ABAW test set) ->
print the cache folder and the run folder. A second ``affpipe demo`` reuses the
dataset (and, through the content-addressed cache, the shards).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

#: Recorded in DATASET.txt; reuse is keyed on the parameters and a hash of this file's source.
BUILDER_VERSION = 1
STAMP_NAME = ".affpipe-demo.json"
UNLABELLED = -5.0
AUDIO_SR = 16000

#: Face box and mouth corners in the original 512x600 grace_hopper.jpg, measured once with
#: facenet_pytorch.MTCNN (box 174,120-356,340; mouth corners (233,280) and (307,276)).
_FACE_BOX = (174.0, 120.0, 356.0, 340.0)
_MOUTH = (270.0, 278.0, 37.0)  # centre x, centre y, half width
_CROP = (100, 50, 430, 450)  # head and shoulders, cut from the original photo

# Words by valence class, with their syllable counts (the voice speaks that many syllables);
# each class has words of 1, 2 and 3 syllables so the choice of length never biases polarity.
POSITIVE_WORDS = (("wonderful", 3), ("happy", 2), ("great", 1), ("lovely", 2), ("delighted", 3),
                  ("excellent", 3), ("joy", 1), ("fantastic", 3), ("glad", 1), ("cheerful", 2))
NEUTRAL_WORDS = (("table", 2), ("window", 2), ("paper", 2), ("street", 1), ("calendar", 3),
                 ("morning", 2), ("chair", 1), ("umbrella", 3), ("station", 2), ("door", 1))
NEGATIVE_WORDS = (("awful", 2), ("sad", 1), ("terrible", 3), ("angry", 2), ("dreadful", 2),
                  ("horrible", 3), ("bad", 1), ("upset", 2), ("disaster", 3), ("hurt", 1))
VALENCE_WORD_THRESHOLD = 0.3

# Vowel formants (F1, F2, F3) in Hz, Peterson & Barney style averages.
_VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240],
                    [530, 1840, 2480], [570, 840, 2410]], dtype=np.float64)
_FORMANT_BW = np.array([90.0, 110.0, 170.0])
_FORMANT_GAIN = np.array([1.0, 0.6, 0.3])


@dataclass(frozen=True)
class DemoParams:
    """Everything that defines the dataset's content; equal params mean a reusable dataset."""

    n_trials: int = 8
    seconds: float = 6.0
    fps: int = 25
    width: int = 320
    height: int = 240
    seed: int = 0
    version: int = BUILDER_VERSION

    @property
    def n_frames(self) -> int:
        return int(round(self.seconds * self.fps))


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    phrase: int  # words of one phrase are spoken without a pause and form one transcript segment


def build_demo_dataset(out_dir: str | Path, n_trials: int = 8, seconds: float = 6.0, fps: int = 25,
                       size: tuple[int, int] = (320, 240), seed: int = 0, *, force: bool = False) -> Path:
    """Build (or reuse) the demo dataset in `out_dir`; return the path of its ``manifest.csv``.

    A dataset built earlier with the same parameters is reused untouched (the stamp is
    written last, so an interrupted build is never mistaken for a finished one);
    `force` rebuilds anyway. Output is deterministic in `seed` for annotations and
    transcripts; videos also come out byte-identical with the same PyAV/FFmpeg build.
    """
    from filelock import FileLock

    width, height = int(size[0]), int(size[1])
    if n_trials < 3:
        raise ValueError(f"n_trials={n_trials}: the demo needs at least 3 trials (train, val and test)")
    if width % 2 or height % 2 or width < 160 or height < 160:
        raise ValueError(f"size={size}: width and height must be even and at least 160 pixels")
    if fps <= 0 or seconds * fps < 2 * fps:
        raise ValueError(f"seconds={seconds}, fps={fps}: need fps > 0 and at least 2 seconds of video")
    params = DemoParams(n_trials, float(seconds), int(fps), width, height, int(seed))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv"
    stamp = out_dir / STAMP_NAME
    with FileLock(str(out_dir / ".affpipe-demo.lock")):
        old = _read_stamp(stamp)
        key = {**asdict(params), "builder_sha256": _builder_digest()}
        if not force and old is not None and old.get("params") == key and all(
                (out_dir / f).is_file() for f in old.get("files", [])):
            return manifest
        if old is not None:  # drop what the previous build wrote, so no stale trials linger
            stamp.unlink(missing_ok=True)
            for f in old.get("files", []):
                (out_dir / f).unlink(missing_ok=True)
        files = _build(out_dir, params)
        stamp.write_text(json.dumps({"params": key, "files": files}, indent=1) + "\n")
    return manifest


def _builder_digest() -> str:
    """Hash of this module's source: editing the renderer must not leave an old dataset in use."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _read_stamp(stamp: Path) -> dict | None:
    try:
        return json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None


def split_counts(n: int) -> tuple[int, int, int]:
    """Train/val/test counts in the 5:2:1 proportion of the default eight trials (each at least 1)."""
    n_test = max(1, round(n / 8))
    n_val = max(1, round(n * 2 / 8))
    return n - n_val - n_test, n_val, n_test


def _build(out_dir: Path, p: DemoParams) -> list[str]:
    from synthetic.media import write_video

    n_train, n_val, _ = split_counts(p.n_trials)
    sprite = _Sprite.load(p.height)
    rows: list[tuple[str, str, str, str, str]] = []
    for i in range(p.n_trials):
        split = "train" if i < n_train else "val" if i < n_train + n_val else "test"
        trial = f"{i + 1}-{p.fps}-{p.width}x{p.height}"  # Aff-Wild2 style name: id-fps-WxH
        rng = np.random.default_rng([p.seed, i])
        valence, arousal = smooth_curve(rng, p.n_frames, p.fps), smooth_curve(rng, p.n_frames, p.fps)
        valence, arousal = np.round(valence, 3), np.round(arousal, 3)
        hidden = _hidden_run(rng, p.n_frames)
        words = _word_schedule(rng, valence, p.fps, p.seconds)
        frames = _render_frames(rng, sprite, valence, arousal, hidden, p)
        audio = _synth_voice(rng, words, arousal, p.fps, p.seconds)

        video = Path("videos") / f"{trial}.mp4"
        annotation = Path("annotations") / "VA_Estimation_Challenge" / _SET_DIR[split] / f"{trial}.txt"
        transcript = Path("transcripts") / f"{trial}.json"
        for rel in (video, annotation, transcript):
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(out_dir / video, frames, p.fps, audio=audio, sr=AUDIO_SR, codec="mpeg4",
                    audio_codec="aac", bit_rate=350_000)
        _write_annotation(out_dir / annotation, valence, arousal, hidden)
        (out_dir / transcript).write_text(format_transcript(words), encoding="utf-8")
        rows.append((trial, video.as_posix(), split, annotation.as_posix(), transcript.as_posix()))

    lines = ["trial,video,split,annotation,transcript"] + [",".join(r) for r in rows]
    (out_dir / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "DATASET.txt").write_text(_describe(p, rows), encoding="utf-8")
    return ["manifest.csv", "DATASET.txt"] + [f for r in rows for f in (r[1], r[3], r[4])]


_SET_DIR = {"train": "Train_Set", "val": "Validation_Set", "test": "Test_Set"}


# --- ground truth ---------------------------------------------------------------------------

def smooth_curve(rng: np.random.Generator, n: int, fps: float, n_waves: int = 3) -> np.ndarray:
    """A smooth random curve in [-0.95, 0.95] (sum of slow sinusoids with random phases).

    Frequencies of 0.1-0.5 Hz give a few rises and falls per clip, like rated affect;
    each curve is rescaled to span most of [-1, 1] so every trial has both signs.
    """
    t = np.arange(n) / fps
    freqs = rng.uniform(0.1, 0.5, n_waves)
    phases = rng.uniform(0, 2 * np.pi, n_waves)
    amps = rng.uniform(0.5, 1.0, n_waves)
    c = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
    c -= c.mean()
    return c / np.abs(c).max() * rng.uniform(0.8, 0.95)


def _hidden_run(rng: np.random.Generator, n: int) -> np.ndarray:
    """Frames where the subject is out of view: one run of 3 frames, away from the clip's ends."""
    hidden = np.zeros(n, dtype=bool)
    start = int(rng.integers(n // 4, 3 * n // 4))
    hidden[start:start + 3] = True
    return hidden


def _write_annotation(path: Path, valence: np.ndarray, arousal: np.ndarray, hidden: np.ndarray) -> None:
    lines = ["valence,arousal"]
    for v, a, h in zip(valence, arousal, hidden):
        lines.append(f"{UNLABELLED:.0f},{UNLABELLED:.0f}" if h else f"{v:.3f},{a:.3f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- transcript ----------------------------------------------------------------------------

def word_class(v: float) -> str:
    """'positive' / 'negative' / 'neutral' word for a valence value (what the transcript follows)."""
    return "positive" if v > VALENCE_WORD_THRESHOLD else "negative" if v < -VALENCE_WORD_THRESHOLD else "neutral"


_POOLS = {"positive": POSITIVE_WORDS, "neutral": NEUTRAL_WORDS, "negative": NEGATIVE_WORDS}


def _word_schedule(rng: np.random.Generator, valence: np.ndarray, fps: float, seconds: float) -> list[Word]:
    """Phrases of 2-4 words with short pauses; each word's polarity follows valence at its middle frame."""
    words: list[Word] = []
    t = float(rng.uniform(0.1, 0.3))
    for phrase in range(10_000):
        for _ in range(int(rng.integers(2, 5))):
            n_syl = int(rng.integers(1, 4))
            end = t + n_syl * float(rng.uniform(0.17, 0.23))
            if end > seconds - 0.1:
                return words
            start, end = round(t, 3), round(end, 3)
            v = float(valence[min(len(valence) - 1, int((start + end) / 2 * fps))])
            pool = [w for w, k in _POOLS[word_class(v)] if k == n_syl]
            words.append(Word(start, end, pool[int(rng.integers(len(pool)))], phrase))
            t = end + float(rng.uniform(0.04, 0.08))
        t += float(rng.uniform(0.15, 0.3))
    return words


def format_transcript(words: list[Word]) -> str:
    """Whisper-style JSON: one segment per phrase with per-word timings (both text granularities work)."""
    segments = []
    for phrase in sorted({w.phrase for w in words}):
        ws = [w for w in words if w.phrase == phrase]
        segments.append({"start": ws[0].start, "end": ws[-1].end, "text": " ".join(w.text for w in ws),
                         "words": [{"word": w.text, "start": w.start, "end": w.end} for w in ws]})
    return json.dumps({"language": "en", "segments": segments}, indent=1) + "\n"


def read_words(path: str | Path) -> list[Word]:
    """Read back what `format_transcript` wrote (users' transcripts go through pipeline.sources.transcripts)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [Word(float(w["start"]), float(w["end"]), w["word"], k)
            for k, seg in enumerate(data["segments"]) for w in seg["words"]]


# --- video ---------------------------------------------------------------------------------

@dataclass
class _Sprite:
    """The head-and-shoulders cut-out, with masks saying where the face and the mouth are."""

    rgb: "np.ndarray"  # float32 [3, h, w], 0..255
    alpha: "np.ndarray"  # float32 [h, w], 1 inside the portrait, feathered to 0
    face: "np.ndarray"  # float32 [h, w], 1 on the face, feathered
    mouth_dy: "np.ndarray"  # float32 [h, w], upward pixel shift per unit of valence (smile)

    @classmethod
    def load(cls, frame_height: int) -> "_Sprite":
        import matplotlib.cbook as cbook
        from PIL import Image

        photo = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
        x0, y0, x1, y1 = _CROP
        scale = 0.77 * frame_height / (y1 - y0)  # portrait height ~3/4 of the frame leaves room to move
        w, h = int(round((x1 - x0) * scale)), int(round((y1 - y0) * scale))
        rgb = np.asarray(photo.crop(_CROP).resize((w, h), Image.BICUBIC), dtype=np.float32).transpose(2, 0, 1)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

        def ellipse(cx: float, cy: float, rx: float, ry: float, feather: float) -> np.ndarray:
            r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
            return np.clip((1.0 - r) / feather, 0.0, 1.0)

        alpha = ellipse(w / 2, h * 0.55, w * 0.52, h * 0.62, 0.15)
        fx0, fy0, fx1, fy1 = ((c - o) * scale for c, o in zip(_FACE_BOX, (x0, y0, x0, y0)))
        face = ellipse((fx0 + fx1) / 2, (fy0 + fy1) / 2, (fx1 - fx0) * 0.62, (fy1 - fy0) * 0.6, 0.25)
        mx, my, mhw = (_MOUTH[0] - x0) * scale, (_MOUTH[1] - y0) * scale, _MOUTH[2] * scale
        u = (xx - mx) / mhw
        # Corners (|u| ~ 1) rise most, the middle of the lips stays: a smile's curve.
        mouth_dy = 0.2 * mhw * np.clip(u, -1.4, 1.4) ** 2 * np.exp(-((yy - my) / (0.55 * mhw)) ** 2) \
            * (np.abs(u) < 1.6)
        return cls(rgb, alpha.astype(np.float32), face.astype(np.float32), mouth_dy.astype(np.float32))


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A static room-like backdrop: a coloured gradient wall and a few soft shapes."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(40, 200, 3), rng.uniform(20, 160, 3)
    bg = top[:, None, None] + (bottom - top)[:, None, None] * (yy / height)[None]
    for _ in range(3):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.1, 0.3) * width
        blob = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        bg += rng.uniform(-50, 50, 3)[:, None, None] * blob[None]
    return np.clip(bg, 0, 255).astype(np.float32)


def _render_frames(rng: np.random.Generator, sprite: _Sprite, valence: np.ndarray, arousal: np.ndarray,
                   hidden: np.ndarray, p: DemoParams) -> np.ndarray:
    """Composite the valence-modulated face over the backdrop, jittered in proportion to arousal."""
    import torch
    import torch.nn.functional as F

    n = len(valence)
    _, h, w = sprite.rgb.shape
    # Mouth warp: output row y samples the source at y + v * dy, so content moves up for v > 0.
    ys = torch.linspace(-1, 1, h)
    xs = torch.linspace(-1, 1, w)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    v = torch.from_numpy(valence.astype(np.float32))
    dy = torch.from_numpy(sprite.mouth_dy) * (2.0 / (h - 1))
    grid = torch.stack([gx.expand(n, h, w), gy + v[:, None, None] * dy], dim=-1)
    src = torch.from_numpy(sprite.rgb)[None].expand(n, 3, h, w)
    faces = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True).numpy()
    # Brightness and tint of the face region: brighter and warmer when positive.
    m = sprite.face[None, None]
    vv = valence.astype(np.float32)[:, None, None, None]
    tint = np.array([14.0, 0.0, -14.0], dtype=np.float32)[None, :, None, None]
    faces = faces * (1 + 0.30 * vv * m) + tint * vv * m
    faces = np.clip(faces, 0, 255).transpose(0, 2, 3, 1).astype(np.float32)  # [n, h, w, 3]

    bg = _background(rng, p.width, p.height).transpose(1, 2, 0)
    # Head position: a slow drift plus frame-to-frame jitter whose size follows arousal.
    t = np.arange(n) / p.fps
    drift = np.stack([8 * np.sin(2 * np.pi * rng.uniform(0.05, 0.15) * t + rng.uniform(0, 6.3)),
                      4 * np.sin(2 * np.pi * rng.uniform(0.05, 0.15) * t + rng.uniform(0, 6.3))], 1)
    noise = rng.standard_normal((n + 2, 2))
    noise = (noise[:-2] + noise[1:-1] + noise[2:]) / math.sqrt(3)  # a little temporal smoothing
    jitter = noise * (0.5 + 5.5 * (arousal[:, None] + 1) / 2)
    margin_x, margin_y = (p.width - w) // 2, (p.height - h) // 2
    pos = np.round(drift + jitter).astype(int)
    pos[:, 0] = np.clip(pos[:, 0] + margin_x, 0, p.width - w)
    pos[:, 1] = np.clip(pos[:, 1] + margin_y, 0, p.height - h)

    alpha = sprite.alpha[..., None]
    frames = np.empty((n, p.height, p.width, 3), dtype=np.uint8)
    frames[:] = np.round(bg).astype(np.uint8)
    for k in np.flatnonzero(~hidden):
        x, y = pos[k]
        blended = bg[y:y + h, x:x + w] * (1 - alpha) + faces[k] * alpha
        frames[k, y:y + h, x:x + w] = np.round(blended).astype(np.uint8)
    return frames


# --- audio ---------------------------------------------------------------------------------

def _synth_voice(rng: np.random.Generator, words: list[Word], arousal: np.ndarray, fps: float,
                 seconds: float, sr: int = AUDIO_SR) -> np.ndarray:
    """A voiced, formant-filtered buzz that 'speaks' the words' syllables; arousal drives level and pitch.

    Additive synthesis (harmonics of f0 weighted by a vowel's formant envelope) keeps it
    to numpy; the level is linear in arousal so loudness features (RMS, MFCC c0) carry it.
    """
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    a = np.interp(t, np.arange(len(arousal)) / fps, arousal)
    level = (a + 1) / 2  # 0..1

    # Syllable envelope and vowel targets; between phrases the voice stops and breath noise remains,
    # kept audible so 100 ms loudness follows arousal rather than the rhythm of the words.
    env = np.zeros(n)
    centres, vowels = [], []
    for w_ in words:
        n_syl = max(1, round((w_.end - w_.start) / 0.2))
        bounds = np.linspace(w_.start, w_.end, n_syl + 1)
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            i0, i1 = int(s0 * sr), int(s1 * sr)
            tau = (np.arange(i1 - i0) + 0.5) / max(1, i1 - i0)
            env[i0:i1] = np.maximum(env[i0:i1], 0.8 + 0.2 * np.sin(np.pi * tau))
            centres.append((s0 + s1) / 2)
            vowels.append(_VOWELS[int(rng.integers(len(_VOWELS)))])
    win = np.hanning(int(0.03 * sr))
    env = np.convolve(env, win / win.sum(), mode="same")  # no clicks at syllable edges
    breath = np.convolve(np.maximum(0.0, 0.75 - env), win / win.sum(), mode="same") + 0.05
    if centres:
        formants = np.stack([np.interp(t, centres, np.array(vowels)[:, j]) for j in range(3)], 1)
    else:
        formants = np.tile(_VOWELS[0], (n, 1))

    f0 = 95 + 110 * level + 6 * np.sin(2 * np.pi * 0.8 * t + rng.uniform(0, 6.3))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    norm = np.zeros(n)
    for k in range(1, int(4000 / f0.min()) + 1):
        fk = k * f0
        gain = np.zeros(n)
        for j in range(3):
            gain += _FORMANT_GAIN[j] / (1 + ((fk - formants[:, j]) / (_FORMANT_BW[j] / 2)) ** 2)
        gain = (gain + 0.02) / k ** 0.5 * (fk < 4000)
        out += gain * np.sin(k * phase)
        norm += gain ** 2
    out /= np.sqrt(norm / 2) + 1e-9  # unit RMS whatever the vowel and pitch
    signal = (out * env + rng.standard_normal(n) * breath) * (0.015 + 0.25 * level)
    return np.clip(signal, -0.99, 0.99).astype(np.float32)


def _describe(p: DemoParams, rows: list[tuple[str, str, str, str, str]]) -> str:
    n_train, n_val, n_test = split_counts(p.n_trials)
    return f"""affpipe demo dataset (synthetic, built offline by synthetic/demo_data.py, builder version {p.version})

{p.n_trials} trials ({n_train} train, {n_val} val, {n_test} test), {p.seconds:g} s each at {p.fps} fps,
{p.width}x{p.height}, {p.n_frames} frames per video; seed {p.seed}. Layout follows Aff-Wild2:
  videos/<trial>.mp4                 MPEG-4 part 2 video + mono AAC audio ({AUDIO_SR} Hz), written with PyAV
  annotations/VA_Estimation_Challenge/{{Train_Set,Validation_Set,Test_Set}}/<trial>.txt
                                     header "valence,arousal", one "v,a" line per video frame,
                                     -5 = unlabelled (the subject is out of view for 3 frames)
  transcripts/<trial>.json           Whisper-style segments (one per phrase) with word timings
  manifest.csv                       trial,video,split,annotation,transcript (relative paths)
Unlike a real ABAW test set, the test trial keeps its annotation so the demo can report CCC.

How it was made: per trial, valence and arousal are smooth random curves (sums of three
0.1-0.5 Hz sinusoids with random phases) rescaled into [-0.95, 0.95]. They are then rendered
into the media so models can recover them:
  valence -> face of the Grace Hopper photo bundled with matplotlib: brightness x(1 + 0.3 v)
             and a warm (v > 0) / cool (v < 0) tint on the face region, plus a mouth-corner
             warp (corners up for v > 0, down for v < 0); these survive face alignment.
  valence -> words: positive ("wonderful", "happy", ...) when v > 0.3 at the word,
             negative ("awful", "sad", ...) when v < -0.3, neutral ("table", ...) otherwise.
  arousal -> voice: a formant-filtered harmonic buzz speaking the words' syllables, with level
             linear in arousal (about 22 dB range) and pitch 95-205 Hz rising with arousal.
  arousal -> head jitter: frame-to-frame displacement of the face grows with arousal.
The face photo is a public-domain portrait (US Navy) shipped in matplotlib's sample data.
Trials: {", ".join(r[0] + " (" + r[2] + ")" for r in rows)}.
"""


def dataset_digest(out_dir: str | Path) -> str:
    """SHA-256 over the annotation and transcript files (what must be byte-identical for a seed)."""
    out_dir = Path(out_dir)
    h = hashlib.sha256()
    for f in sorted([*(out_dir / "annotations").rglob("*.txt"), *(out_dir / "transcripts").glob("*.json")]):
        h.update(f.relative_to(out_dir).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()

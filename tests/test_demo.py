"""The demo dataset: real files that decode with decord and carry their ground truth where models look.

A demo whose labels are not recoverable from the media would train a model on noise and
"work" anyway, so these tests measure the encoding the way the extractors will see it:
decord for frames and audio, MTCNN for faces, the product's own annotation and
transcript readers.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources.annotations import read_va
from synthetic.demo_data import (AUDIO_SR, NEGATIVE_WORDS, POSITIVE_WORDS, STAMP_NAME, build_demo_dataset,
                           dataset_digest, read_words, split_counts, word_class)
from pipeline.sources.manifest import read_manifest
from pipeline.sources.transcripts import read_transcript

decord = pytest.importorskip("decord")

FPS, SECONDS, N_FRAMES = 25, 6.0, 150


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The default dataset, exactly what `affpipe demo` builds."""
    return build_demo_dataset(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def trials(demo):
    return read_manifest(demo)


def pearson(x, y) -> float:
    return float(np.corrcoef(np.asarray(x, float), np.asarray(y, float))[0, 1])


def test_manifest_layout_and_splits(demo, trials):
    assert demo.name == "manifest.csv"
    assert demo.read_text().splitlines()[0] == "trial,video,split,annotation,transcript"
    assert [t.split for t in trials] == ["train"] * 5 + ["val"] * 2 + ["test"]
    set_dir = {"train": "Train_Set", "val": "Validation_Set", "test": "Test_Set"}
    for t in trials:
        assert t.video.is_file() and t.annotation.is_file() and t.transcript.is_file()
        assert t.annotation.name == f"{t.trial}.txt" and t.annotation.parent.name == set_dir[t.split]
        assert re.fullmatch(r"\d+-25-320x240", t.trial)
    assert "Grace Hopper" in (demo.parent / "DATASET.txt").read_text()
    size = sum(f.stat().st_size for f in demo.parent.rglob("*") if f.is_file())
    assert size < 8_000_000, f"demo dataset is {size / 1e6:.1f} MB"
    assert split_counts(8) == (5, 2, 1) and split_counts(16) == (10, 4, 2) and split_counts(3) == (1, 1, 1)


def test_annotations_are_affwild2_files(trials):
    for t in trials:
        lines = t.annotation.read_text().splitlines()
        assert lines[0] == "valence,arousal" and len(lines) == 1 + N_FRAMES
        assert all(re.fullmatch(r"-?\d\.\d{3},-?\d\.\d{3}|-5,-5", line) for line in lines[1:])
        va = read_va(t.annotation)
        assert 1 <= (~va.labelled).sum() <= 5  # a short faceless run, marked -5
        v, a = va.valence[va.labelled], va.arousal[va.labelled]
        assert np.abs(v).max() <= 0.95 and np.abs(a).max() <= 0.95
        assert v.min() < -0.3 < 0.3 < v.max() and a.min() < -0.3 < 0.3 < a.max()  # both signs in every trial
        assert np.abs(np.diff(va.valence[:10])).max() < 0.15  # smooth, not frame noise


def test_videos_decode_frame_exact_with_decord(trials):
    for t in trials:
        vr = decord.VideoReader(str(t.video))
        assert len(vr) == N_FRAMES == len(read_va(t.annotation))
        frames = vr.get_batch(list(range(N_FRAMES))).asnumpy()  # decodes through to the last frame
        assert frames.shape == (N_FRAMES, 240, 320, 3)
        stamps = vr.get_frame_timestamp(list(range(N_FRAMES)))[:, 0]
        np.testing.assert_allclose(stamps, np.arange(N_FRAMES) / FPS, atol=1e-3)
        assert frames.std(axis=0).mean() > 1.0  # the face moves and changes


def _frame_rms(audio: np.ndarray, times: np.ndarray, win: float = 0.1) -> np.ndarray:
    half = int(win * AUDIO_SR / 2)
    centres = ((times + 0.5 / FPS) * AUDIO_SR).astype(int)  # middle of each video frame
    return np.array([np.sqrt(np.mean(audio[max(0, c - half):c + half] ** 2)) for c in centres])


def test_audio_decodes_and_its_loudness_and_pitch_follow_arousal(trials):
    import torch
    import torchaudio

    pitch_hi, pitch_lo = [], []
    for i, t in enumerate(trials):
        audio = decord.AudioReader(str(t.video), sample_rate=AUDIO_SR, mono=True)[:].asnumpy()
        assert audio.shape[0] == 1 and abs(audio.shape[1] / AUDIO_SR - SECONDS) < 0.1
        audio = audio[0]
        assert 0.05 < np.abs(audio).max() < 1.0
        va = read_va(t.annotation)
        times = decord.VideoReader(str(t.video)).get_frame_timestamp(list(range(N_FRAMES)))[:, 0]
        rms = _frame_rms(audio, times)
        r = pearson(rms[va.labelled], va.arousal[va.labelled])
        assert r > 0.8, f"{t.trial}: 100 ms RMS vs arousal r={r:.2f}"
        if i % 2:
            continue  # pitch tracking is slow-ish; half the trials give plenty of frames
        f0 = torchaudio.functional.detect_pitch_frequency(torch.from_numpy(audio)[None], AUDIO_SR,
                                                          frame_time=0.02, win_length=5)[0].numpy()
        f0 = np.interp(times, np.linspace(0, len(audio) / AUDIO_SR, len(f0)), f0)
        pitch_hi += list(f0[va.labelled & (va.arousal > 0.3)])
        pitch_lo += list(f0[va.labelled & (va.arousal < -0.3)])
    assert np.median(pitch_hi) - np.median(pitch_lo) > 25, (np.median(pitch_hi), np.median(pitch_lo))


def test_face_is_found_and_carries_valence_and_arousal(trials):
    """MTCNN on pairs of consecutive frames: presence, face brightness ~ valence,
    mouth corners ~ valence, frame-to-frame head motion ~ arousal."""
    import torch
    from facenet_pytorch import MTCNN
    from PIL import Image

    torch.manual_seed(0)
    mtcnn = MTCNN(keep_all=False, device="cpu", min_face_size=60)  # the face is ~80 px wide: fewer pyramid levels
    found = total = 0
    bright, mouth, valence, motion, arousal = [], [], [], [], []
    for t in (trials[0], trials[5], trials[7]):  # a train, a val and the test trial
        va = read_va(t.annotation)
        idx = sorted({k for j in range(0, N_FRAMES - 1, 5) for k in (j, j + 1)})
        frames = decord.VideoReader(str(t.video)).get_batch(idx).asnumpy()
        boxes, _, marks = mtcnn.detect([Image.fromarray(f) for f in frames], landmarks=True)
        centre = {}
        trial_bright, trial_val = [], []
        for k, f, b, m in zip(idx, frames, boxes, marks):
            total += 1
            if b is None:
                continue
            found += 1
            b, m = np.asarray(b, dtype=float), np.asarray(m, dtype=float)  # batched detect gives object arrays
            centre[k] = (b[0][:2] + b[0][2:]) / 2
            if not va.labelled[k]:
                continue
            x0, y0, x1, y1 = np.round(b[0]).astype(int)
            trial_bright.append(f[max(0, y0):y1, max(0, x0):x1].mean())
            trial_val.append(va.valence[k])
            eyes, corners = m[0][:2], m[0][3:5]
            mouth.append((corners[:, 1].mean() - eyes[:, 1].mean()) / np.linalg.norm(eyes[1] - eyes[0]))
        r = pearson(trial_bright, trial_val)
        assert r > 0.8, f"{t.trial}: face brightness vs valence r={r:.2f}"
        bright += trial_bright
        valence += trial_val
        for j in range(0, N_FRAMES - 1, 5):
            if j in centre and j + 1 in centre and va.labelled[j] and va.labelled[j + 1]:
                motion.append(np.linalg.norm(centre[j + 1] - centre[j]))
                arousal.append(va.arousal[j])
    assert found / total >= 0.95, f"MTCNN found a face in {found}/{total} frames"
    assert pearson(bright, valence) > 0.8
    assert pearson(mouth, valence) < -0.3  # corners rise (smaller y) as valence grows
    motion, arousal = np.array(motion), np.array(arousal)
    assert motion[arousal > 0.3].mean() > 1.3 * motion[arousal < -0.3].mean()


def test_transcripts_parse_and_follow_valence(trials):
    classes = set()
    pools = {"positive": {w for w, _ in POSITIVE_WORDS}, "negative": {w for w, _ in NEGATIVE_WORDS}}
    for t in trials:
        segments = read_transcript(t.transcript)  # the product's reader
        words = [w for s in segments for w in s.words]
        assert len(segments) >= 2 and len(words) >= 6
        assert [(w.start, w.end, w.text) for w in words] == [(w.start, w.end, w.text) for w in read_words(t.transcript)]
        assert all(0 <= w.start < w.end <= SECONDS for w in words)
        assert all(a.end < b.start for a, b in zip(words, words[1:]))
        va = read_va(t.annotation)
        for w in words:
            frame = int((w.start + w.end) / 2 * FPS)
            if not va.labelled[frame]:
                continue  # the word was chosen from the underlying curve, which the file hides here
            cls = next((c for c, ws in pools.items() if w.text in ws), "neutral")
            assert cls == word_class(float(va.valence[frame])), (t.trial, w, va.valence[frame])
            classes.add(cls)
    assert classes == {"positive", "neutral", "negative"}


def test_same_seed_rebuilds_identically_and_is_reused(tmp_path):
    small = dict(n_trials=3, seconds=2.0, seed=7)
    a = build_demo_dataset(tmp_path / "a", **small)
    b = build_demo_dataset(tmp_path / "b", **small)
    assert dataset_digest(a.parent) == dataset_digest(b.parent)
    for rel in ("annotations/VA_Estimation_Challenge/Train_Set/1-25-320x240.txt", "transcripts/2-25-320x240.json"):
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()

    def mtimes() -> dict:
        return {f: f.stat().st_mtime_ns for f in a.parent.rglob("*") if f.is_file() and f.suffix != ".lock"}

    before = mtimes()
    assert build_demo_dataset(tmp_path / "a", **small) == a  # same parameters: reused, nothing rewritten
    assert mtimes() == before

    (a.parent / "videos" / "2-25-320x240.mp4").unlink()  # an incomplete dataset is rebuilt, not reused
    build_demo_dataset(tmp_path / "a", **small)
    assert len(decord.VideoReader(str(a.parent / "videos" / "2-25-320x240.mp4"))) == 50
    assert dataset_digest(a.parent) == dataset_digest(b.parent)

    build_demo_dataset(tmp_path / "a", **{**small, "seed": 8})  # other parameters: rebuilt
    assert dataset_digest(a.parent) != dataset_digest(b.parent)
    build_demo_dataset(tmp_path / "a", n_trials=4, seconds=2.0, seed=7)
    assert len(read_manifest(a)) == 4
    build_demo_dataset(tmp_path / "a", **small)  # files of the dropped fourth trial are removed
    assert not list(a.parent.rglob("4-25-320x240.*"))
    assert json.loads((a.parent / STAMP_NAME).read_text())["params"]["n_trials"] == 3
    assert dataset_digest(a.parent) == dataset_digest(b.parent)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_trials=2), "at least 3 trials"),
    (dict(size=(321, 240)), "even"),
    (dict(seconds=1.0), "at least 2 seconds"),
])
def test_bad_parameters_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_demo_dataset(tmp_path, **kwargs)

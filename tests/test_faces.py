"""faces stage: tracking rules on synthetic boxes, detection + tracking on the real clips,
track-guided detection against full-frame detection, alignment checked by re-detecting on the
aligned crop, aligned_faces mode, no-face trials. (Identity switches: test_faces_identity.py.)"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import numpy as np
import pytest

from pipeline.media.align import align_faces, similarity_transform, template, template_for_image, transform_points
from pipeline.sources.manifest import Trial
from pipeline.engine.stage import ShardData, StageError
from pipeline.stages.faces import FacesStage, aligned_image_path, mtcnn_weight_files
from pipeline.media.tracking import TrackParams, choose_subject, fill_between, iou, match, track_subject

CLIPS = ["cremad/1001_DFA_ANG_XX.flv", "cremad/1001_DFA_DIS_XX.flv", "cremad/1001_DFA_FEA_XX.flv",
         "cremad/1001_DFA_HAP_XX.flv", "cremad/1001_DFA_NEU_XX.flv", "cremad/1001_DFA_SAD_XX.flv",
         "grid/bbaf2n.mpg", "grid/brbk7n.mpg", "grid/id2_vcd_swwp2s.mpg", "grid/lbax4n.mpg",
         "grid/lbbc2a.mpg", "grid/lwbsza.mpg", "grid/swiz3n.mpg"]


@functools.lru_cache(maxsize=None)
def probe_shard(video: Path) -> ShardData:
    """The upstream probe shard as the engine would hand it over, built from the real decoder."""
    from pipeline.media.decode import probe_video

    p = probe_video(video, isolate=False)
    n = int(p.n_decoded)
    return ShardData(stage="probe", key="test", path=Path(video), frame=np.arange(n),
                     time=np.asarray(p.time, dtype=np.float64), features=None, valid=None, extras={},
                     attrs={"fps": p.fps, "width": p.width, "height": p.height, "n_decoded": n})


def trial_for(video: Path, **kw) -> Trial:
    return Trial(trial=Path(video).stem, video=Path(video), split="train", **kw)


@contextlib.contextmanager
def torch_threads(n: int):
    """MTCNN runs many tiny pyramid tensors: a second thread gains little on an idle 2-core box
    and costs several times the CPU when the cores are shared (measured), so tests detect on one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_faces(video: Path, **settings):
    stage = FacesStage(FacesStage.Settings(**settings))
    probe = probe_shard(Path(video))
    with torch_threads(1):
        return stage.run(trial_for(video), {"probe": probe}), probe


# --- tracking: pure functions on synthetic boxes --------------------------------------------------

def box(cx: float, cy: float, size: float) -> np.ndarray:
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def test_subject_rules_pick_largest_left_right():
    boxes = np.stack([box(300, 100, 50), box(100, 100, 40), box(200, 100, 80)])
    assert choose_subject(boxes, "largest") == 2
    assert choose_subject(boxes, "left") == 1
    assert choose_subject(boxes, "right") == 0
    with pytest.raises(ValueError, match="subject"):
        choose_subject(boxes, "middle")


def test_iou_and_match_basics():
    a = box(100, 100, 50)
    assert iou(a, a[None])[0] == pytest.approx(1.0)
    assert iou(a, box(300, 100, 50)[None])[0] == 0.0
    # the nearer of two candidates wins; a far-away face does not continue the track
    assert match(a, np.stack([box(200, 100, 50), box(105, 102, 52)])) == 1
    assert match(a, box(300, 300, 50)[None]) is None


def test_two_faces_crossing_keep_identity_even_when_the_other_grows():
    """A (larger at the start) walks right, B walks left and grows past A: the track stays on A."""
    n = 40
    detections, truth_a = [], []
    for t in range(n):
        a = box(100 + 8 * t, 200, 60)
        b = box(420 - 8 * t, 215, 50 + 1.5 * t)  # larger than A from t = 7 on
        order = [a, b] if t % 2 else [b, a]  # detector order carries no identity
        detections.append(np.stack(order))
        truth_a.append(0 if t % 2 else 1)
    chosen = track_subject(list(range(n)), detections, "largest")
    assert (chosen == np.array(truth_a)).all()
    # re-picking the largest face per frame (what the tracker avoids) would switch to B
    naive = [choose_subject(d, "largest") for d in detections]
    assert naive != truth_a


def test_face_disappearing_and_coming_back_keeps_the_track_over_a_short_gap():
    """The subject (right) vanishes for 10 frames while a bystander stays; the track resumes on the subject."""
    frames = list(range(30))
    bystander = box(100, 200, 90)
    subject = box(400, 200, 60)
    detections: list[np.ndarray | None] = []
    for t in frames:
        if 10 <= t < 20:
            detections.append(bystander[None])
        else:
            detections.append(np.stack([bystander, subject + np.array([1, 0, 1, 0]) * (t % 3)]))
    chosen = track_subject(frames, detections, "right", TrackParams(max_gap=15))
    assert (chosen[:10] == 1).all()
    assert (chosen[10:20] == -1).all(), "during the gap the bystander must not take over the track"
    assert (chosen[20:] == 1).all()


def test_long_gap_rechooses_by_the_subject_rule():
    frames = list(range(0, 60, 2))  # detection every 2nd frame
    left, right = box(100, 200, 60), box(400, 200, 60)
    detections: list[np.ndarray | None] = [np.stack([left, right]) if f < 10 or f >= 50 else None
                                           for f in frames]
    chosen = track_subject(frames, detections, "left", TrackParams(max_gap=20))
    assert chosen[0] == 0
    # the subject comes back at another position after a 40-frame gap: chosen again by the rule
    detections = [np.stack([left, right]) if f < 10 else (right[None] + 150 if f >= 50 else None) for f in frames]
    chosen = track_subject(frames, detections, "left", TrackParams(max_gap=20))
    assert chosen[-1] == 0 and (chosen[5:25] == -1).all()
    # ... but a short gap does not let a far-away face capture the track
    chosen = track_subject(frames, detections, "left", TrackParams(max_gap=100))
    assert (chosen[5:] == -1).all()


def test_fill_between_interpolates_and_carries():
    frames = np.array([0, 4, 8, 12])
    valid = np.array([True, True, False, True])
    vals = {"b": np.array([[0.0], [4.0], [99.0], [12.0]])}
    out_valid, out, filled = fill_between(14, frames, valid, vals)
    b = out["b"][:, 0]
    np.testing.assert_allclose(b[:5], [0, 1, 2, 3, 4])  # interpolated between two detections
    assert out_valid[5] and out_valid[6] and b[5] == 4 and b[6] == 4  # carried half way into the gap
    assert not out_valid[7] and not out_valid[8] and np.isnan(b[8])  # nearer the missed detection
    assert out_valid[10] and b[10] == 12 and not out_valid[9]
    assert out_valid[13] and b[13] == 12  # after the last detection
    assert filled.tolist() == [False, True, True, True, False, True, True, False, False, False, True, True, False,
                               True]


# --- alignment -------------------------------------------------------------------------------------

def test_similarity_transform_recovers_rotation_scale_translation():
    rng = np.random.default_rng(0)
    t = template(112)
    for _ in range(5):
        a, s = rng.uniform(-0.6, 0.6), rng.uniform(0.4, 3.0)
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        src = (t - 56) @ rot.T * s + rng.uniform(50, 300, 2)
        m = similarity_transform(src[None], t)
        np.testing.assert_allclose(transform_points(m, src[None])[0], t, atol=1e-9)
    np.testing.assert_allclose(template(224), t * 2)
    np.testing.assert_allclose(template_for_image(112, 112), t)


def test_align_prefilters_faces_shrunk_by_more_than_two():
    """Fine stripes (period 2 px) on a face shrunk 5x come out as flat grey, not aliased stripes."""
    frame = np.zeros((1, 800, 800, 3), np.uint8)
    frame[0, :, ::2] = 255
    crop = align_faces(frame, ((template(112) - 56) * 5 + 400)[None], 112)[0, 20:90, 20:90]
    assert abs(crop.mean() - 127.5) < 10 and crop.std() < 20


def test_align_faces_rejects_nan_and_blanks_degenerate_landmarks():
    with pytest.raises(ValueError, match="NaN"):
        align_faces(np.zeros((1, 50, 50, 3), np.uint8), np.full((1, 5, 2), np.nan))
    marks = np.stack([np.full((5, 2), 60.0), template(112) + 4])  # all five points equal: no transform
    crops = align_faces(np.full((2, 120, 120, 3), 200, np.uint8), marks, 112)
    assert not crops[0].any() and crops[1].mean() > 150


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A frame with detail at every scale (noise plus gradients), so any misplaced sample shows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), (xx + yy) % 256], axis=-1)
    return ((base + rng.integers(0, 60, (h, w, 3))) % 256).astype(np.uint8)[None]


@pytest.mark.parametrize("scale, shift", [(1.0, (300, 200)), (0.6, (500, 250)), (3.5, (640, 360)),
                                          (5.0, (-150, 100)), (2.0, (1150, 650)), (1.3, (1500, 100))])
def test_windowed_warp_matches_the_whole_frame_warp(scale, shift):
    """Sampling only the face's window of the frame gives the whole-frame warp within one grey level,
    for faces enlarged, shrunk (area prefilter), cut by every frame edge and off the frame entirely."""
    frame = _textured(720, 1280)
    t = template(112) - 56
    rot = np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]])
    marks = ((t @ rot.T) * scale + np.asarray(shift, float))[None]
    windowed = align_faces(frame, marks, 112)
    whole = align_faces(frame, marks, 112, crop_to_face=False)
    diff = np.abs(windowed.astype(int) - whole.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    if shift == (1500, 100):  # the whole face lies right of the frame: black either way
        assert not whole.any() and not windowed.any()
    else:
        assert whole.any()


def test_windowed_crop_does_not_depend_on_the_faces_batched_with_it():
    """A crop is a function of its frame and landmarks alone: batched with faces whose windows are larger
    (rotated 45 degrees, enlarged) it is the same bytes. Sizing the batch by its largest window instead
    changed 599 values of these five crops."""
    frame = _textured(720, 1280)
    t = template(112) - 56

    def face(scale: float, angle: float, cx: float, cy: float) -> np.ndarray:
        r = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        return (t @ r.T) * scale + np.array([cx, cy])

    base = np.stack([face(s, 0.1 * k, 200 + 90 * k, 150 + 40 * k) for k, s in enumerate([0.9, 1.0, 1.1, 1.2, 1.3])])
    big = np.stack([face(1.25, np.pi / 4, 900, 400), face(1.9, 0.8, 700, 500)])
    alone = np.concatenate([align_faces(frame, base[k:k + 1], 112) for k in range(len(base))])
    together = align_faces(frame, np.concatenate([base, big]), 112, index=np.zeros(len(base) + len(big), int))
    np.testing.assert_array_equal(together[:len(base)], alone)


def test_windowed_warp_on_real_frames_and_index(shared_media):
    """On decoded video with the stage's landmarks: within one grey level of the whole-frame warp in
    under 0.1% of the values; `index` picks frames without copying them and gives the same crops."""
    from pipeline.media.decode import iter_frames

    video = shared_media / CLIPS[0]
    out, probe = run_faces(video)
    frames = np.concatenate([c for _, c in iter_frames(video, 32)])
    pick = np.flatnonzero(out.valid[:32])
    marks = out.extras["landmarks"][pick]
    windowed = align_faces(frames, marks, 112, index=pick)
    whole = align_faces(frames[pick], marks, 112, crop_to_face=False)
    diff = np.abs(windowed.astype(int) - whole.astype(int))
    assert len(pick) > 20 and diff.max() <= 1 and (diff > 0).mean() < 1e-3
    np.testing.assert_array_equal(windowed, align_faces(frames[pick], marks, 112))
    with pytest.raises(ValueError, match="index"):
        align_faces(frames, marks, 112, index=pick + 100)


# --- the stage on real clips -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def full_detection(shared_media):
    """Every frame of one clip of each corpus through the detector (reference for the cheaper modes)."""
    return {clip: run_faces(shared_media / clip, detect_every=1, guided=False, batch_size=8)
            for clip in ("cremad/1001_DFA_ANG_XX.flv", "grid/bbaf2n.mpg")}


@pytest.fixture(scope="module")
def guided_detection(shared_media):
    """The default: every frame detected, track-guided (O-Net on the track, a region, or the full frame)."""
    return {clip: run_faces(shared_media / clip, batch_size=8)
            for clip in ("cremad/1001_DFA_ANG_XX.flv", "grid/bbaf2n.mpg")}


@pytest.fixture(scope="module")
def sparse_detection(shared_media):
    """All clips the cheap way: every 3rd frame detected at half resolution, the rest tracked."""
    return {clip: run_faces(shared_media / clip, detect_every=3, detect_scale=0.5, batch_size=8) for clip in CLIPS}


def test_full_detection_finds_the_face_in_every_frame(full_detection):
    for clip, (out, probe) in full_detection.items():
        n = probe.n_frames
        assert out.valid.shape == (n,) and out.extras["boxes"].shape == (n, 4)
        assert out.extras["landmarks"].shape == (n, 5, 2) and out.extras["scores"].shape == (n,)
        assert out.valid.mean() >= 0.95, clip
        assert out.attrs["mode"] == "detect" and out.attrs["detected_frames"] == n
        assert len(out.attrs["weights"]) == 64  # sha256 of MTCNN's shipped weight files
        assert out.attrs["tracked_frames"] == 0
        assert out.attrs["guided"] is False and out.attrs["full_frames"] == n and out.attrs["refined_frames"] == 0
        v = out.valid
        boxes, marks = out.extras["boxes"][v], out.extras["landmarks"][v]
        w, h = probe.attrs["width"], probe.attrs["height"]
        assert (boxes[:, 2] - boxes[:, 0] > 40).all() and (boxes[:, 0] > -10).all() and (boxes[:, 2] < w + 10).all()
        # landmarks lie inside their box; left eye left of right eye, eyes above the mouth
        assert (marks[..., 0] >= boxes[:, None, 0]).all() and (marks[..., 0] <= boxes[:, None, 2]).all()
        assert (marks[:, 0, 0] < marks[:, 1, 0]).all() and (marks[:, :2, 1].max(1) < marks[:, 3:, 1].min(1)).all()
        assert (out.extras["scores"][v] > 0.9).all()
        assert h > 0


def test_every_shared_clip_tracked_in_95_percent_of_frames(sparse_detection):
    for clip, (out, probe) in sparse_detection.items():
        n = probe.n_frames
        assert out.valid.shape == (n,), clip
        assert out.valid.mean() >= 0.95, f"{clip}: face in {out.valid.mean():.0%} of frames"
        assert out.attrs["detected_frames"] == len(range(0, n, 3)) + (1 if (n - 1) % 3 else 0)
        assert out.attrs["tracked_frames"] > 0
        inval = ~out.valid
        assert np.isnan(out.extras["boxes"][inval]).all() and np.isfinite(out.extras["boxes"][out.valid]).all()


def test_sparse_half_scale_track_matches_full_detection(full_detection, sparse_detection):
    """Boxes found at half scale map back onto full-resolution ones; interpolated frames follow the face."""
    for clip, (full, _) in full_detection.items():
        sparse, _ = sparse_detection[clip]
        n = full.valid.shape[0]
        both = full.valid & sparse.valid
        size = full.extras["boxes"][:, 2] - full.extras["boxes"][:, 0]
        err = np.abs(sparse.extras["landmarks"] - full.extras["landmarks"]).max(axis=(1, 2)) / size
        detected = np.zeros(n, bool)
        detected[::3] = detected[n - 1] = True
        assert both[detected].sum() >= 15 and both[~detected].sum() >= 30, clip
        assert np.median(err[both & detected]) < 0.05, f"{clip}: detected frames off by {err[both & detected]}"
        assert np.median(err[both & ~detected]) < 0.05 and err[both].max() < 0.2, clip


def test_track_guided_detection_agrees_with_full_frame_detection(full_detection, guided_detection):
    """Issue 12's targets on real clips: >= 99% of the frames found, median box IoU >= 0.9, landmarks close.

    Each guided frame is a real detection (O-Net scores, regresses and places landmarks on that frame),
    so no frame is filled in; most are the cheap O-Net step, some full-frame (the periodic refresh)."""
    from pipeline.media.guided_detection import agreement

    for clip, (full, probe) in full_detection.items():
        guided, _ = guided_detection[clip]
        n = probe.n_frames
        a = agreement(full.valid, full.extras["boxes"], full.extras["landmarks"],
                      guided.valid, guided.extras["boxes"], guided.extras["landmarks"])
        assert a["found"] >= 0.99 and a["iou_median"] >= 0.9 and a["iou_min"] >= 0.7, (clip, a)
        assert a["landmark_median"] < 0.03 and a["landmark_max"] < 0.1, (clip, a)
        at = guided.attrs
        assert at["guided"] is True and at["detected_frames"] == n and at["tracked_frames"] == 0
        assert at["refined_frames"] + at["region_frames"] + at["full_frames"] == n
        assert at["refined_frames"] >= 0.8 * n and at["full_frames"] >= -(-n // 30), (clip, at)
        assert at["acquisitions_count"] == 1 and at["identities"] == 1 and at["scene_cuts"] == 0
        assert (guided.extras["identity"][guided.valid] == 0).all()
        assert (guided.extras["track_segment"] == np.where(guided.valid, 0, -1)).all()


def _decode(video: Path, n: int) -> np.ndarray:
    from pipeline.media.decode import iter_frames

    return np.concatenate([c for _, c in iter_frames(video, n)])


def test_aligned_crops_put_the_landmarks_on_the_template(shared_media, full_detection):
    """Re-detect on the aligned crops: eyes, nose and mouth land within a few pixels of the template."""
    import torch
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True)
    t = template(112)
    for clip, (out, probe) in full_detection.items():
        frames = _decode(shared_media / clip, probe.n_frames)
        pick = np.flatnonzero(out.valid)[::6]
        crops = align_faces(frames[pick], out.extras["landmarks"][pick], 112)
        assert crops.shape == (len(pick), 112, 112, 3) and crops.dtype == np.uint8
        pad = 56  # MTCNN wants context around a face; detect on the crop centred on a grey canvas
        canvas = np.full((len(pick), 224, 224, 3), 127, np.uint8)
        canvas[:, pad:pad + 112, pad:pad + 112] = crops
        with torch_threads(1):
            _, _, points = mtcnn.detect(torch.from_numpy(canvas), landmarks=True)
        errs = []
        for p in points:
            assert p is not None, f"{clip}: no face on an aligned crop"
            errs.append(np.abs(np.asarray(p[0]) - pad - t))
        errs = np.stack(errs)  # [m,5,2] pixels on the 112 crop
        assert errs[:, :2].max() < 4.0, f"{clip}: eye error {errs[:, :2].max():.1f}px"
        assert np.median(errs) < 2.0


# --- aligned_faces mode, no-face, settings, keys ------------------------------------------------

def test_aligned_faces_mode_reads_images_and_marks_gaps(tmp_path, shared_media):
    from PIL import Image

    video = shared_media / "grid" / "bbaf2n.mpg"
    probe = probe_shard(video)
    n = probe.n_frames
    folder = tmp_path / "aligned"
    folder.mkdir()
    gap = set(range(10, 20)) | {n - 1}
    rng = np.random.default_rng(0)
    for f in range(n):
        if f not in gap:
            Image.fromarray(rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)).save(aligned_image_path(folder, f))
    (folder / "00030.jpg").write_bytes(b"not a jpeg")  # frame 29: unreadable -> invalid, counted
    assert aligned_image_path(folder, 0).name == "00001.jpg"
    trial = trial_for(video, aligned_faces=folder)
    out = FacesStage().run(trial, {"probe": probe})
    expected = np.array([f not in gap and f != 29 for f in range(n)])
    assert (out.valid == expected).all()
    assert out.attrs["mode"] == "aligned_faces"
    assert out.attrs["missing_images"] == len(gap) and out.attrs["unreadable_images"] == 1
    np.testing.assert_allclose(out.extras["landmarks"][0], template(112), atol=1e-4)
    assert np.isnan(out.extras["landmarks"][~expected]).all()
    # a folder of another size scales the template to it
    Image.fromarray(np.zeros((224, 200, 3), np.uint8)).save(aligned_image_path(folder, 12))
    out2 = FacesStage().run(trial, {"probe": probe})
    assert out2.valid[12]
    np.testing.assert_allclose(out2.extras["landmarks"][12], template_for_image(200, 224), atol=1e-4)
    # an empty folder means no face at all
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StageError) as err:
        FacesStage().run(trial_for(video, aligned_faces=empty), {"probe": probe})
    assert err.value.kind == "no-face"


def test_video_without_a_face_raises_no_face(tmp_path):
    from synthetic.media import write_video

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (24, 120, 160, 3), dtype=np.uint8)
    frames[12:] = 90  # noise, then a solid colour
    video = write_video(tmp_path / "noface.mp4", frames, fps=12)
    probe = probe_shard(video)
    with pytest.raises(StageError) as err, torch_threads(1):
        FacesStage(FacesStage.Settings(detect_every=2)).run(trial_for(video), {"probe": probe})
    assert err.value.kind == "no-face"
    assert str(err.value).startswith(f"{video}: no face found in any of {probe.n_frames} frames")


def test_trial_params_and_inputs_carry_subject_and_aligned_faces(tmp_path):
    stage = FacesStage()
    a = trial_for(tmp_path / "v.mp4")
    b = trial_for(tmp_path / "v.mp4", subject="left")
    c = trial_for(tmp_path / "v.mp4", aligned_faces=tmp_path / "crops")
    assert stage.trial_params(a) != stage.trial_params(b) != stage.trial_params(c)
    assert stage.trial_params(b)["subject"] == "left"
    weights = mtcnn_weight_files()  # MTCNN's weights are inputs of the key too
    assert stage.input_files(a) == [tmp_path / "v.mp4", *weights]
    assert stage.input_files(c) == [tmp_path / "v.mp4", tmp_path / "crops", *weights]
    keyed = stage.key_settings()
    assert "batch_size" not in keyed and "device" not in keyed and keyed["detect_every"] == 1


def test_bad_settings_are_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="detect_every"):
        FacesStage.Settings(detect_every=0)
    with pytest.raises(ValueError, match="thresholds"):
        FacesStage.Settings(thresholds=(0.6, 0.7))
    assert FacesStage.Settings(thresholds=[0.5, 0.6, 0.7]).thresholds == (0.5, 0.6, 0.7)
    with pytest.raises(ValueError, match="full_every"):
        FacesStage.Settings(full_every=0)
    with pytest.raises(ValueError, match="identity_threshold"):
        FacesStage.Settings(identity_threshold=2)
    with pytest.raises(ValueError, match="other_identities"):
        FacesStage.Settings(other_identities="drop")

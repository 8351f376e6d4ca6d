"""visual stage: backbone registry with real weight loading, embeddings of real aligned faces,
faces -> visual through a real HDF5 shard, aligned_faces mode, no detection on backbone change."""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.backbones import (FACENET_ENV, FACENET_FILE, FACENET_URL, get_spec, load_backbone,
                                onet_weights_path, resolve_facenet_weights)
from pipeline.sources.manifest import Trial
from pipeline.engine.shards import read_shard, write_shard
from pipeline.engine.stage import ShardData, StageError
from pipeline.stages.faces import FacesStage, aligned_image_path
from pipeline.stages.visual import VisualStage

CLIP = "grid/bbaf2n.mpg"


@contextlib.contextmanager
def torch_threads(n: int):
    """One torch thread for MTCNN (many tiny tensors: a second thread costs more than it gains on shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def probe_shard(video: Path) -> ShardData:
    from pipeline.media.decode import probe_video

    p = probe_video(video, isolate=False)
    n = int(p.n_decoded)
    return ShardData(stage="probe", key="test", path=Path(video), frame=np.arange(n),
                     time=np.asarray(p.time, dtype=np.float64), features=None, valid=None, extras={},
                     attrs={"fps": p.fps, "width": p.width, "height": p.height, "n_decoded": n})


def shard_roundtrip(path: Path, out, probe: ShardData, stage: str) -> ShardData:
    """Write a stage output as the engine does and read it back (NaN rows and attrs included)."""
    n = probe.n_frames
    write_shard(path, frame=np.arange(n), time=probe.time, features=out.features, valid=out.valid,
                extras=out.extras, attrs={**out.attrs, "trial": "t", "stage": stage, "key": path.stem})
    return read_shard(path)


@pytest.fixture(scope="module")
def clip(shared_media, tmp_path_factory):
    """(trial, probe shard, faces shard read back from HDF5) for one real clip."""
    video = shared_media / CLIP
    probe = probe_shard(video)
    trial = Trial(trial="bbaf2n", video=video, split="train")
    with torch_threads(1):
        out = FacesStage(FacesStage.Settings(detect_every=2)).run(trial, {"probe": probe})
    faces = shard_roundtrip(tmp_path_factory.mktemp("faces") / "faces.h5", out, probe, "faces")
    assert faces.valid.all()
    return trial, probe, faces


def with_valid(faces: ShardData, valid: np.ndarray) -> ShardData:
    """The same faces shard with some frames marked faceless (NaN landmarks, as the faces stage writes them)."""
    extras = dict(faces.extras)
    marks = faces.extras["landmarks"].copy()
    marks[~valid] = np.nan
    extras["landmarks"] = marks
    return ShardData(faces.stage, faces.key, faces.path, faces.frame, faces.time, None, valid.copy(), extras,
                     dict(faces.attrs))


def run_visual(trial, probe, faces, **settings):
    return VisualStage(VisualStage.Settings(**settings)).run(trial, {"probe": probe, "faces": faces})


# --- the offline default -----------------------------------------------------------------------------

def decode_all(video: Path, n: int) -> np.ndarray:
    from pipeline.media.decode import iter_frames

    return np.concatenate([c for _, c in iter_frames(video, n)])


def test_onet_default_gives_256d_float16_identical_across_runs(clip):
    from pipeline.media.align import align_faces

    trial, probe, faces = clip
    n = probe.n_frames
    valid = np.ones(n, bool)
    valid[20:30] = False
    gappy = with_valid(faces, valid)
    assert VisualStage.Settings().backbone == "onet" and VisualStage().dim() == 256
    first = run_visual(trial, probe, gappy)
    second = run_visual(trial, probe, gappy)
    assert first.features.shape == (n, 256) and first.features.dtype == np.float16
    assert np.array_equal(first.features, second.features)
    # a freshly loaded model on independently decoded and aligned frames gives the same numbers
    # (up to float rounding: one batch of 65 here vs the stage's per-chunk batches)
    crops = align_faces(decode_all(trial.video, n)[valid], gappy.extras["landmarks"][valid], 112)
    fresh = load_backbone("onet").embed(crops)
    np.testing.assert_allclose(fresh, first.features[valid].astype(np.float32), rtol=2e-3, atol=1e-4)
    assert (first.valid == valid).all()
    assert not first.features[~valid].any()
    assert (np.abs(first.features[valid]).sum(axis=1) > 0).all()
    assert np.isfinite(first.features).all()
    # frames differ (the mouth moves), so their embeddings do too
    assert first.features[valid].astype(np.float32).std(axis=0).mean() > 1e-3
    assert first.attrs == {"backbone": "onet", "weights": sha256(onet_weights_path()), "dim": 256,
                           "crop": "template", "align_size": 112}


def test_backbone_change_reuses_stored_landmarks_and_never_detects(clip, monkeypatch):
    from facenet_pytorch import MTCNN

    def tripwire(*args, **kwargs):
        raise AssertionError("the visual stage ran face detection")

    trial, probe, faces = clip
    monkeypatch.setattr(MTCNN, "detect", tripwire)  # detection must not happen: any call fails the test
    onet = run_visual(trial, probe, faces)
    rand = run_visual(trial, probe, faces, backbone="random:onet")
    assert rand.attrs["weights"] == "none" and rand.features.shape == onet.features.shape
    assert not np.array_equal(rand.features, onet.features)
    # the embeddings come from the stored landmarks: moving them moves the crop and the features
    shifted = with_valid(faces, faces.valid)
    shifted.extras["landmarks"] = shifted.extras["landmarks"] + np.float32(12.0)
    moved = run_visual(trial, probe, shifted)
    assert not np.array_equal(moved.features, onet.features)


def test_settings_reject_unknown_backbones_and_keys_leave_out_speed_settings():
    with pytest.raises(ValueError, match="unknown backbone 'resnet'.*random:onet"):
        VisualStage.Settings(backbone="resnet")
    keyed = VisualStage().key_settings()
    assert set(keyed) == {"backbone", "weights", "align_size", "margin"}
    assert VisualStage.version >= 2  # version 1 shards (template-warped facenet crops, ir50 /128) are not reused
    with pytest.raises(ValueError, match=r"visual.margin must be an integer in \[0, 160\)"):
        VisualStage.Settings(backbone="facenet", margin=160)
    assert VisualStage(VisualStage.Settings(backbone="random:ir50")).dim() == 512
    with pytest.raises(ValueError, match="random weights"):
        load_backbone("random:onet", weights="/some/file.pt")
    with pytest.raises(ValueError, match="random weights"):
        VisualStage.Settings(backbone="random:onet", weights="/some/file.pt")


def test_random_weights_only_by_name_and_deterministic():
    a, b = load_backbone("random:onet"), load_backbone("random:onet")
    assert a.weights_id == "none"
    for (k, va), vb in zip(a.module.state_dict().items(), b.module.state_dict().values()):
        assert torch.equal(va, vb), k
    pretrained = load_backbone("onet")
    assert not torch.equal(pretrained.module.state_dict()["net.dense5.weight"],
                           a.module.state_dict()["net.dense5.weight"])
    before = torch.random.get_rng_state()
    load_backbone("random:facenet")
    assert torch.equal(before, torch.random.get_rng_state()), "seeding must not disturb the global RNG"


# --- downloaded weights: real loading code, local files only -----------------------------------------

def test_facenet_weights_load_from_cache_env_or_setting_and_missing_is_clear(clip, tmp_path, monkeypatch):
    from facenet_pytorch import InceptionResnetV1

    trial, probe, faces = clip
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(FACENET_ENV, raising=False)
    with pytest.raises(StageError) as err:
        load_backbone("facenet")
    assert err.value.kind == "missing-weights"
    assert FACENET_URL in str(err.value) and str(tmp_path / "torch" / "checkpoints" / FACENET_FILE) in str(err.value)

    # the released file's layout: embedding net plus the 8631-way VGGFace2 classifier
    torch.manual_seed(1)
    model = InceptionResnetV1(classify=True, num_classes=8631).eval()
    cached = tmp_path / "torch" / "checkpoints" / FACENET_FILE
    cached.parent.mkdir(parents=True)
    torch.save(model.state_dict(), cached)

    valid = np.zeros(probe.n_frames, bool)
    valid[::20] = True  # a few frames keep this test quick
    out = run_visual(trial, probe, with_valid(faces, valid), backbone="facenet")
    assert out.features.shape == (probe.n_frames, 512) and out.attrs["weights"] == sha256(cached)
    norms = np.linalg.norm(out.features[valid].astype(np.float32), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=2e-3)  # facenet's embeddings are L2-normalised
    assert not out.features[~valid].any()
    assert VisualStage(VisualStage.Settings(backbone="facenet")).input_files(trial)[-1] == cached

    # the environment variable and the setting name other files (resolution only: loading is tested above)
    other = tmp_path / "elsewhere.pt"
    os.link(cached, other)
    monkeypatch.setenv(FACENET_ENV, str(other))
    assert resolve_facenet_weights(None) == other
    assert resolve_facenet_weights(str(cached)) == cached  # the setting wins over the environment
    monkeypatch.setenv(FACENET_ENV, str(tmp_path / "nope.pt"))
    with pytest.raises(StageError, match="nope.pt.*not found") as err:
        load_backbone("facenet")
    assert err.value.kind == "missing-weights"


def test_ir50_weights_load_from_a_named_file_only(clip, tmp_path):
    from pipeline.models.ir50 import IR50

    trial, probe, faces = clip
    with pytest.raises(StageError) as err:
        run_visual(trial, probe, faces, backbone="ir50")
    assert err.value.kind == "missing-weights" and "face.evoLVe" in str(err.value)
    with pytest.raises(StageError) as err:
        load_backbone("ir50", weights=str(tmp_path / "backbone_ir50_ms1m_epoch120.pth"))
    assert err.value.kind == "missing-weights" and "backbone_ir50_ms1m_epoch120.pth" in str(err.value)

    torch.manual_seed(2)
    model = IR50().eval()
    path = tmp_path / "backbone_ir50.pth"
    # saved from nn.DataParallel, as some released checkpoints are: every key prefixed "module."
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    valid = np.zeros(probe.n_frames, bool)
    valid[::15] = True
    out = run_visual(trial, probe, with_valid(faces, valid), backbone="ir50", weights=str(path))
    assert out.features.shape == (probe.n_frames, 512) and out.attrs["weights"] == sha256(path)
    np.testing.assert_allclose(np.linalg.norm(out.features[valid].astype(np.float32), axis=1), 1.0, atol=2e-3)
    assert VisualStage(VisualStage.Settings(backbone="ir50", weights=str(path))).input_files(trial)[-1] == path

    wrong = tmp_path / "onet_as_ir50.pth"
    wrong.write_bytes(onet_weights_path().read_bytes())
    with pytest.raises(StageError) as err:
        load_backbone("ir50", weights=str(wrong))
    assert err.value.kind == "bad-weights" and "missing keys" in str(err.value)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(StageError) as err:
        load_backbone("ir50", weights=str(garbage))
    assert err.value.kind == "bad-weights" and str(garbage) in str(err.value)


def test_onet_weights_from_a_named_file_and_missing_file(tmp_path):
    copy = tmp_path / "onet.pt"
    copy.write_bytes(onet_weights_path().read_bytes())
    assert load_backbone("onet", weights=str(copy)).weights_id == sha256(onet_weights_path())
    with pytest.raises(StageError) as err:
        load_backbone("onet", weights=str(tmp_path / "missing.pt"))
    assert err.value.kind == "missing-weights"
    assert get_spec("random:onet") is get_spec("onet")


# --- aligned_faces mode --------------------------------------------------------------------------------

def test_aligned_faces_mode_matches_video_mode_embeddings(clip, tmp_path):
    """Crops written as jpgs and read back in aligned_faces mode embed like the video-mode crops."""
    from PIL import Image

    from pipeline.media.align import align_faces

    trial, probe, faces = clip
    n = probe.n_frames
    frames = decode_all(trial.video, n)
    crops = align_faces(frames, faces.extras["landmarks"], 112)
    folder = tmp_path / "cropped_aligned"
    folder.mkdir()
    gap = set(range(30, 40))
    for f in range(n):
        if f not in gap:
            Image.fromarray(crops[f]).save(aligned_image_path(folder, f), quality=98)
    atrial = Trial(trial="bbaf2n", video=trial.video, split="train", aligned_faces=folder)
    afaces = FacesStage().run(atrial, {"probe": probe})
    afaces_shard = shard_roundtrip(tmp_path / "afaces.h5", afaces, probe, "faces")
    assert afaces_shard.attrs["mode"] == "aligned_faces"
    from_images = run_visual(atrial, probe, afaces_shard)
    from_video = run_visual(trial, probe, faces)
    v = from_images.valid
    assert v.sum() == n - len(gap) and not from_images.features[~v].any()
    a = from_images.features[v].astype(np.float32)
    b = from_video.features[v].astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.95, f"jpeg round trip changed embeddings: min cosine {cos.min():.3f}"
    assert VisualStage().input_files(atrial)[:2] == [trial.video, folder]


# --- crop geometry per backbone -----------------------------------------------------------------------

def _mtcnn_crop_box(box: np.ndarray, width: int, height: int, size: int, margin: int) -> tuple[int, int, int, int]:
    """facenet-pytorch's MTCNN(image_size=size, margin=margin) crop region, written out: the box grows by
    margin * side / (size - margin) frame pixels (half per side), truncated to whole pixels, clipped to the frame."""
    mx = margin * (box[2] - box[0]) / (size - margin)
    my = margin * (box[3] - box[1]) / (size - margin)
    return (int(max(box[0] - mx / 2, 0)), int(max(box[1] - my / 2, 0)),
            int(min(box[2] + mx / 2, width)), int(min(box[3] + my / 2, height)))


def test_facenet_crop_is_an_mtcnn_box_crop_with_margin(shared_media):
    """A real CREMA-D frame: the crop is the box + margin region resized to 160, so the eyes sit where that
    region puts them (~70 px apart), not where the 112 template upsampled to 160 does (~50 px)."""
    from facenet_pytorch import MTCNN
    from PIL import Image

    from pipeline.media.align import align_faces, box_crops, template

    video = shared_media / "cremad" / "1001_DFA_ANG_XX.flv"
    frame = decode_all(video, 21)[20]
    height, width = frame.shape[:2]
    with torch_threads(1):
        mtcnn = MTCNN(image_size=160, margin=14, post_process=False, device="cpu")
        boxes, _, points = mtcnn.detect(Image.fromarray(frame), landmarks=True)
        box, marks = np.asarray(boxes[0], dtype=np.float64), np.asarray(points[0], dtype=np.float64)
        crop = box_crops(frame[None], box[None], 160, 14)[0]
        _, _, found = mtcnn.detect(Image.fromarray(crop), landmarks=True)  # the eyes, found again in the crop
        theirs = mtcnn(Image.fromarray(frame)).permute(1, 2, 0).numpy()  # facenet-pytorch's own pipeline
    x0, y0, x1, y1 = _mtcnn_crop_box(box, width, height, 160, 14)
    region = np.array(Image.fromarray(frame[y0:y1, x0:x1]).resize((160, 160), Image.BILINEAR))
    np.testing.assert_array_equal(crop, region)
    np.testing.assert_array_equal(crop, theirs.round().astype(np.uint8))

    # eye geometry: frame landmarks mapped through that region (pixel centres: x' = (x - x0 + 0.5) * s - 0.5)
    sx, sy = 160 / (x1 - x0), 160 / (y1 - y0)
    want = np.stack([(marks[:2, 0] - x0 + 0.5) * sx - 0.5, (marks[:2, 1] - y0 + 0.5) * sy - 0.5], axis=1)
    eyes = np.asarray(found[0][:2], dtype=np.float64)
    np.testing.assert_allclose(eyes, want, atol=10.0)  # MTCNN's landmark jitter on a re-detection
    distance = np.linalg.norm(want[1] - want[0])
    assert np.linalg.norm(eyes[1] - eyes[0]) == pytest.approx(distance, rel=0.06)
    assert 60 < distance < 80
    # version 1's geometry (the 112 template warp upsampled to 160) puts the eyes ~50 px apart
    assert np.linalg.norm(template(160)[1] - template(160)[0]) < 0.8 * distance
    warped = np.array(Image.fromarray(align_faces(frame[None], marks[None], 112)[0]).resize((160, 160)))
    assert np.abs(warped.astype(float) - crop).mean() > 10  # ~36 grey levels on this frame


def test_visual_stage_crops_facenet_by_box_and_ir50_by_template(clip):
    """The stage embeds exactly box_crops(frames, stored boxes) for facenet; ir50 reads (x - 127.5) / 127.5."""
    from pipeline.media.align import align_faces, box_crops
    from pipeline.models.ir50 import IR50

    trial, probe, faces = clip
    valid = np.zeros(probe.n_frames, bool)
    valid[::25] = True
    sparse = with_valid(faces, valid)
    frames = decode_all(trial.video, probe.n_frames)[valid]
    with torch_threads(1):
        out = run_visual(trial, probe, sparse, backbone="random:facenet", margin=20)
        net = load_backbone("random:facenet")
        want = net.embed(box_crops(frames, faces.extras["boxes"][valid], 160, 20))
        template_crops = align_faces(frames, faces.extras["landmarks"][valid], 112)
        via_template = net.embed(template_crops)
        assert out.attrs["crop"] == "box" and out.attrs["margin"] == 20 and out.attrs["crop_size"] == 160
        # equal up to float16 storage; the template crops' embeddings are not (a random network's
        # embeddings move little with the input, hence the tight tolerances)
        np.testing.assert_allclose(out.features[valid].astype(np.float32), want, rtol=1e-3, atol=1e-5)
        assert not np.allclose(via_template, want, rtol=1e-3, atol=1e-5)

        ir = run_visual(trial, probe, sparse, backbone="random:ir50")
        assert ir.attrs["crop"] == "template" and ir.attrs["align_size"] == 112
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random:ir50's seed, built by hand here
            module = IR50().eval()
        # face.evoLVe: ToTensor then Normalize(0.5, 0.5), i.e. (x - 127.5) / 127.5
        x = (torch.from_numpy(template_crops).permute(0, 3, 1, 2).float() - 127.5) / 127.5
        with torch.inference_mode():
            ref = module(x).numpy()
            x128 = (torch.from_numpy(template_crops).permute(0, 3, 1, 2).float() - 127.5) / 128.0  # version 1
            ref128 = module(x128).numpy()
        embedded = load_backbone("random:ir50").embed(template_crops)  # float32, before the shard's float16
    np.testing.assert_allclose(embedded, ref, rtol=1e-5, atol=1e-7)
    assert not np.allclose(embedded, ref128, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ir.features[valid].astype(np.float32), ref, rtol=1e-3, atol=1e-5)

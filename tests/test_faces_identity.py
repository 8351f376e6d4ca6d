"""Identity switches: the lost-track policy on synthetic boxes and signatures, and on a real two-person video.

The video is built from real recordings: actor 1001 of CREMA-D (the subject), an
empty stretch, a GRID speaker (another person) in a new shot, then a hard cut
back to the subject. The faces shard must record every (re)acquisition with its
frame, mark the other person's frames as another identity, and re-acquire the
subject as identity 0 when she returns; the trainer, evaluate and predict must
then read the other person's frames of `visual` as missing (unless told to keep them).
"""
from __future__ import annotations


import h5py
import numpy as np
import pytest

from pipeline.media.guided_detection import SceneCuts
from pipeline.media.tracking import SubjectTracker, TrackParams, fill_between

from test_faces import box, torch_threads


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_tracker_records_acquisitions_and_reacquires_the_subject_by_appearance():
    a, b = unit([1, 0, 0.1]), unit([0, 1, 0.1])  # appearance of the subject / of another person
    t = SubjectTracker("largest", TrackParams(max_gap=3), identity_threshold=0.9)
    subject, other = box(100, 100, 60), box(300, 100, 80)
    assert t.update(0, subject[None], a[None]) == 0
    assert t.update(1, subject[None]) == 0
    # lost for longer than max_gap; another (larger) person appears alone: a new identity
    assert t.update(10, other[None], b[None]) == 0 and t.identity == 1
    # a cut: both are visible; the larger is the other person, but the subject's appearance wins
    t.cut()
    assert t.update(11, np.stack([other, subject]), np.stack([b, a])) == 1 and t.identity == 0
    # lost again; only the other person: recognised as identity 1, not a third person
    assert t.update(20, other[None], b[None]) == 0 and t.identity == 1
    acq = [(x.frame, x.segment, x.identity, x.reason) for x in t.acquisitions]
    assert acq == [(0, 0, 0, "first"), (10, 1, 1, "new-identity"), (11, 2, 0, "returned"), (20, 3, 1, "returned")]
    assert t.n_identities == 2
    assert t.acquisitions[2].similarity == pytest.approx(1.0) and t.acquisitions[1].similarity < 0.2
    # without signatures the identity of a re-acquired face cannot be told: marked as new, never merged
    u = SubjectTracker("largest", TrackParams(max_gap=3))
    u.update(0, subject[None])
    u.update(10, subject[None])
    assert [x.reason for x in u.acquisitions] == ["first", "unchecked"] and u.identity == 1


def test_fill_between_never_interpolates_across_track_segments():
    frames = np.array([0, 4, 8])
    vals = {"x": np.array([[0.0], [40.0], [80.0]])}
    _, out, _ = fill_between(9, frames, np.ones(3, bool), vals, segments=np.array([0, 1, 1]))
    np.testing.assert_allclose(out["x"][:, 0], [0, 0, 0, 40, 40, 50, 60, 70, 80])


def test_scene_cuts_flag_a_new_shot_but_not_motion(shared_media):
    from test_faces import _decode, probe_shard

    clip = shared_media / "cremad" / "1001_DFA_ANG_XX.flv"
    frames = _decode(clip, probe_shard(clip).n_frames)
    assert not SceneCuts().update(frames).any(), "a talking head has no cut"
    other = shared_media / "grid" / "lbbc2a.mpg"
    g = _decode(other, 10)
    spliced = np.concatenate([frames[:10], np.stack([canvas(f, 360, 480) for f in g]), frames[10:20]])
    assert np.flatnonzero(SceneCuts().update(spliced)).tolist() == [10, 20]


def canvas(frame: np.ndarray, h: int, w: int, fill: int = 96) -> np.ndarray:
    """`frame` centred on a grey h x w canvas (GRID's 360x288 in CREMA-D's 480x360)."""
    out = np.full((h, w, 3), fill, np.uint8)
    y, x = (h - frame.shape[0]) // 2, (w - frame.shape[1]) // 2
    out[y:y + frame.shape[0], x:x + frame.shape[1]] = frame
    return out


@pytest.fixture(scope="module")
def two_person_video(shared_media, tmp_path_factory):
    """A (frames 0-23) | empty (24-39) | B enters (40-63) | cut back to A (64-87), 25 fps, real faces."""
    from synthetic.media import write_video
    from test_faces import _decode

    a = _decode(shared_media / "cremad" / "1001_DFA_ANG_XX.flv", 48)
    b = _decode(shared_media / "grid" / "lbbc2a.mpg", 24)
    empty = np.full((16, 360, 480, 3), 96, np.uint8)
    frames = np.concatenate([a[:24], empty, np.stack([canvas(f, 360, 480) for f in b]), a[24:48]])
    return write_video(tmp_path_factory.mktemp("twoperson") / "two_person.mp4", frames, fps=25, bit_rate=4_000_000)


FACES_CONFIG = {"stages": {"faces": {"max_gap": 8}}}


@pytest.fixture(scope="module")
def two_person_cache(two_person_video, tmp_path_factory):
    """(manifest, cache): the two-person video as a labelled train trial and a val trial, with real
    probe, faces (other identities kept, the default), visual (O-Net) and labels shards."""
    from pipeline import extract

    root = tmp_path_factory.mktemp("twoperson_cache")
    n = 88
    rows = ["valence,arousal"] + [f"{np.sin(i / 9):.3f},{np.cos(i / 7):.3f}" for i in range(n)]
    (root / "two.txt").write_text("\n".join(rows) + "\n")
    manifest = root / "m.csv"
    manifest.write_text(f"trial,video,split,annotation\ntwo,{two_person_video},train,two.txt\n"
                        f"two_val,{two_person_video},val,two.txt\n")
    with torch_threads(1):
        summary = extract(manifest, cache=root / "cache", config=FACES_CONFIG, stages=["faces", "visual", "labels"],
                          scheduler="sync", progress=False)
    assert summary.ok, summary.failures
    return manifest, root / "cache"


def test_two_person_video_records_the_switch_and_the_return(two_person_cache):
    from pipeline.sources.manifest import read_manifest
    from pipeline.engine.reader import open_cache

    manifest, cache = two_person_cache
    path = open_cache(cache, read_manifest(manifest), FACES_CONFIG).shard_path("two", "faces")
    with h5py.File(path, "r") as h5:
        valid = h5["valid"][:].astype(bool)
        identity = h5["identity"][:]
        segment = h5["track_segment"][:]
        acq = h5["acquisitions"][:]
        attrs = dict(h5.attrs)
    assert valid[:24].all() and not valid[24:40].any() and valid[40:].all()
    # every (re)acquisition with its frame: the subject, the other person entering, the subject after the cut
    assert acq.tolist() == [[0, 0, 0], [40, 1, 1], [64, 2, 0]]
    assert (identity[:24] == 0).all() and (identity[40:64] == 1).all() and (identity[64:] == 0).all()
    assert (identity[24:40] == -1).all() and (segment[24:40] == -1).all()
    assert (segment[:24] == 0).all() and (segment[40:64] == 1).all() and (segment[64:] == 2).all()
    assert attrs["acquisitions_count"] == 3 and attrs["identities"] == 2 and attrs["other_identity_frames"] == 24
    assert '"returned"' in str(attrs["acquisition_reasons"]) and attrs["scene_cuts"] >= 1


def test_other_identities_invalid_delivers_only_the_subject(two_person_video):
    from pipeline.stages.faces import FacesStage
    from test_faces import probe_shard, trial_for

    stage = FacesStage(FacesStage.Settings(max_gap=8, other_identities="invalid"))
    with torch_threads(1):
        out = stage.run(trial_for(two_person_video), {"probe": probe_shard(two_person_video)})
    valid, identity = out.valid, out.extras["identity"]
    assert valid[:24].all() and not valid[24:64].any() and valid[64:].all()
    assert (identity[40:64] == 1).all(), "the other person's frames keep their identity, for the record"
    assert np.isnan(out.extras["boxes"][40:64]).all() and (out.extras["scores"][40:64] == 0).all()
    assert out.attrs["other_identity_frames"] == 24 and out.attrs["other_identities"] == "invalid"


def test_trainer_evaluate_and_predict_read_other_peoples_faces_as_missing(two_person_cache, tmp_path):
    from fusion.config import train_config_from_dict
    from fusion.inputs import open_run_split
    from fusion.runs import open_run
    from fusion.train import prepare_inputs, train
    from pipeline.engine.reader import open_cache
    from pipeline.sources.manifest import read_manifest

    manifest, cache = two_person_cache
    trials = read_manifest(manifest)
    with h5py.File(open_cache(cache, trials, FACES_CONFIG).shard_path("two", "faces"), "r") as h5:
        others = h5["identity"][:] != 0
    shard_valid = open_cache(cache, trials, FACES_CONFIG).load("two", ["visual"]).valid["visual"]
    subject = open_cache(cache, trials, FACES_CONFIG, subject_only=True).load("two", ["visual"]).valid["visual"]
    assert shard_valid[40:64].all(), "extracted with other_identities: keep, the visual shard keeps them valid"
    # masked: exactly the valid frames whose identity is not the subject's (the other person, 40-63)
    assert np.flatnonzero(shard_valid & ~subject).tolist() == np.flatnonzero(shard_valid & others).tolist()
    assert np.flatnonzero(shard_valid & others).tolist() == list(range(40, 64))
    assert not (subject & others).any()

    train_cfg = {"window": 32, "hop": 16, "batch_size": 4, "epochs": 1, "modalities": ["visual"],
                 "model": {"tcn": {"visual": [8, 8]}, "hidden": 16}}

    def frame_valid(ds, pos: int) -> np.ndarray:
        """Per frame of trial `pos`, the valid channel the model receives (as training batches build it)."""
        batch = ds.__getitems__(ds.windows_of(pos).tolist())
        out = np.zeros(ds.lengths[pos], dtype=bool)
        for j, start in enumerate(batch["start"].tolist()):
            k = int(batch["inside"][j].sum())
            out[start:start + k] = batch["inputs"]["visual"][j, :k, -1].numpy() > 0
        return out

    kept = []
    for budget, keep in ((8192, False), (0, False), (8192, True)):  # held in memory, read lazily, kept
        cfg = train_config_from_dict({**train_cfg, "memory_budget_mb": budget, "keep_other_identities": keep})
        inp = prepare_inputs(manifest, cache, cfg, FACES_CONFIG, None)
        assert inp.in_memory == (budget > 0)
        want = shard_valid if keep else subject
        assert (frame_valid(inp.train_ds, 0) == want).all() and (frame_valid(inp.val_ds, 0) == want).all()
        assert inp.stats.count["visual"] == int(want.sum())
        kept.append(inp.stats.keys["visual"])
    assert kept[0] == kept[1] != kept[2], "masked and unmasked statistics must not share a stats cache file"

    # a run records the setting; evaluate and predict (open_run_split) mask the same frames
    run = tmp_path / "run"
    train(manifest, cache, "concat", run, config={**FACES_CONFIG, "train": train_cfg})
    info = open_run(run)
    assert info.train.keep_other_identities is False
    inputs, _stats = open_run_split(info, manifest, cache, "val", with_labels=True)
    inputs.load(info.train.memory_budget_mb)
    assert (inputs.raw["two_val"].valid["visual"] == subject).all()

"""Long videos across workers: frame-range parts assembled into one shard (pipeline.engine.ranges), on real clips."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from pipeline import extract
from pipeline.engine.cache_admin import list_cache, verify_cache
from pipeline.media.decode import iter_frames, probe_video
from pipeline.engine.ranges import n_parts, part_ranges
from pipeline.media.guided_detection import SEGMENT

REPO = Path(__file__).resolve().parents[1]
CLIP = "cremad/1001_DFA_ANG_XX.flv"  # 67 frames: three parts of <= 32 frames with split_frames 20
UNGUIDED = {"stages": {"faces": {"guided": False}}}


def _manifest(tmp_path: Path, shared_media: Path) -> Path:
    path = tmp_path / "m.csv"
    path.write_text(f"trial,video,split\nclip,{shared_media / CLIP},train\n")
    return path


def _datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as h5:
        return {name: h5[name][()] for name in h5}


def _shards(cache: Path, stage: str) -> list[Path]:
    return sorted((cache / "shards" / stage).glob("*.h5"))


def test_part_ranges_cover_every_frame_on_chunk_boundaries():
    for n, parts in ((67, 3), (3600, 2), (27000, 15), (31, 1)):
        ranges = part_ranges(n, parts)
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a == prev_b for (_, prev_b), (a, _) in zip(ranges, ranges[1:]))
        assert all(a % 32 == 0 for a, _ in ranges)
    assert n_parts(67, 20) == 3 and n_parts(67, 0) == 1 and n_parts(67, 100) == 1
    # guided faces restart every SEGMENT frames: parts start there, as near an even split as that allows
    assert part_ranges(3600, 2, SEGMENT) == [(0, 1792), (1792, 3600)]
    assert all(a % SEGMENT == 0 and b > a for a, b in part_ranges(27000, 15, SEGMENT))
    assert n_parts(700, 20, SEGMENT) == 3 and n_parts(200, 20, SEGMENT) == 1


def test_seeking_decode_gives_the_frames_of_a_full_pass(shared_media):
    for clip in (shared_media / CLIP, shared_media / "grid" / "bbaf2n.mpg"):
        probe = probe_video(clip)
        full = np.concatenate([c for _, c in iter_frames(clip, probe.n_decoded, chunk=32)])
        for start in (1, 32, probe.n_decoded - 3):
            got = list(iter_frames(clip, probe.n_decoded, chunk=32, start=start, times=probe.time))
            assert got[0][0] == start and all(a % 32 == 0 for a, _ in got[1:])
            assert np.array_equal(np.concatenate([c for _, c in got]), full[start:])


def test_split_and_unsplit_shards_are_bit_identical(tmp_path, shared_media):
    """faces (full-frame detection, tracker in the assembly), visual and audio: same keys, same bytes."""
    manifest = _manifest(tmp_path, shared_media)
    stages = ["probe", "faces", "visual", "audio"]
    whole = extract(manifest, cache=tmp_path / "whole", config=UNGUIDED, stages=stages, scheduler="sync",
                    progress=False, split_frames=0)
    split = extract(manifest, cache=tmp_path / "split", config=UNGUIDED, stages=stages, scheduler="sync",
                    progress=False, split_frames=20)
    assert whole.ok and split.ok
    assert whole.split == {} and split.split == {"faces": 1, "visual": 1}
    for stage in stages:
        (a,), (b,) = _shards(tmp_path / "whole", stage), _shards(tmp_path / "split", stage)
        assert a.name == b.name  # the same key: splitting is not in it
        da, db = _datasets(a), _datasets(b)
        assert da.keys() == db.keys()
        for name in da:
            assert np.array_equal(da[name], db[name], equal_nan=True), (stage, name)
    assert not list((tmp_path / "split" / "shards").glob("*/.*.tmp"))  # parts removed once assembled
    assert verify_cache(tmp_path / "split").ok


def _affpipe(*args: str) -> list[str]:
    return [sys.executable, "-c", "import cli; cli.main()", *args]


def _kill_once(args: list[str], cache: Path, pattern: str, want: int) -> list[Path]:
    """Run `affpipe *args` on `cache` and SIGKILL its process group (workers too) once `want` faces part
    files match `pattern` (or after 240 s); the part files left after the kill."""
    proc = subprocess.Popen(_affpipe(*args, "--cache", str(cache)), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = cache / "shards" / "faces"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(folder.glob(pattern))) < want:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return list(folder.glob(pattern))


def test_kill_mid_assembly_leaves_no_half_shard_and_parts_are_no_shards(tmp_path, shared_media):
    manifest = _manifest(tmp_path, shared_media)
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(UNGUIDED))
    args = ["extract", "-m", str(manifest), "--config", str(config), "--stages", "probe,faces",
            "--scheduler", "sync", "--split-frames", "20"]
    for attempt in range(3):  # the kill must land after the last part and before the shard: retry if late
        cache = tmp_path / f"cache{attempt}"
        parts = _kill_once(args, cache, ".*.part*of003.tmp", 3)
        if len(parts) == 3 and not _shards(cache, "faces"):
            break
    else:
        pytest.fail("the kill never landed between the last part and the assembled shard")
    # what a killed assembly leaves: parts (and maybe a half-written temporary), never a faces shard
    assert not _shards(cache, "faces")
    assert [r["stage"] for r in list_cache(cache)[0]] == ["probe"]
    report = verify_cache(cache)
    assert report.ok and report.checked == 1
    assert {Path(p).name for p in report.temporaries} >= {p.name for p in parts}
    ls = CliRunner().invoke(cli.main, ["cache", "ls", "--cache", str(cache)])
    assert ls.exit_code == 0 and "faces" not in ls.output
    res = subprocess.run(_affpipe(*args, "--cache", str(cache), "--json"), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["counts"]["faces"]["done"] == 1 and summary["split"] == {"faces": 1}
    assert len(_shards(cache, "faces")) == 1
    assert not list((cache / "shards" / "faces").glob(".*.tmp")) or all(
        ".part" not in p.name for p in (cache / "shards" / "faces").glob(".*.tmp"))
    assert verify_cache(cache).ok


# --- guided faces (the default) split at the search's restarts --------------------------------------

GUIDED_FRAMES = 300  # two guided segments of SEGMENT (256) frames: parts (0, 256) and (256, 300)


@pytest.fixture(scope="module")
def two_faces_video(shared_media, tmp_path_factory) -> Path:
    """Two real faces: A (a CREMA-D actor, left, 110 px) and B (Grace Hopper, right) growing from smaller
    than A to larger than A before frame 256. The subject rule ('largest') picks A at frame 0; from
    the second segment on the guided search restarts with B the largest face: the tracker must keep A."""
    from matplotlib import cbook
    from PIL import Image

    from synthetic.media import write_video

    actor = next(iter_frames(shared_media / CLIP, 1))[1][0][30:270, 100:340]
    a = np.asarray(Image.fromarray(actor).resize((110, 110)))
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    frames = np.full((GUIDED_FRAMES, 272, 480, 3), 60, np.uint8)
    for i in range(GUIDED_FRAMES):
        x = 40 + int(20 * np.sin(i / 20))
        frames[i, 80:190, x:x + 110] = a
        w = 70 + min(i, 200) * 70 // 200  # 70 -> 140 px wide by frame 200
        h = w * 7 // 6
        frames[i, 60:60 + h, 300:300 + w] = np.asarray(hopper.resize((w, h)))
    return write_video(tmp_path_factory.mktemp("guided") / "two_faces.mp4", frames, fps=25, bit_rate=4_000_000)


@pytest.fixture(scope="module")
def guided_whole(two_faces_video, tmp_path_factory) -> dict[str, np.ndarray]:
    """The faces shard of one unsplit pass (default settings: track-guided detection), on two worker
    processes as the split runs: MTCNN's float results depend on torch's thread count, which the engine
    sets from the number of workers, so bit-identity is asked of runs with equal thread counts."""
    tmp = tmp_path_factory.mktemp("guided_whole")
    manifest = tmp / "m.csv"
    manifest.write_text(f"trial,video,split\nlong,{two_faces_video},train\n")
    summary = extract(manifest, cache=tmp / "cache", stages=["probe", "faces"], scheduler="processes", workers=2,
                      progress=False, split_frames=0)
    assert summary.ok and summary.split == {}
    (path,) = _shards(tmp / "cache", "faces")
    return {"name": path.name, **_datasets(path)}


def _assert_same_faces(path: Path, whole: dict[str, np.ndarray]) -> None:
    assert path.name == whole["name"]  # the same key: splitting is not in it
    got = _datasets(path)
    assert got.keys() == whole.keys() - {"name"}
    for name in got:
        assert np.array_equal(got[name], whole[name], equal_nan=True), name


def test_guided_faces_split_on_two_workers_is_bit_identical(two_faces_video, guided_whole, tmp_path):
    """Two parts on two real Dask worker processes, the tracker in the assembly: the same shard."""
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\nlong,{two_faces_video},train\n")
    split = extract(manifest, cache=tmp_path / "cache", stages=["probe", "faces"], scheduler="processes",
                    workers=2, progress=False, split_frames=SEGMENT)
    assert split.ok and split.split == {"faces": 1}
    assert len(set(split.workers["faces"])) == 2, split.workers  # the parts ran on both workers
    (path,) = _shards(tmp_path / "cache", "faces")
    _assert_same_faces(path, guided_whole)
    with h5py.File(path, "r") as h5:
        attrs = dict(h5.attrs)
        valid, identity, boxes = h5["valid"][:].astype(bool), h5["identity"][:], h5["boxes"][:]
    assert attrs["guided"] and attrs["refined_frames"] > GUIDED_FRAMES // 2  # guided, not full-frame
    # one acquisition (A, at frame 0), kept through every restart of the search although B is larger
    assert attrs["acquisitions_count"] == 1 and valid.mean() > 0.99 and (identity[valid] == 0).all()
    assert (boxes[valid, 2] < 240).all(), "the track stayed on A (left half) after B outgrew it"
    assert not list((tmp_path / "cache" / "shards").glob("*/.*.tmp")) and verify_cache(tmp_path / "cache").ok


def test_guided_parts_survive_a_kill_and_resume_to_the_same_shard(two_faces_video, guided_whole, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\nlong,{two_faces_video},train\n")
    args = ["extract", "-m", str(manifest), "--stages", "probe,faces", "--scheduler", "processes", "--workers", "2",
            "--split-frames", str(SEGMENT)]
    for attempt in range(3):  # the kill must land after one part (the short one) and before the other: retry if late
        cache = tmp_path / f"cache{attempt}"
        if len(_kill_once(args, cache, ".*.part*of002.tmp", 1)) == 1 and not _shards(cache, "faces"):
            break
    else:
        pytest.fail("the kill never landed between the first and the last part")
    assert not _shards(cache, "faces") and verify_cache(cache).ok
    res = subprocess.run(_affpipe(*args, "--cache", str(cache), "--json"), cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["split"] == {"faces": 1}
    (path,) = _shards(cache, "faces")
    _assert_same_faces(path, guided_whole)
    assert not [p for p in (cache / "shards" / "faces").glob(".*.tmp") if ".part" in p.name]

"""A cache you can trust and move: checksums, damaged shards, content identity, readers without
videos, gc beside a running extract, transient failures, typed settings (issue 7).

Every fault is planted in real files: bytes flipped inside HDF5 data, truncated and emptied
shards, moved and touched videos, a file-size limit that makes writes fail like a full disk.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from pipeline import extract, open_cache
from pipeline.engine.cache_admin import collect_garbage, verify_cache
from pipeline.engine.config import build_stages
from pipeline.media.decode import probe_video
from pipeline.sources.manifest import read_manifest
from pipeline.engine.plan import make_plan, stage_order
from pipeline.engine.shards import ShardError, read_shard
from pipeline.engine.stage import STAGES, Stage, StageOutput
from pipeline.engine.store import CacheBusyError, CacheStore

REPO = Path(__file__).resolve().parents[1]
CHEAP = ["probe", "audio", "labels"]


def _dataset_folder(shared_media: Path, dest: Path, n_clips: int = 4) -> Path:
    """Copy CREMA-D clips with per-frame VA files into `dest`; manifest paths are relative, as users write them."""
    dest.mkdir(parents=True, exist_ok=True)
    rows = ["trial,video,split,annotation"]
    clips = sorted((shared_media / "cremad").glob("*.flv"))[:n_clips]
    for i, clip in enumerate(clips):
        shutil.copy(clip, dest / clip.name)
        n = probe_video(clip).n_decoded
        v = np.linspace(-0.5, 0.5, n) * (1 if i % 2 else -1)
        (dest / f"{clip.stem}.txt").write_text("valence,arousal\n" + "".join(f"{x:.3f},{-x:.3f}\n" for x in v))
        rows.append(f"{clip.stem},{clip.name},{'val' if i == 0 else 'train'},{clip.stem}.txt")
    (dest / "m.csv").write_text("\n".join(rows) + "\n")
    return dest / "m.csv"


@pytest.fixture()
def small(tmp_path, shared_media) -> tuple[Path, Path]:
    manifest = _dataset_folder(shared_media, tmp_path / "data")
    cache = tmp_path / "cache"
    summary = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert summary.ok, summary.failures
    return manifest, cache


def _shard(cache: Path, stage: str) -> Path:
    return sorted((cache / "shards" / stage).glob("*.h5"))[0]


def _flip_bytes_in(path: Path, dataset: str, n: int = 64) -> None:
    with h5py.File(path, "r") as h5:
        offset = h5[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    for i in range(n):
        data[offset + 16 + i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_caught_everywhere_and_recomputed(small):
    manifest, cache = small
    shard = _shard(cache, "audio")
    original = read_shard(shard).features.copy()
    _flip_bytes_in(shard, "features")

    report = verify_cache(cache)
    assert str(shard) in report.bad and "checksum" in " ".join(report.bad[str(shard)])
    res = CliRunner().invoke(cli.main, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code == 1 and "BAD" in res.output

    with pytest.raises(ShardError, match="checksum"):  # the trainer's door refuses it too
        open_cache(cache, manifest).load(shard.name.split(".")[0], ["audio"])

    dry = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", dry_run=True, progress=False)
    assert [d["path"] for d in dry.damaged] == [str(shard)] and dry.counts["audio"]["todo"] == 1
    again = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert again.ok and again.computed() == 1 and again.counts["audio"]["done"] == 1
    assert np.array_equal(read_shard(shard).features, original)
    assert list((cache / "quarantine" / "audio").iterdir())  # the damaged file was kept aside, not reused
    assert verify_cache(cache).ok


@pytest.mark.parametrize("damage", ["truncate", "empty", "header"])
def test_damaged_shard_is_recomputed_without_manual_deletion(small, damage):
    manifest, cache = small
    shard = _shard(cache, "labels")
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        shard.write_bytes(b"")
    else:
        shard.write_bytes(b"\x00" * 64 + data[64:])
    again = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert again.ok and again.counts["labels"]["done"] == 1 and again.computed() == 1
    assert verify_cache(cache).ok


def test_rerun_trusts_verified_stamps_and_rechecks_changed_files(small):
    manifest, cache = small
    shard = _shard(cache, "probe")
    # Same bytes written again: mtime/ctime change, so planning reads it in full and finds it sound.
    shard.write_bytes(shard.read_bytes())
    again = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert again.computed() == 0 and not again.damaged
    index = json.loads((cache / "index" / f"{shard.name.split('.')[0]}.json").read_text())
    stamps = [v["stamp"] for rs in index["probe"].values() for v in rs]
    st = shard.stat()
    assert [st.st_size, st.st_mtime_ns, st.st_ctime_ns] in stamps


def test_moved_touched_and_deleted_videos_keep_every_shard(small, tmp_path):
    manifest, cache = small
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"train": {"window": 16, "hop": 8, "batch_size": 2, "epochs": 1, "seed": 0,
                                            "modalities": ["audio"], "model": {"tcn": {"default": [8]}}}}))
    moved = tmp_path / "elsewhere" / "renamed-dataset"
    moved.parent.mkdir()
    shutil.move(str(manifest.parent), moved)
    for f in moved.iterdir():
        os.utime(f, (time.time() + 100, time.time() + 100))
    new_manifest = moved / "m.csv"
    dry = extract(new_manifest, cache=cache, stages=CHEAP, scheduler="sync", dry_run=True, progress=False)
    assert all(c["todo"] == 0 and c["cached"] == 4 for c in dry.counts.values()), dry.counts
    res = CliRunner().invoke(cli.main, ["extract", "-m", str(new_manifest), "--cache", str(cache), "--stages",
                                        ",".join(CHEAP), "--dry-run"])
    assert res.exit_code == 0 and " 0 " in res.output.splitlines()[1]

    for f in list(moved.glob("*.flv")) + list(moved.glob("*.txt")):
        f.unlink()  # a laptop with the cache and the manifest only
    runner = CliRunner()
    run = tmp_path / "run"
    base = ["--manifest", str(new_manifest), "--cache", str(cache)]
    res = runner.invoke(cli.main, ["train", *base, "--fusion", "concat", "--out", str(run), "--config", str(config)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.main, ["evaluate", "--run", str(run), *base, "--split", "val", "--json"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.main, ["predict", "--run", str(run), *base, "--split", "val", "--out", str(tmp_path / "sub")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli.main, ["validate-submission", str(tmp_path / "sub"), *base, "--split", "val"])
    assert res.exit_code == 0, res.output
    # gc resolves through the index: nothing of this manifest is garbage, though no video is here
    plan = collect_garbage(cache, [(read_manifest(new_manifest), None)])
    assert plan.shards == [] and not plan.kept_unresolved
    res = runner.invoke(cli.main, ["cache", "gc", "--cache", str(cache), "-m", str(new_manifest), "--yes"])
    assert res.exit_code == 0 and len(list((cache / "shards").glob("*/*.h5"))) == 12, res.output


def test_changed_video_content_is_stale_not_silently_reused(small):
    manifest, cache = small
    rows = read_manifest(manifest)
    victim = rows[1]
    other = rows[2]
    shutil.copy(other.video, victim.video)  # same name and place, other content
    reader = open_cache(cache, manifest)
    assert reader.status(victim.trial, "probe").status == "stale"
    assert reader.status(victim.trial, "audio").status == "blocked" and not reader.unavailable(["audio"])
    with pytest.raises(LookupError, match="stale: inputs changed since extraction"):
        reader.require(["probe"])
    dry = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", dry_run=True, progress=False)
    assert dry.counts["probe"]["todo"] == 1


def test_gc_never_deletes_what_a_running_extract_writes(tmp_path, shared_media):
    manifest = _dataset_folder(shared_media, tmp_path / "data", n_clips=6)
    small_manifest = tmp_path / "data" / "one.csv"
    lines = manifest.read_text().splitlines()
    small_manifest.write_text("\n".join(lines[:2]) + "\n")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", "import cli; cli.main()", "extract", "-m", str(manifest),
                             "--cache", str(cache), "--stages", ",".join(CHEAP), "--scheduler", "sync"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    refused = ran = 0
    uses = [(read_manifest(small_manifest), None)]
    while proc.poll() is None:
        try:
            collect_garbage(cache, uses, yes=True)  # a gc for a smaller manifest, as in the bug report
            ran += 1
        except CacheBusyError:
            refused += 1
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read()
    assert refused > 0
    assert verify_cache(cache).ok and not CacheStore(cache).ledger()
    (summary,) = [json.loads(p.read_text()) for p in (cache / "runs").glob("*.json")]
    assert summary["ok"] and sum(c["done"] for c in summary["counts"].values()) == 18
    busy = CliRunner()
    with CacheStore(cache).hold():  # as an extract does
        res = busy.invoke(cli.main, ["cache", "gc", "--cache", str(cache), "-m", str(small_manifest), "--yes"])
    assert res.exit_code == 1 and "extract is running" in res.output and len(res.output.strip().splitlines()) == 1


def test_disk_full_failures_are_retried_not_sticky(tmp_path, shared_media):
    manifest = _dataset_folder(shared_media, tmp_path / "data", n_clips=2)
    cache = tmp_path / "cache"
    config = tmp_path / "logmel.json"
    config.write_text(json.dumps({"stages": {"audio": {"model": "logmel"}}}))
    # A file-size limit makes big writes fail with EFBIG, as a full disk fails them with ENOSPC.
    limited = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (262144, 262144)); import cli; cli.main()")
    proc = subprocess.run([sys.executable, "-c", limited, "extract", "-m", str(manifest), "--cache", str(cache),
                           "--config", str(config), "--stages", "probe,audio", "--scheduler", "sync"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    ledger = CacheStore(cache).ledger()
    assert {e.stage for e in ledger} == {"audio"} and not any(e.sticky for e in ledger)
    assert not list(cache.glob("shards/*/.*.tmp"))  # the failed writer left no temporary behind
    again = extract(manifest, cache=cache, config=config, stages=["probe", "audio"], scheduler="sync", progress=False)
    assert again.ok and again.counts["audio"]["done"] == 2 and again.counts["audio"]["failed-before"] == 0


def test_ledger_survives_a_cut_last_line(tmp_path):
    store = CacheStore(tmp_path / "cache")
    store.record_failure("a", "probe", "k1", "corrupt-media", "a.mp4: broken")
    with store.ledger_path.open("ab") as fh:
        fh.write(b'{"trial": "b", "stage": "pro')  # the disk filled up mid-line
    store.record_failure("c", "probe", "k3", "corrupt-media", "c.mp4: broken")
    assert [e.trial for e in store.ledger()] == ["a", "c"]


class _NanStage(Stage):
    """A stage whose numbers go bad, as a diverging network's would (registered only in this test)."""

    name = "nanstage"
    version = 1
    inputs = ("probe",)

    from dataclasses import dataclass as _dc

    @_dc
    class Settings:
        pass

    def run(self, trial, upstream):
        n = upstream["probe"].n_frames
        feats = np.ones((n, 3), dtype=np.float32)
        feats[n // 2, 1] = np.nan
        return StageOutput(features=feats, valid=np.ones(n, dtype=bool))


@pytest.fixture()
def nan_stage():
    STAGES["nanstage"] = _NanStage
    yield
    STAGES.pop("nanstage", None)


def test_stage_producing_nan_is_refused_not_written(small, nan_stage):
    manifest, cache = small
    summary = extract(manifest, cache=cache, stages=["nanstage"], scheduler="sync", progress=False)
    assert summary.counts["nanstage"]["failed"] == 4
    assert {f["kind"] for f in summary.failures} == {"non-finite"}
    assert "NaN" in summary.failures[0]["message"]
    assert not (cache / "shards" / "nanstage").exists() or not list((cache / "shards" / "nanstage").glob("*.h5"))


def test_nan_planted_after_the_fact_is_found_and_recomputed(small):
    manifest, cache = small
    shard = _shard(cache, "audio")
    with h5py.File(shard, "r+") as h5:  # a valid write through HDF5: checksums are updated, values are not finite
        h5["features"][0, 0] = np.nan
    assert "NaN" in " ".join(verify_cache(cache).bad[str(shard)])
    again = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert again.counts["audio"]["done"] == 1
    assert np.isfinite(read_shard(shard).features).all()


def test_equal_settings_give_equal_keys_and_wrong_types_are_refused(tmp_path, shared_media):
    manifest = _dataset_folder(shared_media, tmp_path / "data", n_clips=1)
    trials = read_manifest(manifest)
    store = CacheStore(tmp_path / "cache")

    def keys(cfg):
        tasks = make_plan(trials, build_stages(cfg), stage_order(["faces"]), store)
        return {t.stage: t.key for t in tasks}

    assert keys({"stages": {"faces": {"detect_every": "2"}}}) == keys({"stages": {"faces": {"detect_every": 2}}})
    assert keys({"stages": {"faces": {"detect_scale": 1}}}) == keys(None)
    runner = CliRunner()
    for bad, words in [({"stages": {"faces": {"detect_every": 2.5}}}, "faces.detect_every must be an integer"),
                       ({"stages": {"faces": 3}}, "stages.faces must be an object"),
                       ({"stages": {"faces": {"detect_every": True}}}, "must be an integer"),
                       ({"fingerprint": "mtime"}, "fingerprint must be one of")]:
        cfg = tmp_path / "bad.json"
        cfg.write_text(json.dumps(bad))
        for cmd in (["config", "show", "--config", str(cfg)],
                    ["extract", "-m", str(manifest), "--cache", str(tmp_path / "c"), "--config", str(cfg), "--dry-run"]):
            res = runner.invoke(cli.main, cmd)
            assert res.exit_code == 1 and words in res.output, (cmd, res.output)
            assert len(res.output.strip().splitlines()) == 1


def test_mtcnn_and_text_model_weights_enter_the_key(tmp_path, shared_media):
    manifest = _dataset_folder(shared_media, tmp_path / "data", n_clips=1)
    stages = build_stages(None)
    trial = read_manifest(manifest)[0]
    assert {p.name for p in stages["faces"].input_files(trial)} >= {"pnet.pt", "rnet.pt", "onet.pt"}
    assert any(p.suffix in (".safetensors", ".bin") for p in stages["text"].input_files(trial))


def test_symlink_loop_is_a_ledger_entry_not_an_abort(tmp_path, shared_media):
    manifest = _dataset_folder(shared_media, tmp_path / "data", n_clips=1)
    loop = tmp_path / "data" / "loop.mp4"
    os.symlink(loop, loop)
    with manifest.open("a") as fh:
        fh.write("looped,loop.mp4,train,\n")
    summary = extract(manifest, cache=tmp_path / "cache", stages=["probe"], scheduler="sync", progress=False)
    failed = {f["trial"]: f for f in summary.failures}
    assert failed["looped"]["kind"] == "missing-file" and "loop.mp4" in failed["looped"]["message"]
    assert summary.counts["probe"]["done"] == 1


def test_gc_and_repair_on_an_unusable_cache_say_one_line(tmp_path, shared_media):
    manifest = _dataset_folder(shared_media, tmp_path / "data", n_clips=1)
    runner = CliRunner()
    # /proc/self exists and refuses new files even to root: a read-only cache as far as gc can tell
    res = runner.invoke(cli.main, ["cache", "gc", "--cache", "/proc/self", "-m", str(manifest), "--yes"])
    assert res.exit_code == 1 and "cannot lock the cache for cache gc" in res.output, res.output
    assert "/proc/" in res.output and len(res.output.strip().splitlines()) == 1


def test_verify_repair_removes_bad_shards_and_gc_cleans_leftovers(small):
    manifest, cache = small
    shard = _shard(cache, "audio")
    _flip_bytes_in(shard, "features")
    leftover = shard.parent / f".{shard.name}.deadbeef.tmp"
    leftover.write_bytes(b"half a shard")
    res = CliRunner().invoke(cli.main, ["cache", "verify", "--cache", str(cache), "--repair"])
    assert res.exit_code == 0 and "REMOVED" in res.output and not shard.exists()
    res = CliRunner().invoke(cli.main, ["cache", "gc", "--cache", str(cache), "-m", str(manifest), "--yes"])
    assert res.exit_code == 0 and not leftover.exists() and not list((cache / "locks").glob("*.lock"))
    again = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert again.counts["audio"]["done"] == 1 and verify_cache(cache).ok


def test_nan_in_text_embeddings_is_damage_but_nan_boxes_of_faceless_frames_are_not(tmp_path):
    from pipeline.engine.shards import verify_shard, write_shard

    n = 10
    valid = np.ones(n, dtype=bool)
    valid[3] = False
    boxes = np.ones((n, 4), dtype=np.float32)
    boxes[3] = np.nan  # no face on frame 3: NaN is the stage's "nothing here"
    emb = np.ones((n, 8), dtype=np.float16)
    base = dict(frame=np.arange(n), time=np.arange(n) / 25.0, features=np.ones((n, 2), np.float32), valid=valid)
    ok = write_shard(tmp_path / "faces" / "t.0123456789abcdef0123.h5", **base, extras={"boxes": boxes},
                     attrs={"trial": "t", "stage": "faces", "key": "0123456789abcdef0123"})
    assert verify_shard(ok) == []
    emb[2, 5] = np.nan  # a segment embedding is never "nothing here"
    bad = write_shard(tmp_path / "text" / "t.0123456789abcdef0123.h5", **base,
                      extras={"segment_embeddings": emb, "segment_index": np.zeros(n, np.int32)},
                      attrs={"trial": "t", "stage": "text", "key": "0123456789abcdef0123",
                             "frame_keyed_extras": ["segment_index"]})
    assert verify_shard(bad) == ["/segment_embeddings holds 1 NaN/Inf value(s)"]


def test_cache_ls_counts_current_shards_and_the_others_apart(small):
    manifest, cache = small
    rows = read_manifest(manifest)
    shutil.copy(rows[2].video, rows[1].video)  # one video replaced: its shards are superseded on re-extract
    again = extract(manifest, cache=cache, stages=CHEAP, scheduler="sync", progress=False)
    assert again.counts["probe"]["done"] == 1
    res = CliRunner().invoke(cli.main, ["cache", "ls", "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    table = {line.split()[0]: line.split()[1:4] for line in res.output.splitlines()[1:] if line.split()[0] in CHEAP}
    n = sum(probe_video(t.video).n_decoded for t in rows)
    assert table["probe"] == ["4", "4", str(n)]  # shards, trials, frames: one version per trial
    assert "3 other shard(s)" in res.output  # the replaced video's old probe, audio and labels

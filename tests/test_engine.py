"""The extraction engine end to end on the real clips: keys, caching, recompute, ledger, kill, CLI."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from pipeline import extract, open_cache, read_manifest
from pipeline.engine.cache_admin import verify_cache
from pipeline.engine.shards import read_shard
from pipeline.engine.store import CacheStore

REPO = Path(__file__).resolve().parents[1]
STAGES_ALL = ["probe", "faces", "visual", "audio", "asr", "text", "labels"]


def write_va(path: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    v = np.clip(np.cumsum(rng.normal(0, 0.05, n)), -1, 1)
    a = np.clip(np.cumsum(rng.normal(0, 0.05, n)), -1, 1)
    lines = ["valence,arousal"] + [f"{x:.3f},{y:.3f}" for x, y in zip(v, a)]
    lines[3] = "-5,-5"
    path.write_text("\n".join(lines) + "\n")
    return path


def n_frames(video: Path) -> int:
    from pipeline.media.decode import probe_video

    return probe_video(video).n_decoded


@pytest.fixture(scope="module")
def media_manifest(shared_media: Path, tmp_path_factory) -> Path:
    """All 13 shared clips, with Aff-Wild2-style VA files and the GRID word alignment as transcript."""
    d = tmp_path_factory.mktemp("manifest")
    rows = ["trial,video,split,annotation,transcript"]
    clips = sorted((shared_media / "cremad").glob("*.flv")) + sorted((shared_media / "grid").glob("*.mpg"))
    for i, clip in enumerate(clips):
        va = write_va(d / f"{clip.stem}.txt", n_frames(clip), seed=i)
        transcript = str(shared_media / "grid" / "swwp2s.align") if clip.stem == "id2_vcd_swwp2s" else ""
        split = "train" if i % 3 else "val"
        rows.append(f"{clip.stem},{clip},{split},{va.name},{transcript}")
    path = d / "media.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def full_cache(media_manifest: Path, tmp_path_factory) -> tuple[Path, object]:
    """Every stage of every shared clip, extracted once on a real local Dask cluster (2 workers)."""
    cache = tmp_path_factory.mktemp("cache")
    summary = extract(media_manifest, cache=cache, scheduler="processes", workers=2, progress=False)
    return cache, summary


def test_every_stage_of_every_clip_extracts(full_cache, media_manifest):
    cache, summary = full_cache
    assert summary.ok, summary.failures
    for stage in STAGES_ALL:
        assert summary.counts[stage]["done"] == 13, (stage, summary.counts[stage])
    reader = open_cache(cache, read_manifest(media_manifest))
    for trial in reader.trials:
        arrays = reader.load(trial, ["visual", "audio", "text", "labels"])
        probe = read_shard(reader.shard_path(trial, "probe"))
        assert arrays.n_frames == probe.n_frames == n_frames(reader.trials[trial].video)
        for stage in ("visual", "audio", "text", "labels"):
            assert arrays.features[stage].shape[0] == arrays.n_frames
            assert arrays.valid[stage].shape == (arrays.n_frames,)
        assert np.all(np.diff(arrays.time) > 0)
    assert verify_cache(cache).ok


def test_rerun_computes_nothing(full_cache, media_manifest):
    cache, _ = full_cache
    again = extract(media_manifest, cache=cache, scheduler="sync", progress=False)
    assert again.ok
    assert again.computed() == 0
    assert all(c["cached"] == 13 for c in again.counts.values())


def test_fully_cached_rerun_in_a_fresh_process_loads_no_torch_and_rewrites_nothing(full_cache, media_manifest):
    """`affpipe extract` on a cache that holds every shard: stamps and the fingerprint memo answer,
    no Dask cluster starts, no model loads (issue 12: importing torch for weight-file paths was 7 s of
    a 600-trial re-run), and no index or memo file is rewritten."""
    cache, _ = full_cache
    extract(media_manifest, cache=cache, scheduler="sync", progress=False)  # any stamp still to take is taken
    bookkeeping = sorted((cache / "index").glob("*.json")) + [cache / "fingerprints.json"]
    assert len(bookkeeping) == 14
    before = {p: p.stat().st_mtime_ns for p in bookkeeping}
    code = ("import atexit, sys, cli; atexit.register(lambda: print('heavy:', sorted(m for m in "
            "('torch', 'distributed') if m in sys.modules), file=sys.stderr)); cli.main()")
    proc = subprocess.run([sys.executable, "-c", code, "extract", "-m", str(media_manifest), "--cache", str(cache),
                           "--scheduler", "processes", "--json"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = json.loads(proc.stdout)["counts"]
    assert all(c["done"] == 0 and c["cached"] == 13 for c in counts.values()), counts
    assert "heavy: []" in proc.stderr, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in bookkeeping} == before


def test_changing_text_settings_recomputes_only_text(full_cache, media_manifest, tmp_path):
    cache, _ = full_cache
    scratch = tmp_path / "cache"
    shutil.copytree(cache, scratch)
    cfg = tmp_path / "word.json"
    cfg.write_text(json.dumps({"stages": {"text": {"granularity": "word"}}}))
    summary = extract(media_manifest, cache=scratch, config=cfg, scheduler="sync", progress=False)
    assert summary.ok
    assert summary.counts["text"]["done"] == 13
    for stage in ("probe", "faces", "visual", "audio", "asr", "labels"):
        assert summary.counts[stage]["done"] == 0 and summary.counts[stage]["cached"] == 13
    # both settings now live side by side; gc with only the new config would drop the old text shards
    doomed = CliRunner().invoke(cli.main, ["cache", "gc", "--cache", str(scratch), "--manifest",
                                           str(media_manifest), "--config", str(cfg)])
    assert doomed.exit_code == 0, doomed.output
    assert "13 file(s) unreferenced" in doomed.output
    assert all(p.parent.name == "text" for p in (Path(x.split()[-1]) for x in doomed.output.splitlines()
                                                    if x.startswith("would remove")))
    removed = CliRunner().invoke(cli.main, ["cache", "gc", "--cache", str(scratch), "--manifest",
                                            str(media_manifest), "--config", str(cfg), "--yes"])
    assert removed.exit_code == 0 and "13 file(s) removed" in removed.output
    assert len(list((scratch / "shards" / "text").glob("*.h5"))) == 13
    again = extract(media_manifest, cache=scratch, config=cfg, scheduler="sync", progress=False)
    assert again.computed() == 0  # everything the new config reads survived the gc


def test_cli_dry_run_ls_verify(full_cache, media_manifest):
    cache, _ = full_cache
    runner = CliRunner()
    res = runner.invoke(cli.main, ["extract", "-m", str(media_manifest), "--cache", str(cache), "--dry-run"])
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln.split()[1:] for ln in res.output.splitlines()[1:]}
    assert lines["visual"] == ["13", "0", "0", "0"]
    res = runner.invoke(cli.main, ["cache", "ls", "--cache", str(cache)])
    assert res.exit_code == 0 and "visual" in res.output and "labels" in res.output
    res = runner.invoke(cli.main, ["cache", "verify", "--cache", str(cache)])
    assert res.exit_code == 0 and "91 shard(s), 0 bad" in res.output


def _tiny_manifest(tmp_path: Path, shared_media: Path, clips: list[str], extra_rows: list[str] = ()) -> Path:
    rows = ["trial,video,split"]
    for c in clips:
        p = next(shared_media.glob(f"*/{c}*"))
        rows.append(f"{p.stem},{p},train")
    rows += list(extra_rows)
    m = tmp_path / "m.csv"
    m.write_text("\n".join(rows) + "\n")
    return m


def test_torch_threads_per_worker_and_its_override(monkeypatch, tmp_path, shared_media):
    """cores / workers by default; AFFPIPE_TORCH_THREADS overrides it on every scheduler; a bad value is
    one line naming the variable, before anything is computed."""
    from pipeline.engine.resources import configure_torch_threads, threads_per_worker

    monkeypatch.delenv("AFFPIPE_TORCH_THREADS", raising=False)
    cores = os.cpu_count() or 1
    assert threads_per_worker(1) == cores and threads_per_worker(cores * 4) == 1
    monkeypatch.setenv("AFFPIPE_TORCH_THREADS", "3")
    assert threads_per_worker(1) == 3 and threads_per_worker(64) == 3
    import torch

    before = torch.get_num_threads()
    try:
        m = _tiny_manifest(tmp_path, shared_media, ["bbaf2n"])
        extract(m, cache=tmp_path / "c", stages=["probe"], scheduler="sync", progress=False)
        assert torch.get_num_threads() == 3  # the sync scheduler set this process's threads
        for bad in ("0", "two", "-1"):
            monkeypatch.setenv("AFFPIPE_TORCH_THREADS", bad)
            res = CliRunner().invoke(cli.main, ["extract", "-m", str(m), "--cache", str(tmp_path / "c2"),
                                                "--stages", "probe", "--scheduler", "sync"])
            assert res.exit_code == 1 and "AFFPIPE_TORCH_THREADS must be a positive integer" in res.output
            assert len(res.output.strip().splitlines()) == 1, res.output
            assert not list((tmp_path / "c2").glob("shards/*/*.h5"))
    finally:
        configure_torch_threads(before)


def test_broken_inputs_go_to_the_ledger_not_a_crash(tmp_path, shared_media):
    good = shared_media / "grid" / "bbaf2n.mpg"
    truncated = tmp_path / "truncated.mpg"
    truncated.write_bytes(good.read_bytes()[:3000])
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    manifest = _tiny_manifest(tmp_path, shared_media, ["bbaf2n"], [
        f"missing,{tmp_path / 'nope.mp4'},train",
        f"truncated,{truncated},train",
        f"notvideo,{not_video},val",
    ])
    cache = tmp_path / "cache"
    summary = extract(manifest, cache=cache, stages=["probe", "audio", "labels"], scheduler="sync", progress=False)
    assert not summary.ok
    failed = {(f["trial"], f["stage"]): f for f in summary.failures}
    assert failed[("missing", "probe")]["kind"] == "missing-file"
    assert "nope.mp4" in failed[("missing", "probe")]["message"]
    assert ("notvideo", "probe") in failed
    assert summary.counts["probe"]["done"] >= 1  # the good clip went through
    ledger = CacheStore(cache).ledger()
    assert {(e.trial, e.stage) for e in ledger} >= {("missing", "probe"), ("notvideo", "probe")}
    assert all(e.message and e.kind and e.time for e in ledger)
    # second run: nothing recomputed, failures reported as "failed before" until --retry-failed
    again = extract(manifest, cache=cache, stages=["probe", "audio", "labels"], scheduler="sync", progress=False)
    assert again.computed() == 0
    assert again.counts["probe"]["failed-before"] >= 1
    # fix the broken file: its key changes (new fingerprint) so it is simply computed
    shutil.copy(good, not_video)
    fixed = extract(manifest, cache=cache, stages=["probe"], scheduler="sync", progress=False)
    assert fixed.counts["probe"]["done"] == 1


def test_retry_failed_reruns_exactly_the_ledger(tmp_path, shared_media):
    manifest = _tiny_manifest(tmp_path, shared_media, ["bbaf2n"], [f"broken,{tmp_path / 'b.mp4'},train"])
    (tmp_path / "b.mp4").write_bytes(b"\x00" * 2048)
    cache = tmp_path / "cache"
    first = extract(manifest, cache=cache, stages=["probe"], scheduler="sync", progress=False)
    assert first.counts["probe"] == {"cached": 0, "done": 1, "failed": 1, "blocked": 0, "failed-before": 0}
    retried = extract(manifest, cache=cache, stages=["probe"], scheduler="sync", progress=False, retry_failed=True)
    assert retried.counts["probe"]["failed"] == 1 and retried.counts["probe"]["cached"] == 1
    assert len([e for e in CacheStore(cache).ledger() if e.trial == "broken"]) == 2


def test_unwritable_cache_is_one_clear_error(tmp_path, shared_media):
    manifest = _tiny_manifest(tmp_path, shared_media, ["bbaf2n"])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli.main, ["extract", "-m", str(manifest), "--cache", str(blocker / "cache"),
                                        "--scheduler", "sync"])
    assert res.exit_code == 1
    assert "not writable" in res.output and str(blocker) in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_malformed_manifest_names_file_line_column(tmp_path):
    m = tmp_path / "bad.csv"
    m.write_text("trial,video,split\na,a.mp4,train\na,b.mp4,train\n")
    res = CliRunner().invoke(cli.main, ["extract", "-m", str(m), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 1
    assert f"{m}:3:1: duplicate trial 'a' (first on line 2)" in res.output


def _affpipe(*args: str) -> list[str]:
    return [sys.executable, "-c", "import cli; cli.main()", *args]


def test_sigkill_mid_run_then_resume(tmp_path, shared_media):
    """A run killed with SIGKILL loses nothing already written and the next run completes."""
    clips = sorted(p.stem for p in (shared_media / "grid").glob("*.mpg"))
    manifest = _tiny_manifest(tmp_path, shared_media, clips)
    cache = tmp_path / "cache"
    proc = subprocess.Popen(_affpipe("extract", "-m", str(manifest), "--cache", str(cache), "--stages",
                                     "probe,audio", "--scheduler", "sync"),
                            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((cache / "shards").glob("*/*.h5"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(list((cache / "shards").glob("*/*.h5")))
    assert 3 <= written < 14, "the kill should land mid-run"
    res = subprocess.run(_affpipe("extract", "-m", str(manifest), "--cache", str(cache), "--stages",
                                  "probe,audio", "--scheduler", "sync", "--json"),
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    total_cached = sum(c["cached"] for c in summary["counts"].values())
    assert total_cached >= written - 1  # everything complete before the kill is reused
    assert sum(c["done"] for c in summary["counts"].values()) + total_cached == 14
    assert verify_cache(cache).ok


def test_two_concurrent_runs_never_compute_a_shard_twice(tmp_path, shared_media):
    clips = sorted(p.stem for p in (shared_media / "grid").glob("*.mpg"))[:4]
    manifest = _tiny_manifest(tmp_path, shared_media, clips)
    cache = tmp_path / "cache"
    cmd = _affpipe("extract", "-m", str(manifest), "--cache", str(cache), "--stages", "probe,audio",
                   "--scheduler", "sync", "--json")
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    done = sum(sum(c["done"] for c in o["counts"].values()) for o in outs)
    assert done == 8  # 4 trials x 2 stages, each computed by exactly one of the two runs
    assert verify_cache(cache).ok


def test_real_dask_cluster(tmp_path, shared_media):
    """`--scheduler tcp://...` drives a real `dask scheduler` and two `dask worker` processes."""
    clips = sorted(p.stem for p in (shared_media / "grid").glob("*.mpg"))[:3]
    manifest = _tiny_manifest(tmp_path, shared_media, clips)
    cache = tmp_path / "cache"
    bindir = Path(sys.executable).parent
    sched_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.time() + 60
        address = None
        while address is None and time.time() < deadline:  # dask writes the file in place: wait for all of it
            try:
                address = json.loads(sched_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.2)
        assert address, f"dask scheduler wrote no address to {sched_file} within 60 s"
        for i in range(2):
            gpu = ["--resources", "GPU=1"] if i == 1 else []  # w1 plays the GPU worker
            procs.append(subprocess.Popen([str(bindir / "dask"), "worker", address, "--nthreads", "1",
                                           "--no-dashboard", "--name", f"w{i}", "--local-directory",
                                           str(tmp_path / f"w{i}"), *gpu],
                                          env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        from distributed import Client

        with Client(address, timeout="30s") as client:
            client.wait_for_workers(2, timeout=60)
        res = CliRunner().invoke(cli.main, ["extract", "-m", str(manifest), "--cache", str(cache),
                                            "--stages", "probe,audio,labels", "--scheduler", address, "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["counts"]["audio"]["done"] == 3
        assert set(summary["workers"]["audio"]) <= {"w0", "w1"}
        # with --gpu, GPU-capable stages ask for the resource GPU=1: only w1 may run them
        res = CliRunner().invoke(cli.main, ["extract", "-m", str(manifest), "--cache", str(cache),
                                            "--stages", "faces", "--scheduler", address, "--gpu", "--json"])
        assert res.exit_code == 0, res.output
        summary = json.loads(res.output)
        assert summary["counts"]["faces"]["done"] == 3 and summary["counts"]["probe"]["cached"] == 3
        assert summary["workers"]["faces"] == ["w1"]
        assert verify_cache(cache).ok
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_faceless_and_silent_videos_lose_nothing_cached(tmp_path, shared_media):
    """A video with no face fails `faces` into the ledger (visual blocked); one without audio is legitimate."""
    import decord

    from synthetic.media import moving_frames, tone, write_video

    good = shared_media / "grid" / "bbaf2n.mpg"
    noface = write_video(tmp_path / "noface.mp4", moving_frames(30, 64, 96), 25, audio=tone(1.2))
    frames = decord.VideoReader(str(good)).get_batch(list(range(25))).asnumpy()
    silent = write_video(tmp_path / "silent.mp4", frames, 25)  # no audio track at all
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\ngood,{good},train\n")
    cache = tmp_path / "cache"
    first = extract(manifest, cache=cache, scheduler="sync", progress=False)
    assert first.ok
    manifest.write_text(f"trial,video,split\ngood,{good},train\nnoface,{noface},train\nsilent,{silent},val\n")
    second = extract(manifest, cache=cache, scheduler="sync", progress=False)
    assert all(c["cached"] >= 1 for c in second.counts.values())  # the good trial: every shard reused
    failed = {(f["trial"], f["stage"]): f["kind"] for f in second.failures}
    assert failed == {("noface", "faces"): "no-face"}
    assert second.counts["visual"]["blocked"] == 1
    assert [e.kind for e in CacheStore(cache).ledger()] == ["no-face"]
    reader = open_cache(cache, read_manifest(manifest))
    arrays = reader.load("silent", ["audio", "visual"])
    assert arrays.n_frames == 25
    assert not arrays.valid["audio"].any() and arrays.valid["visual"].mean() > 0.9
    assert arrays.attrs["audio"]["has_audio"] is False or arrays.attrs["audio"]["has_audio"] == 0

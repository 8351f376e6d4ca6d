"""What cache integrity and content identity cost: checksums on writes and window reads, full
verification; and the engine at Aff-Wild2 size: planning 600 trials on an empty cache, a fully
cached re-run (issue 12's target: under 5 s), `cache ls` and `cache verify` on 3600 shards.

    python bench/cache.py [--frames 30000] [--trials 600]

Prints one table. Numbers depend on the disk and on what else runs: compare rows of one run.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.engine.shards import TIME_CHUNK, read_shard, verify_shard, write_shard  # noqa: E402


def _plain_write(path: Path, feats: np.ndarray) -> None:
    """The schema-1 layout: the same chunks, no checksums (the baseline)."""
    n = feats.shape[0]
    with h5py.File(path, "w") as h5:
        h5.create_dataset("frame", data=np.arange(n), chunks=(min(TIME_CHUNK, n),))
        h5.create_dataset("time", data=np.arange(n) / 30.0, chunks=(min(TIME_CHUNK, n),))
        h5.create_dataset("features", data=feats, chunks=(min(TIME_CHUNK, n), feats.shape[1]))
        h5.create_dataset("valid", data=np.ones(n, bool), chunks=(min(TIME_CHUNK, n),))


def _window_reads(path: Path, n: int, reads: int, rng: np.random.Generator) -> float:
    starts = rng.integers(0, n - 300, size=reads)
    t0 = time.perf_counter()
    with h5py.File(path, "r") as h5:
        ds = h5["features"]
        for s in starts:
            ds[s:s + 300]
    return (time.perf_counter() - t0) / reads


def checksum_rows(root: Path, frames: int, dim: int = 512) -> list[tuple[str, str, str]]:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((frames, dim)).astype(np.float32)
    plain, checked = root / "plain.h5", root / "probe" / "t.0123456789abcdef0123.h5"
    checked.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    _plain_write(plain, feats)
    t_plain = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_shard(checked, frame=np.arange(frames), time=np.arange(frames) / 30.0, features=feats,
                valid=np.ones(frames, bool), extras={}, attrs={"trial": "t", "stage": "probe",
                                                               "key": "0123456789abcdef0123"})
    t_checked = time.perf_counter() - t0
    mb = feats.nbytes / 2**20
    rows.append(("write shard", f"{mb:.0f} MiB, {frames} frames x {dim}", f"{t_plain:.3f} s -> {t_checked:.3f} s "
                 f"(x{t_checked / t_plain:.2f}; checked = fletcher32 + digests + fsync + rename)"))
    for name, path in (("plain", plain), ("checked", checked)):
        _window_reads(path, frames, 20, rng)  # warm the page cache alike
    w_plain = _window_reads(plain, frames, 300, rng)
    w_checked = _window_reads(checked, frames, 300, rng)
    rows.append(("random 300-frame window read", "page cache warm",
                 f"{w_plain * 1e3:.2f} ms -> {w_checked * 1e3:.2f} ms (x{w_checked / w_plain:.2f})"))
    t0 = time.perf_counter()
    with h5py.File(plain, "r") as h5:
        h5["features"][()]
    t_plain_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    read_shard(checked)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    problems = verify_shard(checked)
    t_verify = time.perf_counter() - t0
    assert not problems, problems
    rows.append(("whole-shard read (trainer)", f"{mb:.0f} MiB", f"{t_plain_read:.3f} s -> {t_read:.3f} s "
                 f"({mb / t_read:.0f} MiB/s checked)"))
    rows.append(("full verification", "checksums + finite + schema", f"{t_verify:.3f} s ({mb / t_verify:.0f} MiB/s)"))
    return rows


def planning_rows(root: Path, trials: int) -> list[tuple[str, str, str]]:
    """Engine scale (issue 12): planning, a fully cached re-run, `cache ls`/`verify` at Aff-Wild2 size."""
    from synthetic.cache import write_synthetic_cache
    from pipeline import extract
    from pipeline.engine.cache_admin import list_cache, verify_cache
    from pipeline.sources.manifest import Trial, read_manifest, write_manifest

    videos = root / "videos"
    videos.mkdir()
    rows_m = []
    rng = np.random.default_rng(1)
    for i in range(trials):
        v = videos / f"trial{i:04d}.mp4"
        v.write_bytes(rng.bytes(1 << 20))  # 1 MiB stand-ins: fingerprints read real blocks
        rows_m.append(Trial(trial=f"trial{i:04d}", video=v, split="train"))
    manifest = write_manifest(rows_m, root / "m.csv")
    cache = root / "cache"
    stages = ["probe", "faces", "visual", "audio", "labels"]
    out = []
    with _Timed() as took:
        s = extract(manifest, cache=cache, stages=stages, scheduler="sync", progress=False, dry_run=True)
    out.append(("plan on an empty cache (dry run, cold memo)", f"{trials} trials x {len(stages)} stages", took.text))
    assert sum(c["todo"] for c in s.counts.values()) == trials * len(stages), s.counts
    lengths = {t.trial: 120 for t in rows_m}
    dims = {"faces": 10, "visual": 256, "audio": 39, "text": 384}  # + probe, labels: 6 shards per trial
    write_synthetic_cache(cache, read_manifest(manifest), lengths, dims)
    shards = trials * (len(dims) + 2)
    for label in ("first re-run: verify every shard, index it", "fully cached re-run (stamps, memo; < 5 s)"):
        with _Timed() as took:
            s = extract(manifest, cache=cache, stages=stages, scheduler="sync", progress=False)
        assert s.computed() == 0, s.counts
        out.append((label, f"{trials} trials x {len(stages)} stages", took.text))
    cmd = [sys.executable, "cli.py", "extract", "-m", str(manifest), "-c", str(cache), "--stages", ",".join(stages),
           "--scheduler", "processes", "--json"]
    with _Timed() as took:  # what a user waits for: interpreter, imports, plan, summary; no cluster starts
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sum(c["done"] for c in json.loads(proc.stdout)["counts"].values()) == 0, proc.stdout[-2000:]
    out.append(("`affpipe extract`, fully cached (fresh process)", f"{trials} trials x {len(stages)} stages",
                took.text))
    with _Timed() as took:
        rows, other = list_cache(cache)
    current = sum(r["shards"] for r in rows)
    # text shards are synthetic only (no extract indexed them): ls counts them apart, unopened
    out.append(("cache ls (2 header attributes per current shard)", f"{current} current + {other['shards']} other",
                took.text))
    with _Timed() as took:
        report = verify_cache(cache)
    out.append(("cache verify (read every byte)", f"{report.checked} shards", took.text))
    assert current + other["shards"] == report.checked == shards and report.ok, (current, other, report.checked)
    return out


class _Timed:
    """Wall and CPU seconds of a block (this process and the children it waited for), as one cell."""

    def __enter__(self) -> "_Timed":
        self.t0, self.c0 = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        self.text = f"{time.perf_counter() - self.t0:.2f} s wall, {_cpu() - self.c0:.2f} s CPU"


def _cpu() -> float:
    """User + system seconds of this process and its waited-for children (hardly moves with load)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=30000, help="frames of the checksum shard (a 16-minute video)")
    ap.add_argument("--trials", type=int, default=600, help="trials of the planning manifest")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="affpipe-bench-cache-") as tmp:
        root = Path(tmp)
        rows = checksum_rows(root / "checksums", args.frames)
        (root / "plan").mkdir()
        rows += planning_rows(root / "plan", args.trials)
    width = max(len(r[0]) for r in rows)
    wid2 = max(len(r[1]) for r in rows)
    print(f"{'what':<{width}}  {'size':<{wid2}}  result")
    for what, size, result in rows:
        print(f"{what:<{width}}  {size:<{wid2}}  {result}")


if __name__ == "__main__":
    main()

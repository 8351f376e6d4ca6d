"""Extraction benchmark: frames/s per stage and end to end, decode-only rate, peak memory.

    python bench/extract.py [--media ../shared/media] [--seconds 60] [--device cpu|cuda]
                            [--backbones onet] [--audio mfcc,logmel]

Each measurement runs in a fresh subprocess (so its peak RSS is its own) that
extracts one stage, upstream stages being already cached. Two generated 720p
30 fps videos of different lengths show whether memory grows with length
(it must not: decoding and processing happen in bounded chunks).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
from pipeline import extract
kind = {kind!r}
t0 = time.time()
if kind == "decode":
    from pipeline.decode import iter_frames, probe_video
    frames = 0
    for m in {videos!r}:
        n = probe_video(m).n_decoded
        for _, chunk in iter_frames(m, n):
            frames += len(chunk)
    out = {{"frames": frames, "seconds": time.time() - t0}}
else:
    s = extract({manifest!r}, cache={cache!r}, config={config!r}, stages=[kind], scheduler="sync", progress=False)
    t = s.timing.get(kind, {{"seconds": 0.0, "frames": 0}})
    out = {{"frames": t["frames"], "seconds": t["seconds"], "wall": time.time() - t0, "ok": s.ok}}
# VmHWM, not ru_maxrss: Linux carries the parent's high-water mark across exec into ru_maxrss
out["peak_mib"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def run_child(kind: str, manifest: Path, cache: Path, config: dict, videos: list[str]) -> dict:
    code = CHILD.format(repo=str(REPO), kind=kind, manifest=str(manifest), cache=str(cache), config=config,
                        videos=videos)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "failed"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def make_720p(path: Path, seconds: float) -> Path:
    """A 1280x720 30 fps video of a real face (matplotlib's Grace Hopper) moving, with a tone."""
    import numpy as np
    from matplotlib import cbook
    from PIL import Image

    from pipeline.media_fixtures import tone, write_video

    face = Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB").resize((360, 480))
    face = np.asarray(face)
    n = int(seconds * 30)

    def frames():
        for i in range(n):
            f = np.full((720, 1280, 3), 40, dtype=np.uint8)
            x = 400 + int(200 * np.sin(i / 30))
            f[120:600, x:x + 360] = face
            yield f

    return write_video(path, frames(), 30, audio=tone(seconds, 16000, 220.0, 0.3), sr=16000, codec="mpeg4")


def bench_set(name: str, manifest: Path, videos: list[str], config: dict, stages: list[str],
              variants: list[tuple[str, str, dict]]) -> list[dict]:
    """Default stages (end to end), then each (label, stage, settings) variant on the same cache."""
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        r = run_child("decode", manifest, Path(cache), config, videos)
        rows.append({"set": name, "stage": "decode-only", **r})
        total = 0.0
        frames = 0
        for stage in stages:
            r = run_child(stage, manifest, Path(cache), config, videos)
            rows.append({"set": name, "stage": stage, **r})
            total += r.get("seconds", 0.0)
            frames = max(frames, r.get("frames", 0))
        rows.append({"set": name, "stage": "end-to-end", "frames": frames, "seconds": total,
                     "peak_mib": max(x.get("peak_mib", 0) for x in rows if x["set"] == name)})
        for label, stage, settings in variants:
            cfg = {"stages": {**config["stages"], stage: {**config["stages"].get(stage, {}), **settings}}}
            r = run_child(stage, manifest, Path(cache), cfg, videos)
            rows.append({"set": name, "stage": label, **r})
    return rows


#: every other extractor, timed on the same cache. Networks whose weights cannot be downloaded here
#: run with random weights of the same architecture: the speed is the real one, the features are not.
VARIANTS = [
    ("faces:fast", "faces", {"detect_every": 3, "detect_scale": 0.5}),
    ("visual:facenet*", "visual", {"backbone": "random:facenet"}),
    ("visual:ir50*", "visual", {"backbone": "random:ir50"}),
    ("audio:logmel", "audio", {"model": "logmel"}),
    ("text:word", "text", {"granularity": "word"}),
]


def random_vggish(folder: Path) -> Path:
    """A torchvggish-layout checkpoint of a freshly initialised VGGish (loads through the real code)."""
    import torch

    from pipeline import vggish as vg

    ours_to_ck = {ours: ck for ck, ours in vg.CHECKPOINT_NAMES.items()}
    state = {f"{ours_to_ck[k.rsplit('.', 1)[0]]}.{k.rsplit('.', 1)[1]}": v for k, v in vg.VGGish().state_dict().items()}
    path = folder / "vggish-random.pth"
    torch.save(state, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of the long generated 720p video")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-720p", action="store_true")
    args = ap.parse_args()
    stages = ["probe", "faces", "visual", "audio", "text", "labels"]
    config = {"stages": {s: {"device": args.device} for s in ("faces", "visual", "audio", "text")}}
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        VARIANTS.append(("audio:vggish*", "audio", {"model": "vggish", "weights": str(random_vggish(tmp))}))
        if (args.media / "cremad").is_dir():
            clips = sorted(args.media.glob("cremad/*.flv")) + sorted(args.media.glob("grid/*.mpg"))
            m = tmp / "shared.csv"
            m.write_text("trial,video,split\n" + "".join(f"{c.stem},{c},train\n" for c in clips))
            rows += bench_set("shared clips", m, [str(c) for c in clips], config, stages, VARIANTS)
        else:
            print(f"(no shared clips at {args.media}; skipping that set)")
        if not args.skip_720p:
            for secs in (args.seconds / 4, args.seconds):
                v = make_720p(tmp / f"v720_{int(secs)}s.mp4", secs)
                m = tmp / f"v720_{int(secs)}.csv"
                m.write_text(f"trial,video,split\nv720_{int(secs)},{v},train\n")
                rows += bench_set(f"720p30 {int(secs)}s", m, [str(v)], config, stages,
                                  VARIANTS if secs == args.seconds else [])
    import torch

    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) or args.device == "cuda" else "cpu"
    print(f"\naffpipe extract benchmark ({device}, torch threads {torch.get_num_threads()})")
    print(f"{'set':<16} {'stage':<16} {'frames':>8} {'seconds':>9} {'frames/s':>9} {'peak MiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['set']:<16} {r['stage']:<16} error: {r['error']}")
            continue
        fps = r["frames"] / r["seconds"] if r.get("seconds") else float("nan")
        print(f"{r['set']:<16} {r['stage']:<16} {r['frames']:>8} {r['seconds']:>9.2f} {fps:>9.1f} "
              f"{r.get('peak_mib', 0):>9.0f}")
    print("* random weights of the real architecture (speed only); vggish needs its weight file")


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"(bench took {time.time() - t:.0f} s)")

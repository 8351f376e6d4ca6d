"""ASR benchmark: word error rate on the shared clips, word timing on GRID swwp2s, long-audio rate and memory.

    python bench/asr.py [--media ../shared/media] [--minutes 1,10] [--backend pocketsphinx] [--skip-long]

- WER per clip and per corpus: GRID (references in grid/transcripts.csv) and CREMA-D (every clip
  says "Don't forget a jacket"). Text is lower-cased, punctuation other than apostrophes removed;
  WER = word edit distance / reference words (torchaudio's edit distance).
- Timing on id2_vcd_swwp2s: each recognised word is paired with the aligned word (swwp2s.align) it
  overlaps most; it is "within" when both its start and its end lie within 0.1 s of that word's,
  otherwise (or with no overlapping word) it is counted as off.
- Long audio: the shared clips' audio, one clip every `--period` seconds (default 20; the rest is
  silence, with 6 s of synthetic music in every other gap), into an N-minute video (1 fps, 64x96
  frames, PCM audio). The rate depends on how much of it is speech (column "clip audio"). Each length is
  extracted (asr only) in a fresh subprocess so its peak RSS (VmHWM) is its own; the rate is audio
  seconds per wall second of the stage's compute, and per CPU second (what a busy machine cannot
  change).
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CREMAD_SENTENCE = "don't forget a jacket"
TOLERANCE_S = 0.1

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from pipeline import extract
t0, c0 = time.time(), time.process_time()
s = extract({manifest!r}, cache={cache!r}, config={config!r}, stages=["asr"], scheduler="sync", progress=False)
t = s.timing.get("asr", {{"seconds": 0.0}})
out = {{"asr_seconds": t["seconds"], "wall": time.time() - t0, "cpu": time.process_time() - c0, "ok": s.ok,
        "failures": s.failures}}
out["peak_mib"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
print(json.dumps(out))
"""


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def word_errors(ref: list[str], hyp: list[str]) -> int:
    import torchaudio

    return int(torchaudio.functional.edit_distance(ref, hyp))


def extract_asr(manifest: Path, cache: Path, config: dict) -> dict:
    """Run the asr stage in a fresh process; return its timing and peak memory."""
    code = CHILD.format(repo=str(REPO), manifest=str(manifest), cache=str(cache), config=config)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"asr extraction failed: {res.stderr.strip().splitlines()[-1:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def shard_words(cache: Path, trial: str) -> list:
    from pipeline.asr.words import words_from_extras
    from pipeline.engine.shards import read_shard

    (path,) = (cache / "shards" / "asr").glob(f"{trial}.*.h5")
    return words_from_extras(read_shard(path).extras)


def accuracy(media: Path, work: Path, config: dict) -> None:
    clips = sorted((media / "grid").glob("*.mpg")) + sorted((media / "cremad").glob("*.flv"))
    manifest = work / "clips.csv"
    manifest.write_text("trial,video,split\n" + "".join(f"{c.stem},{c},train\n" for c in clips))
    cache = work / "cache-clips"
    run = extract_asr(manifest, cache, config)
    refs = {row["file"]: row["transcript"] for row in csv.DictReader((media / "grid" / "transcripts.csv").open())}
    totals: dict[str, list[int]] = {"GRID": [0, 0], "CREMA-D": [0, 0]}
    print(f"\n## Word error rate ({config['stages']['asr']['backend']}; {run['asr_seconds']:.1f} s for "
          f"{len(clips)} clips)\n")
    print("| clip | reference | recognised | errors / words |")
    print("|---|---|---|---|")
    for c in clips:
        corpus = "GRID" if c.parent.name == "grid" else "CREMA-D"
        ref = normalise(refs[c.name] if corpus == "GRID" else CREMAD_SENTENCE)
        hyp = normalise(" ".join(w.text for w in shard_words(cache, c.stem)))
        err = word_errors(ref, hyp)
        totals[corpus][0] += err
        totals[corpus][1] += len(ref)
        print(f"| {c.name} | {' '.join(ref)} | {' '.join(hyp)} | {err} / {len(ref)} |")
    print()
    for corpus, (err, n) in totals.items():
        print(f"**{corpus} WER: {err / n:.1%}** ({err} errors / {n} reference words)  ")
    timing(media, cache)


def timing(media: Path, cache: Path) -> None:
    from pipeline.sources.transcripts import read_transcript

    aligned = [(s.start, s.end, s.text) for s in read_transcript(media / "grid" / "swwp2s.align")]
    words = shard_words(cache, "id2_vcd_swwp2s")
    print(f"\n## Word timing on id2_vcd_swwp2s (within {TOLERANCE_S} s of swwp2s.align)\n")
    print("| recognised | start-end (s) | aligned word | start-end (s) | within |")
    print("|---|---|---|---|---|")
    within = same_text = same_within = 0
    for w in words:
        overlap = [(min(w.end, b) - max(w.start, a), a, b, t) for a, b, t in aligned]
        best = max(overlap, default=None)
        ok = best is not None and best[0] > 0 and abs(w.start - best[1]) <= TOLERANCE_S and \
            abs(w.end - best[2]) <= TOLERANCE_S
        match = "-" if best is None or best[0] <= 0 else f"{best[3]} | {best[1]:.2f}-{best[2]:.2f}"
        within += ok
        if best is not None and best[0] > 0 and normalise(best[3]) == normalise(w.text):
            same_text += 1
            same_within += ok
        print(f"| {w.text} | {w.start:.2f}-{w.end:.2f} | {match} | {'yes' if ok else 'off'} |")
    print(f"\n**{within} of {len(words)} recognised words within {TOLERANCE_S} s** "
          f"({same_within} of the {same_text} recognised correctly)")


def long_video(media: Path, path: Path, minutes: float, period: float) -> tuple[Path, float]:
    """One clip every `period` s, silence and music between, `minutes` long; returns (video, clip seconds)."""
    import numpy as np

    from pipeline.media.decode import read_audio
    from synthetic.media import chord_music, moving_frames, write_video

    clips = [read_audio(c).samples for c in sorted((media / "grid").glob("*.mpg"))
             + sorted((media / "cremad").glob("*.flv"))]
    total = int(minutes * 60 * 16000)
    parts, n, k, speech = [], 0, 0, 0
    while n < total:
        clip = clips[k % len(clips)]
        speech += len(clip)
        block = [clip, np.zeros(32000, np.float32)]
        if k % 2 == 1:
            block.append(chord_music(6.0, seed=k))
        block.append(np.zeros(max(0, int(period * 16000) - sum(len(b) for b in block)), np.float32))
        for b in block:
            parts.append(b)
            n += len(b)
        k += 1
    audio = np.concatenate(parts)[:total]
    frames = moving_frames(int(minutes * 60))
    write_video(path, frames, 1, audio=audio, audio_codec="pcm_s16le")
    return path, speech / 16000


def long_audio(media: Path, work: Path, config: dict, minutes: list[float], period: float) -> None:
    print("\n## Long audio (asr stage alone, fresh process per length)\n")
    print("| audio | clip audio in it | words | audio s / wall s | audio s / CPU s | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|")
    for m in minutes:
        video, speech = long_video(media, work / f"long{m:g}.mkv", m, period)
        manifest = work / f"long{m:g}.csv"
        manifest.write_text(f"trial,video,split\nlong,{video},train\n")
        cache = work / f"cache-long{m:g}"
        run = extract_asr(manifest, cache, config)
        n = len(shard_words(cache, "long"))
        sec = m * 60
        print(f"| {m:g} min | {speech:.0f} s | {n} | {sec / run['asr_seconds']:.2f} | {sec / run['cpu']:.2f} "
              f"| {run['peak_mib']:.0f} |")


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--media", type=Path, default=REPO.parent / "shared" / "media")
    ap.add_argument("--minutes", default="1,10", help="lengths of the long-audio rows")
    ap.add_argument("--period", type=float, default=20.0, help="seconds between clip starts in the long audio")
    ap.add_argument("--backend", default="pocketsphinx")
    ap.add_argument("--skip-long", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    if not (args.media / "grid").is_dir():
        raise SystemExit(f"{args.media}: shared clips not found (pass --media)")
    config = {"stages": {"asr": {"backend": args.backend}}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_accuracy:
            accuracy(args.media, work, config)
        if not args.skip_long:
            long_audio(args.media, work, config, [float(x) for x in args.minutes.split(",")], args.period)


if __name__ == "__main__":
    main()

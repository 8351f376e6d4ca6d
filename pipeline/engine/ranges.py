"""Long videos across workers: one shard computed as frame-range parts, then assembled atomically.

A 15-minute video is 27,000 frames; as one task it keeps one worker busy for its
whole length while the others idle. For stages that can compute frames [a, b)
alone (`Stage.splits`), the runner plans ``parts`` range tasks plus one assemble
task per shard (`plan_parts`). Nothing about the shard changes: same key, same
file, same layout, bit-identical arrays (`tests/test_ranges.py`), because

- range boundaries fall on multiples of the decode chunk (`part_ranges`) and of
  the stage's own restart period (`Stage.split_align`: guided faces restart their
  search every 256 frames), and
  `pipeline.media.decode.iter_frames` cuts chunks at absolute multiples, so every
  batch a stage runs holds the same frames as in a whole-video pass;
- each part decodes only its share: the demuxer seeks to the keyframe before the
  range and decodes forward (`pipeline.media.decode._frames_from`), checked frame by
  frame against the probe's pts;
- whatever runs across the whole video (the faces tracker, interpolation between
  detections) runs in `Stage.assemble`, over everything the parts found.

Parts are written with `write_shard` (checksums, atomic rename) under the
cache's temporary naming (`CacheStore.part_path`: ``.<shard>.partKofN.tmp``), so
`cache ls`/`verify` never count them as shards, readers never see them, and gc
removes leftovers. Each part has its own lock; a part already on disk from a
killed run is reused when it reads back sound and names the same key and range.
The assemble task takes the shard's own key lock, reads the parts (which checks
their checksums), builds the output, writes the shard through the same checks
as an unsplit task (`worker.write_output`), and only then deletes the parts: a
kill at any point leaves either no shard (the next run assembles again from the
parts) or the complete one.

The split size (`split_frames`, `affpipe extract --split-frames`) is an engine
setting, not a stage setting: it is in no key, since it changes no result.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.manifest import Trial
from .shards import ShardError, read_shard, write_shard
from .store import CacheStore
from .worker import _blocked, failure, stage_of, task_base, write_output

#: default frames per part (about a minute at 30 fps): below it a trial is one task
SPLIT_FRAMES = 1800
#: boundaries fall on multiples of this (the faces/visual decode chunk), see module docstring
ALIGN = 32


def n_parts(frames: int, split_frames: int | None, align: int = ALIGN) -> int:
    """Parts a trial of about `frames` frames is cut into (1: not split), at most one per `align` frames."""
    if not split_frames or split_frames <= 0 or frames <= split_frames:
        return 1
    return max(1, min(math.ceil(frames / split_frames), math.ceil(frames / align)))


def stage_align(stage: Any, trial: Trial) -> int:
    """The multiple a stage's part boundaries fall on: the decode chunk and the stage's own period."""
    return math.lcm(ALIGN, int(stage.split_align(trial)))


def part_ranges(n: int, parts: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering 0..n, inner boundaries on multiples of `align`, each the multiple
    nearest k*n/parts that leaves every part at least one chunk (the last ones are empty only when n has
    fewer chunks than `parts`)."""
    chunks = -(-n // align)
    cuts = [0]
    for k in range(1, parts):
        c = max(int(round(k * n / parts / align)), cuts[-1] + 1)
        cuts.append(min(c, max(chunks - (parts - k), cuts[-1] + 1), chunks))
    bounds = [min(n, c * align) for c in cuts] + [n]
    return [(bounds[k], bounds[k + 1]) for k in range(parts)]


def estimate_frames(upstream_probe: Path | None, video: Path) -> int:
    """Frames of a trial for planning parts: the cached probe's count, else the container's header."""
    if upstream_probe is not None and upstream_probe.exists():
        from .shards import read_attrs

        try:
            return int(read_attrs(upstream_probe, ("n_frames",)).get("n_frames", 0))
        except ShardError:
            pass
    from ..media.decode import estimate_frames as from_header

    return from_header(video)


def _part_matches(path: Path, key: str, k: int, parts: int, a: int, b: int) -> bool:
    """A part left by an earlier (killed) run: reusable when it reads back sound and names this key and range."""
    try:
        part = read_shard(path)
    except ShardError:
        return False
    at = part.attrs
    return (at.get("key") == key and at.get("part") == k and at.get("parts") == parts
            and at.get("range") == [a, b] and part.n_frames == b - a)


def compute_part(spec: dict[str, Any], k: int, parts: int, *upstream_results: dict[str, Any]) -> dict[str, Any]:
    """Range task: frames of part k of `parts` of the shard `spec` describes, written as a part file."""
    from .. import stages as _register  # noqa: F401
    from .resources import bound_heap_growth

    bound_heap_growth()
    started = time.time()
    base = {**task_base(spec), "part": k}
    blocked = _blocked(base, upstream_results)
    if blocked:
        return blocked
    store = CacheStore(spec["cache"])
    path = Path(spec["path"])
    part_path = store.part_path(path, k, parts)
    try:
        with store.lock(spec["key"], f"part{k:03d}of{parts:03d}"):
            if path.exists():
                return {**base, "status": "cached"}
            trial = Trial.from_dict(spec["trial"])
            stage = stage_of(spec)
            upstream = {name: read_shard(Path(p)) for name, p in spec["upstream"].items()}
            grid = upstream["probe"].time
            a, b = part_ranges(int(grid.shape[0]), parts, stage_align(stage, trial))[k]
            if part_path.exists() and _part_matches(part_path, spec["key"], k, parts, a, b):
                return {**base, "status": "done", "seconds": 0.0, "frames": 0}
            out = stage.run_range(trial, upstream, a, b)
            for name, arr in (("features", out.features), ("valid", out.valid)):
                if arr is not None and arr.shape[0] != b - a:
                    raise RuntimeError(f"stage {spec['stage']} returned {arr.shape[0]} rows of {name} "
                                       f"for frames {a}..{b - 1}")
            write_shard(part_path, frame=np.arange(b - a, dtype=np.int64), time=grid[a:b], features=out.features,
                        valid=out.valid, extras=out.extras,
                        attrs={"trial": trial.trial, "stage": spec["stage"], "key": spec["key"], "part": k,
                               "parts": parts, "range": [a, b], "stage_attrs": out.attrs})
    except Exception as exc:  # noqa: BLE001
        return failure(base, spec, exc)
    return {**base, "status": "done", "seconds": time.time() - started, "frames": b - a}


def assemble_shard(spec: dict[str, Any], parts: int, *part_results: dict[str, Any]) -> dict[str, Any]:
    """Assemble task: the parts, in frame order, into the one shard (then the parts are deleted)."""
    from .. import stages as _register  # noqa: F401

    started = time.time()
    base = task_base(spec)
    for res in part_results:  # a part's own failure is this shard's failure (verdicts stay sticky)
        if res.get("status") in ("failed", "blocked"):
            return {**base, **{k: v for k, v in res.items() if k not in ("part", "worker")}}
    store = CacheStore(spec["cache"])
    path = Path(spec["path"])
    wrote, n = False, 0
    try:
        with store.lock(spec["key"]):
            if not path.exists():
                trial = Trial.from_dict(spec["trial"])
                stage = stage_of(spec)
                upstream = {name: read_shard(Path(p)) for name, p in spec["upstream"].items()}
                n = int(upstream["probe"].n_frames)
                shards = []
                for k, (a, b) in enumerate(part_ranges(n, parts, stage_align(stage, trial))):
                    part_path = store.part_path(path, k, parts)
                    if not _part_matches(part_path, spec["key"], k, parts, a, b):
                        part_path.unlink(missing_ok=True)  # damaged or foreign: the next run recomputes it
                        raise RuntimeError(f"part {k} of {parts} ({part_path.name}) is missing or damaged; "
                                           "the next run computes it again")
                    shards.append(read_shard(part_path))
                out = stage.assemble(trial, upstream, shards)
                n = write_output(spec, stage, trial, upstream, out, path)
                wrote = True
            for p in store.part_paths(path):  # only once the shard is in place
                p.unlink(missing_ok=True)
    except Exception as exc:  # noqa: BLE001
        return failure(base, spec, exc)
    seconds = sum(float(r.get("seconds", 0.0)) for r in part_results) + time.time() - started
    if not wrote:
        return {**base, "status": "cached"}
    return {**base, "status": "done", "seconds": seconds, "frames": n, "parts": parts,
            "part_workers": sorted({str(r.get("worker")) for r in part_results})}

"""`affpipe cache ls | verify | gc`: look at, check, repair and prune a shard cache.

gc and repair delete files, so they take the cache alone (`CacheStore.hold`):
while an extract runs they refuse with one line instead of deleting its
temporaries or the shards it is about to read. gc needs no inputs: shards are
resolved from manifest and config through the index (`pipeline.engine.reader`), and
for a trial whose shards it cannot resolve it deletes nothing.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .index import TrialIndex
from ..sources.manifest import Trial
from .reader import CacheReader
from .shards import ShardError, read_attrs, verify_shard
from .store import KEY_CHARS, CacheStore


def _trial_of(path: Path) -> str:
    return path.name.rsplit(".", 2)[0]


def current_keys(store: CacheStore) -> set[tuple[str, str]]:
    """(trial, key prefix) of every shard the index names as the latest version of a recipe."""
    index = TrialIndex(store.root)
    out: set[tuple[str, str]] = set()
    folder = store.root / "index"
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        trial = f.name[: -len(".json")]
        for recipes in index.load(trial).values():
            for versions in recipes.values():
                if versions:
                    latest = max(versions, key=lambda v: v.get("time", 0))
                    out.add((trial, str(latest.get("key", ""))[:KEY_CHARS]))
    return out


def list_cache(cache: str | Path) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rows per (stage, settings) of *current* shards (shards, trials, frames, bytes), and the others' totals.

    Current = the latest version extract recorded for a recipe (`pipeline.engine.index`);
    the others are superseded versions (an input changed) or shards no index names
    (older caches): counted apart so frames are never summed across versions.
    """
    store = CacheStore(cache)
    current = current_keys(store)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    other = {"shards": 0, "bytes": 0}
    for path in store.iter_shards():
        if (_trial_of(path), path.name.rsplit(".", 2)[1]) not in current:
            other["shards"] += 1
            other["bytes"] += path.stat().st_size
            continue
        stage = path.parent.name
        try:
            attrs = read_attrs(path, ("settings", "n_frames"))
            settings = json.dumps(attrs.get("settings", {}), sort_keys=True)
            frames = int(attrs.get("n_frames", 0))
        except ShardError:
            settings, frames = "<unreadable>", 0
        row = rows.setdefault((stage, settings), {"stage": stage, "settings": settings, "trials": set(),
                                                  "shards": 0, "frames": 0, "bytes": 0})
        row["trials"].add(_trial_of(path))
        row["shards"] += 1
        row["frames"] += frames
        row["bytes"] += path.stat().st_size
    out = []
    for row in rows.values():
        row["trials"] = len(row["trials"])
        out.append(row)
    return sorted(out, key=lambda r: (r["stage"], r["settings"])), other


@dataclass
class VerifyReport:
    checked: int = 0
    bad: dict[str, list[str]] = field(default_factory=dict)
    temporaries: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad or len(self.removed) == len(self.bad)


def verify_cache(cache: str | Path, repair: bool = False) -> VerifyReport:
    """Read every shard in full (checksums, schema, counts, finite values); with `repair`, remove bad ones.

    Removed shards are simply recomputed by the next extract.
    """
    store = CacheStore(cache)
    report = VerifyReport()
    for path in store.iter_shards():
        report.checked += 1
        problems = verify_shard(path)
        if problems:
            report.bad[str(path)] = problems
    report.temporaries = [str(p) for p in store.iter_temporaries()]
    if repair and report.bad:
        with store.hold(exclusive=True, what="cache verify --repair"):
            for p in report.bad:
                Path(p).unlink(missing_ok=True)
                report.removed.append(p)
    return report


def referenced_paths(cache: str | Path, trials: list[Trial], config: Any
                     ) -> tuple[set[Path], set[tuple[str, str]]]:
    """Shard paths the manifest + config read, and the (trial, stage) pairs gc cannot judge.

    A pair cannot be judged when its shard is neither found nor computable here
    (inputs absent and no index record): gc keeps every shard of that pair.
    """
    reader = CacheReader(cache, trials, config)
    keep: set[Path] = set()
    unresolved: set[tuple[str, str]] = set()
    for pair, res in reader._tasks.items():
        if res.path is not None:
            keep.add(res.path)
        elif res.status == "missing" and not res.exact:
            unresolved.add(pair)
    return keep, unresolved


@dataclass
class GcPlan:
    shards: list[Path] = field(default_factory=list)  # unreferenced shards
    leftovers: list[Path] = field(default_factory=list)  # temporaries, quarantined shards, lock files
    kept_unresolved: list[Path] = field(default_factory=list)  # unreferenced, but of a pair gc cannot judge
    locks: list[Path] = field(default_factory=list)  # per-key lock files, cleared while the cache is held alone


def _gc_plan(store: CacheStore, uses: list[tuple[list[Trial], Any]]) -> GcPlan:
    keep: set[Path] = set()
    unresolved: set[tuple[str, str]] = set()
    for trials, config in uses:
        k, u = referenced_paths(store.root, trials, config)
        keep |= k
        unresolved |= u
    plan = GcPlan()
    for p in store.iter_shards():
        if p in keep:
            continue
        (plan.kept_unresolved if (_trial_of(p), p.parent.name) in unresolved else plan.shards).append(p)
    quarantine = store.root / "quarantine"
    leftovers = list(store.iter_temporaries()) + (sorted(quarantine.rglob("*")) if quarantine.is_dir() else [])
    plan.leftovers = [p for p in leftovers if p.is_file()]
    return plan


def collect_garbage(cache: str | Path, uses: list[tuple[list[Trial], Any]], yes: bool = False) -> GcPlan:
    """Shards no (manifest trials, config) pair in `uses` references, plus leftovers; deleted only when `yes`.

    Deleting holds the cache alone from resolution to the last unlink (refused
    while an extract runs), so it never removes an in-flight temporary, a shard
    an extract is about to read, or one an extract finished a moment before.
    """
    store = CacheStore(cache)
    if not yes:
        return _gc_plan(store, uses)
    with store.hold(exclusive=True, what="cache gc"):
        plan = _gc_plan(store, uses)
        locks = store.root / "locks"
        plan.locks = sorted(locks.glob("*.lock")) if locks.is_dir() else []
        plan.leftovers += sorted((store.root / "index").glob(".*.tmp")) if (store.root / "index").is_dir() else []
        gone: dict[str, set[str]] = {}
        for p in plan.shards + plan.leftovers + plan.locks:
            p.unlink(missing_ok=True)
        for p in plan.shards:
            gone.setdefault(_trial_of(p), set()).add(p.name.rsplit(".", 2)[1])
        shutil.rmtree(store.root / "quarantine", ignore_errors=True)
        index = TrialIndex(store.root)
        for trial, prefixes in gone.items():
            index.forget(trial, prefixes)
    return plan

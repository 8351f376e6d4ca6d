"""`affpipe cache ls | verify | gc`: look at, check and prune a shard cache."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_stages
from .manifest import Trial
from .plan import make_plan, stage_order
from .shards import ShardError, read_attrs, verify_shard
from .stage import STAGES
from .store import CacheStore


def list_cache(cache: str | Path) -> list[dict[str, Any]]:
    """One row per (stage, settings): trials, frames, bytes. Unreadable shards are counted apart."""
    store = CacheStore(cache)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for path in store.iter_shards():
        stage = path.parent.name
        try:
            attrs = read_attrs(path)
            settings = json.dumps(attrs.get("settings", {}), sort_keys=True)
            frames = int(attrs.get("n_frames", 0))
        except ShardError:
            settings, frames = "<unreadable>", 0
        row = rows.setdefault((stage, settings), {"stage": stage, "settings": settings, "trials": set(),
                                                  "shards": 0, "frames": 0, "bytes": 0})
        row["trials"].add(path.name.split(".")[0])
        row["shards"] += 1
        row["frames"] += frames
        row["bytes"] += path.stat().st_size
    out = []
    for row in rows.values():
        row["trials"] = len(row["trials"])
        out.append(row)
    return sorted(out, key=lambda r: (r["stage"], r["settings"]))


@dataclass
class VerifyReport:
    checked: int = 0
    bad: dict[str, list[str]] = field(default_factory=dict)
    temporaries: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


def verify_cache(cache: str | Path) -> VerifyReport:
    """Open every shard and check schema and counts; list leftovers of killed writers."""
    store = CacheStore(cache)
    report = VerifyReport()
    for path in store.iter_shards():
        report.checked += 1
        problems = verify_shard(path)
        if problems:
            report.bad[str(path)] = problems
    report.temporaries = [str(p) for p in store.iter_temporaries()]
    return report


def referenced_paths(cache: str | Path, trials: list[Trial], config: Any) -> set[Path]:
    """Shard paths the manifest + config would read (whether they exist or not)."""
    store = CacheStore(cache)
    tasks = make_plan(trials, build_stages(config), stage_order(list(STAGES)), store)
    return {t.path for t in tasks if t.path is not None}


def collect_garbage(cache: str | Path, keep: set[Path], yes: bool = False) -> list[Path]:
    """Shards not in `keep` (see `referenced_paths`) plus killed writers' temporaries; deleted only when `yes`."""
    store = CacheStore(cache)
    doomed = [p for p in store.iter_shards() if p not in keep] + list(store.iter_temporaries())
    if yes:
        for p in doomed:
            p.unlink(missing_ok=True)
    return doomed

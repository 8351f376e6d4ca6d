"""The cache's record of what extract produced, so readers never need the inputs.

``<cache>/index/<trial>.json`` maps stage -> recipe -> versions::

    {"visual": {"<recipe>": [{"key": ..., "upstream": {"probe": ..., "faces": ...},
                              "inputs": [<content fingerprint>, ...], "stamp": [size, mtime_ns, ctime_ns],
                              "time": ...}]}}

A *recipe* is everything a key depends on except the input files' content
(stage, version, settings, per-trial parameters, upstream recipes): it can be
computed from a manifest row and a config alone. Training, evaluation,
prediction and gc resolve shards through it on machines that hold no videos,
annotations or weight files. Where some inputs are at hand, versions whose
recorded fingerprints disagree with them are skipped, so a changed video is
never answered with the shard of the old one.

``stamp`` is the shard file's (size, mtime, ctime) when its checksums were last
verified in full: planning re-reads a shard only when its stamp changed, which
keeps a fully cached re-run of 600 trials cheap while any write to a shard
(even one that restores its mtime, since ctime cannot be set) triggers a check.

Only the extract driver writes here (workers never do); each update is a
locked read-modify-write of one small file, written atomically.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from filelock import FileLock

from .atomic import atomic_write_text
from .store import KEY_CHARS

KEEP_VERSIONS = 8  # per (trial, stage, recipe): older versions are dropped from the record (gc then frees them)


def file_stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class TrialIndex:
    """Read and update the per-trial records under ``<cache>/index``."""

    def __init__(self, root: Path):
        self.dir = root / "index"
        self._loaded: dict[str, dict[str, Any]] = {}

    def path(self, trial: str) -> Path:
        return self.dir / f"{trial}.json"

    def load(self, trial: str) -> dict[str, Any]:
        """The trial's record ({} when none, or when the file is unreadable: extract rewrites it)."""
        if trial not in self._loaded:
            try:
                data = json.loads(self.path(trial).read_text(encoding="utf-8"))
                self._loaded[trial] = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self._loaded[trial] = {}
        return self._loaded[trial]

    def versions(self, trial: str, stage: str, recipe: str) -> list[dict[str, Any]]:
        return list(self.load(trial).get(stage, {}).get(recipe, []))

    def record(self, trial: str, entries: list[dict[str, Any]]) -> None:
        """Add or refresh versions: each entry has stage, recipe, key, upstream, inputs and stamp."""
        if not entries:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.dir / ".lock")):
            self._loaded.pop(trial, None)
            data = self.load(trial)
            for e in entries:
                versions = data.setdefault(e["stage"], {}).setdefault(e["recipe"], [])
                versions[:] = [v for v in versions if v.get("key") != e["key"]]
                versions.append({"key": e["key"], "upstream": e["upstream"], "inputs": e["inputs"],
                                 "stamp": e.get("stamp"), "time": time.time()})
                del versions[:-KEEP_VERSIONS]
            atomic_write_text(self.path(trial), json.dumps(data, sort_keys=True))

    def forget(self, trial: str, prefixes: set[str]) -> None:
        """Drop versions whose shards gc deleted (keys as shard file names carry them: their first KEY_CHARS)."""
        if not self.path(trial).is_file():
            return
        with FileLock(str(self.dir / ".lock")):
            self._loaded.pop(trial, None)
            data = self.load(trial)
            for stage in list(data):
                for recipe in list(data[stage]):
                    data[stage][recipe] = [v for v in data[stage][recipe]
                                           if str(v.get("key", ""))[:KEY_CHARS] not in prefixes]
                    if not data[stage][recipe]:
                        del data[stage][recipe]
                if not data[stage]:
                    del data[stage]
            if data:
                atomic_write_text(self.path(trial), json.dumps(data, sort_keys=True))
            else:
                os.unlink(self.path(trial))

"""The cache folder: where shards, locks, the failure ledger and run summaries live.

  <root>/shards/<stage>/<trial>.<key20>.h5   one shard per (trial, stage, key)
  <root>/locks/<key20>.lock                  per-key lock: two runs never compute one shard twice
  <root>/ledger.jsonl                        failures, appended (never rewritten)
  <root>/runs/<timestamp>.json               the summary of every extract run

State is derived from files, never kept beside them: a shard is cached when its
file exists; a (trial, stage, key) "failed before" when the ledger names that
key and no shard exists for it. So a killed run needs no repair step.
"""
from __future__ import annotations

import json
import os
import time
import traceback as tb
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

KEY_CHARS = 20  # characters of the sha256 key used in file names (80 bits: collisions are not a concern)


class CacheError(RuntimeError):
    """The cache folder cannot be used (unwritable, not a folder)."""


@dataclass(frozen=True)
class LedgerEntry:
    trial: str
    stage: str
    key: str
    kind: str
    message: str
    traceback: str
    time: float

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


class CacheStore:
    """Paths and small bookkeeping files of one cache root."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    # -- layout ------------------------------------------------------------------
    def shard_path(self, stage: str, trial: str, key: str) -> Path:
        return self.root / "shards" / stage / f"{trial}.{key[:KEY_CHARS]}.h5"

    def lock(self, key: str) -> FileLock:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{key[:KEY_CHARS]}.lock"))

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.jsonl"

    def iter_shards(self) -> Iterator[Path]:
        base = self.root / "shards"
        if base.is_dir():
            yield from sorted(base.glob("*/*.h5"))

    def iter_temporaries(self) -> Iterator[Path]:
        """Leftovers of writers that were killed mid-write (never read as shards)."""
        base = self.root / "shards"
        if base.is_dir():
            yield from sorted(base.glob("*/.*.tmp"))

    def ensure_writable(self) -> None:
        """Fail early, with one line, when shards could not be written (before hours of work)."""
        try:
            (self.root / "shards").mkdir(parents=True, exist_ok=True)
            probe = self.root / "shards" / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CacheError(f"{self.root}: cache folder is not writable ({exc.strerror or exc})") from None

    # -- ledger ------------------------------------------------------------------
    def record_failure(self, trial: str, stage: str, key: str, kind: str, message: str,
                       traceback: str = "") -> LedgerEntry:
        entry = LedgerEntry(trial, stage, key, kind, message, traceback, time.time())
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "ledger.jsonl.lock")):
            with self.ledger_path.open("a", encoding="utf-8") as fh:
                fh.write(entry.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return entry

    def ledger(self) -> list[LedgerEntry]:
        """All entries; a torn last line (writer killed) is skipped, not fatal."""
        if not self.ledger_path.is_file():
            return []
        entries = []
        for line in self.ledger_path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(LedgerEntry(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                continue
        return entries

    def failed_keys(self) -> dict[str, LedgerEntry]:
        """Latest ledger entry per key whose shard still does not exist."""
        out: dict[str, LedgerEntry] = {}
        for e in self.ledger():
            out[e.key] = e
        return {k: e for k, e in out.items() if not self.shard_path(e.stage, e.trial, e.key).exists()}

    # -- run summaries -----------------------------------------------------------
    def save_run_summary(self, summary: dict[str, Any]) -> Path:
        runs = self.root / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        path = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        tmp.replace(path)
        return path


def format_exception(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))

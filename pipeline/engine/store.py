"""The cache folder: where shards, locks, the failure ledger and run summaries live.

  <root>/shards/<stage>/<trial>.<key20>.h5   one shard per (trial, stage, key)
  <root>/shards/<stage>/.<trial>.<key20>.h5.part<k>of<K>.tmp
                                             frame-range parts of a shard being assembled (pipeline.engine.ranges):
                                             temporaries, never listed or read as shards, removed by gc
  <root>/locks/<key20>.lock                  per-key lock: two runs never compute one shard twice
  <root>/ledger.jsonl                        failures, appended (never rewritten)
  <root>/runs/<timestamp>.json               the summary of every extract run
  <root>/index/<trial>.json                  what extract produced, for readers without inputs (pipeline.engine.index)
  <root>/fingerprints.json                   this machine's memo of input content fingerprints
  <root>/quarantine/<stage>/<file>           damaged shards moved aside before recomputation
  <root>/stats/                              the trainer's normalisation statistics
  <root>/.lock                               shared by extract runs, exclusive for gc and repair

State is derived from files, never kept beside them: a shard is cached when its
file exists and passes its checks; a (trial, stage, key) "failed before" when
the ledger holds an *input verdict* (a `StageError`: corrupt media, no face, a
bad annotation) for that key and no shard exists for it. Failures of the
machine rather than the input (disk full, a vanished shard, a killed worker,
an unexpected exception) are written to the ledger for diagnosis but are not
sticky: the next run tries again. So a killed run needs no repair step.
"""
from __future__ import annotations

import fcntl
import json
import os
import stat
import time
import traceback as tb
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock

from .atomic import atomic_write_text

KEY_CHARS = 20  # characters of the sha256 key used in file names (80 bits: collisions are not a concern)


class CacheError(RuntimeError):
    """The cache folder cannot be used (unwritable, not a folder, busy)."""


class CacheBusyError(CacheError):
    """gc or repair was asked for while an extract holds the cache."""


@dataclass(frozen=True)
class LedgerEntry:
    trial: str
    stage: str
    key: str
    kind: str
    message: str
    traceback: str
    time: float
    #: an input verdict that stays "failed before" until the input changes or --retry-failed;
    #: False for failures of the machine (disk full, killed worker, unexpected errors), retried next run
    sticky: bool = True
    recipe: str = ""

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "LedgerEntry":
        data = json.loads(line)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class CacheStore:
    """Paths and small bookkeeping files of one cache root."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self._stage_dirs: dict[str, Path] = {}  # planning asks for 3000 shard paths: join the folders once
        self._ledger: tuple[tuple[int, int, int], list[LedgerEntry]] | None = None

    # -- layout ------------------------------------------------------------------
    def shard_path(self, stage: str, trial: str, key: str) -> Path:
        folder = self._stage_dirs.get(stage)
        if folder is None:
            folder = self._stage_dirs[stage] = self.root / "shards" / stage
        return folder / f"{trial}.{key[:KEY_CHARS]}.h5"

    def lock(self, key: str, part: str = "") -> FileLock:
        """The per-key lock (`part`: a lock of its own for one frame-range part of the shard)."""
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{key[:KEY_CHARS]}{'.' + part if part else ''}.lock"))

    def part_path(self, shard: Path, k: int, parts: int) -> Path:
        """Part k of `parts` of a shard: a temporary's name (`iter_temporaries`), so nothing reads it as a shard."""
        return shard.with_name(f".{shard.name}.part{k:03d}of{parts:03d}.tmp")

    def part_paths(self, shard: Path) -> list[Path]:
        """Every part of a shard on disk, whatever split it came from."""
        return sorted(shard.parent.glob(f".{shard.name}.part*.tmp"))

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

    # -- cache-wide lock ---------------------------------------------------------
    @contextmanager
    def hold(self, exclusive: bool = False, what: str = "") -> Iterator[None]:
        """Extract runs hold the cache shared; gc and repair need it alone (they delete files).

        Without this, a gc deleted an extract's in-flight temporaries and the
        finished shards it was about to read. `flock` is advisory and also works
        over NFS on Linux; a read-only cache cannot be locked and is not written anyway.
        """
        lock_path = self.root / ".lock"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            if exclusive:
                raise CacheError(f"{self.root}: cannot lock the cache for {what or 'changes'} "
                                 f"({exc.strerror or exc})") from None
            yield
            return
        try:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                if exclusive:
                    raise CacheBusyError(f"{self.root}: an extract is running on this cache; "
                                         f"{what or 'this'} must wait until it ends") from None
                fcntl.flock(fd, fcntl.LOCK_SH)  # a gc is deleting: wait for it, then plan
            yield
        finally:
            os.close(fd)

    # -- ledger ------------------------------------------------------------------
    def record_failure(self, trial: str, stage: str, key: str, kind: str, message: str,
                       traceback: str = "", sticky: bool = True, recipe: str = "") -> LedgerEntry:
        entry = LedgerEntry(trial, stage, key, kind, message, traceback, time.time(), sticky, recipe)
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.root / "ledger.jsonl.lock")):
            with self.ledger_path.open("a+b") as fh:
                # A line cut by a full disk or a kill would swallow this entry: end it first.
                fh.seek(0, os.SEEK_END)
                if fh.tell():
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        fh.write(b"\n")
                fh.write((entry.to_json() + "\n").encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
        return entry

    def ledger(self) -> list[LedgerEntry]:
        """All entries; a torn line (writer killed, disk full) is skipped, not fatal.

        Parsed once per store while the file keeps its (size, mtime, inode): the
        ledger only grows by appends, and a run plans, then records, from one store.
        """
        try:
            st = self.ledger_path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return []
        if not stat.S_ISREG(st.st_mode):
            return []
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        if self._ledger is not None and self._ledger[0] == stamp:
            return list(self._ledger[1])
        entries = []
        for line in self.ledger_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entries.append(LedgerEntry.from_json(line))
            except (json.JSONDecodeError, TypeError, AttributeError):
                continue
        self._ledger = (stamp, entries)
        return list(entries)

    def failed_keys(self) -> dict[str, LedgerEntry]:
        """Latest ledger entry per key, where it is an input verdict and the shard still does not exist."""
        out: dict[str, LedgerEntry] = {}
        for e in self.ledger():
            out[e.key] = e
        return {k: e for k, e in out.items()
                if e.sticky and not self.shard_path(e.stage, e.trial, e.key).exists()}

    # -- damaged shards ------------------------------------------------------------
    def quarantine(self, path: Path) -> Path:
        """Move a damaged shard out of the way (kept for inspection; `cache gc --yes` deletes it)."""
        dest = self.root / "quarantine" / path.parent.name / f"{path.name}.{int(time.time())}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        return dest

    # -- run summaries -----------------------------------------------------------
    def save_run_summary(self, summary: dict[str, Any]) -> Path:
        runs = self.root / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        path = runs / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
        return atomic_write_text(path, json.dumps(summary, indent=2, sort_keys=True, default=str))


def format_exception(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))

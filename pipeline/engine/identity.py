"""Content identity of input files: what a shard's key says it was computed from.

A key must survive everything that does not change the bytes a stage reads:
moving or renaming the dataset, mounting it elsewhere, copying it to another
machine, `touch`. So an input is identified by its content, never its path or
mtime:

- ``sampled`` (default): the size plus a sha256 over 16 blocks of 64 KiB spread
  evenly over the file (first and last included). A different encode, a cut or
  an appended clip changes it; reading 1 MiB per video keeps planning 600
  trials cheap even on a cold disk.
- ``full``: sha256 of every byte, for those who want certainty over speed.

Folders (Aff-Wild2's cropped_aligned frames) are identified by the sorted
list of their entries' names and sizes.

Hashing still costs reads, so results are memoised per machine in
``<cache>/fingerprints.json`` under (absolute path, size, mtime, inode): a
`touch` or a move only costs one re-hash, which then gives the same identity.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text

MODES = ("sampled", "full")
BLOCKS = 16
BLOCK_SIZE = 1 << 16


def _sampled_digest(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= BLOCKS * BLOCK_SIZE:
            h.update(fh.read())
        else:
            step = (size - BLOCK_SIZE) / (BLOCKS - 1)
            for i in range(BLOCKS):
                fh.seek(int(round(i * step)))
                h.update(fh.read(BLOCK_SIZE))
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in blocks by the standard library, never whole into memory)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def content_fingerprint(path: str | Path, mode: str = "sampled") -> dict[str, Any]:
    """Identity of a file or folder by content (see module docstring). Raises OSError when unreadable."""
    if mode not in MODES:
        raise ValueError(f"unknown fingerprint mode {mode!r} (known: {', '.join(MODES)})")
    p = Path(path)
    if p.is_dir():
        entries = sorted((e.name, e.stat().st_size) for e in os.scandir(p) if not e.name.startswith("."))
        listing = hashlib.sha256("\n".join(f"{n}\t{s}" for n, s in entries).encode()).hexdigest()
        return {"kind": "folder", "entries": len(entries), "listing": listing}
    size = p.stat().st_size
    digest = sha256_file(p) if mode == "full" else _sampled_digest(p, size)
    return {"kind": "file", "size": size, mode: digest}


class FingerprintMemo:
    """Per-machine memo of content fingerprints, invalidated by any change of size, mtime or inode."""

    def __init__(self, path: Path | None, mode: str = "sampled"):
        self.path = path
        self.mode = mode
        self._entries: dict[str, list[Any]] = {}
        #: answers already given by this memo, by the caller's path: a plan names each video once per stage
        #: and the same weight files for every trial; one stat per file and plan is enough
        self._seen: dict[str | Path, dict[str, Any]] = {}
        self._dirty = False
        if path is not None and path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self._entries = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 2}
            except (OSError, ValueError):
                self._entries = {}  # a damaged memo only costs re-hashing

    def fingerprint(self, path: str | Path) -> dict[str, Any]:
        """The content fingerprint of `path`, hashed only when its (size, mtime, inode) changed.

        A path asked for again by the same memo (one plan, one reader) gets the same
        answer without another stat: the memo lives no longer than one pass.
        """
        seen = self._seen.get(path)
        if seen is not None:
            return seen
        fp = self._fingerprint(path)
        self._seen[path] = fp
        return fp

    def _fingerprint(self, path: str | Path) -> dict[str, Any]:
        p = Path(path).expanduser().absolute()
        st = p.stat()  # FileNotFoundError / ELOOP / EACCES surface to the planner as OSError
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, self.mode]
        name = str(p)
        hit = self._entries.get(name)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        fp = content_fingerprint(p, self.mode)
        self._entries[name] = [stamp, fp]
        self._dirty = True
        return fp

    def save(self) -> None:
        """Write the memo back (best effort: a read-only cache simply hashes again next time)."""
        if not self._dirty or self.path is None:
            return
        try:
            atomic_write_text(self.path, json.dumps(self._entries, sort_keys=True))
            self._dirty = False
        except OSError:
            pass

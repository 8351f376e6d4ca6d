"""Whole-file writes that a kill, a full disk or a concurrent reader never sees half done."""
from __future__ import annotations

import os
import uuid
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside `path` (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write to a temporary sibling, fsync, rename over `path`; the temporary is removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))

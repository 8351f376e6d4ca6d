"""Whole-file writes that a kill, a full disk or a concurrent reader never sees half done.

Every file affpipe writes for a later run to trust (shards, index entries, manifests,
checkpoints, predictions) goes through here: the bytes land in a hidden temporary
sibling (same file system, so the final rename is atomic), are fsynced, and only then
take the final name; on any failure the temporary is removed.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name beside `path` (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of `path` for a writer that wants a file name (h5py, torch.save, savefig).

    When the block ends normally the temporary is fsynced and renamed over `path`; when it
    raises, `path` is untouched and the temporary is removed. The temporary's name ends in
    ``.tmp``: writers that infer a format from the suffix must be told the format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` as the whole of `path` (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))

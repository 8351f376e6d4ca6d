"""Manifest CSV: one row per trial, read into immutable `Trial` records.

The manifest is the only thing the extraction graph is driven by, so every
problem in it is reported as ``file:line:column: message`` before any work
starts (a typo found after six hours of face detection is a lost day).
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.atomic import atomic_write_text
from .text_file import read_utf8

REQUIRED_COLUMNS = ("trial", "video", "split")
OPTIONAL_COLUMNS = ("annotation", "transcript", "subject", "fold", "aligned_faces")
SPLITS = ("train", "val", "test")
SUBJECTS = ("largest", "left", "right")
PATH_COLUMNS = ("video", "annotation", "transcript", "aligned_faces")
#: Longest trial id in UTF-8 bytes. Trial ids are parts of file names (shards
#: ``.<trial>.<key>.h5.<tag>.tmp``, submissions, predictions, plots) and file
#: systems cap a name at 255 bytes; a longer id failed deep inside a worker with
#: "File name too long". 160 leaves room for every suffix affpipe adds.
MAX_TRIAL_BYTES = 160


class ManifestError(ValueError):
    """Bad manifest input; the message always starts with ``file:line:col:``."""


@dataclass(frozen=True)
class Trial:
    """One trial of the manifest; paths are absolute (resolved against the manifest's folder)."""

    trial: str
    video: Path
    split: str
    annotation: Path | None = None
    transcript: Path | None = None
    subject: str = "largest"
    fold: int | None = None
    aligned_faces: Path | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    source: str = field(default="", compare=False, hash=False)  # "manifest.csv:LINE" for messages

    def to_dict(self) -> dict:
        """Plain, picklable/JSON-able form (what travels to Dask workers)."""
        return {
            "trial": self.trial,
            "video": str(self.video),
            "split": self.split,
            "annotation": str(self.annotation) if self.annotation else None,
            "transcript": str(self.transcript) if self.transcript else None,
            "subject": self.subject,
            "fold": self.fold,
            "aligned_faces": str(self.aligned_faces) if self.aligned_faces else None,
            "extra": dict(self.extra),
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Trial":
        def p(key: str) -> Path | None:
            return Path(d[key]) if d.get(key) else None

        return cls(
            trial=d["trial"],
            video=Path(d["video"]),
            split=d["split"],
            annotation=p("annotation"),
            transcript=p("transcript"),
            subject=d.get("subject") or "largest",
            fold=d.get("fold"),
            aligned_faces=p("aligned_faces"),
            extra=dict(d.get("extra") or {}),
            source=d.get("source", ""),
        )


def _error(path: Path, line: int, col: int, message: str) -> ManifestError:
    return ManifestError(f"{path}:{line}:{col}: {message}")


def _rows(path: Path, text: str):
    """Yield ``(first physical line, fields)`` for each CSV record.

    csv over a newline-preserving stream (not ``str.splitlines``) so that
    quoted commas, CR-only line ends and odd Unicode line separators cannot
    shift the line numbers users are pointed to.
    """
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _error(path, line, 1, f"malformed CSV: {exc}") from None
        for i, cell in enumerate(row):
            if "\0" in cell:
                raise _error(path, line, i + 1, "field contains a NUL character (binary file?)")
            if "\n" in cell or "\r" in cell:
                raise _error(path, line, i + 1, "field spans several lines (unbalanced double quote?)")
        yield line, row
        line = reader.line_num + 1


def read_manifest(path: str | Path) -> list[Trial]:
    """Read and validate a manifest; raise `ManifestError` naming file, line and column.

    Line numbers are 1-based physical lines of the file; columns are 1-based
    CSV field positions. The header is the first non-blank line; blank lines
    anywhere are skipped (editors add them).
    """
    path = Path(path)
    if path.is_dir():
        raise ManifestError(f"{path}:0:0: is a folder, expected a manifest CSV file")
    if not path.is_file():
        raise ManifestError(f"{path}:0:0: manifest file not found")
    text = read_utf8(path, lambda line, col, msg: _error(path, line, col, msg))
    rows = ((line, row) for line, row in _rows(path, text) if any(cell.strip() for cell in row))
    header_line, header = _read_header(path, next(rows, None))
    reader = _RowReader(path, header, path.resolve().parent)
    trials = [reader.trial(line_no, row) for line_no, row in rows]
    if not trials:
        raise _error(path, header_line + 1, 1, "manifest has a header but no trials")
    return trials


def _read_header(path: Path, first: tuple[int, list[str]] | None) -> tuple[int, list[str]]:
    """(line, column names) of the header row: names present, unique, required ones all there."""
    if first is None:
        raise _error(path, 1, 1, "empty manifest: expected a header with columns " + ", ".join(REQUIRED_COLUMNS))
    header_line, raw_header = first
    header = [h.strip() for h in raw_header]
    for i, name in enumerate(header):
        if not name:
            raise _error(path, header_line, i + 1, "empty column name in header")
        if header.index(name) != i:
            raise _error(path, header_line, i + 1,
                         f"duplicate column {name!r} in header (first in column {header.index(name) + 1})")
    for name in REQUIRED_COLUMNS:
        if name not in header:
            near = [h for h in header if h.lower() == name]
            hint = f"; column names are lower-case, found {near[0]!r}" if near else ""
            raise _error(path, header_line, len(header) + 1,
                         f"missing required column {name!r} (header has: {', '.join(header)}){hint}")
    return header_line, header


class _RowReader:
    """Turns each data row of one manifest into a `Trial`, checking every field where it stands."""

    def __init__(self, path: Path, header: list[str], base: Path):
        self.path = path
        self.header = header
        self.col = {name: i for i, name in enumerate(header)}
        self.base = base  # relative paths are relative to the manifest's folder
        self.seen: dict[str, int] = {}  # trial id -> line it was first on
        known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
        self.extra_columns = [name for name in header if name not in known]

    def error(self, line_no: int, column: str, message: str) -> ManifestError:
        return _error(self.path, line_no, self.col[column] + 1, message)

    def trial(self, line_no: int, row: list[str]) -> Trial:
        if len(row) != len(self.header):
            raise _error(self.path, line_no, min(len(row), len(self.header)) + 1,
                         f"row has {len(row)} fields, header has {len(self.header)}")
        values = {name: row[i].strip() for name, i in self.col.items()}
        for name in REQUIRED_COLUMNS:
            if not values[name]:
                raise self.error(line_no, name, f"empty {name!r}")
        trial_id = self.trial_id(line_no, values["trial"])
        split = values["split"]
        if split not in SPLITS:
            raise self.error(line_no, "split", f"split {split!r} is not one of {', '.join(SPLITS)}")
        subject = values.get("subject") or "largest"
        if subject not in SUBJECTS:
            raise self.error(line_no, "subject", f"subject {subject!r} is not one of {', '.join(SUBJECTS)}")
        fold = self.fold(line_no, values.get("fold", ""))

        def resolve(name: str) -> Path | None:
            value = values.get(name)
            if not value:
                return None
            p = Path(value).expanduser()
            return p if p.is_absolute() else (self.base / p)

        return Trial(
            trial=trial_id,
            video=resolve("video"),  # type: ignore[arg-type]
            split=split,
            annotation=resolve("annotation"),
            transcript=resolve("transcript"),
            subject=subject,
            fold=fold,
            aligned_faces=resolve("aligned_faces"),
            extra={name: values[name] for name in self.extra_columns},
            source=f"{self.path}:{line_no}",
        )

    def trial_id(self, line_no: int, trial_id: str) -> str:
        """The id, once it is known to be usable as a file name and unique in the manifest."""
        if any(ch in trial_id for ch in "/\\") or trial_id in (".", ".."):
            raise self.error(line_no, "trial", f"trial id {trial_id!r} cannot be used as a file name")
        n_bytes = len(trial_id.encode("utf-8"))
        if n_bytes > MAX_TRIAL_BYTES:
            raise self.error(line_no, "trial",
                             f"trial id {trial_id[:40]!r}... is {n_bytes} bytes long, at most {MAX_TRIAL_BYTES} "
                             "(it is part of file names, which are limited to 255 bytes)")
        if trial_id in self.seen:
            raise self.error(line_no, "trial", f"duplicate trial {trial_id!r} (first on line {self.seen[trial_id]})")
        self.seen[trial_id] = line_no
        return trial_id

    def fold(self, line_no: int, value: str) -> int | None:
        """The fold number (None when the cell is empty or there is no fold column)."""
        if not value:
            return None
        try:
            fold = int(value)
        except ValueError:
            fold = -1
        if fold < 0:
            raise self.error(line_no, "fold", f"fold {value!r} is not a non-negative integer")
        return fold


def _relative(p: Path | None, base: Path) -> str:
    """Path as written in the manifest: relative to `base` when inside it, else absolute.

    Never a path relative to the current directory: the reader resolves
    relative paths against the manifest's folder, so anything outside it must
    be absolute. Both the path as given and its symlink-resolved form are
    tried, because `base` itself is resolved.
    """
    if p is None:
        return ""
    absolute = Path(os.path.abspath(Path(p).expanduser()))
    for candidate in (absolute, absolute.resolve()):
        try:
            return candidate.relative_to(base).as_posix()
        except ValueError:
            pass
    return str(absolute)


def write_manifest(trials: list[Trial], path: str | Path) -> Path:
    """Write trials as a manifest CSV with paths relative to its folder where possible.

    Written atomically (`pipeline.engine.atomic`), so a crash never leaves a
    half-written manifest that a later run would trust.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    extra_cols = sorted({k for t in trials for k in t.extra if k not in known})
    header = list(known) + extra_cols

    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    w.writerow(header)
    for t in trials:
        w.writerow([t.trial, _relative(t.video, base), t.split, _relative(t.annotation, base),
                    _relative(t.transcript, base), t.subject, "" if t.fold is None else t.fold,
                    _relative(t.aligned_faces, base)]
                   + [t.extra.get(k, "") for k in extra_cols])
    atomic_write_text(path, buffer.getvalue())
    return path

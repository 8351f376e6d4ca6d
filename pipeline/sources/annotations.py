"""Aff-Wild2 / ABAW per-frame annotation files: valence-arousal, expression and action units.

Layout (all three tracks): a header line, then one line per video frame, in order; line k
after the header (1-based) is video frame k. Unlabelled frames are marked in-band:
valence/arousal below -1 (written -5), expression -1, AU -1. The layout is documented in
/work/shared/docs/affwild2.md; Aff-Wild2 itself is EULA-only, so tests write files in it.

Every problem is reported as ``file:line:col: message`` where line is the 1-based physical
line (the header is line 1) and col the 1-based comma-separated field: a 50k-line file with
one bad value must point at it. Blank lines at the end are ignored; a blank line in the
middle is an error because it would shift every later frame by one.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .text_file import read_utf8

VA_HEADER = ("valence", "arousal")
#: ABAW 3+ (8 classes) and ABAW 2 (7 classes, no "Other") expression headers.
EXPR_HEADERS = (
    ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other"),
    ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise"),
)
UNLABELLED_VA_BELOW = -1.0


class AnnotationError(ValueError):
    """Bad annotation input; the message starts with ``file:line:col:``."""


@dataclass
class VA:
    valence: np.ndarray   # float32 [k]; the raw value where unlabelled (e.g. -5)
    arousal: np.ndarray   # float32 [k]
    labelled: np.ndarray  # bool [k]: both values in [-1, 1]

    def __len__(self) -> int:
        return int(self.valence.shape[0])


@dataclass
class Expr:
    label: np.ndarray     # int8 [k], class index into `classes`, -1 = unlabelled
    labelled: np.ndarray  # bool [k]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.label.shape[0])


@dataclass
class AU:
    values: np.ndarray    # int8 [k, m], 0/1, -1 = unlabelled
    labelled: np.ndarray  # bool [k]: no -1 in the row
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.values.shape[0])


def _error(path: Path, line: int, col: int, message: str) -> AnnotationError:
    return AnnotationError(f"{path}:{line}:{col}: {message}")


def _lines(path: Path) -> list[str]:
    """Lines of the file (BOM and CR removed, trailing blank lines dropped), header included."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}:0:0: annotation file not found")
    text = read_utf8(path, lambda line, col, msg: _error(path, line, col, msg), universal_newlines=True)
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise _error(path, 1, 1, "empty annotation file (expected a header line, then one line per frame)")
    return lines


def _header(path: Path, line: str) -> list[str]:
    return [h.strip() for h in line.split(",")]


def _fields(path: Path, no: int, line: str, width: int) -> list[str]:
    if not line.strip():
        raise _error(path, no, 1, "blank line inside the annotation (it would shift every later frame)")
    fields = line.split(",")
    if len(fields) != width:
        raise _error(path, no, min(len(fields), width) + 1, f"expected {width} comma-separated value(s), "
                                                            f"got {len(fields)}")
    return fields


def read_va(path: str | Path) -> VA:
    """Read a `valence,arousal` file; values below -1 mean unlabelled, others must lie in [-1, 1]."""
    path = Path(path)
    lines = _lines(path)
    header = _header(path, lines[0])
    if tuple(header) != VA_HEADER:
        raise _error(path, 1, 1, f"header must be exactly 'valence,arousal', got {lines[0].strip()!r}")
    k = len(lines) - 1
    values = np.empty((k, 2), dtype=np.float32)
    for i, line in enumerate(lines[1:]):
        no = i + 2
        for col, cell in enumerate(_fields(path, no, line, 2), start=1):
            try:
                v = float(cell)
            except ValueError:
                raise _error(path, no, col, f"{VA_HEADER[col - 1]} {cell.strip()!r} is not a number") from None
            if not math.isfinite(v):
                raise _error(path, no, col, f"{VA_HEADER[col - 1]} {cell.strip()!r} is not finite")
            if v > 1.0:
                raise _error(path, no, col, f"{VA_HEADER[col - 1]} {v:g} is above 1 (values lie in [-1, 1]; "
                                            "below -1 marks an unlabelled frame)")
            values[i, col - 1] = v
    labelled = (values >= UNLABELLED_VA_BELOW).all(axis=1) if k else np.zeros(0, dtype=bool)
    return VA(valence=values[:, 0].copy(), arousal=values[:, 1].copy(), labelled=labelled)


def _int_cell(path: Path, no: int, col: int, cell: str, what: str) -> int:
    s = cell.strip()
    if not re.fullmatch(r"[+-]?\d+", s):
        raise _error(path, no, col, f"{what} {s!r} is not an integer")
    return int(s)


def read_expr(path: str | Path) -> Expr:
    """Read an expression file: one class index per line, -1 = unlabelled."""
    path = Path(path)
    lines = _lines(path)
    header = tuple(_header(path, lines[0]))
    if header not in EXPR_HEADERS:
        raise _error(path, 1, 1, f"header must be {','.join(EXPR_HEADERS[0])!r}, got {lines[0].strip()!r}")
    k = len(lines) - 1
    label = np.empty(k, dtype=np.int8)
    for i, line in enumerate(lines[1:]):
        no = i + 2
        value = _int_cell(path, no, 1, _fields(path, no, line, 1)[0], "expression")
        if not (value == -1 or 0 <= value < len(header)):
            raise _error(path, no, 1, f"expression {value} is out of range (0..{len(header) - 1}, -1 = unlabelled)")
        label[i] = value
    return Expr(label=label, labelled=label >= 0, classes=header)


def read_au(path: str | Path) -> AU:
    """Read an action-unit file: header AU1,AU2,...; rows of 0/1, -1 = unlabelled."""
    path = Path(path)
    lines = _lines(path)
    names = tuple(_header(path, lines[0]))
    for col, name in enumerate(names, start=1):
        if not re.fullmatch(r"AU\d+", name):
            raise _error(path, 1, col, f"header field {name!r} is not an action unit name like 'AU12'")
        if names.index(name) != col - 1:
            raise _error(path, 1, col, f"duplicate action unit {name!r} in header")
    k, m = len(lines) - 1, len(names)
    values = np.empty((k, m), dtype=np.int8)
    for i, line in enumerate(lines[1:]):
        no = i + 2
        for col, cell in enumerate(_fields(path, no, line, m), start=1):
            value = _int_cell(path, no, col, cell, names[col - 1])
            if value not in (-1, 0, 1):
                raise _error(path, no, col, f"{names[col - 1]} {value} is not 0, 1 or -1 (unlabelled)")
            values[i, col - 1] = value
    labelled = (values >= 0).all(axis=1) if k else np.zeros(0, dtype=bool)
    return AU(values=values, labelled=labelled, names=names)

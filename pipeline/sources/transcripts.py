"""Timed transcripts read into one shape: a list of `Segment`s (seconds, text, optional words).

Users bring transcripts from many tools (subtitle editors, Whisper, forced aligners, the GRID
corpus), so the text stage accepts the common formats and turns them into one structure.
Every problem is reported as ``file:line: message`` (``file:line:col:`` where a column means
something) because a transcript that is wrong by one line is found by a person, not a program.

Formats, chosen by extension:
  .srt    SubRip cues (``1`` / ``00:00:01,000 --> 00:00:02,500`` / text lines / blank).
  .vtt    WebVTT (``WEBVTT`` header; NOTE/STYLE/REGION blocks skipped; cue settings ignored).
  .json   a list of ``{"start", "end", "word"|"text"}`` entries, or ``{"segments": [...]}`` as
          Whisper / faster-whisper / WhisperX write it, with optional per-segment ``"words"``
          (``{"word"|"text", "start", "end"}``). Words without any timing (WhisperX leaves
          numerals unaligned) are skipped; a word with only one of start/end is an error.
  .align  GRID word alignment: ``start end word`` a line, times in 1/25000 s; ``sil``/``sp``
          (silence, short pause) are dropped.
  .csv    header with ``start``, ``end`` and ``text`` (or ``word``), seconds; other columns ignored.

Conventions:
  * Times are seconds from the start of the video (the same clock as the probe's frame times).
  * Segments keep file order. Overlapping segments are allowed (subtitle cues often overlap);
    the text stage resolves an overlap by giving a frame to the segment that starts latest
    (on a tie, the one later in the file): the newest line is what is being said.
  * Entries whose text is empty after stripping markup carry no words and are dropped.
  * ``end == start`` is allowed (it covers no frame); ``end < start`` and negative or
    non-finite times are errors.
  * Word-level formats (.align, a JSON list of ``"word"`` entries) give one segment per word,
    with that word as its only `Word`, so both text granularities work on them.
  * An empty file (nothing but whitespace) is an error; a file with valid structure and no
    speech (only ``sil``, a header-only CSV, ``[]``) gives an empty list: a silent trial.
"""
from __future__ import annotations

import csv
import html
import io
import json
import json.scanner
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .text_file import read_utf8

GRID_TIME_UNIT = 25000.0  # GRID .align files count time in 1/25000 s
GRID_SILENCE = frozenset({"sil", "sp"})
FORMATS = (".srt", ".vtt", ".json", ".align", ".csv")


class TranscriptError(ValueError):
    """Bad transcript input; the message starts with ``file:line:`` (or ``file:line:col:``)."""


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Segment:
    """One timed stretch of speech. `words` is None when the source has no word timings."""

    start: float
    end: float
    text: str
    words: tuple[Word, ...] | None = None
    line: int = field(default=0, compare=False)  # 1-based line of the entry in its file


def read_transcript(path: str | Path) -> list[Segment]:
    """Read a timed transcript, dispatching on the file extension (see module docstring)."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise TranscriptError(f"{path}: unsupported transcript format {path.suffix or '(no extension)'!r} "
                              f"(expected one of {', '.join(FORMATS)})")
    text = _read_text(path)
    return reader(path, text)


# -- shared helpers -------------------------------------------------------------

def _error(path: Path, line: int, message: str, col: int | None = None) -> TranscriptError:
    where = f"{path}:{line}" if col is None else f"{path}:{line}:{col}"
    return TranscriptError(f"{where}: {message}")


def _read_text(path: Path) -> str:
    """Whole file as text with a BOM removed and CRLF/CR turned into LF (line numbers stay true)."""
    if not path.is_file():
        raise TranscriptError(f"{path}: transcript file not found")
    # transcripts name file:line only (their columns are not fields)
    text = read_utf8(path, lambda line, _col, msg: _error(path, line, msg), universal_newlines=True)
    if not text.strip():
        raise _error(path, 1, "empty transcript file (a trial without speech needs no transcript, "
                              "or a structurally valid file with no entries)")
    return text


def _clean(text: str) -> str:
    """Drop markup (<i>, <v Speaker>, {\\an8}) and collapse whitespace."""
    text = re.sub(r"<[^>]*>", " ", text)
    text = re.sub(r"\{\\[^}]*\}", " ", text)
    return " ".join(html.unescape(text).split())


def _check_times(path: Path, line: int, start: float, end: float, col: int | None = None) -> None:
    if not (math.isfinite(start) and math.isfinite(end)):
        raise _error(path, line, f"time is not a finite number (start {start}, end {end})", col)
    if start < 0:
        raise _error(path, line, f"negative start time {start:g} s", col)
    if end < start:
        raise _error(path, line, f"end {end:g} s is before start {start:g} s", col)


def _blocks(text: str) -> list[tuple[int, list[str]]]:
    """Blank-line separated blocks as (first line number, lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    first = 0
    for no, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            if not current:
                first = no
            current.append(line)
        elif current:
            blocks.append((first, current))
            current = []
    if current:
        blocks.append((first, current))
    return blocks


# -- SubRip ---------------------------------------------------------------------

_SRT_TIME = r"(\d+):(\d{1,2}):(\d{1,2})[,.](\d{1,3})"
_SRT_TIMING = re.compile(rf"^\s*{_SRT_TIME}\s*-->\s*{_SRT_TIME}(?:\s.*)?$")


def _hms(h: str | None, m: str, s: str, frac: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(frac.ljust(3, "0")) / 1000.0


def _cue(path: Path, first: int, lines: list[str], i: int, timing: re.Pattern, what: str,
         expected: str) -> list[Segment]:
    """One SRT/WebVTT cue from its timing line `lines[i]` and the text after it (none if the text is empty)."""
    m = timing.match(lines[i])
    if not m:
        raise _error(path, first + i, f"{what} {lines[i].strip()!r} (expected '{expected}')")
    g = m.groups()
    start, end = _hms(*g[0:4]), _hms(*g[4:8])
    _check_times(path, first + i, start, end)
    body = _clean(" ".join(lines[i + 1:]))
    return [Segment(start, end, body, line=first + i)] if body else []


def _read_srt(path: Path, text: str) -> list[Segment]:
    segments = []
    for first, lines in _blocks(text):
        i = 0
        if "-->" not in lines[0]:
            if not lines[0].strip().isdigit():
                raise _error(path, first, f"expected a cue number or a timing line, got {lines[0].strip()!r}")
            i = 1
        if i >= len(lines):
            raise _error(path, first, "cue number without a timing line")
        segments.extend(_cue(path, first, lines, i, _SRT_TIMING,
                             "bad SRT timing line", "HH:MM:SS,mmm --> HH:MM:SS,mmm"))
    return segments


# -- WebVTT ---------------------------------------------------------------------

_VTT_TIME = r"(?:(\d+):)?(\d{2}):(\d{2})\.(\d{3})"
_VTT_TIMING = re.compile(rf"^\s*{_VTT_TIME}\s+-->\s+{_VTT_TIME}(?:\s.*)?$")


def _read_vtt(path: Path, text: str) -> list[Segment]:
    blocks = _blocks(text)
    first, lines = blocks[0]
    if first != 1 or not re.match(r"^WEBVTT(?:[ \t].*)?$", lines[0]):
        raise _error(path, first, "a WebVTT file must start with the line 'WEBVTT'", 1)
    segments = []
    for first, lines in blocks[1:]:
        head = lines[0].strip()
        if head.split(" ", 1)[0] in ("NOTE", "STYLE", "REGION") and "-->" not in head:
            continue
        i = 0 if "-->" in lines[0] else 1  # an optional cue identifier precedes the timing
        if i >= len(lines) or "-->" not in lines[i]:
            raise _error(path, first + i if i < len(lines) else first,
                         f"expected a cue timing line 'MM:SS.mmm --> MM:SS.mmm' after {head!r}")
        segments.extend(_cue(path, first, lines, i, _VTT_TIMING,
                             "bad WebVTT timing line", "[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm"))
    return segments


# -- JSON -----------------------------------------------------------------------

class _Obj(dict):
    """A decoded JSON object that remembers where it started (for line numbers)."""

    __slots__ = ("pos",)


def _json_with_positions(path: Path, text: str) -> Any:
    """json.loads, but every object is an `_Obj` carrying its offset in `text`.

    The stdlib decoder keeps no positions, so its pure-Python scanner is rebuilt around a
    `parse_object` that records them; transcripts are small, so its speed is no concern.
    """
    decoder = json.JSONDecoder()
    parse_object: Callable = decoder.parse_object

    def parse_with_pos(s_and_end, *args):  # type: ignore[no-untyped-def]
        obj, end = parse_object(s_and_end, *args)
        wrapped = _Obj(obj)
        wrapped.pos = s_and_end[1] - 1
        return wrapped, end

    decoder.parse_object = parse_with_pos  # type: ignore[method-assign]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        return decoder.decode(text)
    except json.JSONDecodeError as exc:
        raise _error(path, exc.lineno, f"invalid JSON: {exc.msg}", exc.colno) from None


def _pos_line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def _json_time(path: Path, text: str, entry: _Obj, key: str, what: str) -> float:
    line, col = _pos_line_col(text, entry.pos)
    if key not in entry:
        raise _error(path, line, f"{what} has no {key!r}", col)
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(path, line, f"{what} {key!r} is {value!r}, expected a number of seconds", col)
    return float(value)


def _json_entry(path: Path, text: str, entry: Any, what: str) -> Segment | None:
    if not isinstance(entry, _Obj):
        raise _error(path, 1, f"{what} is {type(entry).__name__}, expected an object with start, end and text")
    line, col = _pos_line_col(text, entry.pos)
    start = _json_time(path, text, entry, "start", what)
    end = _json_time(path, text, entry, "end", what)
    _check_times(path, line, start, end, col)
    word_level = "word" in entry and "text" not in entry
    key = "word" if word_level else "text"
    if key not in entry:
        raise _error(path, line, f"{what} has neither 'text' nor 'word'", col)
    if not isinstance(entry[key], str):
        raise _error(path, line, f"{what} {key!r} is {entry[key]!r}, expected a string", col)
    body = _clean(entry[key])
    words: tuple[Word, ...] | None = None
    if word_level:
        words = (Word(start, end, body, line),) if body else ()
    elif entry.get("words") is not None:
        if not isinstance(entry["words"], list):
            raise _error(path, line, f"{what} 'words' is not a list", col)
        parsed = []
        for j, w in enumerate(entry["words"]):
            wwhat = f"{what} word {j}"
            if not isinstance(w, _Obj):
                raise _error(path, line, f"{wwhat} is not an object", col)
            wline, wcol = _pos_line_col(text, w.pos)
            if "start" not in w and "end" not in w:
                continue  # WhisperX leaves some tokens (numerals) without timing
            ws = _json_time(path, text, w, "start", wwhat)
            we = _json_time(path, text, w, "end", wwhat)
            _check_times(path, wline, ws, we, wcol)
            wkey = "word" if "word" in w else "text"
            if not isinstance(w.get(wkey), str):
                raise _error(path, wline, f"{wwhat} has no 'word' string", wcol)
            wt = _clean(w[wkey])
            if wt:
                parsed.append(Word(ws, we, wt, wline))
        words = tuple(parsed)
    if not body:
        return None
    return Segment(start, end, body, words, line)


def _read_json(path: Path, text: str) -> list[Segment]:
    data = _json_with_positions(path, text)
    if isinstance(data, dict):
        if "segments" not in data:
            line, col = _pos_line_col(text, data.pos)
            raise _error(path, line, "JSON object has no 'segments' list (expected a list of "
                                     "{start, end, text|word} or {\"segments\": [...]})", col)
        data = data["segments"]
        if not isinstance(data, list):
            raise _error(path, 1, "'segments' is not a list")
    elif not isinstance(data, list):
        raise _error(path, 1, f"JSON top level is {type(data).__name__}, expected a list or an object "
                              "with 'segments'")
    out = [_json_entry(path, text, e, f"entry {i}") for i, e in enumerate(data)]
    return [s for s in out if s is not None]


# -- GRID alignment ---------------------------------------------------------------

def _read_align(path: Path, text: str) -> list[Segment]:
    segments = []
    for no, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise _error(path, no, f"expected 'start end word', got {len(fields)} field(s)",
                         min(len(fields), 3) + 1 if len(fields) < 3 else 4)
        times = []
        for col, value in enumerate(fields[:2], start=1):
            try:
                times.append(float(value) / GRID_TIME_UNIT)
            except ValueError:
                raise _error(path, no, f"{'start' if col == 1 else 'end'} {value!r} is not a number "
                                       "(GRID times are in 1/25000 s)", col) from None
        _check_times(path, no, times[0], times[1])
        word = fields[2]
        if word.lower() in GRID_SILENCE:
            continue
        segments.append(Segment(times[0], times[1], word, (Word(times[0], times[1], word, no),), no))
    return segments


# -- CSV ------------------------------------------------------------------------

def _read_csv(path: Path, text: str) -> list[Segment]:
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:  # pragma: no cover - _read_text already rejects empty files
        raise _error(path, 1, "empty CSV transcript") from None
    for name in ("start", "end"):
        if name not in header:
            raise _error(path, 1, f"missing column {name!r} (header must have start,end,text)", len(header) + 1)
    text_col = "text" if "text" in header else "word" if "word" in header else None
    if text_col is None:
        raise _error(path, 1, "missing column 'text' (header must have start,end,text)", len(header) + 1)
    idx = {name: header.index(name) for name in ("start", "end", text_col)}
    segments = []
    line_no = reader.line_num + 1
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                if len(row) != len(header):
                    raise _error(path, line_no, f"row has {len(row)} fields, header has {len(header)}",
                                 min(len(row), len(header)) + 1)
                times = []
                for name in ("start", "end"):
                    value = row[idx[name]].strip()
                    try:
                        times.append(float(value))
                    except ValueError:
                        raise _error(path, line_no, f"{name} {value!r} is not a number of seconds",
                                     idx[name] + 1) from None
                _check_times(path, line_no, times[0], times[1], idx["start"] + 1)
                body = _clean(row[idx[text_col]])
                if body:
                    words = (Word(times[0], times[1], body, line_no),) if text_col == "word" else None
                    segments.append(Segment(times[0], times[1], body, words, line_no))
            line_no = reader.line_num + 1
    except csv.Error as exc:
        raise _error(path, reader.line_num, f"CSV syntax error: {exc}") from None
    return segments


_READERS: dict[str, Callable[[Path, str], list[Segment]]] = {
    ".srt": _read_srt,
    ".vtt": _read_vtt,
    ".json": _read_json,
    ".align": _read_align,
    ".csv": _read_csv,
}

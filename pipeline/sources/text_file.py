"""Reading a user's text file (manifest, annotation, transcript, test list) as UTF-8.

Every reader of user files reports bad input as ``file:line[:col]: message``, and a
file that is not UTF-8 is the commonest bad input of all (a spreadsheet saved as
UTF-16, a Latin-1 transcript). This is the one place that decodes such a file, so
the bad byte is reported at its own line and column by all of them alike; each
reader passes its own error type through `error`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

#: error(line, column, message) -> the reader's own exception (ManifestError, TranscriptError, ...)
ErrorAt = Callable[[int, int, str], Exception]


def decode_utf8(data: bytes, error: ErrorAt) -> str:
    """UTF-8 text, a leading BOM removed (Excel writes one); a bad byte raises `error` at its line and column.

    The column counts bytes from the start of the line (1-based), so it points at the bad byte itself.
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = data[: exc.start]
        # CRLF, lone CR and LF each end a line, as for every reader here (csv and universal newlines)
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        col = exc.start - max(before.rfind(b"\n"), before.rfind(b"\r"))
        hint = " (saved as UTF-16? re-save it as UTF-8)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise error(line, col, f"not UTF-8 text: {exc.reason} at byte {exc.start}{hint}") from None


def read_utf8(path: Path, error: ErrorAt, *, universal_newlines: bool = False) -> str:
    """The file decoded by `decode_utf8`; with `universal_newlines`, CRLF and CR become LF.

    Only CRLF and lone CR are turned into LF (not ``str.splitlines``' Unicode separators),
    so the line numbers of later errors stay the file's physical lines.
    """
    text = decode_utf8(Path(path).read_bytes(), error)
    return text.replace("\r\n", "\n").replace("\r", "\n") if universal_newlines else text

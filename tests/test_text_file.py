"""Every reader of a user's text file names the line and column of a byte that is not UTF-8
(one decoder, pipeline.sources.text_file), in its own error type."""
from __future__ import annotations

import pytest

from pipeline.sources.affwild2 import AffWild2Error, read_test_list
from pipeline.sources.annotations import AnnotationError, read_va
from pipeline.sources.manifest import ManifestError, read_manifest
from pipeline.sources.transcripts import TranscriptError, read_transcript

# (file name, bytes with one bad byte at line 3, column 4, reader, its error, where the message says it is)
CASES = {
    "manifest": ("m.csv", b"trial,video,split\na,v.mp4,train\nb,v\xe9.mp4,val\n", read_manifest, ManifestError,
                 ":3:4: "),
    "annotation": ("a.txt", b"valence,arousal\n0.1,0.2\n0.1\xff,0.2\n", read_va, AnnotationError, ":3:4: "),
    "test list": ("t.txt", b"name\nvideo1\nvid\xe9o2\n", read_test_list, AffWild2Error, ":3:4: test list is "),
    # transcripts name file:line (their columns are not fields)
    "transcript": ("l.srt", b"1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n", read_transcript, TranscriptError, ":3: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_byte_that_is_not_utf8_is_named_by_line_and_column(case, tmp_path):
    name, data, read, error, where = CASES[case]
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(error) as err:
        read(path)
    assert str(err.value).startswith(f"{path}{where}not UTF-8 text: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("case", ["annotation", "transcript"])
def test_cr_and_crlf_line_ends_keep_line_numbers(case, tmp_path):
    name, data, read, error, where = CASES[case]
    path = tmp_path / name
    first, rest = data.split(b"\n", 1)
    path.write_bytes(first + b"\r\n" + rest.replace(b"\n", b"\r"))  # CRLF once, then lone CRs
    with pytest.raises(error) as err:
        read(path)
    assert str(err.value).startswith(f"{path}{where}")

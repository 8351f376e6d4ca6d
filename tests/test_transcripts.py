"""Transcript readers: every supported format from files written here, the real GRID alignment,
and clear file:line errors for malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.sources.transcripts import Segment, TranscriptError, read_transcript


def write(tmp_path: Path, name: str, text: str, *, bom: bool = False, crlf: bool = False) -> Path:
    if crlf:
        text = text.replace("\n", "\r\n")
    data = text.encode("utf-8")
    p = tmp_path / name
    p.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return p


def spans(segments: list[Segment]) -> list[tuple[float, float, str]]:
    return [(round(s.start, 3), round(s.end, 3), s.text) for s in segments]


# -- formats ----------------------------------------------------------------------

def test_srt_with_bom_crlf_markup_and_multiline_cues(tmp_path):
    p = write(tmp_path, "a.srt", (
        "1\n00:00:01,000 --> 00:00:02,500\n<i>Hello</i> there\nfriend\n\n"
        "2\n00:00:02,400 --> 00:01:03,250\nsecond &amp; last\n\n"
    ), bom=True, crlf=True)
    segs = read_transcript(p)
    assert spans(segs) == [(1.0, 2.5, "Hello there friend"), (2.4, 63.25, "second & last")]
    assert segs[0].words is None and segs[1].line == 7  # timing line of cue 2


def test_vtt_skips_header_notes_and_identifiers(tmp_path):
    p = write(tmp_path, "a.vtt", (
        "WEBVTT - made by hand\n\nNOTE this is a comment\nspanning lines\n\n"
        "STYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.000 align:start position:10%\n<v Anna>Good morning</v>\n\n"
        "01:00:00.500 --> 01:00:01.000\nlate\n"
    ), crlf=True)
    assert spans(read_transcript(p)) == [(1.0, 2.0, "Good morning"), (3600.5, 3601.0, "late")]


def test_json_whisper_segments_with_words(tmp_path):
    doc = {"text": " set white", "language": "en", "segments": [
        {"id": 0, "start": 0.49, "end": 1.09, "text": " set white", "words": [
            {"word": " set", "start": 0.49, "end": 0.77, "probability": 0.9},
            {"word": " white", "start": 0.77, "end": 1.09, "probability": 0.8},
            {"word": " 42"},  # WhisperX leaves numerals untimed: skipped
        ]},
        {"id": 1, "start": 1.5, "end": 2.0, "text": " "},  # empty text: dropped
    ]}
    p = write(tmp_path, "w.json", json.dumps(doc, indent=1))
    segs = read_transcript(p)
    assert spans(segs) == [(0.49, 1.09, "set white")]
    assert [(w.start, w.end, w.text) for w in segs[0].words] == [(0.49, 0.77, "set"), (0.77, 1.09, "white")]


def test_json_word_list(tmp_path):
    p = write(tmp_path, "w.json", '[{"start": 0, "end": 0.5, "word": "hi"},\n {"start": 0.5, "end": 1, "word": "you"}]')
    segs = read_transcript(p)
    assert spans(segs) == [(0.0, 0.5, "hi"), (0.5, 1.0, "you")]
    assert segs[1].words[0].text == "you" and segs[1].line == 2


def test_csv_with_extra_columns_and_quotes(tmp_path):
    p = write(tmp_path, "t.csv", 'speaker,start,end,text\nA,0.5,1.25,"hello, world"\n\nB,1.25,2,bye\n', bom=True)
    segs = read_transcript(p)
    assert spans(segs) == [(0.5, 1.25, "hello, world"), (1.25, 2.0, "bye")]
    assert [s.line for s in segs] == [2, 4]


def test_overlapping_segments_are_kept_in_file_order(tmp_path):
    p = write(tmp_path, "o.csv", "start,end,text\n0,2,first\n1,3,second\n")
    assert [s.text for s in read_transcript(p)] == ["first", "second"]


def test_real_grid_alignment_drops_silence(shared_media):
    segs = read_transcript(shared_media / "grid" / "swwp2s.align")
    # the file has 8 lines: sil + 6 words + sil ("set white with p two soon")
    assert [s.text for s in segs] == ["set", "white", "with", "p", "two", "soon"]
    assert (segs[0].start, segs[0].end) == pytest.approx((12250 / 25000, 19250 / 25000))
    assert (segs[-1].start, segs[-1].end) == pytest.approx((43250 / 25000, 55250 / 25000))
    assert all(s.words and s.words[0].text == s.text for s in segs)
    assert [s.line for s in segs] == [2, 3, 4, 5, 6, 7]


def test_silent_but_valid_files_give_no_segments(tmp_path):
    assert read_transcript(write(tmp_path, "s.align", "0 74500 sil\n")) == []
    assert read_transcript(write(tmp_path, "s.json", "[]")) == []
    assert read_transcript(write(tmp_path, "s.csv", "start,end,text\n")) == []
    assert read_transcript(write(tmp_path, "s.vtt", "WEBVTT\n")) == []


# -- errors name file and line ---------------------------------------------------------

@pytest.mark.parametrize("name,text,where,fragment", [
    ("e.srt", "", ":1:", "empty transcript"),
    ("e.srt", "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03 --> 00:00:04,000\nbad\n", ":6:", "bad SRT timing"),
    ("e.srt", "1\n00:00:05,000 --> 00:00:04,000\nbackwards\n", ":2:", "before start"),
    ("e.vtt", "1\n00:01.000 --> 00:02.000\nno header\n", ":1:1:", "WEBVTT"),
    ("e.vtt", "WEBVTT\n\n00:01.000 --> 00:02.000\nok\n\n00:03,000 --> 00:04.000\nbad\n", ":6:", "bad WebVTT timing"),
    ("e.json", '{"segments": [\n {"start": 0, "end": 1, "text": "a"},\n {"start": 2, "text": "b"}\n]}', ":3:2:",
     "has no 'end'"),
    ("e.json", '[{"start": 0, "end": 1, "text": "a"},\n {"start": "x", "end": 1, "text": "b"}]', ":2:2:",
     "expected a number"),
    ("e.json", '[{"start": 0, "end": 1, "text": "a"}\n {"start": 1}]', ":2:2:", "invalid JSON"),
    ("e.json", '{"text": "no segments"}', ":1:1:", "no 'segments'"),
    ("e.align", "0 100 sil\n100 200\n", ":2:3:", "expected 'start end word'"),
    ("e.align", "0 100 sil\n1oo 200 word\n", ":2:1:", "not a number"),
    ("e.align", "0 100 sil\n300 200 word\n", ":2:", "before start"),
    ("e.csv", "begin,end,text\n0,1,a\n", ":1:", "missing column 'start'"),
    ("e.csv", "start,end,text\n0,1,a\n1,abc,b\n", ":3:2:", "end 'abc' is not a number"),
    ("e.csv", "start,end,text\n0,1,a\n1,2\n", ":3:3:", "row has 2 fields"),
    ("e.csv", "start,end,text\n-1,1,a\n", ":2:1:", "negative start"),
])
def test_malformed_files_name_file_and_line(tmp_path, name, text, where, fragment):
    p = write(tmp_path, name, text, crlf=True)
    with pytest.raises(TranscriptError) as info:
        read_transcript(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}{where}"), msg
    assert fragment in msg and "\n" not in msg


def test_not_utf8_names_the_line(tmp_path):
    p = tmp_path / "l.srt"
    p.write_bytes(b"1\n00:00:01,000 --> 00:00:02,000\ncaf\xe9\n")
    with pytest.raises(TranscriptError, match=r"l\.srt:3: not UTF-8"):
        read_transcript(p)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(TranscriptError, match="unsupported transcript format '.txt'"):
        read_transcript(write(tmp_path, "a.txt", "hello"))
    with pytest.raises(TranscriptError, match="not found"):
        read_transcript(tmp_path / "missing.srt")

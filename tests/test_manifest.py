"""read_manifest / write_manifest on real CSV files: values, resolution and every error's file:line:col."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.sources.manifest import ManifestError, Trial, read_manifest, write_manifest

HEADER = "trial,video,split"


def write(tmp_path: Path, text: str | bytes, name: str = "m.csv") -> Path:
    """Write the bytes exactly as given (no newline translation), so CRLF/BOM tests mean what they say."""
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return p


def error_of(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    return str(info.value)


def assert_error(path: Path, line: int, col: int, *fragments: str) -> str:
    msg = error_of(path)
    assert msg.startswith(f"{path}:{line}:{col}: "), msg
    for fragment in fragments:
        assert fragment in msg, msg
    assert "\n" not in msg
    return msg


# --- values ---------------------------------------------------------------------------------


def test_full_row_values_and_path_resolution(tmp_path, monkeypatch):
    folder = tmp_path / "manifests"
    p = write(folder, "trial,video,split,annotation,transcript,subject,fold,aligned_faces\n"
                      "t1,videos/a.mp4,train,ann/t1.txt,tr/t1.csv,left,3,faces/t1\n"
                      f"t2,{tmp_path}/abs/b.avi,val,,,,,\n")
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    t1, t2 = read_manifest(Path("manifests/m.csv"))
    base = folder.resolve()
    assert t1 == Trial(trial="t1", video=base / "videos/a.mp4", split="train", annotation=base / "ann/t1.txt",
                       transcript=base / "tr/t1.csv", subject="left", fold=3, aligned_faces=base / "faces/t1")
    assert t1.video.is_absolute() and t1.extra == {}
    assert t1.source == "manifests/m.csv:2"
    assert t2.video == tmp_path / "abs/b.avi"
    assert (t2.annotation, t2.transcript, t2.aligned_faces, t2.fold, t2.subject) == (None, None, None, None, "largest")
    assert t2.source.endswith(":3")


def test_only_required_columns_gives_defaults(tmp_path):
    (t,) = read_manifest(write(tmp_path, "video,split,trial\nclip.mp4,test,x\n"))  # any column order
    assert (t.trial, t.video, t.split, t.subject, t.fold, t.annotation) == (
        "x", tmp_path.resolve() / "clip.mp4", "test", "largest", None, None)


def test_home_relative_paths_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (t,) = read_manifest(write(tmp_path, f"{HEADER}\nx,~/v.mp4,train\n"))
    assert t.video == tmp_path / "home" / "v.mp4"


def test_unknown_columns_are_kept_in_extra(tmp_path):
    p = write(tmp_path, "trial,speaker,video,split,notes\nx, spk1 ,v.mp4,train,\ny,spk2,v2.mp4,val,loud\n")
    x, y = read_manifest(p)
    assert x.extra == {"speaker": "spk1", "notes": ""}
    assert y.extra == {"speaker": "spk2", "notes": "loud"}


def test_whitespace_around_cells_and_header_names_is_stripped(tmp_path):
    (t,) = read_manifest(write(tmp_path, " trial , video ,split, subject\n  a  , v.mp4 , val , right \n"))
    assert (t.trial, t.video.name, t.split, t.subject) == ("a", "v.mp4", "val", "right")


def test_quoted_fields_with_commas(tmp_path):
    p = write(tmp_path, f'{HEADER},note\n"a,1","my clips/x, y.mp4",train,"said ""hi"""\n')
    (t,) = read_manifest(p)
    assert t.trial == "a,1" and t.video.name == "x, y.mp4" and t.extra["note"] == 'said "hi"'


def test_bom_is_accepted(tmp_path):
    # Excel's "CSV UTF-8" starts with a BOM; without handling it the first column is "\ufefftrial".
    (t,) = read_manifest(write(tmp_path, b"\xef\xbb\xbftrial,video,split\nx,v.mp4,train\n"))
    assert t.trial == "x"


def test_blank_lines_are_skipped_and_lines_stay_physical(tmp_path):
    p = write(tmp_path, f"\n{HEADER}\n\n   \na,v.mp4,train\n,,\n\nb,v.mp4,val\n\n")
    a, b = read_manifest(p)
    assert (a.trial, b.trial) == ("a", "b")
    assert a.source.endswith(":5") and b.source.endswith(":8")


@pytest.mark.parametrize("eol", ["\r\n", "\r"], ids=["crlf", "cr"])
def test_crlf_and_cr_line_ends(tmp_path, eol):
    p = write(tmp_path, eol.join([HEADER, "a,v.mp4,train", "", "b,w.mp4,val", ""]))
    a, b = read_manifest(p)
    assert (a.video.name, b.video.name) == ("v.mp4", "w.mp4")  # no stray \r in the last column
    assert b.split == "val" and b.source.endswith(":4")
    p2 = write(tmp_path, eol.join([HEADER, "a,v.mp4,train", "", "b,w.mp4,nope", ""]), "bad.csv")
    assert_error(p2, 4, 3, "split 'nope'")


def test_fold_and_subject_values(tmp_path):
    p = write(tmp_path, f"{HEADER},fold,subject\na,v,train,0,largest\nb,v,train, 4 ,left\nc,v,val,,\n")
    assert [(t.fold, t.subject) for t in read_manifest(p)] == [(0, "largest"), (4, "left"), (None, "largest")]


# --- errors ---------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    p = tmp_path / "nope.csv"
    assert error_of(p) == f"{p}:0:0: manifest file not found"


def test_folder_instead_of_file(tmp_path):
    assert error_of(tmp_path) == f"{tmp_path}:0:0: is a folder, expected a manifest CSV file"


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\ufeff"], ids=["zero-bytes", "blank-lines", "bom-only"])
def test_empty_file(tmp_path, text):
    assert_error(write(tmp_path, text), 1, 1, "empty manifest", "trial, video, split")


@pytest.mark.parametrize("text,line", [(f"{HEADER}\n", 2), (f"{HEADER}", 2), (f"{HEADER}\n\n\n", 2),
                                       (f"\n\n{HEADER}\n", 4)])
def test_header_only(tmp_path, text, line):
    assert_error(write(tmp_path, text), line, 1, "manifest has a header but no trials")


def test_missing_required_column(tmp_path):
    msg = assert_error(write(tmp_path, "trial,video,annotation\na,v,x\n"), 1, 4, "missing required column 'split'")
    assert "header has: trial, video, annotation" in msg


def test_missing_required_column_hints_at_case(tmp_path):
    assert_error(write(tmp_path, "Trial,video,split\na,v,train\n"), 1, 4,
                 "missing required column 'trial'", "found 'Trial'")


def test_header_on_a_later_line_reports_that_line(tmp_path):
    assert_error(write(tmp_path, "\n\ntrial,video\na,v\n"), 3, 3, "missing required column 'split'")


def test_duplicate_column(tmp_path):
    assert_error(write(tmp_path, "trial,video,split,video\na,v,train,w\n"), 1, 4,
                 "duplicate column 'video'", "first in column 2")


def test_empty_column_name(tmp_path):
    assert_error(write(tmp_path, "trial,,video,split\na,x,v,train\n"), 1, 2, "empty column name")


@pytest.mark.parametrize("row,col", [("a,v", 3), ("a,v,train,x,y", 5)], ids=["too-few", "too-many"])
def test_wrong_number_of_fields(tmp_path, row, col):
    p = write(tmp_path, f"{HEADER},fold\nok,v,train,1\n{row}\n")
    n = len(row.split(","))
    assert_error(p, 3, col, f"row has {n} fields, header has 4")


@pytest.mark.parametrize("row,col,name", [(" ,v,train", 1, "trial"), ("a,,train", 2, "video"),
                                          ("a,v,  ", 3, "split")])
def test_empty_required_value(tmp_path, row, col, name):
    assert_error(write(tmp_path, f"{HEADER}\n{row}\n"), 2, col, f"empty {name!r}")


@pytest.mark.parametrize("split", ["Train", "validation", "dev", "TEST"])
def test_bad_split(tmp_path, split):
    assert_error(write(tmp_path, f"video,trial,split\nv,a,train\nv,b,{split}\n"), 3, 3,
                 f"split {split!r} is not one of train, val, test")


@pytest.mark.parametrize("subject", ["both", "Left", "0"])
def test_bad_subject(tmp_path, subject):
    assert_error(write(tmp_path, f"{HEADER},subject\na,v,train,{subject}\n"), 2, 4,
                 f"subject {subject!r} is not one of largest, left, right")


@pytest.mark.parametrize("fold", ["x", "1.5", "-1", "one"])
def test_bad_fold(tmp_path, fold):
    assert_error(write(tmp_path, f"fold,{HEADER}\n0,a,v,train\n{fold},b,v,val\n"), 3, 1,
                 f"fold {fold!r} is not a non-negative integer")


def test_duplicate_trial_names_first_line(tmp_path):
    p = write(tmp_path, f"split,video,trial\ntrain,v,a\n\ntrain,v,b\nval,w,a\n")
    assert_error(p, 5, 3, "duplicate trial 'a' (first on line 2)")


@pytest.mark.parametrize("trial", ["a/b", "a\\b", "..", "."])
def test_trial_id_must_be_a_file_name(tmp_path, trial):
    assert_error(write(tmp_path, f'{HEADER}\n"{trial}",v,train\n'), 2, 1, "cannot be used as a file name")


def test_quoted_newline_keeps_later_line_numbers_and_is_rejected(tmp_path):
    # An unbalanced quote swallows following lines; report where the record starts, not a later line.
    p = write(tmp_path, f'{HEADER}\na,v,train\nb,"v.mp4,train\nc,w,val\n')
    assert_error(p, 3, 2, "spans several lines")


def test_not_utf8_names_line_and_column(tmp_path):
    p = write(tmp_path, f"{HEADER}\na,v,train\n".encode() + b"b,caf\xe9.mp4,val\n")
    assert_error(p, 3, 6, "not UTF-8")


def test_utf16_file_gets_a_hint(tmp_path):
    p = write(tmp_path, f"{HEADER}\na,v,train\n".encode("utf-16"))
    assert_error(p, 1, 1, "not UTF-8", "UTF-16")


def test_nul_character(tmp_path):
    assert_error(write(tmp_path, f"{HEADER}\na,v\0x,train\n"), 2, 2, "NUL")


def test_first_error_wins_in_file_order(tmp_path):
    p = write(tmp_path, f"{HEADER},subject\na,v,bad,nobody\n")
    assert_error(p, 2, 3, "split 'bad'")


# --- write_manifest -------------------------------------------------------------------------


def test_write_then_read_round_trip(tmp_path, monkeypatch):
    out = tmp_path / "data" / "manifests" / "m.csv"
    inside = tmp_path / "data" / "manifests" / "clips" / "a.mp4"
    outside = tmp_path / "elsewhere" / "b.mp4"
    monkeypatch.chdir(tmp_path)
    trials = [
        Trial(trial="a", video=inside, split="train", annotation=inside.with_suffix(".txt"), subject="left",
              fold=2, extra={"speaker": "s1"}),
        # a relative path is relative to the working directory; it must be written so the reader,
        # which resolves against the manifest's folder, finds the same file.
        Trial(trial="b", video=Path("elsewhere/b.mp4"), split="test", aligned_faces=outside.parent / "faces"),
    ]
    write_manifest(trials, out)
    lines = out.read_text().splitlines()
    assert lines[0] == "trial,video,split,annotation,transcript,subject,fold,aligned_faces,speaker"
    assert lines[1] == "a,clips/a.mp4,train,clips/a.txt,,left,2,,s1"
    assert lines[2] == f"b,{outside},test,,,largest,,{outside.parent / 'faces'},"
    assert not list(out.parent.glob("*.tmp"))
    back = read_manifest(out)
    assert back == [Trial(trial="a", video=inside.resolve(), split="train",
                          annotation=inside.with_suffix(".txt").resolve(), subject="left", fold=2),
                    Trial(trial="b", video=outside, split="test", aligned_faces=outside.parent / "faces")]
    assert back[0].extra == {"speaker": "s1"} and back[1].extra == {"speaker": ""}


def test_write_keeps_awkward_names_readable(tmp_path):
    trials = [Trial(trial='x, "y"', video=tmp_path / "a b, c.mp4", split="val")]
    out = write_manifest(trials, tmp_path / "m.csv")
    (t,) = read_manifest(out)
    assert t.trial == 'x, "y"' and t.video == tmp_path.resolve() / "a b, c.mp4"


def test_to_dict_from_dict_round_trip(tmp_path):
    t = Trial(trial="a", video=tmp_path / "v.mp4", split="train", annotation=tmp_path / "a.txt",
              subject="right", fold=1, extra={"k": "v"}, source="m.csv:2")
    back = Trial.from_dict(t.to_dict())
    assert back == t and back.extra == {"k": "v"} and back.source == "m.csv:2"


def test_trial_id_over_the_file_name_limit_is_refused_at_read(tmp_path):
    """An id longer than file names allow failed deep in a worker ("File name too long"); now line:col."""
    from click.testing import CliRunner

    import cli
    from pipeline.sources.manifest import MAX_TRIAL_BYTES

    longest = "a" * MAX_TRIAL_BYTES
    ok = write(tmp_path, f"{HEADER}\nshort,v.mp4,train\n{longest},v.mp4,train\n")
    assert [t.trial for t in read_manifest(ok)] == ["short", longest]
    # the longest accepted id still leaves room for the longest name affpipe derives from it (a shard's temp file)
    (tmp_path / f".{longest}.{'0' * 20}.h5.0123abcd.tmp").write_bytes(b"")
    too_long = write(tmp_path, f"{HEADER}\nshort,v.mp4,train\n{'x' * 300},v.mp4,train\n", "long.csv")
    assert_error(too_long, 3, 1, "300 bytes", str(MAX_TRIAL_BYTES))
    wide = write(tmp_path, f"split,video,trial\ntrain,v.mp4,{'é' * 81}\n", "wide.csv")  # 81 chars, 162 bytes
    assert_error(wide, 2, 3, "162 bytes")
    result = CliRunner().invoke(cli.main, ["extract", "--manifest", str(too_long), "--cache", str(tmp_path / "c"),
                                           "--dry-run"])
    assert result.exit_code == 1 and isinstance(result.exception, (SystemExit, type(None))), result.output
    assert result.output.startswith(f"Error: {too_long}:3:1:") and result.output.count("\n") == 1, result.output

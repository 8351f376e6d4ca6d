"""Real CLI runs that used to end in a traceback or a misleading status: each ends in one clear line.

Covers issue 7's "other tracebacks" (frames below MTCNN's minimum, `[...]` in a
failure message, outputs below a regular file or in /proc, a read-only cache
for `train --fold`) and issue 11's verdict-versus-error exit status of `extract`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import cli
from synthetic.media import write_video
from pipeline.engine.verdicts import EXIT_ERRORS, EXIT_VERDICTS


def _extract(manifest: Path, cache: Path, *extra: str):
    return CliRunner().invoke(cli.main, ["extract", "--manifest", str(manifest), "--cache", str(cache),
                                         "--scheduler", "sync", *extra])


def test_frames_smaller_than_mtcnn_minimum_are_a_no_face_verdict(tmp_path: Path) -> None:
    """A 33x17 video: MTCNN's pyramid is empty (torch.cat() error before); now `no-face`, exit 3 not 1."""
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "tiny.mp4", rng.integers(0, 255, (6, 17, 33, 3), dtype=np.uint8), fps=12)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\ntiny,{video.name},train\n")
    result = _extract(manifest, tmp_path / "cache", "--stages", "faces")
    assert result.exit_code == EXIT_VERDICTS, result.output
    assert "Traceback" not in result.output and "torch.cat" not in result.output
    ledger = [json.loads(x) for x in (tmp_path / "cache" / "ledger.jsonl").read_text().splitlines()]
    assert [(e["trial"], e["stage"], e["kind"]) for e in ledger] == [("tiny", "faces", "no-face")]
    assert "input verdicts (no-face: 1)" in result.output and "--retry-failed" not in result.output
    # a second run finds it failed before: still a verdict, still exit 3, and `failures` does not advise retrying
    again = _extract(manifest, tmp_path / "cache", "--stages", "faces")
    assert again.exit_code == EXIT_VERDICTS, again.output
    listed = CliRunner().invoke(cli.main, ["failures", "--cache", str(tmp_path / "cache")])
    assert listed.exit_code == 0
    assert "tiny\tfaces\tno-face" in listed.output and "1 input verdict(s)" in listed.output
    assert "--retry-failed" not in listed.output
    # --stages filters as extract's does: rows on stdout, the count on stderr
    only = CliRunner().invoke(cli.main, ["failures", "--cache", str(tmp_path / "cache"), "--stages", "faces,visual"])
    assert only.exit_code == 0 and only.stdout.startswith("tiny\tfaces\tno-face\t") and only.stdout.count("\n") == 1
    assert "1 input verdict(s)" in only.stderr and "tiny" not in only.stderr
    other = CliRunner().invoke(cli.main, ["failures", "--cache", str(tmp_path / "cache"), "--stages", "probe"])
    assert other.exit_code == 0 and other.stdout == "" and "0 open failure(s)" in other.stderr


def test_markup_in_a_failure_message_is_printed_literally(tmp_path: Path) -> None:
    """A corrupt file under `a[/x]/`: rich read `[/x]` as a closing tag and crashed; the line prints as is."""
    folder = tmp_path / "a[" / "x]"
    folder.mkdir(parents=True)
    (folder / "bad.mp4").write_bytes(b"not a video" * 100)
    manifest = tmp_path / "m.csv"
    manifest.write_text("trial,video,split\nbad,a[/x]/bad.mp4,train\n")
    result = _extract(manifest, tmp_path / "cache", "--stages", "probe")
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "a[/x]/bad.mp4" in result.output and "corrupt-media" in result.output
    assert result.exit_code == EXIT_VERDICTS, result.output


def test_a_real_error_exits_1_and_advises_retry(tmp_path: Path) -> None:
    """A shard stage that cannot write (cache shards folder is a file) is an error, not a verdict."""
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "v.mp4", rng.integers(0, 255, (6, 32, 48, 3), dtype=np.uint8), fps=12)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\nv,{video.name},train\n")
    cache = tmp_path / "cache"
    (cache / "shards").mkdir(parents=True)
    (cache / "shards" / "probe").write_text("a file where the stage folder goes")
    result = _extract(manifest, cache, "--stages", "probe")
    assert result.exit_code == EXIT_ERRORS, result.output
    assert "--retry-failed" in result.output

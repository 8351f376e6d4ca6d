"""A real `affpipe extract` (subprocess, local Dask cluster) of shared clips: no noise, and label
shards that survive a change of split."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

import cli
from pipeline.media.decode import probe_video

REPO = Path(__file__).resolve().parents[1]
CLIPS = ("grid/bbaf2n.mpg", "cremad/1001_DFA_ANG_XX.flv")


def _manifest(path: Path, media: Path, split: str) -> Path:
    """Both clips with a VA annotation and no transcript (as Aff-Wild2 ships)."""
    rows = ["trial,video,split,annotation"]
    for rel in CLIPS:
        clip = media / rel
        va = path.parent / f"{clip.stem}.txt"
        if not va.exists():
            n = probe_video(clip).n_decoded
            va.write_text("valence,arousal\n" + "".join(f"{i / n:.3f},0.100\n" for i in range(n)))
        rows.append(f"{clip.stem},{clip},{split},{va}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _hold_port(port: int) -> socket.socket | None:
    """Occupy `port` so the run meets it busy (if another process holds it, it is busy anyway)."""
    sock = socket.socket()
    try:
        sock.bind(("", port))
        sock.listen(1)
        return sock
    except OSError:
        sock.close()
        return None


def test_extract_prints_no_dashboard_or_weight_loading_noise_and_split_changes_recompute_nothing(
        tmp_path, shared_media):
    manifest = _manifest(tmp_path / "m.csv", shared_media, "train")
    cache = tmp_path / "cache"
    held = _hold_port(8787)
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "extract", "-m", str(manifest), "--cache", str(cache),
             "--stages", "probe,audio,text,labels", "--scheduler", "processes", "--workers", "1"],
            cwd=REPO, capture_output=True, text=True, timeout=600)
    finally:
        if held is not None:
            held.close()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "8787" not in output and "already in use" not in output, output
    assert "Loading weights" not in output and "it/s]" not in output, output
    assert len(list((cache / "shards" / "text").glob("*.h5"))) == 2  # the text stage did run

    labels_before = sorted(p.name for p in (cache / "shards" / "labels").glob("*.h5"))
    assert len(labels_before) == 2
    _manifest(tmp_path / "m.csv", shared_media, "val")  # only the split changes
    res = CliRunner().invoke(cli.main, ["extract", "-m", str(manifest), "--cache", str(cache),
                                        "--stages", "probe,audio,text,labels", "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.output[res.output.index("{"):])["counts"]
    assert {stage: c["todo"] for stage, c in counts.items()} == \
           {"probe": 0, "audio": 0, "asr": 0, "text": 0, "labels": 0}, counts
    assert counts["labels"]["cached"] == 2
    assert sorted(p.name for p in (cache / "shards" / "labels").glob("*.h5")) == labels_before

"""manifests/: each starting manifest equals what produces it, and reads (and extracts) as shipped."""
from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

import cli
from synthetic.demo_data import build_demo_dataset
from pipeline.sources.manifest import read_manifest
from test_affwild2 import TEST_LIST, abaw2022_tree

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = REPO / "manifests"


def test_affwild2_example_is_what_the_builder_writes(tmp_path):
    """The sample is the builder's output on the sample tree, with the tree at /data/Aff-Wild2."""
    root = abaw2022_tree(tmp_path / "data" / "Aff-Wild2")
    out = tmp_path / "manifests" / "affwild2.csv"  # beside the tree, not above it: paths stay absolute
    res = CliRunner().invoke(cli.main, ["manifest", "affwild2", "--root", str(root), "--out", str(out),
                                        "--test-list", str(root / TEST_LIST)])
    assert res.exit_code == 0, res.output
    written = out.read_text().replace(str(root), "/data/Aff-Wild2")
    assert (MANIFESTS / "affwild2.example.csv").read_text() == written
    assert len(read_manifest(MANIFESTS / "affwild2.example.csv")) == 8


def test_demo_manifest_is_the_demo_builders_with_its_folder_in_front(tmp_path):
    built = build_demo_dataset(tmp_path / "demo" / "data").read_text().splitlines()
    shipped = (MANIFESTS / "demo.csv").read_text().splitlines()
    assert shipped[0] == built[0]
    prefixed = [",".join(f"../demo/data/{c}" if "/" in c else c for c in line.split(",")) for line in built[1:]]
    assert shipped[1:] == prefixed
    # where `affpipe demo` (run from the repository root) builds the data, every path resolves
    (tmp_path / "manifests").mkdir()
    shutil.copy(MANIFESTS / "demo.csv", tmp_path / "manifests" / "demo.csv")
    trials = read_manifest(tmp_path / "manifests" / "demo.csv")
    assert len(trials) == 8 and all(t.video.is_file() and t.annotation.is_file() and t.transcript.is_file()
                                    for t in trials)


def test_shared_clips_manifest_covers_every_clip_and_extracts(shared_media, tmp_path):
    trials = read_manifest(MANIFESTS / "shared-clips.csv")
    videos = {t.video.resolve() for t in trials}
    on_disk = {p.resolve() for p in shared_media.rglob("*") if p.suffix in (".flv", ".mpg")}
    assert videos == on_disk and len(trials) == 13
    assert [t.transcript.name for t in trials if t.transcript] == ["swwp2s.align"]
    # it works from the clone as shipped: the probe stage decodes every clip
    res = CliRunner().invoke(cli.main, ["extract", "-m", str(MANIFESTS / "shared-clips.csv"), "-c",
                                        str(tmp_path / "cache"), "--stages", "probe", "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "cache" / "shards" / "probe").glob("*.h5"))) == 13

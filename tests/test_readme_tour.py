"""The README's quick tour, run as written: `affpipe demo`, then every line of the tour.

The tour is read from README.md itself, so a changed option there is tested the
moment it is written. Its data are the embedded demo dataset (what `affpipe demo`
builds and extracts into `cache/`) and, for `affpipe manifest affwild2`, the
sample Aff-Wild2 tree of tests/test_affwild2.py at the tour's `/data/` paths;
after that command the tour's `manifests/affwild2.csv` is replaced by the demo's
manifest, because the sample tree's videos are placeholders.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from pipeline.sources.manifest import read_manifest, write_manifest
from test_affwild2 import TEST_LIST, abaw2022_tree

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def tour_commands(readme: Path = REPO / "README.md") -> list[list[str]]:
    """argv of every `affpipe` line in the README's "Quick tour" code block (comments dropped)."""
    text = readme.read_text(encoding="utf-8")
    section = text.split("## Quick tour", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README's quick tour has no ```bash block"
    lines = [line.split("  #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("affpipe ")]


def test_the_tour_is_what_this_test_expects():
    names = [argv[0] for argv in tour_commands()]
    assert names[0] == "manifest" and {"extract", "train", "evaluate", "predict", "validate-submission"} <= set(names)


def test_demo_then_quick_tour_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    # `make demo` on shorter trials (8 of 2 s: 5 train, 2 val, 1 test; the tour's `--fold 0` needs 5
    # training trials for its 6 folds): every stage into cache/, a run, a validated submission
    res = runner.invoke(cli.main, ["demo", "--seconds", "2", "--epochs", "2", "--scheduler", "sync"])
    assert res.exit_code == 0, res.output
    assert "validation (2 trials): CCC valence" in res.output, res.output
    assert len(list(Path("demo/submission").glob("*.txt"))) == 1
    demo_manifest = Path("demo/data/manifest.csv")

    abaw2022_tree(tmp_path / "data" / "Aff-Wild2")
    shutil.copy(tmp_path / "data" / "Aff-Wild2" / TEST_LIST, tmp_path / "data" / "test_set.txt")
    for argv in tour_commands():
        argv = [a.replace("/data/", f"{tmp_path}/data/") for a in argv]
        res = runner.invoke(cli.main, argv)
        assert res.exit_code == 0, (argv, res.output)
        assert "Traceback" not in res.output, (argv, res.output)
        if argv[:2] == ["manifest", "affwild2"]:
            assert len(read_manifest("manifests/affwild2.csv")) == 8
            write_manifest(read_manifest(demo_manifest), Path("manifests/affwild2.csv"))
        if argv[:2] == ["config", "show"]:
            assert json.loads(res.stdout)["train"]["window"] == 300
        if argv[0] == "extract" and "--dry-run" not in argv:
            assert "shards in" in res.output and Path("cache/runs").is_dir()
        if argv[0] == "heads":
            assert "grjca" in res.output.split()
    # what the tour leaves: a run trained on fold 0, a valid test submission of the demo's test trial
    assert Path("runs/grjca-f0/best.pt").is_file()
    test_trials = [t.trial for t in read_manifest(demo_manifest) if t.split == "test"]
    assert sorted(p.stem for p in Path("sub").glob("*.txt")) == sorted(test_trials)

"""The CLI's one convention: choices, the shared `--cache`, error lines, stdout vs stderr, fast answers.

Also the settings schema behind `affpipe config show`: it must refuse exactly
what `extract` and `train` refuse, and print every default (training included).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from fusion.head_names import HEAD_NAMES
from pipeline.engine.names import STAGE_NAMES

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "dask", "distributed")


def _imported_modules(code: str) -> set[str]:
    """Top-level packages a fresh interpreter imports to run `code` (from ``-X importtime``)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


@pytest.mark.parametrize("argv", [["--help"], ["heads"], ["config", "show"]])
def test_help_heads_and_config_show_import_no_torch_dask_or_distributed(argv):
    mods = _imported_modules(f"import sys, cli; sys.argv = ['affpipe', *{argv!r}]\n"
                             "try:\n    cli.main()\nexcept SystemExit as e:\n    assert not e.code, e.code")
    assert "click" in mods  # the probe sees imports at all
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_manifest_reader_imports_no_dask():
    mods = _imported_modules("import pipeline.sources.manifest")
    assert not mods & set(HEAVY), sorted(mods & set(HEAVY))


def test_lazy_package_exports_still_resolve():
    import pipeline
    from pipeline.engine.runner import extract

    assert pipeline.extract is extract and "open_cache" in dir(pipeline)
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018


def test_name_lists_equal_the_registries():
    """The torch-free choice lists cannot drift from what the registries accept."""
    from fusion.models import list_heads
    from pipeline.engine.stage import STAGES
    import pipeline.stages  # noqa: F401  (registers every stage)

    assert sorted(HEAD_NAMES) == list_heads()
    assert sorted(STAGE_NAMES) == sorted(STAGES)
    assert CliRunner().invoke(cli.main, ["heads"]).output.split() == list(HEAD_NAMES)


@pytest.mark.parametrize("argv, words", [
    (["extract", "-m", "m.csv", "--stages", "faces,vsual"], "'vsual'"),
    (["extract", "-m", "m.csv", "--scheduler", "proccesses"], "tcp://HOST:PORT"),
    (["failures", "--stages", "nope"], "'nope'"),
    (["failures", "--stage", "nope"], "'nope' is not one of"),
    (["demo", "--fusion", "nope"], "'nope' is not one of"),
    (["evaluate", "run", "-m", "m.csv", "--split", "dev"], "'dev' is not one of"),
])
def test_closed_sets_are_usage_errors(argv, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli.main, argv)
    assert res.exit_code == 2 and words in res.output, res.output
    assert not (tmp_path / "cache").exists()  # refused before any work


def test_scheduler_accepts_addresses_and_stage_lists():
    ctx = cli.extract.make_context("extract", ["-m", "m.csv", "--scheduler", "tcp://10.0.0.1:8786",
                                               "--stages", " faces , text"])
    assert ctx.params["scheduler"] == "tcp://10.0.0.1:8786" and ctx.params["stages"] == ["faces", "text"]


def test_every_option_has_help_and_cache_is_the_same_everywhere():
    def commands(group, prefix=()):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from commands(cmd, prefix + (name,))
            else:
                yield prefix + (name,), cmd

    seen_cache = []
    for path, cmd in commands(cli.main):
        for p in cmd.params:
            if isinstance(p, cli.click.Option) and not p.hidden:
                assert p.help, f"{' '.join(path)} {p.opts} has no help"
            if "--cache" in getattr(p, "opts", ()):
                assert p.opts == ["--cache", "-c"] and p.default == "cache" and not p.required, path
                seen_cache.append(path)
    assert len(seen_cache) >= 10  # extract, cache *, failures, transcripts, train, evaluate, predict, ...


def test_run_folder_is_positional_with_the_older_option_kept(tmp_path):
    for argv in (["evaluate", str(tmp_path / "r")], ["evaluate", "--run", str(tmp_path / "r")]):
        ctx = cli.evaluate.make_context("evaluate", argv[1:] + ["-m", "m.csv"])
        assert cli._run_folder(ctx.params["run"], ctx.params["run_option"]) == str(tmp_path / "r")
    res = CliRunner().invoke(cli.main, ["evaluate", "-m", "m.csv"])
    assert res.exit_code == 2 and "RUN" in res.output


def test_oserror_is_one_line_not_a_traceback(tmp_path):
    """`ensemble --out` below a regular file: `path: reason`, exit 1 (was a traceback)."""
    sources = []
    for name, v in (("sub_a", "0.1,0.2"), ("sub_b", "0.3,-0.2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_text(f"valence,arousal\n{v}\n{v}\n")
        sources.append(str(tmp_path / name))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    res = CliRunner().invoke(cli.main, ["ensemble", *sources, "--out", str(blocker / "out")])
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output and res.output.startswith("Error: ")
    assert len(res.output.strip().splitlines()) == 1 and str(blocker) in res.output


# -- config show: one schema, the same refusals as extract and train ----------------------------


def test_config_show_prints_every_default_training_included(tmp_path):
    res = CliRunner().invoke(cli.main, ["config", "show"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    from fusion.config import TrainConfig

    assert shown["train"] == json.loads(json.dumps(TrainConfig().to_dict()))
    assert shown["train"]["window"] == 300 and shown["train"]["modalities"] == ["visual", "audio", "text"]
    assert set(shown["stages"]) == set(STAGE_NAMES)
    assert shown["stages"]["text"]["granularity"] == "segment"
    # what it prints is a valid config: read back, it resolves to itself
    (tmp_path / "shown.json").write_text(res.stdout)
    res2 = CliRunner().invoke(cli.main, ["config", "show", "--config", str(tmp_path / "shown.json")])
    assert res2.exit_code == 0 and json.loads(res2.stdout) == shown, res2.output


@pytest.mark.parametrize("bad, words", [
    ({"stages": {"text": {"granularity": "sentence"}}}, "text granularity 'sentence' is not one of segment, word"),
    ({"stages": {"labels": {"policy": "pad"}}}, "labels policy 'pad' is not one of truncate"),
    ({"stages": {"text": {"batch_size": 0}}}, "text batch_size must be >= 1"),
    ({"train": {"lerning_rate": 0.1}}, "unknown setting(s) for train: lerning_rate"),
    ({"train": {"epochs": "ten"}}, "train.epochs must be an integer"),
    ({"train": {"window": 10, "hop": 20}}, "train.hop must be between 1 and window"),
    ({"train": {"modalities": []}}, "train.modalities must name at least one modality"),
])
def test_config_show_refuses_what_train_and_extract_refuse(bad, words, tmp_path):
    from fusion.config import load_config
    from pipeline.engine.config import ConfigError, build_stages

    cfg = tmp_path / "bad.json"
    cfg.write_text(json.dumps(bad))
    res = CliRunner().invoke(cli.main, ["config", "show", "--config", str(cfg)])
    assert res.exit_code == 1 and words in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and str(cfg) in res.output
    # the library paths `train` and `extract` take refuse the same file with the same words
    owner = load_config if "train" in bad else build_stages
    with pytest.raises(ConfigError, match=None) as err:
        owner(cfg) if owner is load_config else owner(str(cfg))
    assert words in str(err.value)

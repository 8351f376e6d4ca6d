"""End to end on the real CREMA-D clips: extract every stage, train, evaluate, predict, validate.

Per-frame labels come from each clip's categorical emotion (a fixed valence/arousal per emotion,
as circumplex-style tables place them), written in the Aff-Wild2 annotation format.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from pipeline import extract
from pipeline.media.decode import probe_video

EMOTION_VA = {"ANG": (-0.5, 0.8), "DIS": (-0.6, 0.3), "FEA": (-0.6, 0.7), "HAP": (0.8, 0.5),
              "NEU": (0.0, 0.0), "SAD": (-0.7, -0.5)}
SPLITS = {"ANG": "train", "DIS": "train", "HAP": "train", "SAD": "train", "FEA": "val", "NEU": "test"}


@pytest.fixture(scope="module")
def cremad(shared_media: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    d = tmp_path_factory.mktemp("cremad")
    rows = ["trial,video,split,annotation,transcript"]
    for clip in sorted((shared_media / "cremad").glob("*.flv")):
        emotion = clip.stem.split("_")[2]
        n = probe_video(clip).n_decoded
        v, a = EMOTION_VA[emotion]
        (d / f"{clip.stem}.txt").write_text("valence,arousal\n" + f"{v},{a}\n" * n)
        # the spoken sentence, timed over the voiced part of the clip
        (d / f"{clip.stem}.srt").write_text("1\n00:00:00,300 --> 00:00:01,900\nDon't forget a jacket\n")
        rows.append(f"{clip.stem},{clip},{SPLITS[emotion]},{clip.stem}.txt,{clip.stem}.srt")
    manifest = d / "cremad.csv"
    manifest.write_text("\n".join(rows) + "\n")
    config = d / "config.json"
    config.write_text(json.dumps({"train": {"window": 32, "hop": 16, "batch_size": 4, "epochs": 3, "seed": 1,
                                            "model": {"tcn": {"default": [16, 16]}}}}))
    cache = d / "cache"
    summary = extract(manifest, cache=cache, scheduler="sync", progress=False)
    assert summary.ok, summary.failures
    return manifest, cache, config


def test_train_evaluate_predict_validate(cremad, tmp_path, shared_media):
    manifest, cache, config = cremad
    runner = CliRunner()
    run = tmp_path / "run"
    base = ["--manifest", str(manifest), "--cache", str(cache)]
    res = runner.invoke(cli.main, ["train", *base, "--fusion", "rjcma", "--out", str(run), "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert (run / "best.pt").is_file() and (run / "plots" / "curves.png").is_file()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    recorded = json.loads((run / "config.json").read_text())
    assert set(recorded["shard_keys"]) >= {"visual", "audio", "text"}

    res = runner.invoke(cli.main, ["evaluate", "--run", str(run), *base, "--split", "test", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["n_trials"] == 1 and report["n_labelled"] > 50
    # a constant label track has CCC 0 against any non-constant prediction: finite, never NaN
    assert np.isfinite(report["ccc_v"]) and np.isfinite(report["ccc_a"])

    sub = tmp_path / "sub"
    res = runner.invoke(cli.main, ["predict", "--run", str(run), *base, "--out", str(sub)])
    assert res.exit_code == 0, res.output
    files = sorted(sub.glob("*.txt"))
    assert [f.stem for f in files] == ["1001_DFA_NEU_XX"]
    lines = files[0].read_text().splitlines()
    assert lines[0] == "valence,arousal"
    assert len(lines) - 1 == probe_video(shared_media / "cremad" / "1001_DFA_NEU_XX.flv").n_decoded
    res = runner.invoke(cli.main, ["validate-submission", str(sub), *base])
    assert res.exit_code == 0, res.output

    # a broken submission is caught, naming file and line
    files[0].write_text("\n".join(lines[:-1] + ["2.5,0.1"]) + "\n")
    res = runner.invoke(cli.main, ["validate-submission", str(sub), *base])
    assert res.exit_code == 1
    assert f"{files[0]}:{len(lines)}" in res.output


def test_training_on_missing_modality_names_it(cremad, tmp_path):
    manifest, cache, config = cremad
    res = CliRunner().invoke(cli.main, ["train", "--manifest", str(manifest), "--cache", str(tmp_path / "empty"),
                                        "--fusion", "concat", "--out", str(tmp_path / "r"), "--config", str(config)])
    assert res.exit_code == 1
    assert "affpipe extract" in res.output

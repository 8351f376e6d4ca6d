"""Submission files: predict writes them, the validator finds every kind of damage, ensembles merge runs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cli
import fusion_cache as fc
from fusion.ensemble import center_ensemble_va
from fusion.predict import format_submission, validate_submission
from fusion.train import read_prediction_csv

TEST_FRAMES = {"te0": fc.LENGTHS["te0"], "te1": fc.LENGTHS["te1"]}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> fc.FusionCache:
    return fc.get(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    a = fc.get_run(tmp_path_factory, "baseline", epochs=4)
    b = fc.get_run(tmp_path_factory, "seed1", epochs=2, seed=1)
    return a, b


@pytest.fixture(scope="module")
def submission(data: fc.FusionCache, runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sub") / "baseline"
    result = CliRunner().invoke(cli.main, ["predict", "--run", str(runs[0]), "--manifest", str(data.manifest),
                                           "--cache", str(data.cache), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _validate(folder: Path, data: fc.FusionCache):
    return CliRunner().invoke(cli.main, ["validate-submission", str(folder), "--manifest", str(data.manifest),
                                         "--cache", str(data.cache)])


def test_predict_writes_one_valid_file_per_test_trial(data: fc.FusionCache, runs, submission: Path) -> None:
    assert sorted(p.name for p in submission.iterdir()) == ["te0.txt", "te1.txt"]
    for trial, n in TEST_FRAMES.items():
        lines = (submission / f"{trial}.txt").read_text().splitlines()
        assert lines[0] == "valence,arousal"
        assert len(lines) == n + 1  # every decoded frame, including the ones without a face
        values = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
        assert np.all(np.abs(values) <= 1)
        assert all(len(x.split(".")[1]) == 3 for line in lines[1:] for x in line.split(","))
        raw = read_prediction_csv(runs[0] / "predictions" / "test" / f"{trial}.csv")
        np.testing.assert_allclose(values, np.round(np.clip(raw, -1, 1), 3), atol=1e-9)
    result = _validate(submission, data)
    assert result.exit_code == 0, result.output
    assert "valid test submission" in result.output
    assert validate_submission(submission, data.manifest, data.cache) == []


def test_format_clips_rounds_and_never_writes_negative_zero() -> None:
    text = format_submission(np.array([[1.7, -2.0], [-0.0004, 0.12345], [0.9996, -0.3334]]))
    assert text == "valence,arousal\n1.000,-1.000\n0.000,0.123\n1.000,-0.333\n"


def test_validator_reports_every_problem_with_file_and_line(data: fc.FusionCache, submission: Path,
                                                           tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(submission, bad)
    te0 = bad / "te0.txt"
    lines = te0.read_text().splitlines()
    lines[0] = "arousal,valence"  # wrong header
    lines[3] = "0.5,1.2"  # out of range (file line 4)
    lines[5] = "abc,0.1"  # not a number (file line 6)
    lines[7] = "0.1"  # one value (file line 8)
    lines[9] = "nan,0.0"  # NaN (file line 10)
    del lines[-1]  # one line short
    te0.write_text("\n".join(lines) + "\n")
    (bad / "te1.txt").unlink()  # missing file
    (bad / "va0.txt").write_text("valence,arousal\n0,0\n")  # not a test trial
    result = _validate(bad, data)
    assert result.exit_code == 1
    out = result.output
    assert f"{te0}:1: header is 'arousal,valence'" in out
    assert f"{te0}:4: arousal 1.2 is outside [-1, 1]" in out
    assert f"{te0}:6: valence 'abc' is not a number" in out
    assert f"{te0}:8: expected 2 comma-separated values" in out
    assert f"{te0}:10: valence is nan" in out
    n = TEST_FRAMES["te0"]
    assert f"{te0}:{n}: {n - 1} prediction line(s), the trial has {n} frame(s)" in out
    assert f"{bad / 'te1.txt'}: missing" in out
    assert f"{bad / 'va0.txt'}: not a test trial" in out
    assert "8 problem(s)" in out


def test_validator_catches_too_many_lines_and_an_empty_file(data: fc.FusionCache, submission: Path,
                                                           tmp_path: Path) -> None:
    bad = tmp_path / "long"
    shutil.copytree(submission, bad)
    with (bad / "te1.txt").open("a") as fh:
        fh.write("0.000,0.000\n")
    (bad / "te0.txt").write_text("")
    problems = validate_submission(bad, data.manifest, data.cache)
    n1 = TEST_FRAMES["te1"]
    assert any(p.startswith(f"{bad / 'te1.txt'}:{n1 + 2}: {n1 + 1} prediction line(s)") for p in problems), problems
    assert any(p.startswith(f"{bad / 'te0.txt'}:1: empty file") for p in problems), problems
    assert len(problems) == 2


def test_validator_needs_the_probe_shards(data: fc.FusionCache, submission: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli.main, ["validate-submission", str(submission), "--manifest", str(data.manifest),
                                           "--cache", str(tmp_path / "nocache")])
    assert result.exit_code == 1
    assert "probe" in result.output and "te0" in result.output and "affpipe extract" in result.output


def test_ensemble_of_two_runs(data: fc.FusionCache, runs, submission: Path, tmp_path: Path) -> None:
    a, b = runs
    runner = CliRunner()
    # run b has no test predictions yet: the ensemble says what to do
    result = runner.invoke(cli.main, ["ensemble", str(a), str(b), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 1 and "affpipe predict" in result.output
    result = runner.invoke(cli.main, ["predict", "--run", str(b), "--manifest", str(data.manifest),
                                      "--cache", str(data.cache), "--out", str(tmp_path / "sub_b")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.main, ["ensemble", str(a), str(b), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 0, result.output
    assert _validate(tmp_path / "ens", data).exit_code == 0
    for trial in TEST_FRAMES:
        pa = read_prediction_csv(a / "predictions" / "test" / f"{trial}.csv")
        pb = read_prediction_csv(b / "predictions" / "test" / f"{trial}.csv")
        assert not np.allclose(pa, pb)  # two different models
        expected = np.round(np.clip(center_ensemble_va([pa, pb]), -1, 1), 3)
        got = np.loadtxt(tmp_path / "ens" / f"{trial}.txt", delimiter=",", skiprows=1)
        np.testing.assert_allclose(got, expected, atol=1e-9)
    # submission folders work as inputs too, and a single input is refused
    result = runner.invoke(cli.main, ["ensemble", str(submission), str(tmp_path / "sub_b"), "--out",
                                      str(tmp_path / "ens2")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli.main, ["ensemble", str(a), "--out", str(tmp_path / "ens3")])
    assert result.exit_code == 1 and "at least two" in result.output


def test_ensemble_refuses_inputs_that_disagree(runs, submission: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(submission, other)
    lines = (other / "te0.txt").read_text().splitlines()
    (other / "te0.txt").write_text("\n".join(lines[:-3]) + "\n")
    result = CliRunner().invoke(cli.main, ["ensemble", str(submission), str(other), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "te0" in result.output and "frame count" in result.output
    (other / "te1.txt").unlink()
    result = CliRunner().invoke(cli.main, ["ensemble", str(submission), str(other), "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "missing te1" in result.output


def test_outputs_that_cannot_be_written_end_in_one_line(data: fc.FusionCache, runs, submission: Path,
                                                        tmp_path: Path) -> None:
    """`predict --out file/sub` and `ensemble --out /proc/nope` were tracebacks; now one line, before any work."""
    regular = tmp_path / "a_file"
    regular.write_text("not a folder")
    msg = fc.one_line_error(CliRunner().invoke(cli.main, [
        "predict", "--run", str(runs[0]), "--manifest", str(data.manifest), "--cache", str(data.cache),
        "--out", str(regular / "sub")]))
    assert f"{regular / 'sub'}: cannot write the output folder" in msg
    other = tmp_path / "other"
    shutil.copytree(submission, other)
    msg = fc.one_line_error(CliRunner().invoke(cli.main, ["ensemble", str(submission), str(other),
                                                          "--out", "/proc/nope"]))
    assert "/proc/nope: cannot write the output folder" in msg

"""The trainer end to end on a real cache: run folder, resume after a kill, lazy loading, folds, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import cli
import fusion_cache as fc
from fusion.ccc import ccc_np
from fusion.train import read_prediction_csv, train

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> fc.FusionCache:
    return fc.get(tmp_path_factory)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """An uninterrupted 6-epoch run: the reference the interrupted runs must reproduce."""
    return fc.get_run(tmp_path_factory, "baseline", epochs=EPOCHS)


def test_run_folder_holds_everything_a_run_needs(data: fc.FusionCache, baseline: Path) -> None:
    cfg = json.loads((baseline / "config.json").read_text())
    assert cfg["fusion"] == "concat" and cfg["modalities"] == ["visual", "audio"]
    assert cfg["splits"] == {"train": ["tr0", "tr1", "tr2"], "val": ["va0", "va1"]}
    assert cfg["train"]["window"] == fc.WINDOW and cfg["train"]["epochs"] == EPOCHS
    assert cfg["input_dims"] == {"visual": 17, "audio": 40}  # shard width + valid channel
    assert set(cfg["shard_keys"]) == {"probe", "visual", "audio", "labels"}
    shards = sorted(p.name for p in (data.cache / "shards" / "audio").glob("*.h5"))
    assert any(name.startswith("tr0." + cfg["shard_keys"]["audio"]["tr0"][:20]) for name in shards)
    assert "torch" in cfg["versions"] and "numpy" in cfg["versions"]
    lines = fc.history(baseline)
    assert [x["epoch"] for x in lines] == list(range(1, EPOCHS + 1))
    for x in lines:
        assert set(x) >= {"loss", "ccc_v", "ccc_a", "mean", "lr"}
        assert x["mean"] == pytest.approx((x["ccc_v"] + x["ccc_a"]) / 2)
    assert lines[0]["loss"] > lines[-1]["loss"]
    # it learns: the visual features carry the labels (plus noise), so val CCC must rise well above chance
    assert max(x["mean"] for x in lines) > 0.3
    assert lines[0]["lr"] == pytest.approx(0.1)  # warm-up over epoch 1 ends at the base lr
    for prev, cur in zip(lines, lines[1:]):  # ReduceLROnPlateau (factor 0.5, patience 0) or unchanged
        assert cur["lr"] == pytest.approx(prev["lr"]) or cur["lr"] == pytest.approx(prev["lr"] * 0.5)
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(baseline / name, weights_only=True)  # no pickled code in checkpoints
        assert "model" in ckpt
    last = torch.load(baseline / "last.pt", weights_only=True)
    assert {"optimizer", "plateau", "rng", "epoch", "history"} <= set(last) and last["epoch"] == EPOCHS
    for trial, n in (("va0", 110), ("va1", 24)):  # va1 is shorter than a window: padded, masked, still predicted
        pred = read_prediction_csv(baseline / "predictions" / "val" / f"{trial}.csv")
        assert pred.shape == (n, 2) and np.all(np.abs(pred) <= 1)
    for png in [baseline / "plots" / "curves.png", *baseline.glob("plots/pred_*.png")]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list(baseline.glob("plots/pred_*.png"))) == 1  # plot_trials: 1
    assert list((data.cache / "stats").glob("visual.*.npz")), "normalisation statistics are cached in <cache>/stats"


def test_resume_continues_exactly(data: fc.FusionCache, baseline: Path, tmp_path: Path) -> None:
    """2 epochs, stop, resume to 4: the same numbers as the uninterrupted 4-epoch run."""
    run = tmp_path / "run"
    first = train(data.manifest, data.cache, "concat", run, config=data.config, epochs=2)
    assert first.epochs_run == 2
    with pytest.raises(Exception, match="already holds a run"):
        train(data.manifest, data.cache, "concat", run, config=data.config, epochs=4)
    second = train(data.manifest, data.cache, "concat", run, epochs=4, resume=True)
    assert second.resumed_from == 2 and second.epochs_run == 4
    assert fc.history(run) == fc.history(baseline)


def test_killed_cli_run_resumes_to_the_same_metrics(data: fc.FusionCache, tmp_path: Path) -> None:
    """SIGKILL `affpipe train` mid-run (whatever it was writing), then --resume: identical metrics on CPU."""
    run = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "cli.py"), "train", "--manifest", str(data.manifest), "--cache",
           str(data.cache), "--fusion", "concat", "--out", str(run), "--config", str(data.config),
           "--epochs", "500"]  # far more than it gets to run
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.time() + 240
    metrics = run / "metrics.jsonl"
    while proc.poll() is None and time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = int(torch.load(run / "last.pt", weights_only=True)["epoch"])  # the last epoch saved before the kill
    assert done >= 1
    target = done + 2
    result = CliRunner().invoke(cli.main, ["train", "--manifest", str(data.manifest), "--cache", str(data.cache),
                                           "--fusion", "concat", "--out", str(run), "--resume",
                                           "--epochs", str(target)])
    assert result.exit_code == 0, result.output
    reference = train(data.manifest, data.cache, "concat", tmp_path / "uninterrupted", config=data.config,
                      epochs=target)
    assert [len(fc.history(run))] == [target]
    assert fc.history(run) == fc.history(reference.run_dir)
    best = torch.load(run / "best.pt", weights_only=True)
    ref = torch.load(reference.run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == ref["epoch"]
    for k in ref["model"]:
        assert torch.equal(best["model"][k], ref["model"][k]), k


def test_lazy_loading_with_workers_gives_the_same_run(data: fc.FusionCache, baseline: Path, tmp_path: Path) -> None:
    """Memory budget 0: trials are opened per DataLoader worker; the numbers must not change."""
    cfg = json.loads(data.config.read_text())
    cfg["train"].update(memory_budget_mb=0, num_workers=2)
    path = tmp_path / "lazy.json"
    path.write_text(json.dumps(cfg))
    run = tmp_path / "lazy"
    train(data.manifest, data.cache, "concat", run, config=path, epochs=2)
    assert json.loads((run / "config.json").read_text())["in_memory"] is False
    assert fc.history(run) == fc.history(baseline)[:2]


def test_folds_over_train_and_val(data: fc.FusionCache, tmp_path: Path) -> None:
    cfg = json.loads(data.config.read_text())
    cfg["train"]["n_folds"] = 3  # 3 train + 2 val trials: two training chunks and the official val chunk
    config = tmp_path / "folds.json"
    config.write_text(json.dumps(cfg))
    official = train(data.manifest, data.cache, "concat", tmp_path / "f0", config=config, epochs=0, fold=0)
    splits0 = json.loads((official.run_dir / "config.json").read_text())["splits"]
    assert splits0 == {"train": ["tr0", "tr1", "tr2"], "val": ["va0", "va1"]}  # fold 0 = the official split
    run = train(data.manifest, data.cache, "concat", tmp_path / "f1", config=config, epochs=1, fold=1)
    cfg = json.loads((run.run_dir / "config.json").read_text())
    assert cfg["fold"] == 1 and cfg["splits"]["val"] == ["tr2"]  # roll(chunks, 1): the second training chunk
    assert sorted(cfg["splits"]["train"] + cfg["splits"]["val"]) == ["tr0", "tr1", "tr2", "va0", "va1"]
    assert not set(cfg["splits"]["train"]) & set(cfg["splits"]["val"])
    assert cfg["norm_stats"] != json.loads((official.run_dir / "config.json").read_text())["norm_stats"]
    # evaluate --split val of a fold run scores the fold's validation trials
    out = CliRunner().invoke(cli.main, ["evaluate", "--run", str(run.run_dir), "--manifest", str(data.manifest),
                                        "--cache", str(data.cache), "--json"])
    assert out.exit_code == 0, out.output
    assert sorted(json.loads(out.output)["per_trial"]) == sorted(cfg["splits"]["val"])


def test_evaluate_json_is_population_ccc(data: fc.FusionCache, baseline: Path) -> None:
    from pipeline import open_cache, read_manifest

    out = CliRunner().invoke(cli.main, ["evaluate", "--run", str(baseline), "--manifest", str(data.manifest),
                                        "--cache", str(data.cache), "--split", "val", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["split"] == "val" and report["n_trials"] == 2 and set(report["per_trial"]) == {"va0", "va1"}
    # recompute: concatenate the labelled frames of both trials, then one CCC per dimension
    reader = open_cache(data.cache, read_manifest(data.manifest))
    xs, ys = [], []
    for t in ("va0", "va1"):
        arr = reader.load(t, ["labels"])
        mask = arr.valid["labels"]
        pred = read_prediction_csv(baseline / "predictions" / "val" / f"{t}.csv")
        xs.append(pred[mask])
        ys.append(arr.features["labels"][mask])
        assert report["per_trial"][t]["n_labelled"] == int(mask.sum())
    x, y = np.concatenate(xs), np.concatenate(ys)
    assert report["n_labelled"] == len(x) == 110 + 24 - 2
    assert report["ccc_v"] == pytest.approx(ccc_np(x[:, 0], y[:, 0]), abs=1e-5)
    assert report["ccc_a"] == pytest.approx(ccc_np(x[:, 1], y[:, 1]), abs=1e-5)
    assert report["mean"] == pytest.approx((report["ccc_v"] + report["ccc_a"]) / 2)
    best = max(fc.history(baseline), key=lambda h: h["mean"])
    assert report["mean"] == pytest.approx(best["mean"], abs=1e-6)  # evaluate uses best.pt
    table = CliRunner().invoke(cli.main, ["evaluate", "--run", str(baseline), "--manifest", str(data.manifest),
                                          "--cache", str(data.cache)])
    assert table.exit_code == 0 and "va0" in table.output and "mean" in table.output


# -- bad input: one line, exit code 1 ------------------------------------------------------------------
def _train_cli(data: fc.FusionCache, out: Path, *extra: str) -> object:
    return CliRunner().invoke(cli.main, ["train", "--manifest", str(data.manifest), "--cache", str(data.cache),
                                         "--out", str(out), *extra])


def test_unknown_fusion_name(data: fc.FusionCache, tmp_path: Path) -> None:
    # a closed set: click refuses the name as a usage error (exit 2), listing the heads, before any work
    result = _train_cli(data, tmp_path / "r", "--fusion", "nosuchhead", "--config", str(data.config))
    assert result.exit_code == 2, result.output
    assert "'nosuchhead' is not one of" in result.output and "concat" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "r").exists()


def test_missing_shards_name_trials_stages_and_the_fix(data: fc.FusionCache, tmp_path: Path) -> None:
    empty = CliRunner().invoke(cli.main, ["train", "--manifest", str(data.manifest), "--cache",
                                          str(tmp_path / "empty_cache"), "--fusion", "concat",
                                          "--out", str(tmp_path / "r"), "--config", str(data.config)])
    msg = fc.one_line_error(empty)
    assert "probe" in msg and "tr0" in msg and "affpipe extract" in msg
    # a cache with everything but one modality: the message names that stage and its trials
    msg = fc.one_line_error(_train_cli(data, tmp_path / "r", "--fusion", "concat", "--config", str(data.config),
                                     "--modalities", "visual,text"))
    assert "text: tr0" in msg and "affpipe extract" in msg and "visual:" not in msg
    assert not (tmp_path / "r").exists()


def test_config_errors_name_file_line_and_column(data: fc.FusionCache, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"train": {\n  "epochs": 2,\n  "lr": 0.01,,\n}}\n')
    msg = fc.one_line_error(_train_cli(data, tmp_path / "r", "--fusion", "concat", "--config", str(bad)))
    assert f"{bad}:3:14:" in msg
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"train": {"epochs": 1, "lerning_rate": 0.1}}))
    msg = fc.one_line_error(_train_cli(data, tmp_path / "r", "--fusion", "concat", "--config", str(unknown)))
    assert str(unknown) in msg and "lerning_rate" in msg
    model = tmp_path / "model.json"
    model.write_text(json.dumps({"train": {**fc.TRAIN_CFG, "model": {"hiden": 3}}}))
    msg = fc.one_line_error(_train_cli(data, tmp_path / "r", "--fusion", "concat", "--config", str(model)))
    assert "hiden" in msg
    assert not (tmp_path / "r").exists()


def test_resume_refuses_a_different_head(data: fc.FusionCache, baseline: Path) -> None:
    msg = fc.one_line_error(_train_cli(data, baseline, "--fusion", "lfan", "--resume"))
    assert "'concat'" in msg and "'lfan'" in msg

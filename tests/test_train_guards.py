"""The trainer refuses what it cannot learn from, on real shard files and real CLI runs.

NaN/Inf planted in a shard (h5py, as damage would), poisoned cached
statistics, a diverging model, no labelled frames, one optimizer step per
epoch, trials with input verdicts (no-face) in the ledger, an unwritable stats
cache. Each ends in one clear line or a warning, never in a run that reports
success on NaN.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import cli
import fusion_cache as fc
from pipeline import open_cache, read_manifest


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> fc.FusionCache:
    return fc.get(tmp_path_factory)


def _copy(data: fc.FusionCache, tmp_path: Path) -> Path:
    """A private copy of the session cache (shard keys do not depend on where the cache lives)."""
    cache = tmp_path / "cache"
    shutil.copytree(data.cache, cache)
    return cache


def _config(tmp_path: Path, data: fc.FusionCache, **train) -> Path:
    cfg = json.loads(data.config.read_text())
    cfg["train"].update(train)
    path = tmp_path / f"cfg{len(list(tmp_path.glob('cfg*.json')))}.json"
    path.write_text(json.dumps(cfg))
    return path


def _train(manifest: Path, cache: Path, out: Path, config: Path, *extra: str):
    return CliRunner().invoke(cli.main, ["train", "--manifest", str(manifest), "--cache", str(cache),
                                         "--fusion", "concat", "--out", str(out), "--config", str(config), *extra])


def _plant(shard: Path, value: float, dataset: str = "features") -> tuple[int, float]:
    """Overwrite one value of a valid frame in place; returns (row, old value)."""
    with h5py.File(shard, "r+") as h5:
        row = int(np.flatnonzero(h5["valid"][()])[3])
        old = float(h5[dataset][row, 0])
        h5[dataset][row, 0] = value
    return row, old


def _stats_files_finite(cache: Path) -> None:
    for path in (cache / "stats").glob("*.npz"):
        with np.load(path) as z:
            assert np.isfinite(z["mean"]).all() and np.isfinite(z["std"]).all(), path


def test_nan_in_a_shard_stops_train_and_the_fixed_shard_trains_finite(data: fc.FusionCache, tmp_path: Path) -> None:
    cache = _copy(data, tmp_path)
    reader = open_cache(cache, read_manifest(data.manifest))
    shard = reader.shard_path("tr1", "visual")
    config = _config(tmp_path, data, epochs=2)
    clean = _train(data.manifest, cache, tmp_path / "clean", config)
    assert clean.exit_code == 0, clean.output
    clean_norm = np.load(tmp_path / "clean" / "norm.npz")

    # NaN: one line naming trial and stage; nothing trained, no statistics cached
    row, old = _plant(shard, np.nan)
    msg = fc.one_line_error(_train(data.manifest, cache, tmp_path / "nan", config))
    assert "trial tr1, stage visual" in msg and f"frame {row}" in msg and "NaN/Inf" in msg
    assert not (tmp_path / "nan").exists()
    _stats_files_finite(cache)

    # a finite but absurd value (a flipped exponent; float16 shards top out at 65504) trains and poisons
    # the statistics of *that* file ...
    _plant(shard, 6e4)
    poisoned = _train(data.manifest, cache, tmp_path / "poisoned", config)
    assert poisoned.exit_code == 0, poisoned.output
    assert np.abs(np.load(tmp_path / "poisoned" / "norm.npz")["mean/visual"]).max() > 50
    # ... and once the shard is repaired under the same key, those statistics are not reused
    _plant(shard, old)
    fixed = _train(data.manifest, cache, tmp_path / "fixed", config)
    assert fixed.exit_code == 0, fixed.output
    norm = np.load(tmp_path / "fixed" / "norm.npz")
    for name in ("mean/visual", "std/visual", "mean/audio", "std/audio"):
        np.testing.assert_array_equal(norm[name], clean_norm[name])
    history = fc.history(tmp_path / "fixed")
    assert all(np.isfinite(h["loss"]) and np.isfinite(h["mean"]) for h in history)
    assert (tmp_path / "fixed" / "best.pt").is_file()


def test_nan_label_and_nan_seen_by_a_loader_worker(data: fc.FusionCache, tmp_path: Path) -> None:
    cache = _copy(data, tmp_path)
    reader = open_cache(cache, read_manifest(data.manifest))
    _plant(reader.shard_path("tr2", "labels"), np.inf)
    msg = fc.one_line_error(_train(data.manifest, cache, tmp_path / "a", _config(tmp_path, data, epochs=1)))
    assert "trial tr2, stage labels" in msg
    # lazy loading: a val trial's NaN is met inside a DataLoader worker process, still one line
    _plant(reader.shard_path("tr2", "labels"), 0.25)
    _plant(reader.shard_path("va0", "visual"), np.nan)
    lazy = _config(tmp_path, data, epochs=1, memory_budget_mb=0, num_workers=1)
    msg = fc.one_line_error(_train(data.manifest, cache, tmp_path / "b", lazy))
    assert "trial va0, stage visual" in msg


def test_cached_statistics_are_validated_on_load(data: fc.FusionCache, tmp_path: Path) -> None:
    cache = _copy(data, tmp_path)
    config = _config(tmp_path, data, epochs=0)
    first = _train(data.manifest, cache, tmp_path / "first", config)
    assert first.exit_code == 0, first.output
    keys = json.loads((tmp_path / "first" / "config.json").read_text())["norm_stats"]
    for stage, key in keys.items():  # poison the cached files in place, same names
        path = cache / "stats" / f"{stage}.{key}.npz"
        with np.load(path) as z:
            arrays = dict(z)
        arrays["mean"] = np.full_like(arrays["mean"], np.nan)
        np.savez(path, **arrays)
    second = _train(data.manifest, cache, tmp_path / "second", config)
    assert second.exit_code == 0, second.output
    a, b = np.load(tmp_path / "first" / "norm.npz"), np.load(tmp_path / "second" / "norm.npz")
    for name in a.files:
        if name != "keys":
            np.testing.assert_array_equal(a[name], b[name])
    _stats_files_finite(cache)  # recomputed and replaced
    # a run's own statistics are checked too: evaluate/predict refuse a poisoned norm.npz in one line
    norm = tmp_path / "second" / "norm.npz"
    with np.load(norm) as z:
        arrays = dict(z)
    arrays["std/audio"] = np.full_like(arrays["std/audio"], np.inf)
    np.savez(norm, **arrays)
    for command in (["evaluate"], ["predict", "--out", str(tmp_path / "sub")]):
        msg = fc.one_line_error(CliRunner().invoke(cli.main, [*command, "--run", str(tmp_path / "second"),
                                                              "--manifest", str(data.manifest), "--cache", str(cache)]))
        assert f"{norm}: statistics of stage audio are unusable (NaN/Inf values)" in msg


def test_a_diverging_model_stops_on_the_first_non_finite_loss(data: fc.FusionCache, tmp_path: Path) -> None:
    config = _config(tmp_path, data, epochs=3, lr=1e20, weight_decay=0.0, warmup_epochs=0.0, grad_clip=0.0)
    msg = fc.one_line_error(_train(data.manifest, data.cache, tmp_path / "run", config))
    assert "became NaN/Inf" in msg and "epoch 1" in msg and "lower train.lr" in msg
    assert not (tmp_path / "run" / "best.pt").exists()


def test_no_labelled_training_frame_is_refused(data: fc.FusionCache, tmp_path: Path) -> None:
    from pipeline import extract

    cache = _copy(data, tmp_path)
    rows = data.manifest.read_text().splitlines()
    unlabelled = [",".join(r.split(",")[:3]) + "," if r.split(",")[2] == "train" else r for r in rows]
    manifest = data.root / "unlabelled_train.csv"
    manifest.write_text("\n".join(unlabelled) + "\n")
    assert extract(manifest, cache=cache, stages=["labels"], scheduler="sync", progress=False).ok
    msg = fc.one_line_error(_train(manifest, cache, tmp_path / "run", _config(tmp_path, data, epochs=1)))
    assert "no labelled frame" in msg and "3 train trial(s)" in msg
    assert not (tmp_path / "run").exists()
    # the same for validation: without a labelled val frame no epoch could ever be the best one
    unlabelled_val = [",".join(r.split(",")[:3]) + "," if r.split(",")[2] == "val" else r for r in rows]
    manifest.write_text("\n".join(unlabelled_val) + "\n")
    assert extract(manifest, cache=cache, stages=["labels"], scheduler="sync", progress=False).ok
    msg = fc.one_line_error(_train(manifest, cache, tmp_path / "run", _config(tmp_path, data, epochs=1)))
    assert "2 val trial(s) have no labelled frame" in msg
    assert not (tmp_path / "run").exists()


def test_one_step_per_epoch_warns_with_the_numbers_and_lr_cuts_are_reported(data: fc.FusionCache,
                                                                          tmp_path: Path) -> None:
    from fusion.train import train

    config = _config(tmp_path, data, epochs=4, batch_size=32)
    result = _train(data.manifest, data.cache, tmp_path / "cli", config)
    assert result.exit_code == 0, result.output
    windows = sum(len(__import__("fusion.data", fromlist=["x"]).window_starts(fc.LENGTHS[t], fc.WINDOW, fc.HOP))
                  for t in ("tr0", "tr1", "tr2"))
    assert windows == 27
    assert (f"warning: only {windows} training window(s) per epoch = 1 optimizer step(s) at batch_size 32"
            in result.output), result.output
    assert "smaller train.window/hop or batch_size" in result.output
    # an lr too small to learn: val CCC does not improve after epoch 1 (only normalisation running statistics
    # drift), so the plateau schedule (patience 0) cuts after every later epoch; each cut is a line, none silent
    flat = _config(tmp_path, data, epochs=4, batch_size=32, lr=1e-6, min_lr=1e-9)
    result = _train(data.manifest, data.cache, tmp_path / "flat", flat)
    assert result.exit_code == 0, result.output
    lrs = [h["lr"] for h in fc.history(tmp_path / "flat")]
    assert lrs == pytest.approx([1e-6, 1e-6, 5e-7, 2.5e-7], rel=1e-6, abs=0)
    cuts = [line for line in result.output.splitlines() if "learning rate cut" in line]
    assert [c.split(":")[1].strip() for c in cuts] == ["epoch 2", "epoch 3", "epoch 4"], result.output
    assert "1.00e-06 -> 5.00e-07" in cuts[0]
    run = train(data.manifest, data.cache, "concat", tmp_path / "api", config=flat)
    assert sum("learning rate cut" in w for w in run.warnings) == 3


def _faceless_manifest(data: fc.FusionCache, tmp_path: Path, cache: Path) -> Path:
    """The session manifest plus a train and a val trial whose `faces` failed `no-face` (visual blocked)."""
    from pipeline import extract
    from synthetic.media import write_video

    rng = np.random.default_rng(0)
    rows = data.manifest.read_text().splitlines()
    for trial, split in (("nf_train", "train"), ("nf_val", "val")):
        video = write_video(tmp_path / f"{trial}.mp4", rng.integers(0, 255, (6, 17, 33, 3), dtype=np.uint8), fps=12)
        rows.append(f"{trial},{video},{split},")
    manifest = data.root / f"faceless_{tmp_path.name}.csv"
    manifest.write_text("\n".join(rows) + "\n")
    faceless = [t for t in read_manifest(manifest) if t.trial.startswith("nf_")]  # the others' visual is synthetic
    summary = extract(faceless, cache=cache, stages=["faces"], scheduler="sync", progress=False)
    assert {(f["trial"], f["kind"]) for f in summary.failures} == {("nf_train", "no-face"), ("nf_val", "no-face")}
    return manifest


def test_trials_with_input_verdicts_are_skipped_or_refused_with_strict(data: fc.FusionCache, tmp_path: Path) -> None:
    cache = _copy(data, tmp_path)
    manifest = _faceless_manifest(data, tmp_path, cache)
    config = _config(tmp_path, data, epochs=1)
    result = _train(manifest, cache, tmp_path / "run", config)
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if "skipping" in line]
    assert warned == ["warning: skipping 2 trial(s) whose inputs failed extraction (see `affpipe failures`): "
                      "nf_train (visual: no-face), nf_val (visual: no-face)"], result.output
    splits = json.loads((tmp_path / "run" / "config.json").read_text())["splits"]
    assert splits == {"train": ["tr0", "tr1", "tr2"], "val": ["va0", "va1"]}
    msg = fc.one_line_error(_train(manifest, cache, tmp_path / "strict", config, "--strict"))
    assert "--strict" in msg and "nf_train (visual: no-face)" in msg
    # evaluate: the run's val trial va1 now points at a faceless video (a verdict found after training)
    from pipeline import extract

    rows = [r if not r.startswith("va1,") else f"va1,{tmp_path / 'nf_val.mp4'},val,va1.txt"
            for r in data.manifest.read_text().splitlines()]
    later = data.root / f"later_{tmp_path.name}.csv"
    later.write_text("\n".join(rows) + "\n")
    extract([t for t in read_manifest(later) if t.trial == "va1"], cache=cache, stages=["faces"],
            scheduler="sync", progress=False)
    args = ["evaluate", "--run", str(tmp_path / "run"), "--manifest", str(later), "--cache", str(cache)]
    out = CliRunner().invoke(cli.main, args)
    assert out.exit_code == 0, out.output
    assert "warning: skipping 1 trial(s) whose inputs failed extraction (see `affpipe failures`): " \
           "va1 (visual: no-face)" in out.output
    assert "va0" in out.output and "val (1 trials" in out.output
    msg = fc.one_line_error(CliRunner().invoke(cli.main, [*args, "--strict"]))
    assert "--strict" in msg and "va1 (visual: no-face)" in msg


def test_fold_on_a_cache_whose_stats_cannot_be_written(data: fc.FusionCache, tmp_path: Path) -> None:
    """The stats folder cannot be created (here a regular file stands in its place: tests run as root, so
    permission bits would not stop a write): statistics are computed in memory and the run says so."""
    cache = _copy(data, tmp_path)
    shutil.rmtree(cache / "stats", ignore_errors=True)
    (cache / "stats").write_text("not a folder")
    config = _config(tmp_path, data, epochs=1, n_folds=3)
    result = _train(data.manifest, cache, tmp_path / "run", config, "--fold", "1")
    assert result.exit_code == 0, result.output
    assert "cannot cache normalisation statistics" in result.output and "computed in memory" in result.output
    assert np.isfinite(np.load(tmp_path / "run" / "norm.npz")["mean/visual"]).all()


def test_only_frames_flagged_valid_must_be_finite() -> None:
    """Stages may leave NaN in invalid rows (faces store NaN boxes there); those rows are zeroed, never used."""
    from fusion.data import NonFiniteError, check_finite

    x = np.ones((5, 3), dtype=np.float32)
    x[1, 2] = np.nan
    check_finite("t", "visual", x, np.array([True, False, True, True, True]))
    x[4, 0] = -np.inf
    with pytest.raises(NonFiniteError, match=r"trial t, stage visual: NaN/Inf in 1 valid frame\(s\) \(first: frame 4\)"):
        check_finite("t", "visual", x, np.array([True, False, True, True, True]))
    with pytest.raises(NonFiniteError, match=r"2 valid frame\(s\) \(first: frame 1\)"):
        check_finite("t", "visual", x, None)


def test_resume_checks_the_shard_files_its_statistics_came_from(data: fc.FusionCache, tmp_path: Path) -> None:
    """A shard rewritten under the same key after a run started: resume must not keep the old norm.npz."""
    cache = _copy(data, tmp_path)
    shard = open_cache(cache, read_manifest(data.manifest)).shard_path("tr1", "visual")
    run = tmp_path / "run"
    assert _train(data.manifest, cache, run, _config(tmp_path, data, epochs=1)).exit_code == 0
    started = dict(np.load(run / "norm.npz"))
    longer = _config(tmp_path, data, epochs=2)
    row, old = _plant(shard, 6e4)  # other content, same key
    msg = fc.one_line_error(_train(data.manifest, cache, run, longer, "--resume"))
    assert f"{run}: shard files were rewritten since the run started" in msg and "(visual)" in msg, msg
    assert len(fc.history(run)) == 1
    # the same content again (a new mtime, as a copied cache would have): checked, equal, the run continues
    _plant(shard, old)
    resumed = _train(data.manifest, cache, run, longer, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert len(fc.history(run)) == 2
    after = np.load(run / "norm.npz")
    for name in started:
        if name != "keys":
            np.testing.assert_array_equal(after[name], started[name])
    assert json.loads(str(after["keys"])) == json.loads((run / "config.json").read_text())["norm_stats"]


def test_resume_without_norm_npz_saves_the_recomputed_statistics(data: fc.FusionCache, tmp_path: Path) -> None:
    cache = _copy(data, tmp_path)
    run = tmp_path / "run"
    assert _train(data.manifest, cache, run, _config(tmp_path, data, epochs=1)).exit_code == 0
    started = dict(np.load(run / "norm.npz"))
    (run / "norm.npz").unlink()
    resumed = _train(data.manifest, cache, run, _config(tmp_path, data, epochs=2), "--resume")
    assert resumed.exit_code == 0, resumed.output
    saved = np.load(run / "norm.npz")
    for name in started:
        np.testing.assert_array_equal(saved[name], started[name])
    out = CliRunner().invoke(cli.main, ["evaluate", "--run", str(run), "--manifest", str(data.manifest),
                                        "--cache", str(cache)])
    assert out.exit_code == 0, out.output
    # lost, and a shard file rewritten since: what the run trained with cannot be checked any more
    (run / "norm.npz").unlink()
    shard = open_cache(cache, read_manifest(data.manifest)).shard_path("tr0", "visual")
    _plant(shard, _plant(shard, 1.0)[1])  # the same value back: only the file changed
    msg = fc.one_line_error(_train(data.manifest, cache, run, _config(tmp_path, data, epochs=3), "--resume"))
    assert "norm.npz is missing and the shard files changed since the run started" in msg
    assert len(fc.history(run)) == 2


def test_lazy_run_reads_label_shards_that_record_no_count(data: fc.FusionCache, tmp_path: Path) -> None:
    """Read lazily, label shards without ``n_labelled_frames`` (another label stage, an older shard) are
    read, not assumed labelled: a run without a labelled training frame stops before training."""
    from pipeline import extract

    cache = _copy(data, tmp_path)
    rows = data.manifest.read_text().splitlines()
    manifest = data.root / f"unlabelled_lazy_{tmp_path.name}.csv"
    manifest.write_text("\n".join(",".join(r.split(",")[:3]) + "," if r.split(",")[2] == "train" else r
                                  for r in rows) + "\n")
    assert extract(manifest, cache=cache, stages=["labels"], scheduler="sync", progress=False).ok
    reader = open_cache(cache, read_manifest(manifest))
    for t in ("tr0", "tr1", "tr2"):
        with h5py.File(reader.shard_path(t, "labels"), "r+") as h5:
            del h5.attrs["n_labelled_frames"]
    lazy = _config(tmp_path, data, epochs=1, memory_budget_mb=0)
    msg = fc.one_line_error(_train(manifest, cache, tmp_path / "run", lazy))
    assert "no labelled frame" in msg and "3 train trial(s)" in msg
    assert not (tmp_path / "run").exists()

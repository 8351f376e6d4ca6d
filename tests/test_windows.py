"""Windowing, masking and normalisation statistics of fusion/data.py (exact, small, fast)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusion.config import ConfigError, TrainConfig, load_config, train_config_from_dict
from fusion.data import (NormStats, RawTrial, RunningStats, TrialBlockSampler, WindowDataset, compute_stats,
                         label_mask_of, window_index, window_starts)

W, HOP = 300, 200


@pytest.mark.parametrize("n, frames", [
    (50, [(0, 50)]),  # shorter than a window: one window, frames 0..49, padded to 300
    (300, [(0, 300)]),  # exactly one window, no tail
    (301, [(0, 300), (1, 301)]),  # one frame over: the tail window [1, 301)
    (500, [(0, 300), (200, 500)]),  # regular windows end exactly at n: no tail
    (700, [(0, 300), (200, 500), (400, 700)]),  # ditto with three
])
def test_window_frames_exact(n: int, frames: list[tuple[int, int]]) -> None:
    """(first frame, one past the last real frame) of every window, for the lengths the spec names."""
    starts = window_starts(n, W, HOP)
    assert [(s, min(s + W, n)) for s in starts] == frames


@pytest.mark.parametrize("n", [50, 300, 301, 500, 700, 701, 999, 1234])
def test_windows_cover_every_frame_and_stay_inside(n: int) -> None:
    starts = window_starts(n, W, HOP)
    covered = np.zeros(n, dtype=int)
    for s in starts:
        assert s >= 0 and (n <= W or s + W <= n)
        covered[s:min(s + W, n)] += 1
    assert (covered >= 1).all()
    if n > W:
        assert starts[-1] + W == n  # the last window always ends at the last frame


def test_window_starts_edge_cases() -> None:
    assert window_starts(0, W, HOP) == []
    assert window_starts(1, W, HOP) == [0]
    assert window_starts(10, 4, 4) == [0, 4, 6]
    with pytest.raises(ValueError):
        window_starts(10, 0, 1)


def test_window_index_lists_trials_in_order() -> None:
    idx = window_index([50, 301, 700], W, HOP)
    assert idx.tolist() == [[0, 0], [1, 0], [1, 1], [2, 0], [2, 200], [2, 400]]


def _raw(trial: str, n: int, d: int, rng: np.random.Generator, invalid_every: int = 0) -> RawTrial:
    x = rng.normal(3.0, 2.0, size=(n, d)).astype(np.float32)
    valid = np.ones(n, dtype=bool)
    if invalid_every:
        valid[::invalid_every] = False
        x[~valid] = 0.0  # what a stage writes where it has no face
    labels = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
    labels[5:9] = -5.0  # Aff-Wild2 "no annotation"
    return RawTrial(trial, n, {"visual": x}, {"visual": valid}, labels, label_mask_of(labels, None))


def _stats_for(raw: dict[str, RawTrial], ids: list[str], tmp: Path | None = None) -> NormStats:
    keys = {"visual": {t: f"key-{t}" for t in raw}}
    return compute_stats(lambda t: raw[t], {"visual": 4}, ids, ["visual"], shard_keys=keys, fold="official",
                         cache_dir=tmp)


def test_dataset_items_pad_mask_and_normalise() -> None:
    rng = np.random.default_rng(0)
    raw = {"a": _raw("a", 50, 4, rng, invalid_every=7), "b": _raw("b", 301, 4, rng)}
    stats = _stats_for(raw, ["a", "b"])
    ds = WindowDataset(["a", "b"], [50, 301], ["visual"], {"visual": "visual"}, stats, W, HOP,
                       with_labels=True, preloaded=raw)
    assert len(ds) == 3
    item = ds[0]  # trial a, padded from 50 to 300
    x = item["inputs"]["visual"].numpy()
    assert x.shape == (W, 5)  # 4 features + valid channel
    assert item["inside"].numpy().sum() == 50 and not item["inside"].numpy()[50:].any()
    assert (x[50:] == 0).all()
    v = raw["a"].valid["visual"]
    assert (x[:50, 4] == v).all()
    assert (x[:50][~v, :4] == 0).all()  # invalid frames sit at the training mean
    expected = (raw["a"].features["visual"][v] - stats.mean["visual"]) / stats.std["visual"]
    np.testing.assert_allclose(x[:50][v, :4], expected, rtol=1e-5, atol=1e-5)
    mask = item["mask"].numpy()
    assert not mask[5:9].any() and not mask[50:].any() and mask[:5].all()
    tail = ds[2]  # trial b, window [1, 301)
    assert tail["start"] == 1 and tail["inside"].numpy().all()
    np.testing.assert_allclose(tail["labels"].numpy()[-1], raw["b"].labels[300])


def test_stats_equal_numpy_over_training_trials_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    raw = {t: _raw(t, n, 4, rng, invalid_every=5) for t, n in (("tr1", 700), ("tr2", 130_001), ("va1", 400))}
    raw["va1"].features["visual"][:] += 100.0  # a leak from val would shift the mean visibly
    stats = _stats_for(raw, ["tr1", "tr2"], tmp_path)
    both = np.concatenate([raw[t].features["visual"][raw[t].valid["visual"]] for t in ("tr1", "tr2")])
    np.testing.assert_allclose(stats.mean["visual"], both.astype(np.float64).mean(axis=0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(stats.std["visual"], both.astype(np.float64).std(axis=0), rtol=1e-10, atol=1e-10)
    assert stats.count["visual"] == both.shape[0]
    # cached under <cache>/stats/ by (shard keys, fold): a second call reads the file, a new fold does not
    files = list((tmp_path / "stats").glob("visual.*.npz"))
    assert len(files) == 1
    again = compute_stats(lambda t: pytest.fail("statistics were recomputed"), {"visual": 4}, ["tr1", "tr2"],
                          ["visual"], shard_keys={"visual": {t: f"key-{t}" for t in raw}}, fold="official",
                          cache_dir=tmp_path)
    np.testing.assert_array_equal(again.mean["visual"], stats.mean["visual"])
    other = _stats_for(raw, ["tr1", "tr2"], tmp_path)  # same inputs: same key
    assert other.keys == stats.keys
    compute_stats(lambda t: raw[t], {"visual": 4}, ["tr1", "tr2"], ["visual"],
                  shard_keys={"visual": {t: f"key-{t}" for t in raw}}, fold="6fold-1", cache_dir=tmp_path)
    assert len(list((tmp_path / "stats").glob("visual.*.npz"))) == 2


def test_running_stats_merges_chunks_like_numpy() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(1e3, 1e-2, size=(10_000, 3))  # large mean, tiny spread: naive sums would lose it
    r = RunningStats(3)
    for lo in range(0, len(x), 777):
        r.update(x[lo:lo + 777])
    np.testing.assert_allclose(r.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(r.std, x.std(axis=0), rtol=1e-8)


def test_sampler_is_a_permutation_reproducible_per_epoch() -> None:
    rng = np.random.default_rng(3)
    raw = {t: _raw(t, n, 4, rng) for t, n in (("a", 900), ("b", 1200), ("c", 50))}
    stats = _stats_for(raw, list(raw))
    ds = WindowDataset(list(raw), [900, 1200, 50], ["visual"], {"visual": "visual"}, stats, W, HOP,
                       with_labels=True, preloaded=raw)
    s = TrialBlockSampler(ds, seed=7, block=1)
    s.set_epoch(0)
    e0 = list(s)
    assert sorted(e0) == list(range(len(ds)))
    trials_in_order = [int(ds.index[i, 0]) for i in e0]
    changes = sum(1 for a, b in zip(trials_in_order, trials_in_order[1:]) if a != b)
    assert changes == 2  # block=1: each trial's windows are contiguous
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0


def test_train_config_rejects_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    assert train_config_from_dict({"window": 64, "hop": 32}).window == 64
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) for train: lerning_rate"):
        train_config_from_dict({"lerning_rate": 0.1})
    with pytest.raises(ConfigError, match="train.epochs must be an integer"):
        train_config_from_dict({"epochs": "ten"})
    with pytest.raises(ConfigError, match="hop must be between 1 and window"):
        train_config_from_dict({"window": 10, "hop": 20})
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"epochs": 3,\n  "lr": }\n}')
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert f"{cfg}:2:9:" in str(err.value)
    cfg.write_text(json.dumps({"train": {"batch_size": 4, "modalities": "visual,audio"}, "stages": {}}))
    tc, whole = load_config(cfg)
    assert isinstance(tc, TrainConfig) and tc.batch_size == 4 and tc.modalities == ["visual", "audio"]
    assert "stages" in whole


def test_inference_averages_every_window_covering_a_frame() -> None:
    """predict_frames == a hand-written loop over windows, frame by frame (window 32, hop 16)."""
    import torch

    from fusion.evaluate import predict_frames
    from fusion.models import build_model

    rng = np.random.default_rng(4)
    raw = {"a": _raw("a", 50, 4, rng), "b": _raw("b", 20, 4, rng), "c": _raw("c", 64, 4, rng)}
    stats = _stats_for(raw, list(raw))
    ds = WindowDataset(list(raw), [50, 20, 64], ["visual"], {"visual": "visual"}, stats, 32, 16,
                       with_labels=False, preloaded=raw)
    assert window_starts(50, 32, 16) == [0, 16, 18]  # frames 18..31 are covered three times
    torch.manual_seed(0)
    model = build_model("concat", {"visual": 5}, 32, {"tcn": {"visual": [4]}, "hidden": 8}).eval()
    got = predict_frames(model, ds, torch.device("cpu"), batch_size=2)
    for pos, t in enumerate(ds.trial_ids):
        n = ds.lengths[pos]
        total, count = np.zeros((n, 2)), np.zeros(n)
        for i in ds.windows_of(pos):
            item = ds[int(i)]
            with torch.no_grad():
                out = model({"visual": item["inputs"]["visual"][None]})[0].numpy()
            for f in range(32):
                if item["start"] + f < n:
                    total[item["start"] + f] += out[f]
                    count[item["start"] + f] += 1
        assert (count >= 1).all()
        np.testing.assert_allclose(got[t], total / count[:, None], rtol=1e-5, atol=1e-6)
    assert got["b"].shape == (20, 2)  # the padded short trial: only its real frames come back

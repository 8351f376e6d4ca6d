"""The VGGish embedding the seeds used: the last layer's output before any activation.

RJCMA's preprocessing comments torchvggish's final ReLU out, and ABAW2 reads the
TF-slim model's linear embedding, so affpipe's default must be able to go
negative; the `relu` setting keeps torchvggish's forward for old features.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models import vggish as vg
from pipeline.media.decode import probe_video
from pipeline.sources.manifest import Trial
from synthetic.media import tone, moving_frames, write_video
from pipeline.engine.stage import ShardData
from pipeline.stages.audio import AudioStage


def _checkpoint(path: Path) -> Path:
    """A random VGGish saved under torchvggish's parameter names (the layout of vggish-10086976.pth)."""
    torch.manual_seed(0)
    ours = vg.VGGish().state_dict()
    state = {f"{ck}.{p}": ours[f"{name}.{p}"] for ck, name in vg.CHECKPOINT_NAMES.items() for p in ("weight", "bias")}
    torch.save(state, path)
    return path


def _run(video: Path, **settings):
    p = probe_video(video, isolate=False)
    probe = ShardData(stage="probe", key="test", path=video, frame=np.arange(p.n_decoded), time=p.time,
                      features=None, valid=None, extras={}, attrs={"fps": p.fps, "n_decoded": p.n_decoded})
    stage = AudioStage(AudioStage.Settings(model="vggish", device="cpu", batch_size=8, **settings))
    return stage.run(Trial(trial=video.stem, video=video, split="train"), {"probe": probe})


def test_default_embedding_is_pre_activation_and_relu_is_its_positive_part(tmp_path):
    weights = _checkpoint(tmp_path / "vggish-random.pth")
    video = write_video(tmp_path / "voice.mkv", moving_frames(30), 25,
                        audio=tone(1.2, 16000, 220.0, 0.3) + tone(1.2, 16000, 1700.0, 0.1), audio_codec="pcm_s16le")
    linear = _run(video, weights=str(weights))
    relu = _run(video, weights=str(weights), embedding="relu")
    assert linear.attrs["embedding"] == "linear" and linear.attrs["postprocess"] == "none"
    assert relu.attrs["embedding"] == "relu"
    rows = linear.valid
    assert rows.sum() >= 5 and np.array_equal(rows, relu.valid)
    x = linear.features[rows]
    # The seeds' embedding takes negative values (a post-ReLU one never does) ...
    assert (x < 0).mean() > 0.1 and (relu.features >= 0).all()
    # ... and torchvggish's forward differs from it by exactly the final ReLU: relu = max(linear, 0).
    np.testing.assert_allclose(relu.features[rows], np.maximum(x, 0.0), rtol=1e-5, atol=1e-6)


def test_embedding_setting_is_checked_and_in_the_key():
    assert AudioStage.Settings().embedding == "linear"
    with pytest.raises(ValueError, match="audio.embedding must be one of linear, relu"):
        AudioStage.Settings(model="vggish", embedding="sigmoid")
    a = AudioStage(AudioStage.Settings(model="vggish")).key_settings()
    b = AudioStage(AudioStage.Settings(model="vggish", embedding="relu")).key_settings()
    assert a != b and a["embedding"] == "linear"
    assert AudioStage.version >= 2  # shards written with the post-ReLU default (version 1) are not reused

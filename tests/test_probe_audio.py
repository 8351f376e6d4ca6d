"""The probe and audio stages end to end on real decoded media (shared clips and videos written here)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models import vggish as vg
from pipeline.media.decode import probe_video, read_audio
from pipeline.sources.manifest import Trial
from pipeline.engine.resources import LOAD_COUNTS
from synthetic.media import beep_track, moving_frames, tone, write_video
from pipeline.engine.stage import ShardData, StageError
from pipeline.stages.audio import PATCH_PAD_ROWS, AudioStage, log_mel_rows, mfcc_rows
from pipeline.stages.probe import ProbeStage


def _trial(video: Path) -> Trial:
    return Trial(trial=video.stem, video=video, split="train")


def _probe(video: Path) -> dict[str, ShardData]:
    """The probe shard the audio stage reads (in-process probe: the isolation is tested in test_decode)."""
    p = probe_video(video, isolate=False)
    shard = ShardData(stage="probe", key="test", path=video, frame=np.arange(p.n_decoded), time=p.time,
                      features=None, valid=None, extras={}, attrs={"fps": p.fps, "n_decoded": p.n_decoded})
    return {"probe": shard}


def _audio(video: Path, upstream: dict[str, ShardData] | None = None, **settings):
    stage = AudioStage(AudioStage.Settings(**settings))
    return stage.run(_trial(video), upstream or _probe(video))


def test_probe_stage_output(shared_media):
    clip = shared_media / "grid" / "id2_vcd_swwp2s.mpg"
    out = ProbeStage().run(_trial(clip), {})
    assert out.features is None and out.valid is None
    assert out.time.shape == (75,) and out.time[0] == 0.0 and out.time[-1] == pytest.approx(2.96)
    assert out.attrs["n_decoded"] == out.attrs["n_container"] == 75
    assert out.attrs["fps"] == 25.0 and (out.attrs["width"], out.attrs["height"]) == (360, 288)
    assert out.attrs["has_audio"] is True and out.attrs["audio_sample_rate"] == 44100
    assert out.attrs["audio_start"] == pytest.approx(0.0, abs=1e-4)
    assert ProbeStage.inputs == () and ProbeStage.name == "probe"


def test_mfcc_anger_is_louder_than_sadness_and_reproducible(shared_media):
    ang = shared_media / "cremad" / "1001_DFA_ANG_XX.flv"
    sad = shared_media / "cremad" / "1001_DFA_SAD_XX.flv"
    up_ang = _probe(ang)
    a = _audio(ang, up_ang)
    s = _audio(sad)
    for out, n in ((a, 67), (s, 60)):
        assert out.features.shape == (n, 39) and out.features.dtype == np.float32
        assert out.valid.shape == (n,) and out.valid.mean() > 0.9
        assert np.isfinite(out.features).all()
        assert out.attrs["model"] == "mfcc" and out.attrs["dim"] == 39 and out.attrs["weights"] == "none"
    c0_ang = a.features[a.valid, 0].mean()
    c0_sad = s.features[s.valid, 0].mean()
    assert c0_ang - c0_sad > 2.0, (c0_ang, c0_sad)  # measured: -37.6 vs -44.8
    again = _audio(ang, up_ang)
    np.testing.assert_array_equal(again.features, a.features)
    np.testing.assert_array_equal(again.valid, a.valid)


def test_beep_lands_on_its_frames_with_audio_offset_and_variable_frame_rate(tmp_path):
    # Video frames at irregular times; the audio starts 0.3 s late and beeps 0.9 s into the track,
    # i.e. at video time 1.2 - 1.3 s. Everything else is digital silence (-> invalid).
    gaps = np.where(np.arange(59) % 2 == 0, 0.03, 0.05)
    times = np.concatenate([[0.0], np.cumsum(gaps)])
    audio = beep_track(2.0, 16000, [(0.9, 0.1)])
    path = write_video(tmp_path / "beep.mkv", moving_frames(60), 25, audio=audio,
                       audio_codec="pcm_s16le", audio_start=0.3, times=times)
    up = _probe(path)
    np.testing.assert_allclose(up["probe"].time, times, atol=1e-6)
    out = _audio(path, up)
    # frame i's 25 ms window, centred on its row, must overlap [1.2, 1.3)
    expected = np.flatnonzero((times + 0.0125 > 1.2) & (times - 0.0125 < 1.3))
    assert len(expected) >= 2
    np.testing.assert_array_equal(np.flatnonzero(out.valid), expected)
    assert out.attrs["audio_start"] == pytest.approx(0.3)
    assert (out.features[~out.valid] == 0).all()


def test_logmel_patches_are_centred_and_cover_the_window(tmp_path):
    sr = 16000
    audio = tone(2.0, sr, freq=1000.0, amp=0.3)
    path = write_video(tmp_path / "tone.mkv", moving_frames(50), 25, audio=audio, audio_codec="pcm_s16le")
    out = _audio(path, model="logmel")
    assert out.features.shape == (50, 6144) and out.features.dtype == np.float16
    # Every frame lies inside the 2 s of audio, so every frame has a patch, edges included:
    # beyond the track the patch sees silence (zero samples).
    assert out.valid.all()
    patch = out.features[0].astype(np.float32).reshape(96, 64)
    # Frame 0 is centred on sample 0: rows 0-46 of its patch (window 160k - 7840 .. + 400) lie wholly
    # before the track, row 49 starts on sample 0.
    np.testing.assert_allclose(patch[:47], np.log(vg.LOG_OFFSET), rtol=1e-3)
    assert (patch[49:].max(1) > np.log(vg.LOG_OFFSET) + 1).all()
    # 1 kHz sits in the mel band whose centre is nearest to it
    edges = np.linspace(1127 * np.log1p(125 / 700), 1127 * np.log1p(7500 / 700), 66)
    centres_hz = 700 * np.expm1(edges[1:-1] / 1127)
    assert np.argmax(patch[49:].mean(0)) == np.argmin(np.abs(centres_hz - 1000.0))
    middle = out.features[25].astype(np.float32).reshape(96, 64)
    assert np.argmax(middle.mean(0)) == np.argmin(np.abs(centres_hz - 1000.0))


def test_first_and_last_frame_of_every_shared_clip_have_audio(shared_media):
    # Version 1 required the whole window inside the samples: frame 0 was invalid in every clip.
    clips = sorted(shared_media.glob("cremad/*.flv")) + sorted(shared_media.glob("grid/*.mpg"))
    assert len(clips) == 13
    for clip in clips:
        up = _probe(clip)
        for model in ("mfcc", "logmel"):
            out = _audio(clip, up, model=model)
            assert out.valid[0] and out.valid[-1], (clip.name, model)
            assert out.features[0].any() and out.features[-1].any(), (clip.name, model)


def test_a_frame_in_the_last_half_hop_of_the_track_has_audio(tmp_path):
    # 16100 samples: the last frame (1.006 s, sample 16096) rounds to 10 ms row 101, one past the table.
    path = write_video(tmp_path / "end.mkv", moving_frames(3), 25, audio=tone(16100 / 16000),
                       audio_codec="pcm_s16le", times=[0.0, 0.5, 1.006])
    for model in ("mfcc", "logmel"):
        out = _audio(path, model=model)
        assert out.valid.tolist() == [True, True, True], model
        assert out.features.any(axis=1).all(), model


def test_blockwise_features_equal_whole_track():
    rng = np.random.default_rng(0)
    y = (0.1 * rng.standard_normal(16000 * 3)).astype(np.float32)
    # equal up to float rounding (FFT/matmul sizes differ); a misplaced block edge would be O(1) off
    np.testing.assert_allclose(mfcc_rows(y, 16000, block_rows=37), mfcc_rows(y, 16000), rtol=0, atol=1e-5)
    np.testing.assert_allclose(log_mel_rows(y, block_rows=41), log_mel_rows(y), rtol=0, atol=1e-5)


def test_missing_short_and_silent_audio_give_invalid_rows_not_errors(tmp_path):
    frames = moving_frames(25)
    mute = write_video(tmp_path / "mute.mp4", frames, 25)
    short = write_video(tmp_path / "short.mkv", frames, 25, audio=tone(0.01), audio_codec="pcm_s16le")
    silent = write_video(tmp_path / "silent.mkv", frames, 25, audio=np.zeros(16000, np.float32),
                         audio_codec="pcm_s16le")
    empty = write_video(tmp_path / "empty.mkv", frames, 25, audio=np.zeros(0, np.float32),
                        audio_codec="pcm_s16le")  # an audio stream without a single packet
    for path in (mute, empty, short, silent):
        up = _probe(path)
        for model in ("mfcc", "logmel"):
            out = _audio(path, up, model=model)
            assert out.features.shape == (25, 39 if model == "mfcc" else 6144), (path.name, model)
            # 10 ms of tone: only frame 0 (t = 0) has audio, its window padded past the track's end
            has = [0] if path == short else []
            assert np.flatnonzero(out.valid).tolist() == has, (path.name, model)
            assert not out.features[~out.valid].any() and out.features[out.valid].any() == bool(has)
            assert out.attrs["has_audio"] is (path not in (mute, empty))
            assert out.attrs["n_valid"] == len(has)


class _TorchVGGishLayout(torch.nn.Module):
    """The module layout `vggish-10086976.pth` was saved from (torchvggish's VGG), transcribed:
    its parameter names are the checkpoint's, and it flattens channels-last like the original."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        layers, cin = [], 1
        for v in (64, "M", 128, "M", 256, 256, "M", 512, 512, "M"):
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
                cin = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(nn.Linear(512 * 4 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096),
                                        nn.ReLU(), nn.Linear(4096, 128), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.transpose(torch.transpose(x, 1, 3), 1, 2).contiguous()
        return self.embeddings(x.view(x.size(0), -1))


def test_vggish_loads_a_torchvggish_checkpoint(tmp_path, monkeypatch):
    torch.manual_seed(0)
    reference = _TorchVGGishLayout().eval()
    weights = tmp_path / "vggish-test.pth"
    torch.save(reference.state_dict(), weights)  # a freshly initialised model in the checkpoint's format

    path = write_video(tmp_path / "speechlike.mkv", moving_frames(40), 25,
                       audio=tone(1.6, 16000, 300.0, 0.3) + tone(1.6, 16000, 1200.0, 0.1),
                       audio_codec="pcm_s16le")
    up = _probe(path)
    out = _audio(path, up, model="vggish", weights=str(weights), embedding="relu", batch_size=4, device="cpu")
    assert out.features.shape == (40, 128) and out.features.dtype == np.float32
    assert out.valid.sum() >= 10 and not out.features[~out.valid].any()
    assert out.attrs["weights"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert AudioStage(AudioStage.Settings(model="vggish")).dim() == 128

    # Each valid row is the reference network on that frame's centred 96x64 log-mel patch.
    assert out.valid[0] and out.valid[-1]
    table = log_mel_rows(read_audio(path).samples, pad_rows=PATCH_PAD_ROWS)  # zeros beyond the track
    rows = np.flatnonzero(out.valid)[[0, -1]]
    starts = np.rint(((up["probe"].time[rows] - out.attrs["audio_start"]) * 16000 - 7800) / 160).astype(int)
    starts += PATCH_PAD_ROWS
    with torch.inference_mode():
        ref = reference(torch.from_numpy(np.stack([table[s:s + 96] for s in starts]))[:, None]).numpy()
    assert ref.any()
    np.testing.assert_allclose(out.features[rows], ref, rtol=1e-4, atol=1e-5)

    # Loaded once per process; batch size does not change the numbers.
    again = _audio(path, up, model="vggish", weights=str(weights), embedding="relu", batch_size=16,
                   device="cpu")
    np.testing.assert_allclose(again.features, out.features, rtol=1e-5, atol=1e-6)
    loads = [n for key, n in LOAD_COUNTS.items() if key[0] == "audio-vggish" and key[1] == str(weights.resolve())]
    assert loads == [1]

    # The weights file also enters the cache key through input_files.
    stage = AudioStage(AudioStage.Settings(model="vggish", weights=str(weights)))
    assert weights in stage.input_files(_trial(path))

    # Environment variable instead of the setting.
    monkeypatch.setenv(vg.WEIGHTS_ENV, str(weights))
    assert vg.resolve_weights(None) == weights


def test_vggish_missing_or_wrong_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(vg.WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("AFFPIPE_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    path = write_video(tmp_path / "a.mkv", moving_frames(10), 25, audio=tone(0.4), audio_codec="pcm_s16le")
    up = _probe(path)
    with pytest.raises(StageError) as err:
        _audio(path, up, model="vggish")
    msg = str(err.value)
    assert err.value.kind == "missing-weights" and "\n" not in msg
    assert vg.WEIGHTS_URL in msg and vg.WEIGHTS_ENV in msg and "'weights'" in msg
    with pytest.raises(StageError) as err:
        _audio(path, up, model="vggish", weights=str(tmp_path / "absent.pth"))
    assert err.value.kind == "missing-weights" and str(tmp_path / "absent.pth") in str(err.value)

    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(3)}, wrong)
    with pytest.raises(StageError) as err:
        _audio(path, up, model="vggish", weights=str(wrong))
    assert err.value.kind == "bad-weights" and "features.0.weight" in str(err.value)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="mfcc, logmel, vggish"):
        AudioStage.Settings(model="wav2vec")
    with pytest.raises(ValueError, match="16000"):
        AudioStage.Settings(model="logmel", sample_rate=22050)
    assert AudioStage().dim() == 39 and AudioStage(AudioStage.Settings(model="logmel")).dim() == 6144
    keyed = AudioStage(AudioStage.Settings(batch_size=8, device="cpu")).key_settings()
    assert "batch_size" not in keyed and "device" not in keyed and keyed["model"] == "mfcc"

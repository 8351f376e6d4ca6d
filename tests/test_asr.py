"""The `asr` stage: timed words from real audio, empty transcripts for silence/music/no audio,
chunk stitching, the faster-whisper refusal and conversion, export, and text filled from asr."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from pipeline import extract
from pipeline.asr.backends import whisper_words
from pipeline.asr.vad import Window, stitch
from pipeline.asr.words import AsrWord, to_json, transcript_segments, words_from_extras
from pipeline.media.decode import probe_video, read_audio
from pipeline.sources.manifest import Trial
from synthetic.media import chord_music, moving_frames, write_video
from pipeline.engine.shards import read_shard, verify_shard
from pipeline.stages.asr import AsrStage
from pipeline.engine.store import CacheStore
from pipeline.sources.transcripts import read_transcript

SR = 16000


def asr_shard(cache: Path, trial: str):
    (path,) = (cache / "shards" / "asr").glob(f"{trial}.*.h5")
    return read_shard(path)


# -- stitching ----------------------------------------------------------------------------------

def test_stitch_keeps_a_word_both_windows_place_on_the_other_side_of_the_split():
    """Window 0 hears 'jacket' mostly after the split, window 1 mostly before it: kept once, not lost."""
    w0 = Window(0, 30000, own_hi=1.36, region=0)
    w1 = Window(5760, 35000, own_hi=np.inf, region=1)
    first = [AsrWord(0.38, 0.65, "don't", 0.9), AsrWord(0.65, 1.09, "forget", 0.9), AsrWord(1.09, 1.75, "jacket", 0.5)]
    second = [AsrWord(0.40, 0.62, "don't", 0.9), AsrWord(0.62, 0.95, "forget", 0.9), AsrWord(0.95, 1.30, "jacket", 0.6),
              AsrWord(1.30, 1.60, "now", 0.7)]
    kept0, frontier = stitch(w0, first, -np.inf)
    kept1, _ = stitch(w1, second, frontier)
    assert [w.text for w in kept0 + kept1] == ["don't", "forget", "jacket", "now"]
    assert [w.segment for w in kept0 + kept1] == [0, 0, 1, 1]


def test_speech_split_mid_word_stitches_without_loss_or_duplicates(tmp_path, shared_media):
    """Two CREMA-D utterances in one video, decoded in 1 s regions: every split falls inside speech."""
    clips = sorted((shared_media / "cremad").glob("*.flv"))[:2]
    audio = np.concatenate([np.concatenate([read_audio(c).samples, np.zeros(SR // 4, np.float32)]) for c in clips])
    n = int(len(audio) / SR * 10)
    video = write_video(tmp_path / "two.mkv", moving_frames(n), 10, audio=audio, audio_codec="pcm_s16le")
    stage = AsrStage(AsrStage.Settings(max_chunk_s=1.0, overlap_s=0.5))
    out = stage.run(Trial("two", video, "train"), {})
    words = words_from_extras(out.extras)
    regions = out.extras["speech_regions"]
    assert len(regions) >= 3 and np.all(np.diff(regions, axis=1) <= 1.0 + 1e-6)
    # in time order, no word twice: each word's midpoint is past the end of the one before it
    assert all((b.start + b.end) / 2 >= a.end and b.start >= a.start for a, b in zip(words, words[1:])), words
    splits = [r[0] for prev, r in zip(regions, regions[1:]) if abs(r[0] - prev[1]) < 1e-3]  # hard splits
    assert splits, regions
    texts = [w.text for w in words]
    assert texts.count("jacket") == 2, texts  # each clip's last word, one of them cut by a hard split
    assert texts.count("forget") >= 1


# -- empty transcripts --------------------------------------------------------------------------

def test_silence_music_and_no_audio_give_empty_valid_transcripts(tmp_path):
    frames = moving_frames(40)
    quiet = write_video(tmp_path / "quiet.mkv", frames, 5, audio=np.concatenate([np.zeros(2 * SR, np.float32),
                                                                                 chord_music(6.0)]),
                        audio_codec="pcm_s16le")
    mute = write_video(tmp_path / "mute.mp4", frames, 5)  # no audio track at all
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\nquiet,{quiet},train\nmute,{mute},val\n")
    cache = tmp_path / "cache"
    summary = extract(manifest, cache=cache, stages=["asr"], scheduler="sync", progress=False)
    assert summary.ok, summary.failures
    for trial, has_audio in (("quiet", True), ("mute", False)):
        shard = asr_shard(cache, trial)
        assert verify_shard(shard.path) == []
        assert shard.attrs["has_audio"] is has_audio and shard.attrs["n_words"] == 0
        assert words_from_extras(shard.extras) == [] and shard.extras["speech_regions"].shape == (0, 2)
    out = tmp_path / "export"
    res = CliRunner().invoke(cli.main, ["transcripts", "export", "-m", str(manifest), "-c", str(cache),
                                        "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2 without recognised words" in res.output
    assert read_transcript(out / "quiet.json") == [] and read_transcript(out / "mute.json") == []
    res = CliRunner().invoke(cli.main, ["transcripts", "export", "-m", str(manifest), "-c", str(cache),
                                        "--out", str(tmp_path / "srt"), "--format", "srt"])
    assert res.exit_code == 0 and not (tmp_path / "srt" / "quiet.srt").exists()  # SRT cannot say "no speech"


# -- faster-whisper -----------------------------------------------------------------------------

def test_missing_whisper_model_is_missing_weights_not_a_fallback(tmp_path, monkeypatch):
    video = write_video(tmp_path / "v.mp4", moving_frames(10), 5)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"trial,video,split\nv,{video},train\n")
    monkeypatch.delenv("AFFPIPE_WHISPER_MODEL", raising=False)
    for model, needle in (("", "none is set"), (str(tmp_path / "nowhere"), f"{tmp_path / 'nowhere'}: faster-whisper "
                                                                             "model folder does not exist")):
        config = {"stages": {"asr": {"backend": "faster-whisper", "model": model}}}
        cache = tmp_path / f"cache{len(model)}"
        summary = extract(manifest, cache=cache, config=config, stages=["text"], scheduler="sync", progress=False)
        (failure,) = summary.failures
        assert failure["stage"] == "asr" and failure["kind"] == "missing-weights"
        assert needle in failure["message"] and "ct2-transformers-converter" in failure["message"]
        assert summary.counts["text"]["blocked"] == 1  # never silently transcribed another way
        assert not list((cache / "shards").glob("asr/*.h5"))
        assert [e.kind for e in CacheStore(cache).ledger()] == ["missing-weights"]
    (tmp_path / "folder").mkdir()
    monkeypatch.setenv("AFFPIPE_WHISPER_MODEL", str(tmp_path / "folder"))
    summary = extract(manifest, cache=tmp_path / "c3", config={"stages": {"asr": {"backend": "faster-whisper"}}},
                      stages=["asr"], scheduler="sync", progress=False)
    assert "has no model.bin" in summary.failures[0]["message"]


def test_whisper_segments_convert_to_timed_words_and_round_trip_through_json(tmp_path):
    """faster-whisper yields segments whose .words carry .start/.end/.word/.probability (leading space)."""
    w = SimpleNamespace
    segments = [w(words=[w(start=0.0, end=0.32, word=" Don't", probability=0.91),
                         w(start=0.32, end=0.7, word=" forget", probability=0.88)]),
                w(words=[w(start=1.1, end=1.2, word=" ", probability=0.2),
                         w(start=1.2, end=1.6, word=" jacket.", probability=0.75)]),
                w(words=None)]
    words = whisper_words(segments, offset=10.0)
    assert [(x.text, x.start, x.end, x.confidence) for x in words] == [
        ("Don't", 10.0, 10.32, 0.91), ("forget", 10.32, 10.7, 0.88), ("jacket.", 11.2, 11.6, 0.75)]
    regioned = [AsrWord(x.start, x.end, x.text, x.confidence, i // 2) for i, x in enumerate(words)]
    path = tmp_path / "t.json"
    path.write_text(to_json(regioned))
    assert read_transcript(path) == transcript_segments(regioned)
    assert [s.text for s in read_transcript(path)] == ["Don't forget", "jacket."]
    assert json.loads(path.read_text())["segments"][0]["words"][1]["probability"] == 0.88


# -- text from asr, then training ---------------------------------------------------------------

@pytest.fixture(scope="module")
def asr_cache(shared_media: Path, tmp_path_factory):
    """Four shared clips, none with a transcript except swwp2s (its GRID alignment: the manifest wins)."""
    d = tmp_path_factory.mktemp("asr")
    clips = (sorted((shared_media / "cremad").glob("*.flv"))[:2]
             + [shared_media / "grid" / "bbaf2n.mpg", shared_media / "grid" / "id2_vcd_swwp2s.mpg"])
    rows = ["trial,video,split,annotation,transcript"]
    rng = np.random.default_rng(0)
    for i, clip in enumerate(clips):
        n = probe_video(clip).n_decoded
        va = np.clip(np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0), -1, 1)
        (d / f"{clip.stem}.txt").write_text("valence,arousal\n" + "".join(f"{v:.3f},{a:.3f}\n" for v, a in va))
        transcript = shared_media / "grid" / "swwp2s.align" if "swwp2s" in clip.stem else ""
        rows.append(f"{clip.stem},{clip},{'val' if i == 1 else 'train'},{clip.stem}.txt,{transcript}")
    manifest = d / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    cache = d / "cache"
    summary = extract(manifest, cache=cache, scheduler="sync", progress=False)
    assert summary.ok, summary.failures
    return manifest, cache, clips


def text_shard(cache: Path, trial: str):
    shards = [read_shard(p) for p in (cache / "shards" / "text").glob(f"{trial}.*.h5")]
    return max(shards, key=lambda s: s.attrs["created"])


def test_extract_fills_text_from_asr_when_the_manifest_has_no_transcript(asr_cache):
    manifest, cache, clips = asr_cache
    for clip in clips:
        text = text_shard(cache, clip.stem)
        asr = asr_shard(cache, clip.stem)
        words = words_from_extras(asr.extras)
        if "swwp2s" in clip.stem:  # manifest transcript wins: recognition is not even run
            assert not words and asr.attrs["skipped"] == "the manifest has a transcript"
            assert text.attrs["transcript"].endswith("swwp2s.align")
            assert list(text.extras["segment_text"]) == "set white with p two soon".split()
        else:
            assert words, clip.stem  # every clip has speech
            assert text.attrs["transcript"].startswith("asr pocketsphinx ")
            assert list(text.extras["segment_text"]) == [s.text for s in transcript_segments(words)]
            assert text.valid.any()
            cremad = clip.parent.name == "cremad"
            assert not cremad or "jacket" in " ".join(w.text for w in words)


def test_exported_transcripts_read_back_as_the_same_text(asr_cache, tmp_path):
    """Export JSON + a filled manifest; extracting with it embeds exactly what asr gave the text stage."""
    manifest, cache, clips = asr_cache
    out, filled = tmp_path / "tx", tmp_path / "filled.csv"
    res = CliRunner().invoke(cli.main, ["transcripts", "export", "-m", str(manifest), "-c", str(cache),
                                        "--out", str(out), "--manifest-out", str(filled)])
    assert res.exit_code == 0, res.output
    assert sorted(p.stem for p in out.glob("*.json")) == sorted(c.stem for c in clips if "swwp2s" not in c.stem)
    assert "1 skipped (their manifest transcript is used)" in res.output
    res = CliRunner().invoke(cli.main, ["transcripts", "export", "-m", str(manifest), "-c", str(cache),
                                        "--out", str(tmp_path / "srt"), "--format", "srt"])
    assert res.exit_code == 0 and len(list((tmp_path / "srt").glob("*.srt"))) == 3
    summary = extract(filled, cache=cache, stages=["text"], scheduler="sync", progress=False)
    assert summary.ok and summary.counts["text"]["done"] == 3  # swwp2s kept its own transcript: cached
    for clip in clips:
        if "swwp2s" in clip.stem:
            continue
        fresh = text_shard(cache, clip.stem)
        assert fresh.attrs["transcript"] == str((out / f"{clip.stem}.json").resolve())
        by_asr = [read_shard(p) for p in (cache / "shards" / "text").glob(f"{clip.stem}.*.h5")
                  if read_shard(p).attrs["transcript"].startswith("asr ")][0]
        assert np.array_equal(fresh.extras["segment_embeddings"], by_asr.extras["segment_embeddings"])
        assert np.array_equal(fresh.extras["segment_index"], by_asr.extras["segment_index"])


def test_export_reports_trials_without_an_asr_shard(asr_cache, tmp_path):
    manifest, cache, _ = asr_cache
    res = CliRunner().invoke(cli.main, ["transcripts", "export", "-m", str(manifest), "-c", str(tmp_path / "empty"),
                                        "--out", str(tmp_path / "tx")])
    assert res.exit_code == 1 and "4 trial(s) have no asr shard" in res.output


def test_train_on_text_from_asr(asr_cache, tmp_path):
    manifest, cache, _ = asr_cache
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"train": {"window": 32, "hop": 16, "batch_size": 4, "epochs": 1, "seed": 1,
                                            "model": {"tcn": {"default": [8]}}}}))
    run = tmp_path / "run"
    res = CliRunner().invoke(cli.main, ["train", "--manifest", str(manifest), "--cache", str(cache), "--fusion",
                                        "rjcma", "--modalities", "visual,audio,text", "--out", str(run),
                                        "--config", str(config)])
    assert res.exit_code == 0, res.output
    recorded = json.loads((run / "config.json").read_text())
    assert set(recorded["shard_keys"]) >= {"visual", "audio", "text"}
    assert (run / "best.pt").is_file()


def test_windows_widen_by_the_overlap_only_where_speech_was_split():
    from pipeline.asr.vad import EDGE_CONTEXT_S, decode_windows

    regions = np.array([[16000, 32000], [32000, 40000], [80000, 96000]])  # 1-2 s | 2-2.5 s, 5-6 s
    w = decode_windows(regions, 112000, overlap_s=1.0)
    edge = int(EDGE_CONTEXT_S * SR)
    assert [(x.a, x.b) for x in w] == [(16000 - edge, 32000 + SR), (32000 - SR, 40000 + edge),
                                       (80000 - edge, 96000 + edge)]
    assert [x.own_hi for x in w] == [2.0, 3.75, np.inf]

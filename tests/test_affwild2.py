"""Aff-Wild2 manifest builder and its CLI, on fake trees written in the documented release layout.

The builder matches files by name and reads only the first lines of annotation
files; it never decodes a video. So the fake videos are small placeholder
files: what is under test is the name matching, which does not look inside them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.sources.affwild2 import AffWild2Error, build_affwild2_manifest, format_report, read_test_list
from pipeline.sources.manifest import read_manifest

VA_LINES = "valence,arousal\n0.1,0.2\n-5,-5\n0.3,-0.4\n"
TEST_LIST = "Valence_Arousal_Estimation_Challenge_test_set_release.txt"


def touch(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def video(path: Path) -> Path:
    return touch(path, "not decoded by the manifest builder")


def abaw2022_tree(root: Path) -> Path:
    """A small ABAW 2022+ style release: three batch folders, annotations two levels down, aligned faces."""
    video(root / "batch1" / "1-30-1280x720.mp4")
    video(root / "batch1" / "105.mp4")
    video(root / "batch1" / "video10_1.avi")
    video(root / "batch2" / "122-60-1920x1080-5.mp4")
    video(root / "batch2" / "112.avi")
    video(root / "new_vids" / "video59.mp4")  # two subjects: video59_left / video59_right
    video(root / "new_vids" / "200.MP4")  # test video, upper-case extension
    ann = root / "6th ABAW Annotations" / "VA_Estimation_Challenge"
    for name in ("1-30-1280x720", "105", "video59_left", "video59_right", "999-no-video"):
        touch(ann / "Train_Set" / f"{name}.txt", VA_LINES)
    for name in ("122-60-1920x1080-5", "112"):
        touch(ann / "Validation_Set" / f"{name}.txt", VA_LINES)
    # Another track's folder in the same release: must not be picked up for VA.
    touch(root / "6th ABAW Annotations" / "EXPR_Recognition_Challenge" / "Train_Set" / "video10_1.txt",
          "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other\n0\n")
    for trial in ("1-30-1280x720", "video59_left", "200"):
        touch(root / "cropped_aligned" / trial / "00001.jpg", "jpg")
    touch(root / TEST_LIST, "video10_1\n200\nmissing_test\n")
    return root


def rows(manifest: Path) -> dict:
    return {t.trial: t for t in read_manifest(manifest)}


# --- library --------------------------------------------------------------------------------


def test_abaw2022_layout(tmp_path):
    root = abaw2022_tree(tmp_path / "affwild2")
    out = tmp_path / "manifests" / "affwild2.csv"
    report = build_affwild2_manifest(root, out, test_list=root / TEST_LIST)

    got = rows(out)
    assert report.trials == list(got.values())
    assert set(got) == {"1-30-1280x720", "105", "video59_left", "video59_right", "122-60-1920x1080-5", "112",
                        "video10_1", "200"}
    assert report.written == {"train": 4, "val": 2, "test": 2}
    # train first, then val, then test; each sorted by name
    assert [t.trial for t in report.trials] == ["1-30-1280x720", "105", "video59_left", "video59_right",
                                               "112", "122-60-1920x1080-5", "200", "video10_1"]
    ann = root / "6th ABAW Annotations" / "VA_Estimation_Challenge"
    t = got["1-30-1280x720"]
    assert (t.video, t.split, t.annotation, t.subject, t.fold) == (
        root / "batch1" / "1-30-1280x720.mp4", "train", ann / "Train_Set" / "1-30-1280x720.txt", "largest", None)
    assert t.aligned_faces == root / "cropped_aligned" / "1-30-1280x720"
    assert got["105"].aligned_faces is None
    left, right = got["video59_left"], got["video59_right"]
    assert left.video == right.video == root / "new_vids" / "video59.mp4"
    assert (left.subject, right.subject) == ("left", "right")
    assert left.aligned_faces == root / "cropped_aligned" / "video59_left" and right.aligned_faces is None
    assert got["112"].video.suffix == ".avi" and got["112"].split == "val"
    assert got["112"].annotation == ann / "Validation_Set" / "112.txt"
    test = got["200"]
    assert (test.split, test.annotation, test.video.name) == ("test", None, "200.MP4")
    assert test.aligned_faces == root / "cropped_aligned" / "200"
    assert got["video10_1"].annotation is None  # the EXPR file with that name was not used

    assert report.unmatched_annotations == [ann / "Train_Set" / "999-no-video.txt"]
    assert report.test_not_found == ["missing_test"]
    assert report.missing_video == ["999-no-video", "missing_test"]
    assert report.ambiguous_videos == {} and report.bad_annotations == [] and report.unused_videos == []
    assert report.annotation_dirs == [ann / "Train_Set", ann / "Validation_Set"]
    assert report.n_videos == 7


def test_paths_are_relative_when_the_manifest_sits_in_the_tree(tmp_path):
    root = abaw2022_tree(tmp_path / "affwild2")
    out = root / "affwild2.csv"
    build_affwild2_manifest(root, out)
    text = out.read_text()
    assert "\n105,batch1/105.mp4,train,6th ABAW Annotations/VA_Estimation_Challenge/Train_Set/105.txt," in text
    assert str(tmp_path) not in text
    assert rows(out)["105"].video == (root / "batch1" / "105.mp4").resolve()
    # and absolute when the data lies outside the manifest's folder
    out2 = tmp_path / "manifests" / "m.csv"
    build_affwild2_manifest(root, out2)
    assert f"105,{root}/batch1/105.mp4,train," in out2.read_text()


def test_abaw2020_layout_with_main_trials(tmp_path):
    root = tmp_path / "AffWild2_2020"
    video(root / "videos" / "batch1" / "5-60-1920x1080-3.mp4")
    video(root / "videos" / "batch2" / "video2.avi")
    video(root / "videos" / "batch2" / "46-30-484x360.mp4")
    sets = root / "annotations" / "VA_Set"
    touch(sets / "Train_Set" / "5-60-1920x1080-3.txt", VA_LINES)
    touch(sets / "Train_Set" / "video2_main.txt", VA_LINES)
    touch(sets / "Validation_Set" / "46-30-484x360_right.txt", VA_LINES)
    touch(root / "annotations" / "EXPR_Set" / "Train_Set" / "video2_main.txt", "Neutral,Anger\n0\n")
    out = tmp_path / "m.csv"
    report = build_affwild2_manifest(root, out)
    got = rows(out)
    assert report.written == {"train": 2, "val": 1, "test": 0}
    assert got["video2_main"].subject == "largest"
    assert got["video2_main"].video == root / "videos" / "batch2" / "video2.avi"
    assert got["video2_main"].annotation == sets / "Train_Set" / "video2_main.txt"
    assert got["46-30-484x360_right"].subject == "right" and got["46-30-484x360_right"].split == "val"
    assert report.annotation_dirs == [sets / "Train_Set", sets / "Validation_Set"]


def test_other_tracks_use_their_own_folders(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    report = build_affwild2_manifest(root, tmp_path / "m.csv", track="expr")
    assert [t.trial for t in report.trials] == ["video10_1"]
    assert report.trials[0].annotation.parent.parent.name == "EXPR_Recognition_Challenge"
    with pytest.raises(AffWild2Error, match="unknown track 'XYZ'"):
        build_affwild2_manifest(root, tmp_path / "m.csv", track="XYZ")


def test_same_stem_twice_is_ambiguous_and_left_out(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    video(root / "batch2" / "105.avi")
    video(root / "backup" / "video59.mp4")
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    assert report.ambiguous_videos == {
        "105": [root / "batch1" / "105.mp4", root / "batch2" / "105.avi"],
        "video59": [root / "backup" / "video59.mp4", root / "new_vids" / "video59.mp4"],
    }
    assert report.ambiguous_trials == ["105", "video59_left", "video59_right"]
    assert not {"105", "video59_left", "video59_right"} & set(rows(tmp_path / "m.csv"))
    assert report.missing_video == ["999-no-video"]  # ambiguous is not "missing"


def test_exact_video_name_wins_over_the_side_suffix(tmp_path):
    root = tmp_path / "r"
    video(root / "v" / "7_left.mp4")
    video(root / "v" / "7.mp4")
    touch(root / "VA_Estimation_Challenge" / "Train_Set" / "7_left.txt", VA_LINES)
    touch(root / "VA_Estimation_Challenge" / "Train_Set" / "7_right.txt", VA_LINES)
    got = rows(build_affwild2_manifest(root, tmp_path / "m.csv").out)
    assert got["7_left"].video.name == "7_left.mp4" and got["7_left"].subject == "left"
    assert got["7_right"].video.name == "7.mp4" and got["7_right"].subject == "right"


def test_annotation_folders_are_found_at_any_depth(tmp_path):
    root = tmp_path / "r"
    video(root / "a" / "b" / "c" / "d" / "1.mp4")
    touch(root / "x" / "y" / "z" / "VA_Estimation_Challenge" / "Validation_Set" / "1.txt", VA_LINES)
    (t,) = build_affwild2_manifest(root, tmp_path / "m.csv").trials
    assert (t.trial, t.split) == ("1", "val")


def test_bad_annotation_files_are_reported_and_left_out(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    train = root / "6th ABAW Annotations" / "VA_Estimation_Challenge" / "Train_Set"
    touch(train / "105.txt", "Neutral,Anger,Disgust\n0\n")  # expression file in the VA folder
    touch(train / "1-30-1280x720.txt", "")
    touch(train / "video59_left.txt", "valence,arousal\n")
    touch(train / "video59_right.txt", "\ufeffValence,Arousal\r\n0.1,0.2\r\n")  # BOM/CRLF/case are fine
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    reasons = {p.name: why for p, why in report.bad_annotations}
    assert set(reasons) == {"105.txt", "1-30-1280x720.txt", "video59_left.txt"}
    assert "expected a header starting with 'valence'" in reasons["105.txt"]
    assert reasons["1-30-1280x720.txt"] == "empty file"
    assert reasons["video59_left.txt"] == "header but no frame lines"
    assert "video59_right" in rows(tmp_path / "m.csv")
    assert report.written["train"] == 1


def test_both_annotation_generations_newest_wins(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    old = touch(root / "annotations" / "VA_Set" / "Train_Set" / "105.txt", VA_LINES)
    touch(root / "annotations" / "VA_Set" / "Validation_Set" / "1-30-1280x720.txt", VA_LINES)
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    got = rows(tmp_path / "m.csv")
    new = root / "6th ABAW Annotations" / "VA_Estimation_Challenge" / "Train_Set"
    assert got["105"].annotation == new / "105.txt"
    assert got["1-30-1280x720"].split == "train"  # the 2022+ split, not the older one
    assert report.duplicate_annotations["105"] == [new / "105.txt", old]


def test_trial_in_train_and_validation_of_one_generation_is_left_out(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    touch(root / "6th ABAW Annotations" / "VA_Estimation_Challenge" / "Validation_Set" / "105.txt", VA_LINES)
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    assert "105" not in rows(tmp_path / "m.csv")
    assert [(p.name, why) for p, why in report.bad_annotations] == [
        ("105.txt", "trial is in both Train_Set and Validation_Set")]


def test_test_names_never_carry_annotations(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    tl = touch(tmp_path / "tl.txt", "105\nvideo59_right\n")
    report = build_affwild2_manifest(root, tmp_path / "m.csv", test_list=tl)
    got = rows(tmp_path / "m.csv")
    assert (got["105"].split, got["105"].annotation) == ("test", None)
    assert (got["video59_right"].split, got["video59_right"].subject) == ("test", "right")
    assert got["video59_left"].split == "train"
    assert report.test_with_annotation == ["105", "video59_right"]


def test_without_test_list_unused_videos_are_reported(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    assert report.written == {"train": 4, "val": 2, "test": 0}
    assert report.unused_videos == [root / "batch1" / "video10_1.avi", root / "new_vids" / "200.MP4"]


def test_aligned_faces_and_image_folders_are_not_searched_for_videos(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    video(root / "cropped_aligned" / "105" / "999-no-video.mp4")
    video(root / "cropped" / "105" / "999-no-video.avi")
    video(root / ".trash" / "999-no-video.mp4")
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    assert report.missing_video == ["999-no-video"]


def test_two_aligned_folders_for_one_trial_leave_the_column_empty(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    touch(root / "extra" / "cropped_aligned" / "1-30-1280x720" / "00001.jpg")
    report = build_affwild2_manifest(root, tmp_path / "m.csv")
    assert rows(tmp_path / "m.csv")["1-30-1280x720"].aligned_faces is None
    assert list(report.ambiguous_aligned) == ["1-30-1280x720"]


def test_symlinked_batches_are_followed_and_cycles_do_not_loop(tmp_path):
    data = tmp_path / "disk2"
    video(data / "105.mp4")
    root = tmp_path / "r"
    touch(root / "VA_Estimation_Challenge" / "Train_Set" / "105.txt", VA_LINES)
    (root / "batch1").symlink_to(data, target_is_directory=True)
    (data / "loop").symlink_to(root, target_is_directory=True)
    (t,) = build_affwild2_manifest(root, tmp_path / "m.csv").trials
    assert t.video == root / "batch1" / "105.mp4"


# --- test lists -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "video10_1\n200\n",
    "video10_1\r\n200\r\n\r\n",
    "\ufeffname\nvideo10_1\n200\n",
    "Names of videos\nvideo10_1\n200\n",
    "video,fps\nvideo10_1.avi,30\n200.mp4,30\n",
    "image_location,valence,arousal\nvideo10_1/00001.jpg,,\nvideo10_1/00002.jpg,,\n200/00001.jpg,,\n",
    "# comment\n\nvideo10_1\nvideo10_1\n  200  \n",
], ids=["plain", "crlf", "bom-header", "text-header", "csv", "submission-template", "comments-dupes"])
def test_test_list_formats(tmp_path, text):
    assert read_test_list(touch(tmp_path / "t.txt", text)) == ["video10_1", "200"]


def test_test_list_errors(tmp_path):
    with pytest.raises(AffWild2Error, match="test list not found"):
        read_test_list(tmp_path / "nope.txt")
    with pytest.raises(AffWild2Error, match="no trial names"):
        read_test_list(touch(tmp_path / "e.txt", "name\n\n"))
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(AffWild2Error, match="not UTF-8"):
        read_test_list(bad)


# --- failures -------------------------------------------------------------------------------


def test_missing_root(tmp_path):
    with pytest.raises(AffWild2Error, match="Aff-Wild2 root folder not found"):
        build_affwild2_manifest(tmp_path / "nope", tmp_path / "m.csv")


def test_nothing_matched_writes_nothing(tmp_path):
    root = tmp_path / "r"
    video(root / "batch1" / "1.mp4")
    touch(root / "VA_Estimation_Challenge" / "Train_Set" / "2.txt", VA_LINES)
    with pytest.raises(AffWild2Error, match=r"no trial matched a video \(1 VA annotation files in 1 .*1 videos"):
        build_affwild2_manifest(root, tmp_path / "m.csv")
    assert not (tmp_path / "m.csv").exists()


def test_only_test_trials_is_enough(tmp_path):
    root = tmp_path / "r"
    video(root / "batch1" / "1.mp4")
    report = build_affwild2_manifest(root, tmp_path / "m.csv", test_list=touch(tmp_path / "t.txt", "1\n"))
    assert report.written == {"train": 0, "val": 0, "test": 1} and report.annotation_dirs == []


def test_format_report_truncates_long_lists(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    for i in range(25):
        touch(root / "VA_Set" / "Train_Set" / f"{1000 + i}.txt", VA_LINES)
    text = format_report(build_affwild2_manifest(root, tmp_path / "m.csv"), limit=10)
    lines = text.splitlines()
    assert lines[0].startswith("wrote 6 trials to ") and "(train 4, val 2, test 0;" in lines[0]
    (unmatched,) = [ln for ln in lines if ln.startswith("annotation files with no video")]
    assert unmatched.startswith("annotation files with no video (26): 1000.txt, 1001.txt")
    assert unmatched.endswith(", ... (16 more)")


# --- CLI ------------------------------------------------------------------------------------


def test_cli_writes_manifest_and_prints_report(tmp_path):
    root = abaw2022_tree(tmp_path / "affwild2")
    out = tmp_path / "manifests" / "affwild2.csv"
    result = CliRunner().invoke(main, ["manifest", "affwild2", "--root", str(root), "--out", str(out),
                                       "--test-list", str(root / TEST_LIST),
                                       "--track", "VA"])
    assert result.exit_code == 0, result.output
    assert len(read_manifest(out)) == 8
    assert f"wrote 8 trials to {out} (train 4, val 2, test 2;" in result.output
    assert "annotation files with no video (1): 999-no-video.txt" in result.output
    assert "test names with no video (1): missing_test" in result.output
    assert "hint:" not in result.output


def test_cli_hints_at_test_list_when_videos_are_unused(tmp_path):
    root = abaw2022_tree(tmp_path / "affwild2")
    result = CliRunner().invoke(main, ["manifest", "affwild2", "--root", str(root), "--out", str(tmp_path / "m.csv")])
    assert result.exit_code == 0, result.output
    assert "videos no trial refers to (2): video10_1.avi, 200.MP4" in result.output
    assert "--test-list" in result.output


@pytest.mark.parametrize("case", ["missing-root", "nothing-matched", "missing-test-list"])
def test_cli_failures_are_one_line(tmp_path, case):
    root = tmp_path / "r"
    video(root / "batch1" / "1.mp4")
    args = ["manifest", "affwild2", "--root", str(root), "--out", str(tmp_path / "m.csv")]
    if case == "missing-root":
        args[3] = str(tmp_path / "nope")
    if case == "missing-test-list":
        args += ["--test-list", str(tmp_path / "nope.txt")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    expected = {"missing-root": "root folder not found", "nothing-matched": "no trial matched a video",
                "missing-test-list": "test list not found"}[case]
    assert expected in lines[0]
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root reads folders whatever their permissions")
def test_unreadable_folders_are_reported(tmp_path):
    root = abaw2022_tree(tmp_path / "r")
    (root / "batch2").chmod(0)
    try:
        report = build_affwild2_manifest(root, tmp_path / "m.csv")
    finally:
        (root / "batch2").chmod(0o755)
    assert report.unreadable == [root / "batch2"]
    assert report.missing_video == ["112", "122-60-1920x1080-5", "999-no-video"]
    assert "folders that could not be read (1): " in format_report(report)

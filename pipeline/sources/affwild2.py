"""Build a manifest from an Aff-Wild2 / ABAW release tree (layout: shared/docs/affwild2.md).

Nobody can ship or download Aff-Wild2, so this module is written against the
documented layout and tolerant of how releases differ: annotation folders of
either generation at any depth, videos in any folder as .mp4 or .avi, trial
names that are a video name plus a ``_left``/``_right``/``_main`` suffix.
Nothing is guessed silently: every name that cannot be matched to exactly one
file is listed in the `ManifestReport`, and such trials are left out rather
than pointed at a possibly wrong video.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from .manifest import SPLITS, Trial, read_manifest, write_manifest
from .text_file import read_utf8

VIDEO_SUFFIXES = (".mp4", ".avi")
SET_SPLITS = {"Train_Set": "train", "Validation_Set": "val"}
ALIGNED_DIR = "cropped_aligned"
# Folders of per-frame images (millions of files in a full release): never walked into.
IMAGE_DIRS = (ALIGNED_DIR, "cropped")
# First column name of each track's annotation files; checked so that a wrong
# folder (e.g. the expression track) is reported instead of trained on.
TRACK_FIRST_COLUMN = {"VA": "valence", "EXPR": "neutral", "AU": "au1"}
TRACKS = tuple(TRACK_FIRST_COLUMN)
_SUFFIX = re.compile(r"^(?P<video>.+)_(?P<side>left|right|main)$")
_HEADER_WORDS = {"name", "names", "trial", "trials", "video", "videos", "video_name", "vid_name",
                 "image_location", "file", "filename"}


class AffWild2Error(ValueError):
    """The tree or the test list cannot produce a manifest at all (one line, names the path)."""


@dataclass
class ManifestReport:
    """What was written and every name that could not be used (printed by the CLI)."""

    out: Path
    trials: list[Trial]
    annotation_dirs: list[Path] = field(default_factory=list)
    n_videos: int = 0
    missing_video: list[str] = field(default_factory=list)  # all trials left out for lack of a video
    unmatched_annotations: list[Path] = field(default_factory=list)  # their annotation files
    test_not_found: list[str] = field(default_factory=list)  # test names among them
    ambiguous_videos: dict[str, list[Path]] = field(default_factory=dict)  # stem -> all files with it
    ambiguous_trials: list[str] = field(default_factory=list)  # left out: their video stem is ambiguous
    bad_annotations: list[tuple[Path, str]] = field(default_factory=list)  # left out, with the reason
    duplicate_annotations: dict[str, list[Path]] = field(default_factory=dict)  # trial -> files (first used)
    test_with_annotation: list[str] = field(default_factory=list)  # listed as test: annotation ignored
    ambiguous_aligned: dict[str, list[Path]] = field(default_factory=dict)  # aligned_faces left empty
    unreadable: list[Path] = field(default_factory=list)  # folders the scan could not list
    unused_videos: list[Path] = field(default_factory=list)  # videos no trial refers to

    @property
    def written(self) -> dict[str, int]:
        """Trials written per split (every split present, zeros included)."""
        counts = {s: 0 for s in SPLITS}
        for t in self.trials:
            counts[t.split] += 1
        return counts


@dataclass
class _Tree:
    videos: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    # (folder, split, generation rank: 0 = ABAW 2022+ "*_Challenge", 1 = older "*_Set")
    annotation_sets: list[tuple[Path, str, int]] = field(default_factory=list)
    aligned: dict[str, list[Path]] = field(default_factory=lambda: defaultdict(list))
    unreadable: list[Path] = field(default_factory=list)


def _is_track_dir(name: str, track: str) -> bool:
    """`VA_Estimation_Challenge`, `VA_Set`, `EXPR_Recognition_Challenge`, ...: the prefix names the track."""
    return name.upper().startswith(track.upper() + "_")


def _scan(root: Path, track: str) -> _Tree:
    """One walk over the tree: videos by stem, annotation set folders, aligned-face folders.

    Follows symlinked folders (datasets are often assembled from links) but
    visits each real folder once, so link cycles cannot loop.
    """
    tree = _Tree()
    seen: set[tuple[int, int]] = set()
    def unreadable(exc: OSError) -> None:
        tree.unreadable.append(Path(exc.filename))

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=unreadable):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            if d.startswith("."):
                continue
            if d == ALIGNED_DIR:
                aligned_root = here / d
                try:
                    entries = sorted(os.scandir(aligned_root), key=lambda e: e.name)
                except OSError as exc:
                    unreadable(exc)
                    continue
                for entry in entries:
                    if entry.is_dir():
                        tree.aligned[entry.name].append(aligned_root / entry.name)
            elif d in SET_SPLITS and _is_track_dir(here.name, track):
                rank = 0 if "challenge" in here.name.lower() else 1
                tree.annotation_sets.append((here / d, SET_SPLITS[d], rank))
            elif d not in IMAGE_DIRS and d not in SET_SPLITS:
                keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            p = here / f
            if p.suffix.lower() in VIDEO_SUFFIXES and not f.startswith("."):
                tree.videos[p.stem].append(p)
    return tree


def _check_annotation(path: Path, track: str) -> str | None:
    """Why this file is not an annotation of `track` (None when it looks right).

    Only the first two lines are read: enough to catch an empty file or a
    file of another track, cheap enough for 600 files on network storage.
    """
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as fh:
            head = fh.readline().strip()
            first = fh.readline().strip()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    want = TRACK_FIRST_COLUMN[track]
    if not head:
        return "empty file"
    if head.split(",")[0].strip().lower() != want:
        return f"first line is {head[:40]!r}, expected a header starting with {want!r} ({track} track)"
    if not first:
        return "header but no frame lines"
    return None


def read_test_list(path: Path) -> list[str]:
    """Trial names from an ABAW test-set list, in file order, without duplicates.

    Accepts what the organisers ship: one name per line
    (``*_test_set_release.txt``), optionally a header line or CSV columns
    (the first field is the name), names with a video extension, and the
    per-frame submission template (``<trial>/00001.jpg,,``) whose folder part
    is the trial. A first line without any digit is a header: every
    Aff-Wild2 name contains one.
    """
    path = Path(path)
    if not path.is_file():
        raise AffWild2Error(f"{path}: test list not found")
    text = read_utf8(path, lambda line, col, msg: AffWild2Error(f"{path}:{line}:{col}: test list is {msg}"))
    names: list[str] = []
    seen: set[str] = set()
    first = True
    for row in csv.reader(io.StringIO(text, newline="")):
        cell = row[0].strip() if row else ""
        if not cell or cell.startswith("#"):
            continue
        if first:
            first = False
            if cell.lower() in _HEADER_WORDS or not any(ch.isdigit() for ch in cell):
                continue
        p = Path(cell.replace("\\", "/"))
        if p.suffix.lower() in (".jpg", ".jpeg", ".png") and len(p.parts) > 1:
            name = p.parent.name
        elif p.suffix.lower() in VIDEO_SUFFIXES + (".txt",):
            name = p.stem
        else:
            name = p.name
        if name not in seen:
            seen.add(name)
            names.append(name)
    if not names:
        raise AffWild2Error(f"{path}: test list has no trial names")
    return names


def _video_for(trial: str, videos: dict[str, list[Path]]) -> tuple[str, list[Path]]:
    """Subject and candidate files for a trial: its own stem first, then the stem without the side suffix."""
    m = _SUFFIX.match(trial)
    subject = m["side"] if m and m["side"] in ("left", "right") else "largest"
    for stem in (trial, m["video"] if m else None):
        if stem and stem in videos:
            return subject, videos[stem]
    return subject, []


def build_affwild2_manifest(root: Path, out: Path, track: str = "VA",
                            test_list: Path | None = None) -> ManifestReport:
    """Scan an Aff-Wild2 tree and write a manifest of every trial that matches exactly one video.

    Train_Set -> train, Validation_Set -> val, names in `test_list` -> test
    (without annotation, even when one exists: test must never leak labels).
    The fold column stays empty: the trainer assigns folds. Raises
    `AffWild2Error` (and writes nothing) when `root` is not a folder or no
    trial could be matched.
    """
    root = Path(root).expanduser()
    out = Path(out).expanduser()
    track = track.upper()
    if track not in TRACK_FIRST_COLUMN:
        raise AffWild2Error(f"unknown track {track!r}: expected one of {', '.join(TRACKS)}")
    if not root.is_dir():
        raise AffWild2Error(f"{root}: Aff-Wild2 root folder not found")
    tests = read_test_list(test_list) if test_list is not None else []

    tree = _scan(root, track)
    report = ManifestReport(out=out, trials=[], n_videos=sum(len(v) for v in tree.videos.values()),
                            annotation_dirs=[d for d, _, _ in tree.annotation_sets])
    report.ambiguous_videos = {s: sorted(ps) for s, ps in sorted(tree.videos.items()) if len(ps) > 1}
    report.unreadable = tree.unreadable
    found = _annotation_files(tree, report)
    wanted = _annotated_trials(found, set(tests), track, report) + [(name, "test", None) for name in tests]
    _match_videos(wanted, tree, report)
    if not report.trials:
        looked = (f"{len(found)} {track} annotation files in {len(tree.annotation_sets)} "
                  f"Train_Set/Validation_Set folders under {track}_* folders, {report.n_videos} videos")
        if tests:
            looked += f", {len(tests)} test names"
        raise AffWild2Error(f"{root}: no trial matched a video ({looked}); nothing written")

    order = {s: i for i, s in enumerate(SPLITS)}
    report.trials.sort(key=lambda t: (order[t.split], t.trial))
    write_manifest(report.trials, out)
    # Read back: the manifest on disk is what the pipeline will see, so report that.
    report.trials = read_manifest(out)
    return report


#: trial -> [(generation rank, annotation file, split)], every candidate found
_Found = dict[str, list[tuple[int, Path, str]]]


def _annotation_files(tree: _Tree, report: ManifestReport) -> _Found:
    """Every ``<trial>.txt`` in the annotation set folders; folders that cannot be listed go to the report."""
    found: _Found = defaultdict(list)
    for folder, split, rank in tree.annotation_sets:
        try:
            files = sorted(folder.iterdir())
        except OSError:
            report.unreadable.append(folder)
            continue
        for f in files:
            if f.is_file() and f.suffix.lower() == ".txt" and not f.name.startswith("."):
                found[f.stem].append((rank, f, split))
    return found


def _annotated_trials(found: _Found, test_set: set[str], track: str,
                      report: ManifestReport) -> list[tuple[str, str, Path | None]]:
    """(trial, split, annotation) for each annotated trial that can be used: the newest generation's
    file, in one split only, not a test trial, and with the track's header; the rest go to the report."""
    wanted: list[tuple[str, str, Path | None]] = []
    for trial in sorted(found):
        cands = sorted(found[trial], key=lambda c: (c[0], str(c[1])))
        if len(cands) > 1:
            report.duplicate_annotations[trial] = [c[1] for c in cands]
            best = [c for c in cands if c[0] == cands[0][0]]
            if len({c[2] for c in best}) > 1:
                report.bad_annotations.append((best[0][1], "trial is in both Train_Set and Validation_Set"))
                continue
        _, ann, split = cands[0]
        if trial in test_set:
            report.test_with_annotation.append(trial)
            continue
        reason = _check_annotation(ann, track)
        if reason:
            report.bad_annotations.append((ann, reason))
            continue
        wanted.append((trial, split, ann))
    return wanted


def _match_videos(wanted: list[tuple[str, str, Path | None]], tree: _Tree, report: ManifestReport) -> None:
    """Add a `Trial` to the report for each wanted trial with exactly one video; report every other one,
    and the videos no trial uses."""
    used: set[Path] = set()
    for trial, split, ann in wanted:
        subject, files = _video_for(trial, tree.videos)
        if len(files) > 1:
            report.ambiguous_trials.append(trial)
            continue
        if not files:
            report.missing_video.append(trial)
            if ann is None:
                report.test_not_found.append(trial)
            else:
                report.unmatched_annotations.append(ann)
            continue
        used.add(files[0])
        aligned = tree.aligned.get(trial, [])
        if len(aligned) > 1:
            report.ambiguous_aligned[trial] = aligned
        report.trials.append(Trial(trial=trial, video=files[0], split=split, annotation=ann,
                                   subject=subject, aligned_faces=aligned[0] if len(aligned) == 1 else None))
    report.unused_videos = sorted(p for ps in tree.videos.values() for p in ps
                                  if p not in used and len(ps) == 1)


def _preview(items: list, limit: int) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def format_report(report: ManifestReport, limit: int = 10) -> str:
    """Human summary: counts first, then each kind of unmatched name, each list cut at `limit`."""
    w = report.written
    lines = [f"wrote {len(report.trials)} trials to {report.out} "
             f"(train {w['train']}, val {w['val']}, test {w['test']}; "
             f"{report.n_videos} videos, {len(report.annotation_dirs)} annotation folders)"]
    sections = [
        ("annotation files with no video", [p.name for p in report.unmatched_annotations]),
        ("test names with no video", report.test_not_found),
        ("trials left out: video name is ambiguous", report.ambiguous_trials),
        ("bad annotation files (left out)", [f"{p.name}: {why}" for p, why in report.bad_annotations]),
        ("test names that also have an annotation (kept as test, annotation ignored)",
         report.test_with_annotation),
        ("trials with several annotation files (first used)",
         [f"{t}: {', '.join(str(p) for p in ps)}" for t, ps in report.duplicate_annotations.items()]),
        ("folders that could not be read", [str(p) for p in report.unreadable]),
        ("ambiguous videos, same name twice",
         [f"{s}: {', '.join(str(p) for p in ps)}" for s, ps in report.ambiguous_videos.items()]),
        ("trials with several cropped_aligned folders (aligned_faces left empty)",
         list(report.ambiguous_aligned)),
        ("videos no trial refers to", [p.name for p in report.unused_videos]),
    ]
    for title, items in sections:
        if items:
            lines.append(f"{title} ({len(items)}): {_preview(items, limit)}")
    return "\n".join(lines)

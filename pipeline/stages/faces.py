"""The `faces` stage: where the subject's face is in every frame (box, 5 landmarks, score).

Detection is separated from embedding (the `visual` stage) because detection is
the expensive step and the part that does not change when a backbone is
swapped: visual re-aligns from these stored landmarks, so trying another
backbone never re-runs MTCNN.

Detection: facenet-pytorch's MTCNN on uint8 tensors (its crop path fails on
numpy frames; we never use the crop path). By default (``guided``) detection is
track-guided (`pipeline.media.guided_detection.GuidedSearch`): for every face the last
full-frame detection found, O-Net refines the predicted box, else MTCNN searches a
region around it with the pyramid's smallest face set from the track's size; a
full-frame detection runs when that fails, when nothing is tracked, at a scene cut,
every ``full_every`` detected frames and at the start of every `SEGMENT` (256)
frames, where the search forgets everything. Every detected frame still gets its
own detection and landmarks. Because the search depends only on the frames of its
segment, a long video splits into frame-range parts (`pipeline.engine.ranges`) in
either mode; the tracker runs over all parts' detections. ``guided:
false`` detects every frame on the full frame, batched. With ``detect_every =
k`` only every k-th frame (and the last) is detected; frames in between take the
linear interpolation of the tracked box and landmarks of the detections around
them (see `pipeline.media.tracking.fill_between`). ``detect_scale < 1`` detects full
frames downscaled and maps boxes back, which pays off on HD video with large
faces (guided steps work on the track's own scale and ignore it).

Tracking: one person per trial, chosen by the manifest's `subject` rule at the
first frame with faces and then followed by position (`pipeline.media.tracking`).
Lost-track policy: a track is lost after ``max_gap`` frames without a match or
at once at a scene cut; a (re)acquisition chooses among all faces of a frame, so
it waits for a full-frame detection; every (re)acquisition starts a new track segment and is
recorded (`acquisitions` rows: frame, segment, identity; reasons and counts in
the attrs). A re-acquired face whose appearance signature matches the subject's
(similarity >= ``identity_threshold``) is identity 0 again; otherwise it is
marked as another identity (per frame `identity`, -1 where invalid), so
training can mask or split those frames. The signature is no face recognition
(see `pipeline.media.guided_detection.face_signatures` for what it separates).

aligned_faces mode (manifest column set): the trial comes with pre-aligned face
images ``<folder>/<k:05d>.jpg`` for 1-based frame k (the Aff-Wild2
'cropped_aligned' layout). Nothing is detected; a present, readable image means
a valid frame whose landmarks are the ArcFace template scaled to that image, so
`visual` treats both modes the same way.

Output rows: one per decoded frame. Frames without the subject's face have
valid = 0, boxes and landmarks NaN (so a consumer that ignores `valid` fails
loudly instead of aligning to the image corner) and score 0; they are never dropped.
"""
from __future__ import annotations

import functools
import hashlib
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..media.align import template_for_image
from ..sources.manifest import Trial
from ..engine.resources import get_model, resolve_device
from ..engine.stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage
from ..media.tracking import SubjectTracker, TrackParams, fill_between

#: frames decoded per chunk: bounded memory even for HD video (32 x 1080p RGB ~ 200 MB)
DECODE_CHUNK = 32


def aligned_image_path(folder: Path, frame: int) -> Path:
    """Image of 0-based `frame` in an aligned_faces folder (files are numbered from 1)."""
    return Path(folder) / f"{frame + 1:05d}.jpg"


def mtcnn_weight_files() -> list[Path]:
    """The P-, R- and O-net weight files that ship inside facenet-pytorch."""
    from ..models.weight_files import facenet_data_dir

    return [facenet_data_dir() / f"{net}.pt" for net in ("pnet", "rnet", "onet")]


@functools.lru_cache(maxsize=1)
def mtcnn_weights_id() -> str:
    """sha256 over the P-, R- and O-net weight files that ship inside facenet-pytorch."""
    from ..models.weights import sha256_file

    return hashlib.sha256("".join(sha256_file(f) for f in mtcnn_weight_files()).encode()).hexdigest()


def _load_mtcnn(min_face_size: int, thresholds: tuple[float, ...], device: str) -> Any:
    from facenet_pytorch import MTCNN

    return MTCNN(keep_all=True, min_face_size=min_face_size, thresholds=list(thresholds), device=device).eval()


def detect_batch(mtcnn: Any, frames: np.ndarray, scale: float = 1.0
                 ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
    """Run MTCNN on uint8 frames [b,H,W,3]; per frame (boxes [k,4], scores [k], landmarks [k,5,2]) or None.

    With `scale` != 1 the frames are resized first and coordinates mapped back to
    the original pixel grid (pixel centres at integer coordinates).
    """
    import torch
    import torch.nn.functional as F

    b, h, w, _ = frames.shape
    nh, nw = (max(1, int(round(h * scale))), max(1, int(round(w * scale)))) if scale != 1.0 else (h, w)
    if min(nh, nw) < int(getattr(mtcnn, "min_face_size", 0)):
        # No face of min_face_size fits: MTCNN's image pyramid would be empty and it fails in torch.cat().
        return [None] * b
    x = torch.from_numpy(np.require(frames, requirements=("C", "W"))).to(mtcnn.device)
    sx = sy = 1.0
    if scale != 1.0:
        sx, sy = nw / w, nh / h
        x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(nh, nw), mode="bilinear",
                          align_corners=False, antialias=True).permute(0, 2, 3, 1)
    with torch.inference_mode():
        boxes, probs, points = mtcnn.detect(x, landmarks=True)
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
    for i in range(b):
        if boxes[i] is None or len(boxes[i]) == 0:
            out.append(None)
            continue
        bx = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4)
        pt = np.asarray(points[i], dtype=np.float64).reshape(-1, 5, 2)
        if scale != 1.0:
            bx = (bx + 0.5) / np.array([sx, sy, sx, sy]) - 0.5
            pt = (pt + 0.5) / np.array([sx, sy]) - 0.5
        out.append((bx, np.asarray(probs[i], dtype=np.float64).reshape(-1), pt))
    return out


class _SubjectRows:
    """The tracker over the detection frames in order, and the per-detection-frame rows it chose.

    Detections come from `GuidedSearch` (or full-frame detection) in one pass, or from the
    parts of a split trial (`FacesStage.assemble`); the steps here are the same for both.
    A (re)acquisition chooses among all faces in the frame, so it happens only on a
    full-frame detection: where the track is lost and the frame was searched by tracks
    only, the subject counts as not seen there (the next refresh is at most `full_every`
    detected frames away). Appearance signatures are asked for only at acquisitions.
    """

    def __init__(self, settings: Any, subject: str):
        self.tracker = SubjectTracker(subject, TrackParams(max_gap=int(settings.max_gap)),
                                      identity_threshold=float(settings.identity_threshold))
        self.counts = {"refined": 0, "region": 0, "full": 0}
        self.frames: list[int] = []
        self.boxes: list[np.ndarray] = []
        self.marks: list[np.ndarray] = []
        self.scores: list[float] = []
        self.segment: list[int] = []
        self.identity: list[int] = []

    def frame(self, f: int, cut: bool, dets: tuple[np.ndarray, np.ndarray, np.ndarray] | None, kind: int,
              signatures: Callable[[], np.ndarray]) -> None:
        """Track at detection frame `f`: `dets` found there by search `kind`; `signatures()` gives theirs."""
        from ..media.guided_detection import FULL

        self.counts[("refined", "region", "full")[kind]] += 1
        if cut:
            self.tracker.cut()
        acquiring = self.tracker.predict(f) is None
        if dets is None or not len(dets[0]) or (acquiring and kind != FULL):
            dets = None
        c = self.tracker.update(f, None if dets is None else dets[0],
                                signatures() if dets is not None and acquiring else None)
        self.frames.append(f)
        if c >= 0:
            self.boxes.append(dets[0][c])
            self.scores.append(float(dets[1][c]))
            self.marks.append(dets[2][c])
            self.segment.append(self.tracker.segment)
            self.identity.append(self.tracker.identity)
        else:
            self.boxes.append(np.full(4, np.nan))
            self.scores.append(0.0)
            self.marks.append(np.full((5, 2), np.nan))
            self.segment.append(-1)
            self.identity.append(-1)


def _signature_net(device: str) -> Any:
    from ..models.backbones import load_backbone

    return get_model(("faces-signature-onet", device), lambda: load_backbone("onet", None, device))


@register_stage
class FacesStage(Stage):
    """Detect, track and keep the subject's face box and landmarks per frame (see module docstring)."""

    name = "faces"
    #: 2: track-guided detection by default, scene cuts, recorded (re)acquisitions and identities;
    #: 3: the guided search follows every face and restarts every SEGMENT frames (so it splits into
    #: frame ranges), refreshes at absolute multiples of full_every (default 32, was 30), and the
    #: tracker (re)acquires only on full-frame detections
    version = 3
    inputs = ("probe",)
    gpu_capable = True

    @dataclass
    class Settings:
        detect_every: int = 1  # detect every k-th frame, interpolate the track in between
        detect_scale: float = 1.0  # detect on frames resized by this factor
        min_face_size: int = 20  # MTCNN's smallest face, in pixels of the detected (scaled) frame
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN P/R/O-net thresholds
        max_gap: int = 30  # frames a track survives without a matching face before re-choosing
        guided: bool = True  # track-guided detection (pipeline.media.guided_detection); False: full frame always
        full_every: int = 32  # guided: full-frame detection where (f // detect_every) % full_every == 0
        identity_threshold: float = 0.96  # appearance similarity for a re-acquired face to count as the subject
        other_identities: str = "keep"  # keep: valid and marked in `identity`; invalid: not delivered at all
        batch_size: int = field(default=16, metadata=NOT_IN_KEY)
        device: str = field(default="auto", metadata=NOT_IN_KEY)

        def __post_init__(self) -> None:
            self.thresholds = tuple(float(t) for t in self.thresholds)  # type: ignore[assignment]
            if len(self.thresholds) != 3 or not all(0 < t < 1 for t in self.thresholds):
                raise ValueError(f"faces.thresholds must be three numbers in (0, 1), got {self.thresholds}")
            if int(self.detect_every) < 1:
                raise ValueError(f"faces.detect_every must be >= 1, got {self.detect_every}")
            if not 0 < float(self.detect_scale) <= 4:
                raise ValueError(f"faces.detect_scale must be in (0, 4], got {self.detect_scale}")
            if int(self.min_face_size) < 12:
                raise ValueError(f"faces.min_face_size must be >= 12 (MTCNN's input), got {self.min_face_size}")
            if self.other_identities not in ("keep", "invalid"):
                raise ValueError(f"faces.other_identities must be 'keep' or 'invalid', got {self.other_identities!r}")
            if int(self.full_every) < 1:
                raise ValueError(f"faces.full_every must be >= 1, got {self.full_every}")
            if not -1 <= float(self.identity_threshold) <= 1:
                raise ValueError(f"faces.identity_threshold must be in [-1, 1], got {self.identity_threshold}")
            if int(self.max_gap) < 0 or int(self.batch_size) < 1:
                raise ValueError("faces.max_gap must be >= 0 and faces.batch_size >= 1")

    def input_files(self, trial: Trial) -> list[Path]:
        files = [trial.video]
        if trial.aligned_faces:
            files.append(trial.aligned_faces)
        return files + mtcnn_weight_files()  # MTCNN's weights enter the key like any input

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        return {"trial": trial.trial, "subject": trial.subject,
                "aligned_faces": trial.aligned_faces is not None}

    # -- compute ---------------------------------------------------------------------------------
    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        n = upstream["probe"].n_frames
        if trial.aligned_faces:
            return self._from_aligned_images(trial, n)
        return self._detect_and_track(trial, upstream)

    def _mtcnn(self, device: str) -> Any:
        s = self.settings
        thresholds = tuple(s.thresholds)
        return get_model(("mtcnn", int(s.min_face_size), thresholds, device),
                         lambda: _load_mtcnn(int(s.min_face_size), thresholds, device))

    def _wanted(self, n: int) -> np.ndarray:
        """Frames run through the detector: every `detect_every`-th and the last."""
        wanted = np.zeros(n, dtype=bool)
        wanted[::int(self.settings.detect_every)] = True
        if n:
            wanted[n - 1] = True  # the tail is bracketed by a detection, never extrapolated
        return wanted

    def _search(self, trial: Trial, upstream: dict[str, ShardData], start: int, stop: int, flags: np.ndarray
                ) -> Iterator[tuple[int, np.ndarray, bool, Any, int]]:
        """(frame, image, cut since the last detection frame, detections, search kind) per detection frame of
        [start, stop); `flags[i]`: frame start + i starts a new shot (the frame before `start` is decoded
        for the first flag).

        Guided: `GuidedSearch`, which restarts at every `SEGMENT`, so a range starting on such a
        multiple finds what a whole-video pass finds there. Full frame: batches of the wanted
        frames of each decode chunk (chunks are cut at absolute multiples, so the same batches).
        """
        from ..media.decode import iter_frames
        from ..media.guided_detection import FULL, GuidedSearch, SceneCuts

        s = self.settings
        mtcnn = self._mtcnn(resolve_device(s.device))
        n = upstream["probe"].n_frames
        wanted = self._wanted(n)
        search = GuidedSearch(mtcnn, lambda image: self._detect_all(mtcnn, image[None])[0],
                              TrackParams(max_gap=int(s.max_gap)), int(s.full_every), int(s.detect_every))
        cuts = SceneCuts()
        pending = False
        seen = start
        for a, chunk in iter_frames(trial.video, stop, chunk=DECODE_CHUNK, start=max(0, start - 1),
                                    times=upstream["probe"].time):
            seen = max(seen, a + len(chunk))
            lo = max(start - a, 0)  # the frame before the range only feeds the cut detector
            flags[a + lo - start:a + len(chunk) - start] = cuts.update(chunk)[lo:]
            idx = np.flatnonzero(wanted[a:a + len(chunk)])
            idx = idx[idx >= lo]
            full = {} if s.guided else dict(zip(idx.tolist(), self._detect_all(mtcnn, chunk[idx])))
            for i in range(lo, len(chunk)):
                pending |= bool(flags[a + i - start])
                if wanted[a + i]:
                    dets, kind = search.frame(a + i, chunk[i], pending) if s.guided else (full[i], FULL)
                    yield a + i, chunk[i], pending, dets, kind
                    pending = False
        if seen < stop:
            raise StageError("frame-count", f"{trial.video}: decoded {seen} frames, the probe counted {n}")

    def _detect_and_track(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        """One pass: search and tracker frame by frame (signatures computed only where the tracker acquires)."""
        from ..media.guided_detection import face_signatures

        n = upstream["probe"].n_frames
        onet = _signature_net(resolve_device(self.settings.device))
        rows = _SubjectRows(self.settings, trial.subject)
        flags = np.zeros(n, dtype=bool)
        for f, image, cut, dets, kind in self._search(trial, upstream, 0, n, flags):
            rows.frame(f, cut, dets, kind,
                       functools.partial(face_signatures, onet, image, None if dets is None else dets[2]))
        return self._finish(trial, n, rows, int(flags.sum()))

    # -- frame-range splitting (pipeline.engine.ranges) ----------------------------------------------------
    def splits(self, trial: Trial) -> bool:
        """Video trials: what the detector finds in a frame range depends on that range alone (full-frame
        detection: on each frame; guided: the search restarts at every `SEGMENT`, where parts start,
        see `split_align`), so parts detect their ranges and `assemble` runs the tracker over all of them."""
        return not trial.aligned_faces

    def split_align(self, trial: Trial) -> int:
        """Guided: parts start where the search restarts; full frame: anywhere (on the decode chunk)."""
        from ..media.guided_detection import SEGMENT

        return SEGMENT if self.settings.guided else 1

    def run_range(self, trial: Trial, upstream: dict[str, ShardData], start: int, stop: int) -> StageOutput:
        """Every face found on the detection frames of [start, stop), how each frame was searched, the
        appearance signatures of the faces of full-frame detections, and the scene-cut flags.

        Signatures are computed on every full-frame detection with faces (the tracker reads them only
        where it (re)acquires, always on such a frame, which a part cannot know): the same call on the
        same frame as the unsplit pass, so the tracker in `assemble` sees the same numbers.
        """
        from ..media.guided_detection import FULL, face_signatures

        onet = _signature_net(resolve_device(self.settings.device))
        flags = np.zeros(stop - start, dtype=bool)
        frames: list[int] = []
        counts: list[int] = []
        kinds: list[int] = []
        boxes, scores, marks, sigs = [], [], [], []
        for f, image, _, dets, kind in self._search(trial, upstream, start, stop, flags):
            frames.append(f)
            kinds.append(kind)
            counts.append(0 if dets is None else len(dets[0]))
            if dets is not None and len(dets[0]):
                boxes.append(dets[0])
                scores.append(dets[1])
                marks.append(dets[2])
                if kind == FULL:
                    sigs.append(face_signatures(onet, image, dets[2]))
        return StageOutput(features=None, valid=None, extras={
            "cuts": flags,
            "det_frame": np.asarray(frames, dtype=np.int64),
            "det_count": np.asarray(counts, dtype=np.int64),
            "det_kind": np.asarray(kinds, dtype=np.int8),
            "det_boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4)),
            "det_scores": np.concatenate(scores) if scores else np.zeros(0),
            "det_marks": np.concatenate(marks) if marks else np.zeros((0, 5, 2)),
            "det_sigs": np.concatenate(sigs) if sigs else np.zeros((0, 1)),  # faces of FULL frames only
        })

    def assemble(self, trial: Trial, upstream: dict[str, ShardData], parts: list[ShardData]) -> StageOutput:
        """The tracker over every part's detections in frame order: the same steps as `_detect_and_track`."""
        from ..media.guided_detection import FULL

        n = upstream["probe"].n_frames
        rows = _SubjectRows(self.settings, trial.subject)
        cut_pending = False
        n_cuts = 0
        for part in parts:
            a = int(part.attrs["range"][0])
            ex = part.extras
            cuts = np.asarray(ex["cuts"], dtype=bool)
            n_cuts += int(cuts.sum())
            kinds = np.asarray(ex["det_kind"], dtype=np.int64)
            det_at = {int(f): j for j, f in enumerate(ex["det_frame"])}
            offsets = np.concatenate([[0], np.cumsum(ex["det_count"])]).astype(np.int64)
            full_counts = np.where(kinds == FULL, ex["det_count"], 0)  # signatures: faces of full frames only
            sig_offsets = np.concatenate([[0], np.cumsum(full_counts)]).astype(np.int64)
            for f in range(a, a + len(cuts)):
                cut_pending |= bool(cuts[f - a])
                j = det_at.get(f)
                if j is None:
                    continue
                lo, hi = offsets[j], offsets[j + 1]
                dets = None if hi == lo else (ex["det_boxes"][lo:hi], ex["det_scores"][lo:hi], ex["det_marks"][lo:hi])
                sigs = slice(sig_offsets[j], sig_offsets[j + 1])
                rows.frame(f, cut_pending, dets, int(kinds[j]), functools.partial(operator.getitem, ex["det_sigs"], sigs))
                cut_pending = False
        return self._finish(trial, n, rows, n_cuts)

    def _finish(self, trial: Trial, n: int, rows: _SubjectRows, n_cuts: int) -> StageOutput:
        """Per-frame rows from the detected frames: interpolation, identities, attrs."""
        s = self.settings
        det_frames = np.asarray(rows.frames, dtype=np.int64)
        m = len(det_frames)
        found = np.asarray(rows.segment, dtype=np.int64) >= 0
        values = {"boxes": np.asarray(rows.boxes).reshape(m, 4), "landmarks": np.asarray(rows.marks).reshape(m, 5, 2),
                  "scores": np.asarray(rows.scores, dtype=np.float64),
                  "segment": np.asarray(rows.segment, dtype=np.float64),
                  "identity": np.asarray(rows.identity, dtype=np.float64)}
        valid, filled, tracked = fill_between(n, det_frames, found, values, segments=values["segment"])
        segment = np.where(valid, np.nan_to_num(filled["segment"], nan=-1), -1).astype(np.int32)
        identity = np.where(valid, np.nan_to_num(filled["identity"], nan=-1), -1).astype(np.int32)
        if s.other_identities == "invalid":  # another person's face is not the subject's: deliver nothing
            drop = identity > 0
            valid = valid & ~drop
            for name in ("boxes", "landmarks", "scores"):
                filled[name][drop] = np.nan
        if not valid.any():
            raise StageError("no-face", f"{trial.video}: no face found in any of {n} frames"
                                        + (f" ({m} run through the detector)" if m != n else ""))
        acq = rows.tracker.acquisitions
        return StageOutput(
            features=None,
            valid=valid,
            extras={
                "boxes": filled["boxes"].astype(np.float32),
                "landmarks": filled["landmarks"].astype(np.float32),
                "scores": np.nan_to_num(filled["scores"], nan=0.0).astype(np.float32),
                "track_segment": segment,  # -1 where invalid; a new segment at every (re)acquisition
                # 0 = the subject; 1.. = other people the track took (mask them; with other_identities
                # 'invalid' they are already invalid here but keep their identity); -1: no face
                "identity": identity,
                # one row per (re)acquisition: frame, segment, identity (reasons in the attrs)
                "acquisitions": np.array([[a.frame, a.segment, a.identity] for a in acq], dtype=np.int64
                                         ).reshape(-1, 3),
                # similarity to the subject's reference; -2 (outside [-1, 1]) where there was none to
                # compare (the first acquisition): shards hold no NaN outside invalid frame rows
                "acquisition_similarity": np.nan_to_num(np.array([a.similarity for a in acq], dtype=np.float32),
                                                        nan=-2.0),
            },
            attrs={
                "mode": "detect",
                "weights": mtcnn_weights_id(),
                "detected_frames": m,  # frames run through MTCNN
                "found_frames": int(found.sum()),  # of those, frames where the subject was found
                "tracked_frames": int(tracked.sum()),  # valid frames filled by the tracker between detections
                "valid_frames": int(valid.sum()),
                "subject": trial.subject,
                "guided": bool(s.guided),
                # how each detected frame was searched (track-guided: O-Net on the track, region, full frame)
                "refined_frames": rows.counts["refined"],
                "region_frames": rows.counts["region"],
                "full_frames": rows.counts["full"],
                "scene_cuts": n_cuts,
                "acquisitions_count": len(acq),
                "acquisition_reasons": [a.reason for a in acq],
                "identities": rows.tracker.n_identities,
                "other_identity_frames": int((identity > 0).sum()),
                "other_identities": s.other_identities,
            },
        )

    def _detect_all(self, mtcnn: Any, frames: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray] | None]:
        """Full-frame detection of `frames` in batches of `batch_size` (the throughput path on a GPU)."""
        s = self.settings
        out: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
        for a in range(0, len(frames), int(s.batch_size)):
            out.extend(detect_batch(mtcnn, frames[a:a + int(s.batch_size)], float(s.detect_scale)))
        return out

    def _from_aligned_images(self, trial: Trial, n: int) -> StageOutput:
        from PIL import Image, UnidentifiedImageError

        folder = Path(trial.aligned_faces)  # type: ignore[arg-type]
        if not folder.is_dir():
            raise StageError("missing-file", f"{folder}: aligned_faces folder not found (trial {trial.trial})")
        boxes = np.full((n, 4), np.nan, dtype=np.float32)
        marks = np.full((n, 5, 2), np.nan, dtype=np.float32)
        scores = np.zeros(n, dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        missing = unreadable = 0
        for f in range(n):
            path = aligned_image_path(folder, f)
            try:
                with Image.open(path) as im:  # reads the header only
                    w, h = im.size
            except FileNotFoundError:
                missing += 1
                continue
            except (UnidentifiedImageError, OSError):
                unreadable += 1
                continue
            valid[f] = True
            boxes[f] = (0, 0, w, h)
            marks[f] = template_for_image(w, h)
            scores[f] = 1.0  # given, not detected
        if not valid.any():
            raise StageError("no-face", f"{trial.video}: no face found in any of {n} frames "
                                        f"(no readable image {aligned_image_path(folder, 0).name}.. in {folder})")
        return StageOutput(
            features=None,
            valid=valid,
            extras={"boxes": boxes, "landmarks": marks, "scores": scores},
            attrs={"mode": "aligned_faces", "weights": "none", "detected_frames": 0, "found_frames": int(valid.sum()),
                   "tracked_frames": 0, "valid_frames": int(valid.sum()), "missing_images": missing,
                   "unreadable_images": unreadable, "subject": trial.subject},
        )

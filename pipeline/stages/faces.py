"""The `faces` stage: where the subject's face is in every frame (box, 5 landmarks, score).

Detection is separated from embedding (the `visual` stage) because detection is
the expensive step and the part that does not change when a backbone is
swapped: visual re-aligns from these stored landmarks, so trying another
backbone never re-runs MTCNN.

Detection: facenet-pytorch's MTCNN on uint8 tensors (its crop path fails on
numpy frames; we never use the crop path). By default (``guided``) detection is
track-guided (`pipeline.media.guided_detection`): while the subject is tracked, O-Net
refines the predicted box, else MTCNN searches a region around it with the
pyramid's smallest face set from the track's size; a full-frame detection runs
when the track is lost, at a scene cut and every ``full_every`` detected frames.
Every detected frame still gets its own detection and landmarks. ``guided:
false`` detects every frame on the full frame, batched. With ``detect_every =
k`` only every k-th frame (and the last) is detected; frames in between take the
linear interpolation of the tracked box and landmarks of the detections around
them (see `pipeline.media.tracking.fill_between`). ``detect_scale < 1`` detects full
frames downscaled and maps boxes back, which pays off on HD video with large
faces (guided steps work on the track's own scale and ignore it).

Tracking: one person per trial, chosen by the manifest's `subject` rule at the
first frame with faces and then followed by position (`pipeline.media.tracking`).
Lost-track policy: a track is lost after ``max_gap`` frames without a match or
at once at a scene cut; every (re)acquisition starts a new track segment and is
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..media.align import template_for_image
from ..sources.manifest import Trial
from ..engine.resources import get_model, resolve_device
from ..engine.stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage
from ..media.tracking import SubjectTracker, TrackParams, fill_between, match

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
    from ..models.backbones import sha256_file

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


class _TrackedSearch:
    """Per detection frame: search for the subject the cheapest way that is still a real detection.

    With `guided` on and a live track, O-Net refines the predicted box, else MTCNN
    searches a region around it (`pipeline.media.guided_detection`); a full-frame
    detection runs when both fail, when there is no live track, at a scene cut, and
    every `full_every` detected frames. Appearance signatures are computed only
    when the tracker (re)acquires, for the faces it chooses among.
    """

    def __init__(self, settings: Any, mtcnn: Any, device: str, subject: str):
        self.s = settings
        self.mtcnn = mtcnn
        self.onet = self.signature_net(device)
        self.tracker = SubjectTracker(subject, TrackParams(max_gap=int(settings.max_gap)),
                                      identity_threshold=float(settings.identity_threshold))
        self.since_full = 0
        self.counts = {"refined": 0, "region": 0, "full": 0}
        self.frames: list[int] = []
        self.boxes: list[np.ndarray] = []
        self.marks: list[np.ndarray] = []
        self.scores: list[float] = []
        self.segment: list[int] = []
        self.identity: list[int] = []

    @staticmethod
    def signature_net(device: str) -> Any:
        from ..models.backbones import load_backbone

        return get_model(("faces-signature-onet", device), lambda: load_backbone("onet", None, device))

    def _guided(self, image: np.ndarray, predicted: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        from ..media.guided_detection import detect_in_region, refine_on_track

        refined = refine_on_track(self.mtcnn, image, predicted)
        if refined is not None:
            self.counts["refined"] += 1
            return refined[0][None], np.array([refined[1]]), refined[2][None]
        region = detect_in_region(self.mtcnn, image, predicted)
        if region is not None and match(predicted, region[0], self.tracker.params) is not None:
            self.counts["region"] += 1
            return region
        return None

    def frame(self, f: int, image: np.ndarray | None, cut: bool,
              full: tuple[np.ndarray, np.ndarray, np.ndarray] | None | bool = False,
              signatures: np.ndarray | None = None) -> None:
        """Detect and track at frame `f` (`full`: a full-frame detection already run for it, or False).

        `signatures`: the faces' appearance signatures when already computed (frame-range parts,
        `FacesStage.assemble`, which passes no image); computed here from `image` otherwise.
        """
        from ..media.guided_detection import face_signatures

        if cut:
            self.tracker.cut()
        predicted = self.tracker.predict(f)
        dets = None
        if full is False and self.s.guided and predicted is not None and self.since_full + 1 < int(self.s.full_every):
            dets = self._guided(image, predicted)
        if dets is None:
            if full is False:
                full = detect_batch(self.mtcnn, image[None], float(self.s.detect_scale))[0]
            dets = full
            self.counts["full"] += 1
            self.since_full = 0
        else:
            self.since_full += 1
        boxes = None if dets is None else dets[0]
        if boxes is not None and len(boxes) and self.tracker.predict(f) is None:
            if signatures is None:
                signatures = face_signatures(self.onet, image, dets[2])
        else:
            signatures = None
        c = self.tracker.update(f, boxes, signatures)
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


@register_stage
class FacesStage(Stage):
    """Detect, track and keep the subject's face box and landmarks per frame (see module docstring)."""

    name = "faces"
    version = 2  # 2: track-guided detection by default, scene cuts, recorded (re)acquisitions and identities
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
        full_every: int = 30  # guided: a full-frame detection at least every this many detected frames
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
        return self._detect_and_track(trial, n)

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

    # -- frame-range splitting (pipeline.engine.ranges) ----------------------------------------------------
    def splits(self, trial: Trial) -> bool:
        """Full-frame detection only (``guided: false``): each frame's detection depends on that frame
        alone, so parts detect their ranges and `assemble` runs the tracker over all of them. Guided
        detection searches where the track predicts the face, so frame f depends on every frame
        before it and the trial stays one task."""
        return not self.settings.guided and not trial.aligned_faces

    def run_range(self, trial: Trial, upstream: dict[str, ShardData], start: int, stop: int) -> StageOutput:
        """Every face MTCNN finds on the detected frames of [start, stop), with appearance signatures, and
        the scene-cut flags of those frames (the frame before `start` is decoded for the first flag).

        Signatures are computed for every frame with faces (the tracker reads them only where it
        (re)acquires, which a part cannot know): the same call on the same frame as the unsplit
        pass, so the tracker in `assemble` sees the same numbers.
        """
        from ..media.decode import iter_frames
        from ..media.guided_detection import SceneCuts, face_signatures

        device = resolve_device(self.settings.device)
        mtcnn = self._mtcnn(device)
        onet = _TrackedSearch.signature_net(device)
        n = upstream["probe"].n_frames
        wanted = self._wanted(n)
        cuts = SceneCuts()
        flags = np.zeros(stop - start, dtype=bool)
        frames: list[int] = []
        counts: list[int] = []
        boxes, scores, marks, sigs = [], [], [], []
        seen = start
        for a, chunk in iter_frames(trial.video, stop, chunk=DECODE_CHUNK, start=max(0, start - 1),
                                    times=upstream["probe"].time):
            seen = max(seen, a + len(chunk))
            lo = max(start - a, 0)  # the frame before the range only feeds the cut detector
            flags[a + lo - start:a + len(chunk) - start] = cuts.update(chunk)[lo:]
            idx = np.flatnonzero(wanted[a:a + len(chunk)])
            idx = idx[idx >= lo]
            if not len(idx):
                continue
            for i, det in zip(idx.tolist(), self._detect_all(mtcnn, chunk[idx])):
                frames.append(a + i)
                counts.append(0 if det is None else len(det[0]))
                if det is not None and len(det[0]):
                    boxes.append(det[0])
                    scores.append(det[1])
                    marks.append(det[2])
                    sigs.append(face_signatures(onet, chunk[i], det[2]))
        if seen < stop:
            raise StageError("frame-count", f"{trial.video}: decoded {seen} frames, the probe counted {n}")
        return StageOutput(features=None, valid=None, extras={
            "cuts": flags,
            "det_frame": np.asarray(frames, dtype=np.int64),
            "det_count": np.asarray(counts, dtype=np.int64),
            "det_boxes": np.concatenate(boxes) if boxes else np.zeros((0, 4)),
            "det_scores": np.concatenate(scores) if scores else np.zeros(0),
            "det_marks": np.concatenate(marks) if marks else np.zeros((0, 5, 2)),
            "det_sigs": np.concatenate(sigs) if sigs else np.zeros((0, 1)),
        })

    def assemble(self, trial: Trial, upstream: dict[str, ShardData], parts: list[ShardData]) -> StageOutput:
        """The tracker over every part's detections in frame order: the same steps as `_detect_and_track`."""
        n = upstream["probe"].n_frames
        search = _TrackedSearch(self.settings, None, resolve_device(self.settings.device), trial.subject)
        cut_pending = False
        n_cuts = 0
        for part in parts:
            a = int(part.attrs["range"][0])
            ex = part.extras
            cuts = np.asarray(ex["cuts"], dtype=bool)
            n_cuts += int(cuts.sum())
            det_at = {int(f): j for j, f in enumerate(ex["det_frame"])}
            offsets = np.concatenate([[0], np.cumsum(ex["det_count"])]).astype(np.int64)
            for f in range(a, a + len(cuts)):
                cut_pending |= bool(cuts[f - a])
                j = det_at.get(f)
                if j is None:
                    continue
                lo, hi = offsets[j], offsets[j + 1]
                dets = None if hi == lo else (ex["det_boxes"][lo:hi], ex["det_scores"][lo:hi], ex["det_marks"][lo:hi])
                search.frame(f, None, cut_pending, dets, signatures=None if hi == lo else ex["det_sigs"][lo:hi])
                cut_pending = False
        return self._finish(trial, n, search, n_cuts)

    def _detect_and_track(self, trial: Trial, n: int) -> StageOutput:
        from ..media.decode import iter_frames
        from ..media.guided_detection import SceneCuts

        s = self.settings
        device = resolve_device(s.device)
        mtcnn = self._mtcnn(device)
        wanted = self._wanted(n)
        search = _TrackedSearch(self.settings, mtcnn, device, trial.subject)
        cuts = SceneCuts()
        cut_pending = False
        seen = n_cuts = 0
        for start, chunk in iter_frames(trial.video, n, chunk=DECODE_CHUNK):
            seen = max(seen, start + len(chunk))
            chunk_cuts = cuts.update(chunk)
            n_cuts += int(chunk_cuts.sum())
            idx = np.flatnonzero(wanted[start:start + len(chunk)])
            full: dict = {} if s.guided else dict(zip(idx.tolist(), self._detect_all(mtcnn, chunk[idx])))
            for i in range(len(chunk)):
                cut_pending |= bool(chunk_cuts[i])
                if wanted[start + i]:
                    search.frame(start + i, chunk[i], cut_pending, full.get(i, False))
                    cut_pending = False
        if seen < n:
            raise StageError("frame-count", f"{trial.video}: decoded {seen} frames, the probe counted {n}")
        return self._finish(trial, n, search, n_cuts)

    def _finish(self, trial: Trial, n: int, search: _TrackedSearch, n_cuts: int) -> StageOutput:
        """Per-frame rows from the detected frames: interpolation, identities, attrs."""
        s = self.settings
        det_frames = np.asarray(search.frames, dtype=np.int64)
        m = len(det_frames)
        found = np.asarray(search.segment, dtype=np.int64) >= 0
        values = {"boxes": np.asarray(search.boxes).reshape(m, 4), "landmarks": np.asarray(search.marks).reshape(m, 5, 2),
                  "scores": np.asarray(search.scores, dtype=np.float64),
                  "segment": np.asarray(search.segment, dtype=np.float64),
                  "identity": np.asarray(search.identity, dtype=np.float64)}
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
        acq = search.tracker.acquisitions
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
                "refined_frames": search.counts["refined"],
                "region_frames": search.counts["region"],
                "full_frames": search.counts["full"],
                "scene_cuts": n_cuts,
                "acquisitions_count": len(acq),
                "acquisition_reasons": [a.reason for a in acq],
                "identities": search.tracker.n_identities,
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

"""Track-guided face detection: cheap real detections near a tracked face, scene cuts, identity signatures.

Full-frame MTCNN spends nearly all its time in P-Net over an image pyramid
that covers every position and every face size from `min_face_size` up. Once
the subject is tracked, the face is known to be near the predicted box and
about its size, so three cheaper searches are tried in order, each a real
detection on the current frame's pixels (never an interpolation):

1. `refine_on_track`: MTCNN's last stage alone. The predicted box, squared as
   MTCNN squares its R-Net output (`rerec`), is the single proposal for
   facenet-pytorch's O-Net, which scores it (face probability, thresholded by
   the O-Net threshold), regresses the box and places the 5 landmarks exactly
   as in the full pipeline's third stage. This is how it differs from MTCNN:
   the proposal comes from the track instead of P-Net + R-Net. Accepted when the
   score passes and the regressed box still overlaps the proposal (IoU >= 0.5):
   a face that moved further is not trusted to one regression step.
2. `detect_in_region`: facenet-pytorch's `detect_face` (the whole P/R/O-Net
   cascade) on a crop around the predicted box, with the pyramid's smallest face
   set from the track's size (`min_face_size` = 0.6 x box size), so the pyramid
   has a handful of tiny levels. Faces touching the crop's border (where the crop
   and not the frame cuts them) are dropped: their boxes are not what a
   full-frame detection would give.
3. Full-frame detection (the caller's `detect_batch`): when both fail, when the
   track is lost, at scene cuts, and every `full_every` detected frames, which
   also bounds any drift of step 1.

`GuidedSearch` runs these steps. It follows every face the last full-frame
detection found (not only the subject's: which face is the subject is the
tracker's decision, made later from the detections), and it starts afresh at
every multiple of `SEGMENT` frames. So what it finds in a segment depends on that
segment's frames alone, and a long video's faces stage can run as frame-range
parts on several workers (`pipeline.engine.ranges`) with exactly the detections
of one pass; the tracker, which needs the whole history, runs over all of them.

Scene cuts are found from consecutive frames' coarse colour histograms and
thumbnails (`SceneCuts`). Identity signatures (`face_signatures`) let the
tracker tell whether a re-acquired face is the subject's; see its docstring for
what they can and cannot tell apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .tracking import TrackParams, match

#: the search starts afresh (full-frame detection, no tracks) at every multiple of this many frames:
#: frame-range parts of guided faces start on such a multiple. A multiple of the decode chunk (32), and
#: of the default `full_every` (32), so at full_every 32 a segment start is a scheduled refresh anyway.
SEGMENT = 256
#: how a detection frame was searched (`GuidedSearch.frame`)
REFINED, REGION, FULL = 0, 1, 2
#: two tracks whose faces overlap this much in one frame follow the same face: the later one is dropped
DUPLICATE_IOU = 0.5

#: O-Net's regressed box must overlap its proposal this much for a track refinement to count
REFINE_MIN_IOU = 0.5
#: search region side, in track box sizes, and the pyramid's smallest face, as a fraction of it
REGION_SCALE = 2.0
REGION_MIN_FACE = 0.6


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    from .tracking import iou

    return float(iou(a, b[None])[0])


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [k,4], scores [k], landmarks [k,5,2]


@dataclass
class _Track:
    """One face the search follows: its last box, the frame it was found at, its velocity per frame."""

    box: np.ndarray
    frame: int
    velocity: np.ndarray

    def predict(self, f: int, params: TrackParams) -> np.ndarray:
        return self.box + self.velocity * min(f - self.frame, params.max_extrapolate)

    def moved(self, box: np.ndarray, f: int) -> None:
        self.velocity = (box - self.box) / max(f - self.frame, 1)
        self.box, self.frame = box, f


class GuidedSearch:
    """The faces of each detection frame, searched the cheapest way that is still a real detection.

    Feed detection frames in order (`frame`). Per frame: with live tracks and no
    refresh due, each track is searched on its own (`refine_on_track`, else
    `detect_in_region`, keeping the face that continues the track), and the frame's
    detections are those faces; if any track's search fails, or there is no live
    track, or at a scene cut, or a refresh is due (detected frames whose index
    f // detect_every is a multiple of `full_every`, and the first detected frame of
    each `SEGMENT`), the whole frame is searched by `full`. A full-frame detection
    continues the tracks its faces match (`pipeline.media.tracking.match`) and starts
    a track for every other face; tracks it missed live on (a face the full frame
    misses for one frame is still searched where it was) until `params.max_gap`
    frames without a hit.

    The state is dropped at every segment start, so the detections of segment
    s depend on frames s*SEGMENT.. only, whoever computes them.
    """

    def __init__(self, mtcnn: Any, full: Callable[[np.ndarray], Detections | None], params: TrackParams,
                 full_every: int, detect_every: int):
        self.mtcnn, self.full = mtcnn, full
        self.params = params
        self.full_every, self.detect_every = int(full_every), int(detect_every)
        self.tracks: list[_Track] = []
        self.segment: int | None = None

    def frame(self, f: int, image: np.ndarray, cut: bool) -> tuple[Detections | None, int]:
        """(detections, REFINED | REGION | FULL) of frame `f` (`cut`: a scene cut since the last call)."""
        if cut or f // SEGMENT != self.segment:
            self.tracks = []
            refresh = True
        else:
            refresh = (f // self.detect_every) % self.full_every == 0
        self.segment = f // SEGMENT
        self.tracks = [t for t in self.tracks if f - t.frame <= self.params.max_gap]
        if self.tracks and not refresh:
            found = self._guided(f, image)
            if found is not None:
                return found
        dets = self.full(image)
        self._restart(f, dets)
        return dets, FULL

    def _guided(self, f: int, image: np.ndarray) -> tuple[Detections, int] | None:
        """Each track searched on its own: the faces (one per track), or None when one track's search fails."""
        faces: list[tuple[np.ndarray, float, np.ndarray]] = []
        keep: list[_Track] = []
        kind = REFINED
        for t in self.tracks:
            predicted = t.predict(f, self.params)
            face = refine_on_track(self.mtcnn, image, predicted)
            if face is None:
                region = detect_in_region(self.mtcnn, image, predicted)
                k = None if region is None else match(predicted, region[0], self.params)
                if k is None:
                    return None
                face, kind = (region[0][k], float(region[1][k]), region[2][k]), REGION
            if any(_box_iou(face[0], other[0]) >= DUPLICATE_IOU for other in faces):
                continue  # two tracks on one face: the first keeps it
            faces.append(face)
            keep.append(t)
        for t, face in zip(keep, faces):
            t.moved(face[0], f)
        self.tracks = keep
        return (np.stack([x[0] for x in faces]), np.array([x[1] for x in faces]),
                np.stack([x[2] for x in faces])), kind

    def _restart(self, f: int, dets: Detections | None) -> None:
        """Tracks after a full-frame detection: continued where a face matches, new for every other face."""
        boxes = np.zeros((0, 4)) if dets is None else np.asarray(dets[0], dtype=np.float64).reshape(-1, 4)
        free = np.ones(len(boxes), dtype=bool)
        for t in self.tracks:
            if not free.any():
                break
            k = match(t.predict(f, self.params), boxes[free], self.params)
            if k is not None:
                k = int(np.flatnonzero(free)[k])
                t.moved(boxes[k], f)
                free[k] = False
        self.tracks += [_Track(boxes[k], f, np.zeros(4)) for k in np.flatnonzero(free)]


def refine_on_track(mtcnn: Any, frame: np.ndarray, box: np.ndarray
                    ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """O-Net on the track's predicted `box` in uint8 `frame` [H,W,3]: (box [4], score, landmarks [5,2]) or None.

    Uses facenet-pytorch's own helpers (`rerec`, `pad`, `imresample`, `bbreg`) and
    its O-Net, with the same normalisation and coordinate conventions as its third
    stage, so an accepted result is what that stage gives for this proposal.
    """
    import torch
    from facenet_pytorch.models.utils.detect_face import bbreg, imresample, pad, rerec

    h, w = frame.shape[:2]
    dtype = next(mtcnn.onet.parameters()).dtype
    proposal = torch.tensor([[*np.asarray(box, dtype=np.float64), 1.0]], dtype=torch.float32)
    sq = rerec(proposal.clone())
    y, ey, x, ex = pad(sq, w, h)
    if not (ey[0] > y[0] - 1 and ex[0] > x[0] - 1):
        return None
    img = torch.from_numpy(np.ascontiguousarray(frame[y[0] - 1:ey[0], x[0] - 1:ex[0]])).to(mtcnn.device)
    crop = imresample(img.permute(2, 0, 1)[None].to(dtype), (48, 48))
    with torch.inference_mode():
        reg, points, prob = mtcnn.onet((crop - 127.5) * 0.0078125)
    score = float(prob[0, 1])
    if score <= float(mtcnn.thresholds[2]):
        return None
    sq = sq.to(reg.device)
    wi, hi = sq[0, 2] - sq[0, 0] + 1, sq[0, 3] - sq[0, 1] + 1
    marks = torch.stack([wi * points[0, :5] + sq[0, 0] - 1, hi * points[0, 5:] + sq[0, 1] - 1], dim=1)
    out = bbreg(torch.cat([sq[:, :4], prob[:, 1:2]], dim=1), reg)[0, :4]
    refined = out.double().cpu().numpy()
    if _box_iou(refined, np.asarray(box, dtype=np.float64)) < REFINE_MIN_IOU:
        return None
    return refined, score, marks.double().cpu().numpy()


def search_region(box: np.ndarray, height: int, width: int, scale: float = REGION_SCALE) -> tuple[int, int, int, int]:
    """Integer crop (x0, y0, x1, y1) of side `scale` x the box size around its centre, clipped to the frame."""
    box = np.asarray(box, dtype=np.float64)
    size = float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0)))
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = scale * size / 2
    return (int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half))),
            int(min(width, np.ceil(cx + half))), int(min(height, np.ceil(cy + half))))


def detect_in_region(mtcnn: Any, frame: np.ndarray, box: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """MTCNN on a crop around `box` with the smallest face from its size: (boxes, scores, landmarks) or None."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    h, w = frame.shape[:2]
    x0, y0, x1, y1 = search_region(box, h, w)
    size = float(np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0)))
    min_face = max(12.0, REGION_MIN_FACE * size)
    if min(x1 - x0, y1 - y0) < min_face * 1.5:  # the pyramid would be empty or cut the face
        return None
    crop = torch.from_numpy(np.ascontiguousarray(frame[y0:y1, x0:x1])).to(mtcnn.device)
    with torch.inference_mode():
        boxes, points = detect_face(crop[None], min_face, mtcnn.pnet, mtcnn.rnet, mtcnn.onet,
                                    mtcnn.thresholds, mtcnn.factor, mtcnn.device)
    bx = np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5)
    if bx.shape[0] == 0:
        return None
    pt = np.asarray(points[0], dtype=np.float64).reshape(-1, 5, 2)
    # a face the crop (not the frame) cuts off: its box is not a full-frame detection's box
    margin = 1.0
    cut = (((bx[:, 0] < margin) & (x0 > 0)) | ((bx[:, 1] < margin) & (y0 > 0))
           | ((bx[:, 2] > x1 - x0 - 1 - margin) & (x1 < w)) | ((bx[:, 3] > y1 - y0 - 1 - margin) & (y1 < h)))
    if cut.all():
        return None
    bx, pt = bx[~cut], pt[~cut]
    offset = np.array([x0, y0], dtype=np.float64)
    return bx[:, :4] + np.tile(offset, 2), bx[:, 4], pt + offset


class SceneCuts:
    """Flags frames that start a new shot, from consecutive frames' coarse colour statistics.

    A cut is a frame whose 8-bin-per-channel colour histogram differs from the
    previous frame's by more than `hist` (half the L1 distance, 0..1) *and* whose
    16x16 grey thumbnail differs by more than `thumb` (mean absolute difference,
    0..1). Both must change: a camera pan moves the thumbnail but keeps the
    colours, a light switching on shifts the colours of the same layout. A missed
    cut still loses the track on a mismatch; a false one only costs a full-frame
    detection and a recorded re-acquisition (usually of the same identity).
    """

    def __init__(self, hist: float = 0.3, thumb: float = 0.08):
        self.hist, self.thumb = hist, thumb
        self._last: tuple[np.ndarray, np.ndarray] | None = None

    @staticmethod
    def _stats(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        small = frame[::max(1, h // 64), ::max(1, w // 64)]
        q = (small // 32).reshape(-1, 3).astype(np.int64)
        hist = np.bincount(q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2], minlength=512) / q.shape[0]
        grey = small.mean(axis=2)
        ys = np.linspace(0, grey.shape[0] - 1, 16).round().astype(int)
        xs = np.linspace(0, grey.shape[1] - 1, 16).round().astype(int)
        return hist, grey[np.ix_(ys, xs)] / 255.0

    def update(self, frames: np.ndarray) -> np.ndarray:
        """Cut flags [b] for uint8 frames [b,H,W,3] that follow the frames of earlier calls."""
        out = np.zeros(len(frames), dtype=bool)
        for i, frame in enumerate(frames):
            cur = self._stats(frame)
            if self._last is not None:
                dh = 0.5 * np.abs(cur[0] - self._last[0]).sum()
                dt = np.abs(cur[1] - self._last[1]).mean()
                out[i] = dh > self.hist and dt > self.thumb
            self._last = cur
        return out


def face_signatures(onet: Any, frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Appearance signature per face: unit vectors [k, 256 + 48]; dot product = mean of two cosines.

    facenet-pytorch ships no offline recognition weights, so this is what is at
    hand: O-Net's penultimate 256-d activation on the 5-point-aligned face (coarse
    face shape and appearance) and the colour histogram (16 bins per channel) of
    the inner face (skin, eyes, mouth; no background). Measured on the 13 shared
    clips (8 people): the same person across frames of one clip >= 0.98, across
    the six CREMA-D sessions of one actor >= 0.963, two different people <= 0.959
    (median 0.85). It separates people who look clearly different (skin tone,
    hair, glasses, lighting of their shot); it is not face recognition, and
    lookalikes under similar light can pass as the subject (and strong lighting
    changes can make the subject look new, which only splits a segment off).
    """
    from .align import align_faces

    # the whole-frame warp: signatures decide identities in faces shards, whose bytes must not move
    crops = align_faces(np.asarray(frame)[None], np.asarray(landmarks), 112,
                        index=np.zeros(len(landmarks), dtype=np.int64), crop_to_face=False)
    emb = onet.embed(crops).astype(np.float64)  # pipeline.models.backbones' "onet" LoadedBackbone
    inner = crops[:, 30:100, 24:88]
    hist = np.stack([np.concatenate([np.histogram(c[..., k], bins=16, range=(0, 256))[0] for k in range(3)])
                     for c in inner]).astype(np.float64)
    hist = np.sqrt(hist / np.maximum(hist.sum(axis=1, keepdims=True), 1))
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    hist /= np.maximum(np.linalg.norm(hist, axis=1, keepdims=True), 1e-12)
    return np.concatenate([emb, hist], axis=1) / np.sqrt(2.0)


def agreement(ref_valid: np.ndarray, ref_boxes: np.ndarray, ref_marks: np.ndarray,
              valid: np.ndarray, boxes: np.ndarray, marks: np.ndarray) -> dict[str, float]:
    """How well a (track-guided) faces output agrees with a full-frame reference, per frame.

    found: share of the reference's valid frames that are valid here too;
    median/min box IoU and median/max landmark distance (largest of the 5 points, in
    reference box sizes) over the frames valid in both.
    """
    from .tracking import iou

    ref_valid, valid = np.asarray(ref_valid, bool), np.asarray(valid, bool)
    both = ref_valid & valid
    ious = np.array([iou(ref_boxes[i], boxes[i][None])[0] for i in np.flatnonzero(both)])
    rb = np.asarray(ref_boxes, np.float64)[both]
    size = np.sqrt(np.clip((rb[:, 2] - rb[:, 0]) * (rb[:, 3] - rb[:, 1]), 1e-9, None))
    dist = np.linalg.norm(np.asarray(marks, np.float64)[both] - np.asarray(ref_marks, np.float64)[both],
                          axis=2).max(axis=1) / size
    empty = not both.any()
    return {"reference_frames": int(ref_valid.sum()),
            "found": float(both.sum() / max(ref_valid.sum(), 1)),
            "iou_median": float("nan") if empty else float(np.median(ious)),
            "iou_min": float("nan") if empty else float(ious.min()),
            "landmark_median": float("nan") if empty else float(np.median(dist)),
            "landmark_max": float("nan") if empty else float(dist.max())}

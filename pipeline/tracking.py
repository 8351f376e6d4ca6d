"""Follow one person's face through a video from per-frame detections.

Re-picking "the largest face" in every frame makes the embedding stream jump
between people whenever a second face grows (someone walks towards the camera)
or the detector misses a frame, and a valence/arousal model then learns from
someone else's face. So the subject is chosen once, by the trial's `subject`
rule, at the first frame with faces, and afterwards each detection frame takes
the face that best matches the track's predicted position (IoU and centre
distance against the last position moved by the last observed velocity). The
track survives short gaps (occlusion, missed detections); only after a long gap
is the subject chosen again by the rule.

Everything here is pure numpy on arrays, so it is unit-tested with synthetic boxes.
Boxes are [x1, y1, x2, y2] in pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUBJECT_RULES = ("largest", "left", "right")


@dataclass(frozen=True)
class TrackParams:
    """Matching tolerances. Distances are in units of the track's box size (sqrt of its area)."""

    min_iou: float = 0.2
    max_center_dist: float = 0.6
    #: frames without a matching face after which the subject is chosen again by the rule
    max_gap: int = 25
    #: the prediction moves with the last velocity for at most this many frames (a face
    #: that stops behind an occluder should not be searched for far beyond it)
    max_extrapolate: int = 10


def areas(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def centers(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box [4] with each of `boxes` [k,4]."""
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    union = areas(box[None])[0] + areas(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def choose_subject(boxes: np.ndarray, subject: str) -> int:
    """Index of the face the trial's `subject` rule picks among `boxes` [k,4] (k >= 1)."""
    if subject not in SUBJECT_RULES:
        raise ValueError(f"subject {subject!r} is not one of {', '.join(SUBJECT_RULES)}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if subject == "largest":
        return int(np.argmax(areas(boxes)))
    cx = centers(boxes)[:, 0]
    return int(np.argmin(cx)) if subject == "left" else int(np.argmax(cx))


def match(predicted: np.ndarray, boxes: np.ndarray, params: TrackParams = TrackParams()) -> int | None:
    """Index of the face in `boxes` that continues a track predicted at `predicted`, or None.

    A candidate qualifies when it overlaps the prediction (IoU >= min_iou) or its
    centre lies within max_center_dist box sizes; among qualifiers the lowest
    cost (1 - IoU + normalised centre distance) wins.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return None
    size = max(float(np.sqrt(areas(predicted[None])[0])), 1.0)
    overlap = iou(predicted, boxes)
    dist = np.linalg.norm(centers(boxes) - centers(predicted[None]), axis=1) / size
    ok = (overlap >= params.min_iou) | (dist <= params.max_center_dist)
    if not ok.any():
        return None
    cost = np.where(ok, 1.0 - overlap + dist, np.inf)
    return int(np.argmin(cost))


def track_subject(frames: list[int], detections: list[np.ndarray | None], subject: str,
                  params: TrackParams = TrackParams()) -> np.ndarray:
    """Pick the subject's face in each detection frame.

    frames: increasing frame indices that were run through the detector;
    detections: for each, the boxes [k,4] found there (None or empty when none).
    Returns [len(frames)] int: the chosen box index, -1 where the subject is not seen.
    """
    if len(frames) != len(detections):
        raise ValueError("frames and detections differ in length")
    chosen = np.full(len(frames), -1, dtype=np.int64)
    last_box: np.ndarray | None = None
    last_frame = 0
    velocity = np.zeros(4)  # box change per frame, from the last two matched positions
    for j, (f, boxes) in enumerate(zip(frames, detections)):
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        if last_box is not None and f - last_frame > params.max_gap:
            last_box = None  # lost for too long: choose again by the rule
        if boxes.shape[0] == 0:
            continue
        if last_box is None:
            k: int | None = choose_subject(boxes, subject)
            velocity = np.zeros(4)
        else:
            predicted = last_box + velocity * min(f - last_frame, params.max_extrapolate)
            k = match(predicted, boxes, params)
            if k is None:
                continue
            velocity = (boxes[k] - last_box) / max(f - last_frame, 1)
        chosen[j] = k
        last_box, last_frame = boxes[k], f
    return chosen


def fill_between(n: int, frames: np.ndarray, valid: np.ndarray, values: dict[str, np.ndarray]
                 ) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Spread values known at detection `frames` over all `n` frames.

    Frames between two valid detections get the linear interpolation of both;
    frames next to one valid and one invalid detection copy the nearer valid one
    when it is the nearer detection, ties to the valid one (a face that vanishes is assumed gone half
    way); frames before the first / after the last detection copy it. Frames with no value are NaN
    and invalid. Returns (valid [n], filled values, filled_mask [n]) where
    filled_mask marks frames that got a value without being detected themselves.
    """
    frames = np.asarray(frames, dtype=np.int64)
    valid = np.asarray(valid, dtype=bool)
    out = {name: np.full((n,) + v.shape[1:], np.nan, dtype=np.float64) for name, v in values.items()}
    out_valid = np.zeros(n, dtype=bool)
    filled = np.zeros(n, dtype=bool)
    for name, v in values.items():
        out[name][frames[valid]] = v[valid]
    out_valid[frames[valid]] = True
    if len(frames) and frames[0] > 0 and valid[0]:  # before the first detection: copy it
        for name, v in values.items():
            out[name][:frames[0]] = v[0]
        out_valid[:frames[0]] = filled[:frames[0]] = True
    for a in range(len(frames)):
        start = frames[a]
        stop = frames[a + 1] if a + 1 < len(frames) else n
        if stop - start <= 1:
            continue
        inner = np.arange(start + 1, stop)
        has_next = a + 1 < len(frames)
        va, vb = valid[a], has_next and valid[a + 1]
        if va and vb:
            w = (inner - start) / (stop - start)
            for name, v in values.items():
                wv = w.reshape((-1,) + (1,) * (v.ndim - 1))
                out[name][inner] = (1 - wv) * v[a] + wv * v[a + 1]
            take = inner
        elif va:
            take = inner if not has_next else inner[inner - start <= stop - inner]
            for name, v in values.items():
                out[name][take] = v[a]
        elif vb:
            take = inner[stop - inner <= inner - start]
            for name, v in values.items():
                out[name][take] = v[a + 1]
        else:
            continue
        out_valid[take] = True
        filled[take] = True
    return out_valid, out, filled

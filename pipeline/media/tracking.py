"""Follow one person's face through a video from per-frame detections.

Re-picking "the largest face" in every frame makes the embedding stream jump
between people whenever a second face grows (someone walks towards the camera)
or the detector misses a frame, and a valence/arousal model then learns from
someone else's face. So the subject is chosen once, by the trial's `subject`
rule, at the first frame with faces, and afterwards each detection frame takes
the face that best matches the track's predicted position (IoU and centre
distance against the last position moved by the last observed velocity). The
track survives short gaps (occlusion, missed detections); after a long gap or a
scene cut it is lost, and the next acquisition is recorded with the identity of
the face it took (`SubjectTracker`: the subject returning, or another person).

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


@dataclass(frozen=True)
class Acquisition:
    """One (re)acquisition of the subject: where a new track segment starts and whose face it follows.

    reason: ``first`` (the first face chosen by the subject rule), ``returned`` (a lost
    track picked up a face whose appearance matches a known identity, the subject's
    first), ``new-identity`` (no face matched: the rule chose a face that is marked
    as another person), ``unchecked`` (no appearance signatures were given, so the
    identity of a re-acquired face is unknown and it is marked as a new one).
    similarity: appearance similarity of the chosen face to the subject's (identity 0)
    reference, NaN when there is none to compare.
    """

    frame: int
    segment: int
    identity: int
    similarity: float
    reason: str


class SubjectTracker:
    """Follow the subject online: feed the detections of each detection frame in order.

    The lost-track policy, explicit: a track is lost after `max_gap` frames without
    a match, or at once at a scene cut (`cut`), where the old position says nothing
    about who is where. The next face found starts a new *segment*. Which face, and
    whose: when appearance signatures are given (unit vectors, compared by dot
    product), the face most similar to the subject's reference (identity 0, taken at
    the first acquisition) is re-acquired if its similarity reaches
    `identity_threshold`; failing that, a face matching another identity seen
    before; failing that, the subject rule chooses and the face is marked as a new
    identity. Frames of identities other than 0 are thus recorded, so training can
    mask or split them; nothing is silently merged into the subject's stream.
    """

    def __init__(self, subject: str, params: TrackParams = TrackParams(), identity_threshold: float = 0.96):
        if subject not in SUBJECT_RULES:
            raise ValueError(f"subject {subject!r} is not one of {', '.join(SUBJECT_RULES)}")
        self.subject = subject
        self.params = params
        self.identity_threshold = float(identity_threshold)
        self.last_box: np.ndarray | None = None
        self.last_frame = 0
        self.velocity = np.zeros(4)  # box change per frame, from the last two matched positions
        self.segment = -1
        self.identity = -1
        self.references: dict[int, np.ndarray] = {}  # identity -> appearance signature
        self.n_identities = 0
        self.acquisitions: list[Acquisition] = []

    def predict(self, frame: int) -> np.ndarray | None:
        """The subject's expected box at `frame`, or None when there is no live track (a lost one is dropped)."""
        if self.last_box is None:
            return None
        gap = frame - self.last_frame
        if gap > self.params.max_gap:
            self.last_box = None  # lost for too long: the next face found is a (re)acquisition
            return None
        return self.last_box + self.velocity * min(gap, self.params.max_extrapolate)

    def cut(self) -> None:
        """A scene cut: the track is lost now, whatever `max_gap` says."""
        self.last_box = None

    def update(self, frame: int, boxes: np.ndarray | None, signatures: np.ndarray | None = None) -> int:
        """Index of the subject's face among `boxes` [k,4] found at `frame` (-1: not seen).

        `signatures` [k,d] (unit vectors) are only read when this update acquires
        (`predict(frame)` is None); callers compute them only then.
        """
        boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        predicted = self.predict(frame)
        if boxes.shape[0] == 0:
            return -1
        if predicted is None:
            k = self._acquire(frame, boxes, signatures)
            self.velocity = np.zeros(4)
        else:
            found = match(predicted, boxes, self.params)
            if found is None:
                return -1
            k = found
            self.velocity = (boxes[k] - self.last_box) / max(frame - self.last_frame, 1)
        self.last_box, self.last_frame = boxes[k], frame
        return k

    def _acquire(self, frame: int, boxes: np.ndarray, signatures: np.ndarray | None) -> int:
        rule = choose_subject(boxes, self.subject)
        sim = float("nan")
        if not self.acquisitions:
            k, identity, reason = rule, 0, "first"
        elif signatures is None or not self.references:
            k, identity, reason = rule, self.n_identities, "unchecked"
        else:
            sig = np.asarray(signatures, dtype=np.float64).reshape(boxes.shape[0], -1)
            ids = sorted(self.references)
            sims = sig @ np.stack([self.references[i] for i in ids]).T  # [k faces, identities]
            best_face = np.argmax(sims, axis=0)
            best_sim = sims[best_face, np.arange(len(ids))]
            # the subject first (identity 0 sorts first), then the most similar other identity
            order = sorted(range(len(ids)), key=lambda j: (ids[j] != 0, -best_sim[j]))
            hit = next((j for j in order if best_sim[j] >= self.identity_threshold), None)
            if hit is not None:
                k, identity, reason = int(best_face[hit]), ids[hit], "returned"
            else:
                k, identity, reason = rule, self.n_identities, "new-identity"
            if 0 in self.references:
                sim = float(sims[k, ids.index(0)])
        if identity >= self.n_identities:
            self.n_identities = identity + 1
        if signatures is not None and identity not in self.references:
            self.references[identity] = np.asarray(signatures, dtype=np.float64).reshape(boxes.shape[0], -1)[k]
        self.segment += 1
        self.identity = identity
        self.acquisitions.append(Acquisition(frame, self.segment, identity, sim, reason))
        return k


def track_subject(frames: list[int], detections: list[np.ndarray | None], subject: str,
                  params: TrackParams = TrackParams()) -> np.ndarray:
    """Pick the subject's face in each detection frame (`SubjectTracker` over a finished list).

    frames: increasing frame indices that were run through the detector;
    detections: for each, the boxes [k,4] found there (None or empty when none).
    Returns [len(frames)] int: the chosen box index, -1 where the subject is not seen.
    """
    if len(frames) != len(detections):
        raise ValueError("frames and detections differ in length")
    tracker = SubjectTracker(subject, params)
    return np.array([tracker.update(f, boxes) for f, boxes in zip(frames, detections)], dtype=np.int64)


def fill_between(n: int, frames: np.ndarray, valid: np.ndarray, values: dict[str, np.ndarray],
                 segments: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Spread values known at detection `frames` over all `n` frames.

    Frames between two valid detections get the linear interpolation of both;
    frames next to one valid and one invalid detection copy the nearer valid one
    when it is the nearer detection, ties to the valid one (a face that vanishes is assumed gone half
    way); frames before the first / after the last detection copy it. With `segments` (track segment
    per detection), two valid detections of different segments (another person, or the subject
    re-acquired after a cut) are never interpolated: each half copies its nearer detection. Frames with no value are NaN
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
        if va and vb and segments is not None and segments[a] != segments[a + 1]:
            near_a = inner - start <= stop - inner
            for name, v in values.items():
                out[name][inner[near_a]] = v[a]
                out[name][inner[~near_a]] = v[a + 1]
            take = inner
        elif va and vb:
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

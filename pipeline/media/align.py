"""Face crops for the embedding backbones: 5-point template alignment, and MTCNN box + margin crops.

Each backbone wants the crop geometry it was trained on:

- ArcFace-style IR-50 (and ONet here, and the organisers' Aff-Wild2
  ``cropped_aligned`` images) use faces warped by a similarity transform onto
  the ArcFace 112x112 five-point template (`align_faces`). The transform is
  estimated in closed form (Umeyama 1991, least squares over rotation, uniform
  scale and translation) with numpy, and the warp runs as one batched
  ``grid_sample`` in torch.
- FaceNet's InceptionResnetV1 (vggface2) was trained on MTCNN *box* crops with
  a margin, resized to 160, with no landmark alignment (davidsandberg/facenet's
  align_dataset_mtcnn; facenet-pytorch's ``MTCNN(image_size=160, margin=...)``
  and its examples). `box_crops` produces exactly those crops with
  facenet-pytorch's own ``extract_face``. Warping to the 112 template and
  upsampling instead shrinks the face: on a CREMA-D frame the eyes land 52 px
  apart instead of 70 (36 grey levels of mean pixel difference), a different
  input distribution for the network.

Coordinates follow the OpenCV convention used by the template and by MTCNN: the
centre of pixel (col, row) is at (x=col, y=row).
"""
from __future__ import annotations

import numpy as np

#: Standard ArcFace (insightface) landmark template for a 112x112 crop:
#: left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y).
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


def template(size: int = 112) -> np.ndarray:
    """The template for a `size` x `size` crop (the 112 template scaled), float64 [5,2]."""
    return ARCFACE_TEMPLATE_112 * (float(size) / 112.0)


def template_for_image(width: int, height: int) -> np.ndarray:
    """Landmarks of an image that is already aligned (e.g. Aff-Wild2 'cropped_aligned' jpgs).

    Scaling the template per axis lets later code treat pre-aligned images and
    detected faces identically: aligning them again is then a plain resize.
    """
    return ARCFACE_TEMPLATE_112 * np.array([width / 112.0, height / 112.0])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transforms mapping `src` points onto `dst` (Umeyama).

    src: [c, k, 2] (or [k, 2]) detected points; dst: [k, 2] or [c, k, 2] targets.
    Returns [c, 2, 3] (or [2, 3]) matrices M with dst ~= M @ [x, y, 1].
    """
    single = np.ndim(src) == 2
    src = np.asarray(src, dtype=np.float64).reshape((-1,) + np.shape(src)[-2:])
    dst = np.broadcast_to(np.asarray(dst, dtype=np.float64), src.shape)
    c, k, _ = src.shape
    mu_s = src.mean(axis=1, keepdims=True)
    mu_d = dst.mean(axis=1, keepdims=True)
    xs = src - mu_s
    xd = dst - mu_d
    var_s = (xs ** 2).sum(axis=(1, 2)) / k  # [c]
    cov = np.einsum("cki,ckj->cij", xd, xs) / k  # [c,2,2] = E[(d)(s)^T]
    u, sig, vt = np.linalg.svd(cov)
    # Reflection guard: force det(R) = +1 (a mirrored face is never the right answer).
    d = np.ones((c, 2))
    d[np.linalg.det(u) * np.linalg.det(vt) < 0, 1] = -1.0
    rot = np.einsum("cij,cj,cjk->cik", u, d, vt)
    scale = (sig * d).sum(axis=1) / np.where(var_s > 0, var_s, np.inf)
    trans = mu_d[:, 0, :] - scale[:, None] * np.einsum("cij,cj->ci", rot, mu_s[:, 0, :])
    m = np.concatenate([scale[:, None, None] * rot, trans[:, :, None]], axis=2)
    return m[0] if single else m


def _pixel_to_norm(width: int, height: int) -> np.ndarray:
    """3x3 map from pixel coordinates to grid_sample's [-1, 1] coordinates (align_corners=False)."""
    return np.array([[2.0 / width, 0.0, 1.0 / width - 1.0],
                     [0.0, 2.0 / height, 1.0 / height - 1.0],
                     [0.0, 0.0, 1.0]])


def prefilter_factor(matrices: np.ndarray, max_factor: int = 8) -> np.ndarray:
    """Integer shrink factor per transform so that sampling never skips source pixels.

    Bilinear sampling reads 2x2 source pixels per output pixel, so a face shrunk by
    more than 2x (a 400-pixel face in HD video onto a 112 crop) aliases: stripes,
    moire on hair and textured clothing, and jittery embeddings. Averaging the
    frame over f x f blocks first (f = floor(1 / scale)) removes that.
    """
    scale = np.sqrt(np.abs(np.linalg.det(np.asarray(matrices)[:, :, :2])))
    return np.clip(np.floor(1.0 / np.maximum(scale, 1e-6)), 1, max_factor).astype(np.int64)


#: window sizes are rounded up to this many blocks (faces of about one size share a batch)
WINDOW_QUANTUM = 8


def _sample_windows(matrices: np.ndarray, size: int, factor: int, width: int, height: int) -> np.ndarray:
    """Per transform, the block-aligned window of the frame its `size` x `size` output reads: [c, 4]
    (x0, y0, x1, y1) in units of `factor`-pixel blocks, clipped to the frame's whole blocks.

    Bilinear sampling reads the 2x2 blocks around each output pixel's source point, so
    the window spans the source points of the output's corner pixels, one block more on
    every side. Outside the window the frame is never read: pixels there get zero
    weight, and outside the frame grid_sample's zero padding is what the window's zero
    fill gives too. An empty window (x1 <= x0) means the face lies off the frame.
    """
    c = matrices.shape[0]
    fwd = np.concatenate([matrices, np.tile([[[0.0, 0.0, 1.0]]], (c, 1, 1))], axis=1)
    inv = np.linalg.inv(fwd)[:, :2, :]  # output pixel -> source pixel
    corners = np.array([[0.0, 0.0], [size - 1.0, 0.0], [0.0, size - 1.0], [size - 1.0, size - 1.0]])
    src = np.einsum("cij,kj->cki", inv[:, :, :2], corners) + inv[:, None, :, 2]  # [c, 4, 2]
    blocks = (src - (factor - 1) / 2.0) / factor  # block j is centred on source pixel f*j + (f-1)/2
    lo = np.floor(blocks.min(axis=1)) - 1
    hi = np.floor(blocks.max(axis=1)) + 2
    limit = np.array([width // factor, height // factor], dtype=np.float64)
    lo = np.clip(lo, 0, limit)
    hi = np.clip(hi, 0, limit)
    return np.concatenate([lo, hi], axis=1).astype(np.int64)


def warp_affine(frames: np.ndarray, matrices: np.ndarray, size: int, batch: int = 32,
                index: np.ndarray | None = None, crop_to_face: bool = True) -> np.ndarray:
    """Warp uint8 frames by forward matrices [c,2,3] into [c,size,size,3] (zeros outside).

    `frames` is [c,H,W,3], or with `index` any number of frames of which transform i
    warps ``frames[index[i]]`` (so callers need not copy whole frames to pick faces).
    Bilinear sampling after an area prefilter where the face shrinks by more than
    2x (`prefilter_factor`); processed `batch` faces at a time so memory stays
    bounded for large frames.

    With `crop_to_face` only the window of the frame each face's output reads
    (`_sample_windows`) is converted to float, pooled and sampled: the face and a
    margin, a sixth of the frame for the bench's large 720p face (converting whole
    frames was about half of the visual stage's time at 720p). grid_sample then sees
    the window's size, rounded up to `WINDOW_QUANTUM` blocks from the face's own
    geometry alone (so a crop never depends on the faces batched with it), instead
    of the frame's, so its float32 coordinates round differently: crops differ from
    a whole-frame warp by at most one grey level in a few pixels (tests/test_faces.py),
    which is why the visual stage's version moved to 3. ``crop_to_face=False`` samples the whole
    frame, the arithmetic faces' appearance signatures were computed with.
    """
    import torch

    frames = np.asarray(frames)
    matrices = np.asarray(matrices, dtype=np.float64)
    c = matrices.shape[0]
    index = np.arange(c) if index is None else np.asarray(index, dtype=np.int64)
    out = np.zeros((c, size, size, 3), dtype=np.uint8)
    if c == 0:
        return out
    factors = prefilter_factor(matrices)
    # degenerate landmarks (all points equal) give a singular transform: leave that crop black
    factors[np.abs(np.linalg.det(matrices[:, :, :2])) < 1e-12] = 0
    to_out = np.linalg.inv(_pixel_to_norm(size, size))
    height, width = frames.shape[1:3]
    with torch.inference_mode():
        for f in np.unique(factors[factors > 0]):
            f = int(f)
            group = np.flatnonzero(factors == f)
            if crop_to_face:
                windows = _sample_windows(matrices[group], size, f, width, height)
            else:
                windows = np.tile([0, 0, width // f, height // f], (len(group), 1))
            extent = windows[:, 2:] - windows[:, :2]  # blocks wide, high
            on_frame = (extent > 0).all(axis=1)  # the others lie off the frame: their crops stay black
            # Each face's tensor size depends on its own window only (rounded up, to batch similar
            # faces), so its crop never depends on which other faces share its batch or chunk.
            padded = -(-extent // WINDOW_QUANTUM) * WINDOW_QUANTUM if crop_to_face else extent
            for dims in np.unique(padded[on_frame], axis=0):
                same = np.flatnonzero(on_frame & (padded == dims).all(axis=1))
                wb, hb = int(dims[0]), int(dims[1])
                for i in range(0, len(same), batch):
                    sel, win = group[same[i:i + batch]], windows[same[i:i + batch]]
                    out[sel] = _warp_batch(frames, index[sel], matrices[sel], win, (wb, hb), f, size,
                                           to_out, crop_to_face)
    return out


def _warp_batch(frames: np.ndarray, rows: np.ndarray, matrices: np.ndarray, windows: np.ndarray,
                blocks: tuple[int, int], f: int, size: int, to_out: np.ndarray, crop_to_face: bool) -> np.ndarray:
    """One batch of `warp_affine`: faces whose windows fit `blocks` (wide, high) of `f`-pixel blocks."""
    import torch
    import torch.nn.functional as F

    wb, hb = blocks
    if crop_to_face:
        pixels = np.zeros((len(rows), hb * f, wb * f, 3), dtype=np.uint8)
        for j, (r, (x0, y0, x1, y1)) in enumerate(zip(rows, windows)):
            pixels[j, :(y1 - y0) * f, :(x1 - x0) * f] = frames[r, y0 * f:y1 * f, x0 * f:x1 * f]
    else:
        pixels = np.require(frames[rows], requirements=("C", "W"))
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float()
    m = matrices
    if f > 1:
        x = F.avg_pool2d(x, f)
        m = np.concatenate([m[:, :, :2] * f, m[:, :, 2:] + m[:, :, :2].sum(axis=2, keepdims=True)
                            * (f - 1) / 2.0], axis=2)
    if crop_to_face:  # window block (0, 0) is frame block (x0, y0)
        m = np.concatenate([m[:, :, :2], m[:, :, 2:] + m[:, :, :2] @ windows[:, :2, None]], axis=2)
    h, w = x.shape[-2:]
    fwd = np.concatenate([m, np.tile([[[0.0, 0.0, 1.0]]], (len(rows), 1, 1))], axis=1)
    theta = _pixel_to_norm(w, h)[None] @ np.linalg.inv(fwd) @ to_out[None]  # output -> input
    grid = F.affine_grid(torch.from_numpy(theta[:, :2, :].astype(np.float32)),
                         [len(rows), 3, size, size], align_corners=False)
    y = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def align_faces(frames: np.ndarray, landmarks: np.ndarray, size: int = 112, index: np.ndarray | None = None,
                crop_to_face: bool = True) -> np.ndarray:
    """Align faces onto the ArcFace template: uint8 [c,H,W,3] + [c,5,2] -> uint8 [c,size,size,3].

    With `index`, landmarks[i] belong to ``frames[index[i]]`` (see `warp_affine`, also for `crop_to_face`).
    """
    frames = np.asarray(frames)
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [c,H,W,3], got {frames.shape}")
    c = frames.shape[0] if index is None else len(index)
    if landmarks.shape != (c, 5, 2):
        raise ValueError(f"landmarks must be [{c},5,2], got {landmarks.shape}")
    if index is not None and len(index) and (np.min(index) < 0 or np.max(index) >= frames.shape[0]):
        raise ValueError(f"index must pick among {frames.shape[0]} frames")
    if not np.isfinite(landmarks).all():
        raise ValueError("landmarks contain NaN (align only frames whose face is valid)")
    if c == 0:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    matrices = similarity_transform(landmarks, template(size))
    return warp_affine(frames, matrices, size, index=index, crop_to_face=crop_to_face)


def transform_points(matrices: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply [c,2,3] matrices to points [c,k,2] (used to check alignment)."""
    return np.einsum("cij,ckj->cki", matrices[:, :, :2], points) + matrices[:, None, :, 2]


def box_crops(frames: np.ndarray, boxes: np.ndarray, size: int = 160, margin: int = 14,
              index: np.ndarray | None = None) -> np.ndarray:
    """facenet-pytorch's MTCNN crop of each frame's box: uint8 [c,H,W,3] + [c,4] -> uint8 [c,size,size,3].

    With `index`, boxes[i] belong to ``frames[index[i]]``.

    The same pixels as ``MTCNN(image_size=size, margin=margin, post_process=False)``
    returns for a PIL frame with that detection: ``extract_face`` widens the box by
    `margin` pixels *of the output* (margin * box_side / (size - margin) in the
    frame), clips it to the frame, crops and resizes with PIL's bilinear filter.
    """
    import torch
    from facenet_pytorch.models.utils.detect_face import extract_face
    from PIL import Image

    frames = np.asarray(frames)
    boxes = np.asarray(boxes, dtype=np.float64)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [c,H,W,3], got {frames.shape}")
    index = np.arange(frames.shape[0]) if index is None else np.asarray(index, dtype=np.int64)
    if boxes.shape != (len(index), 4):
        raise ValueError(f"boxes must be [{len(index)},4], got {boxes.shape}")
    if not np.isfinite(boxes).all() or (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise ValueError("boxes must be finite with x2 > x1 and y2 > y1 (crop only frames whose face is valid)")
    out = np.zeros((len(index), size, size, 3), dtype=np.uint8)
    for i, r in enumerate(index):
        face = extract_face(Image.fromarray(frames[r]), boxes[i], image_size=size, margin=margin)  # [3,S,S], 0..255
        out[i] = face.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return out

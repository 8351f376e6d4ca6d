"""The `visual` stage: one face embedding per frame from a crop of the subject's face.

It reads the `faces` shard (boxes, landmarks, valid) and re-decodes the video in
bounded chunks, so swapping the backbone re-runs only this stage and never face
detection. Each valid frame's face is cropped the way the backbone was trained
(`BackboneSpec.crop`, see `pipeline.media.align`):

- ``template`` (ir50, onet): warped onto the ArcFace five-point template at
  `align_size`, then resized to the backbone's input;
- ``box`` (facenet): the MTCNN box widened by `margin` pixels of the output
  and resized to 160, i.e. facenet-pytorch's ``MTCNN(image_size=160,
  margin=margin)`` crop via its own ``extract_face``; the default margin 14 is
  the setting of facenet-pytorch's LFW evaluation example for these weights.
  (Version 1 warped facenet's faces to the 112 template and upsampled them: on
  a CREMA-D frame the eyes were 52 px apart instead of 70, 36 grey levels of
  mean pixel difference.)

Crops are embedded in batches under ``torch.inference_mode`` (CUDA when
present). In aligned_faces mode the frames come from the trial's pre-aligned
images instead; their stored landmarks are the template scaled to the image
(so the warp is a resize) and their box is the whole image (so a box crop is
the image plus whatever margin fits, i.e. a resize, too).

Output: float16 [n, dim] (half the bytes of float32; embeddings carry no more
precision than that), zeros where the face is invalid; valid = faces' valid.
The shard's `weights` attribute is the sha256 of the weight file ("none" for
random weights), so every embedding names the network that produced it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..media.align import align_faces, box_crops
from ..models.backbone_specs import get_spec
from ..sources.manifest import Trial
from ..engine.resources import get_model, resolve_device
from ..engine.stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage
from .faces import DECODE_CHUNK, aligned_image_path


@register_stage
class VisualStage(Stage):
    """Backbone embeddings of the aligned subject face (see module docstring)."""

    name = "visual"
    #: 2: facenet gets MTCNN box + margin crops (was the template warp); ir50 input is (x - 127.5) / 127.5.
    #: 3: template crops sample only the face's window of the frame (`pipeline.media.align.warp_affine`):
    #:    at most one grey level apart from version 2's whole-frame warp, but not the same bytes.
    version = 3
    inputs = ("probe", "faces")
    gpu_capable = True

    @dataclass
    class Settings:
        backbone: str = "onet"  # onet | facenet | ir50 | random:<arch>  (see pipeline.models.backbones)
        weights: str | None = None  # weight file; facenet also finds facenet-pytorch's cache
        align_size: int = 112  # template crops (ir50, onet): side of the aligned crop (ArcFace template scaled)
        margin: int = 14  # box crops (facenet): pixels of the 160 px output added around the MTCNN box
        batch_size: int = field(default=64, metadata=NOT_IN_KEY)
        device: str = field(default="auto", metadata=NOT_IN_KEY)

        def __post_init__(self) -> None:
            get_spec(self.backbone)  # unknown names fail when the config is read, not hours later
            if self.backbone.startswith("random:") and self.weights:
                raise ValueError(f"visual.backbone {self.backbone!r} uses random weights; "
                                 f"do not also set visual.weights ({self.weights})")
            if int(self.align_size) < 16:
                raise ValueError(f"visual.align_size must be >= 16, got {self.align_size}")
            spec = get_spec(self.backbone)
            top = spec.input_size if spec.crop == "box" else None
            if (isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0
                    or (top is not None and self.margin >= top)):
                raise ValueError(f"visual.margin must be an integer in [0, {top or 'inf'}), got {self.margin!r}")
            if int(self.batch_size) < 1:
                raise ValueError("visual.batch_size must be >= 1")

    def dim(self) -> int | None:
        return get_spec(self.settings.backbone).dim

    def input_files(self, trial: Trial) -> list[Path]:
        # The weight file's identity belongs in the key: replacing it must recompute.
        files = [trial.video]
        if trial.aligned_faces:
            files.append(trial.aligned_faces)
        from ..models.weight_files import weights_file  # no torch: planning asks once per trial

        wfile = weights_file(self.settings.backbone, self.settings.weights)
        if wfile is not None:
            files.append(wfile)
        return files

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        return {"trial": trial.trial,
                "aligned_faces": trial.aligned_faces is not None}

    def _backbone(self):
        from ..models.backbones import load_backbone
        from ..models.weight_files import weights_file

        s = self.settings
        device = resolve_device(s.device)
        # the file's identity is in the model-cache key too: a long-lived worker must not
        # keep serving a model whose weight file was replaced since it was loaded
        wfile = weights_file(s.backbone, s.weights)
        ident = (str(wfile), wfile.stat().st_size, wfile.stat().st_mtime_ns) if wfile else None
        return get_model(("backbone", s.backbone, s.weights, ident, device),
                         lambda: load_backbone(s.backbone, s.weights, device))

    def splits(self, trial: Trial) -> bool:
        # Video frames only: aligned_faces batches run over valid images, not chunks of frames.
        return not trial.aligned_faces

    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        return self.run_range(trial, upstream, 0, upstream["probe"].n_frames)

    def run_range(self, trial: Trial, upstream: dict[str, ShardData], start: int, stop: int) -> StageOutput:
        """Embeddings of frames start..stop-1 (the whole trial from `run`; ranges: `pipeline.engine.ranges`)."""
        s = self.settings
        n = upstream["probe"].n_frames
        faces = upstream["faces"]
        valid = np.asarray(faces.valid, dtype=bool)
        landmarks = np.asarray(faces.extras["landmarks"], dtype=np.float64)
        if valid.shape[0] != n or landmarks.shape[0] != n:
            raise StageError("frame-count", f"{trial.video}: faces shard has {valid.shape[0]} rows, "
                                            f"the probe counted {n} frames")
        net = self._backbone()
        if net.spec.crop == "box":
            size = net.spec.input_size
            geometry = np.asarray(faces.extras["boxes"], dtype=np.float64)
            attrs: dict[str, Any] = {"crop": "box", "margin": int(s.margin), "crop_size": size}
        else:
            size = int(s.align_size)
            geometry = landmarks
            attrs = {"crop": "template", "align_size": size}
        features = np.zeros((stop - start, net.spec.dim), dtype=np.float16)
        if faces.attrs.get("mode") == "aligned_faces":
            chunks = self._aligned_chunks(trial, valid, geometry, size, net.spec.crop)
        else:
            chunks = self._video_chunks(trial, (start, stop), valid, geometry, size, net.spec.crop,
                                        upstream["probe"].time)
        for rows, crops in chunks:
            if len(rows):
                features[rows - start] = net.embed(crops, int(s.batch_size)).astype(np.float16)
        return StageOutput(features=features, valid=valid[start:stop].copy(),
                           attrs={"backbone": s.backbone, "weights": net.weights_id, "dim": net.spec.dim, **attrs})

    def _crop(self, frames: np.ndarray, geometry: np.ndarray, size: int, crop: str,
              index: np.ndarray | None = None) -> np.ndarray:
        """The backbone's crops of `frames` (of frames[index]): geometry is [c,5,2] landmarks (template) or
        [c,4] boxes (box)."""
        if crop == "box":
            return box_crops(frames, geometry, size, int(self.settings.margin), index=index)
        return align_faces(frames, geometry, size, index=index)

    def _video_chunks(self, trial: Trial, frames: tuple[int, int], valid: np.ndarray, geometry: np.ndarray,
                      size: int, crop: str, times: np.ndarray):
        """(frame rows, face crops) per decoded chunk of frames [a, b): memory bounded by the chunk."""
        from ..media.decode import iter_frames

        a, n = frames
        seen = a
        for start, chunk in iter_frames(trial.video, n, chunk=DECODE_CHUNK, start=a, times=times):
            seen = max(seen, start + len(chunk))
            idx = np.flatnonzero(valid[start:start + len(chunk)])
            rows = start + idx
            yield rows, self._crop(chunk, geometry[rows], size, crop, index=idx)
        if seen < n:
            raise StageError("frame-count", f"{trial.video}: decoded {seen} frames, the probe counted {n}")

    def _aligned_chunks(self, trial: Trial, valid: np.ndarray, geometry: np.ndarray, size: int, crop: str):
        """Pre-aligned images of valid frames cropped to `size` (a resize: their landmarks are the template,
        their box the whole image)."""
        from PIL import Image

        folder = Path(trial.aligned_faces or "")
        rows = np.flatnonzero(valid)
        for a in range(0, len(rows), DECODE_CHUNK):
            part = rows[a:a + DECODE_CHUNK]
            crops = np.zeros((len(part), size, size, 3), dtype=np.uint8)
            for j, f in enumerate(part):
                path = aligned_image_path(folder, int(f))
                try:
                    with Image.open(path) as im:
                        img = np.array(im.convert("RGB"))
                except OSError as exc:
                    raise StageError("corrupt-media", f"{path}: cannot read aligned face image ({exc})") from None
                crops[j] = self._crop(img[None], geometry[f][None], size, crop)[0]
            yield part, crops

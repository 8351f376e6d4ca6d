"""The `visual` stage: one face embedding per frame from an aligned crop of the subject.

It reads the `faces` shard (landmarks, valid) and re-decodes the video in
bounded chunks, so swapping the backbone re-runs only this stage and never face
detection. Each valid frame's face is warped onto the ArcFace template at
`align_size` (`pipeline.align`), resized to the backbone's input and embedded
in batches under ``torch.inference_mode`` (CUDA when present). In aligned_faces
mode the frames come from the trial's pre-aligned images instead; their stored
landmarks are the template scaled to the image, so the same warp is a resize.

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

from ..align import align_faces
from ..backbones import get_spec, load_backbone, weights_file
from ..manifest import Trial
from ..resources import get_model, resolve_device
from ..stage import NOT_IN_KEY, ShardData, Stage, StageError, StageOutput, register_stage
from .faces import DECODE_CHUNK, aligned_image_path


@register_stage
class VisualStage(Stage):
    """Backbone embeddings of the aligned subject face (see module docstring)."""

    name = "visual"
    version = 1
    inputs = ("probe", "faces")
    gpu_capable = True

    @dataclass
    class Settings:
        backbone: str = "onet"  # onet | facenet | ir50 | random:<arch>  (see pipeline.backbones)
        weights: str | None = None  # weight file; facenet also finds facenet-pytorch's cache
        align_size: int = 112  # side of the aligned crop (ArcFace template scaled to it)
        batch_size: int = field(default=64, metadata=NOT_IN_KEY)
        device: str = field(default="auto", metadata=NOT_IN_KEY)

        def __post_init__(self) -> None:
            get_spec(self.backbone)  # unknown names fail when the config is read, not hours later
            if self.backbone.startswith("random:") and self.weights:
                raise ValueError(f"visual.backbone {self.backbone!r} uses random weights; "
                                 f"do not also set visual.weights ({self.weights})")
            if int(self.align_size) < 16:
                raise ValueError(f"visual.align_size must be >= 16, got {self.align_size}")
            if int(self.batch_size) < 1:
                raise ValueError("visual.batch_size must be >= 1")

    def dim(self) -> int | None:
        return get_spec(self.settings.backbone).dim

    def input_files(self, trial: Trial) -> list[Path]:
        # The weight file's identity belongs in the key: replacing it must recompute.
        files = [trial.video]
        if trial.aligned_faces:
            files.append(trial.aligned_faces)
        wfile = weights_file(self.settings.backbone, self.settings.weights)
        if wfile is not None:
            files.append(wfile)
        return files

    def trial_params(self, trial: Trial) -> dict[str, Any]:
        return {"trial": trial.trial,
                "aligned_faces": trial.aligned_faces is not None}

    def _backbone(self):
        s = self.settings
        device = resolve_device(s.device)
        # the file's identity is in the model-cache key too: a long-lived worker must not
        # keep serving a model whose weight file was replaced since it was loaded
        wfile = weights_file(s.backbone, s.weights)
        ident = (str(wfile), wfile.stat().st_size, wfile.stat().st_mtime_ns) if wfile else None
        return get_model(("backbone", s.backbone, s.weights, ident, device),
                         lambda: load_backbone(s.backbone, s.weights, device))

    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        s = self.settings
        n = upstream["probe"].n_frames
        faces = upstream["faces"]
        valid = np.asarray(faces.valid, dtype=bool)
        landmarks = np.asarray(faces.extras["landmarks"], dtype=np.float64)
        if valid.shape[0] != n or landmarks.shape[0] != n:
            raise StageError("frame-count", f"{trial.video}: faces shard has {valid.shape[0]} rows, "
                                            f"the probe counted {n} frames")
        net = self._backbone()
        size = int(s.align_size)
        features = np.zeros((n, net.spec.dim), dtype=np.float16)
        if faces.attrs.get("mode") == "aligned_faces":
            chunks = self._aligned_chunks(trial, valid, landmarks, size)
        else:
            chunks = self._video_chunks(trial, n, valid, landmarks, size)
        for rows, crops in chunks:
            if len(rows):
                features[rows] = net.embed(crops, int(s.batch_size)).astype(np.float16)
        return StageOutput(features=features, valid=valid.copy(),
                           attrs={"backbone": s.backbone, "weights": net.weights_id, "dim": net.spec.dim,
                                  "align_size": size})

    def _video_chunks(self, trial: Trial, n: int, valid: np.ndarray, landmarks: np.ndarray, size: int):
        """(frame rows, aligned crops) per decoded chunk: memory bounded by the chunk, not the video."""
        from ..decode import iter_frames

        seen = 0
        for start, chunk in iter_frames(trial.video, n, chunk=DECODE_CHUNK):
            seen = max(seen, start + len(chunk))
            idx = np.flatnonzero(valid[start:start + len(chunk)])
            rows = start + idx
            yield rows, align_faces(chunk[idx], landmarks[rows], size)
        if seen < n:
            raise StageError("frame-count", f"{trial.video}: decoded {seen} frames, the probe counted {n}")

    def _aligned_chunks(self, trial: Trial, valid: np.ndarray, landmarks: np.ndarray, size: int):
        """Pre-aligned images of valid frames, warped to `size` (a resize: their landmarks are the template)."""
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
                crops[j] = align_faces(img[None], landmarks[f][None], size)[0]
            yield part, crops

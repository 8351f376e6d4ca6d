"""What each face backbone eats and emits, by name, without importing torch.

Settings are checked when a config is read (`affpipe config show` validates a
``visual.backbone`` in well under a second), so the table the check needs lives
apart from the networks: `pipeline.models.backbones` builds them (and imports torch).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackboneSpec:
    """What the visual stage needs to know about an architecture without loading it."""

    name: str
    input_size: int  # square input side in pixels
    mean: float  # input = (rgb_uint8 - mean) / std
    std: float
    dim: int
    resize_mode: str  # torch interpolate mode from the aligned crop to input_size
    #: crop geometry the network was trained on: "template" (5-point warp, `pipeline.media.align.align_faces`)
    #: or "box" (MTCNN box + margin at input_size, `pipeline.media.align.box_crops`)
    crop: str


#: Inputs as each network's training code fed them: facenet-pytorch's fixed_image_standardization
#: ((x - 127.5) / 128) on 160 px MTCNN box crops; face.evoLVe's Normalize(mean 0.5, std 0.5) on
#: [0, 1] pixels, i.e. (x - 127.5) / 127.5, on 112 px template-aligned faces; ONet's own
#: (x - 127.5) / 128 (its MTCNN preprocessing) on template-aligned faces area-resized to 48.
BACKBONES: dict[str, BackboneSpec] = {
    "onet": BackboneSpec("onet", 48, 127.5, 128.0, 256, "area", "template"),
    "facenet": BackboneSpec("facenet", 160, 127.5, 128.0, 512, "bilinear", "box"),
    "ir50": BackboneSpec("ir50", 112, 127.5, 127.5, 512, "bilinear", "template"),
}


def get_spec(name: str) -> BackboneSpec:
    """Spec for `name` ("random:<arch>" shares <arch>'s spec); a clear error for unknown names."""
    arch = name.split(":", 1)[1] if name.startswith("random:") else name
    if arch not in BACKBONES:
        known = ", ".join(list(BACKBONES) + [f"random:{k}" for k in BACKBONES])
        raise ValueError(f"unknown backbone {name!r} (known: {known})")
    return BACKBONES[arch]

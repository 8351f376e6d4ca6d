"""Face embedding backbones by name: how to build each, what it eats, how wide its output is.

The visual stage asks this registry for a name ("onet", "facenet", "ir50", or
"random:<arch>") and gets back a loaded model plus the identity of its weights
(sha256 of the file, "none" for random weights), which the stage records in its
shard so every embedding says exactly which network produced it.

Weights policy: pretrained weights that users must download (FaceNet 'vggface2',
IR-50) are only read from local files; when absent the error says where to get
them and where to put them. Random weights exist only under an explicit
"random:" name, never as a silent fallback.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .backbone_specs import BACKBONES, BackboneSpec, get_spec  # noqa: F401  (re-exported)
from ..engine.stage import StageError
from .weights import load_state_dict, sha256_file
# where the weights are is answered without torch (planning asks once per trial); the FACENET_ names
# are re-exported for the tests that set and name them
from .weight_files import (FACENET_ENV, FACENET_FILE, FACENET_URL, IR50_WEIGHTS, ONET_WEIGHTS,  # noqa: F401
                           onet_weights_path, resolve_facenet_weights)

RANDOM_SEED = 0


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    module: nn.Module
    weights_id: str  # sha256 of the weight file, or "none"
    device: str

    def embed(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 face crops [m,S,S,3] (RGB, the spec's `crop` geometry) -> float32 embeddings [m, dim]."""
        out = np.zeros((faces.shape[0], self.spec.dim), dtype=np.float32)
        size = self.spec.input_size
        with torch.inference_mode():
            for i in range(0, faces.shape[0], batch_size):
                x = torch.from_numpy(np.require(faces[i:i + batch_size], requirements=("C", "W"))).to(self.device)
                x = x.permute(0, 3, 1, 2).float()
                if x.shape[-1] != size or x.shape[-2] != size:
                    kwargs = {"align_corners": False, "antialias": True} if self.spec.resize_mode == "bilinear" else {}
                    x = F.interpolate(x, size=(size, size), mode=self.spec.resize_mode, **kwargs)
                x = (x - self.spec.mean) / self.spec.std
                out[i:i + batch_size] = self.module(x).float().cpu().numpy()
        return out


def _seeded(build: Callable[[], nn.Module]) -> nn.Module:
    """Build a module with fixed-seed random weights without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


def _strict_load(module, state: dict, path: Path, arch: str) -> None:
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[0]})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[0]})")
        raise StageError("bad-weights", f"{path}: not a {arch} state_dict: {'; '.join(parts)}")


# --- facenet -----------------------------------------------------------------------------------

def _build_facenet(weights: str | None, random: bool) -> tuple[nn.Module, str]:
    from facenet_pytorch import InceptionResnetV1

    if random:
        return _seeded(lambda: InceptionResnetV1(pretrained=None, classify=False)), "none"
    path = resolve_facenet_weights(weights)
    state = load_state_dict(path, "InceptionResnetV1")
    # the released file carries the 8631-way VGGFace2 classifier; embeddings do not use it
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    model = InceptionResnetV1(pretrained=None, classify=False)
    _strict_load(model, state, path, "InceptionResnetV1")
    return model, sha256_file(path)


# --- ir50 --------------------------------------------------------------------------------------

def _build_ir50(weights: str | None, random: bool) -> tuple[nn.Module, str]:
    from .ir50 import IR50

    if random:
        return _seeded(IR50), "none"
    path = IR50_WEIGHTS.resolve(weights)
    model = IR50()
    _strict_load(model, load_state_dict(path, "IR-50"), path, "IR-50")
    return model, sha256_file(path)


# --- onet --------------------------------------------------------------------------------------

class ONetEmbedding(nn.Module):
    """MTCNN's ONet cut at its penultimate layer (dense5 + PReLU, 256-d).

    Its weights ship inside facenet-pytorch, so this is the backbone that works
    offline with no download. ONet was trained to judge 48x48 face crops, so its
    penultimate activations carry coarse face shape/appearance: far weaker than
    an identity network, but real learned features rather than noise.
    """

    def __init__(self, onet: nn.Module):
        super().__init__()
        self.net = onet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.pool1(n.prelu1(n.conv1(x)))
        x = n.pool2(n.prelu2(n.conv2(x)))
        x = n.pool3(n.prelu3(n.conv3(x)))
        x = n.prelu4(n.conv4(x))
        x = x.permute(0, 3, 2, 1).contiguous()  # ONet's own (Caffe-era) flatten order
        return n.prelu5(n.dense5(x.view(x.shape[0], -1)))


def _build_onet(weights: str | None, random: bool) -> tuple[nn.Module, str]:
    from facenet_pytorch.models.mtcnn import ONet

    if random:
        return ONetEmbedding(_seeded(lambda: ONet(pretrained=False))), "none"
    path = ONET_WEIGHTS.resolve(weights, onet_weights_path())
    net = ONet(pretrained=False)
    _strict_load(net, load_state_dict(path, "ONet"), path, "ONet")
    return ONetEmbedding(net), sha256_file(path)


#: name -> (weights path or None, random) -> (torch module in eval mode, weights identity);
#: the specs (sizes, normalisation, crop) are in `pipeline.models.backbone_specs`, which imports no torch.
BUILDERS: dict[str, Callable[[str | None, bool], tuple[nn.Module, str]]] = {
    "onet": _build_onet, "facenet": _build_facenet, "ir50": _build_ir50,
}


def load_backbone(name: str, weights: str | None = None, device: str = "cpu") -> LoadedBackbone:
    """Build backbone `name` with its weights on `device`, in eval mode."""
    spec = get_spec(name)
    random = name.startswith("random:")
    if random and weights:
        raise ValueError(f"backbone {name!r} uses random weights; do not also name a weight file ({weights})")
    module, weights_id = BUILDERS[spec.name](weights, random)
    module = module.to(device).eval()
    return LoadedBackbone(spec=spec, module=module, weights_id=weights_id, device=device)


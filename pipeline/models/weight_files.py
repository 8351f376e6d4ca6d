"""Where model weight files are (backbones, MTCNN, Silero VAD, VGGish), found without importing torch.

Planning names every stage's input files once per trial (a weight file's
content belongs in the cache key), so a fully cached re-run asks for these
paths 600 times and must not pay torch's ~7 s import for them: the modules
that build the networks (`pipeline.models.backbones`, `pipeline.models.vggish`,
silero_vad, facenet_pytorch) import torch.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
from pathlib import Path

from .vggish_params import WEIGHTS_ENV as VGGISH_ENV, WEIGHTS_FILE as VGGISH_FILE, WEIGHTS_URL as VGGISH_URL
from .weights import WeightsSource

FACENET_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt"
FACENET_FILE = "20180402-114759-vggface2.pt"
FACENET_ENV = "AFFPIPE_FACENET_WEIGHTS"
IR50_WEIGHTS = WeightsSource(
    "IR-50 weights", "download an IR-50 checkpoint trained on MS-Celeb-1M, e.g. face.evoLVe's "
    "'backbone_ir50_ms1m_epoch120.pth' (linked from github.com/ZhaoJ9014/face.evoLVe, 'Model Zoo')", stage="visual")
VGGISH_WEIGHTS = WeightsSource("VGGish weights", f"download {VGGISH_URL}", stage="audio", env=VGGISH_ENV)
ONET_WEIGHTS = WeightsSource("ONet weights", "reinstall facenet-pytorch==2.5.3, which ships them as "
                                             "facenet_pytorch/data/onet.pt", stage="visual", has_default=True)


@functools.lru_cache(maxsize=None)
def package_folder(name: str) -> Path:
    """The folder of an installed package, found without importing it (`Path(name)` when not installed,
    so its files are "not found" where planning asks for them).

    Importing facenet_pytorch (torchvision and all) took 13 s of a 20-trial dry run here;
    silero_vad imports torch too.
    """
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else Path(name)


def facenet_data_dir() -> Path:
    """facenet-pytorch's bundled weight folder (MTCNN's P-, R- and O-nets)."""
    return package_folder("facenet_pytorch") / "data"


def onet_weights_path() -> Path:
    return facenet_data_dir() / "onet.pt"


def torch_home() -> Path:
    """facenet-pytorch's `get_torch_home()`, without importing it: $TORCH_HOME, else
    $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home))


def facenet_cache_path() -> Path:
    """Where facenet-pytorch itself caches the 'vggface2' weights (its load_weights path)."""
    return torch_home() / "checkpoints" / FACENET_FILE


def facenet_weights() -> WeightsSource:
    """FaceNet's weights: facenet-pytorch's own cache by default (its place depends on $TORCH_HOME)."""
    return WeightsSource("FaceNet 'vggface2' weights",
                         f"download {FACENET_URL} to {facenet_cache_path()} (facenet-pytorch's cache)",
                         stage="visual", env=FACENET_ENV, has_default=True)


def resolve_facenet_weights(weights: str | None) -> Path:
    """The FaceNet weight file to use: explicit setting, then $AFFPIPE_FACENET_WEIGHTS, then facenet-pytorch's cache."""
    return facenet_weights().resolve(weights, facenet_cache_path())


def weights_file(name: str, weights: str | None) -> Path | None:
    """The weight file a backbone would read, when it exists (its content belongs in the cache key)."""
    if name.startswith("random:"):
        return None
    if name == "facenet":
        return facenet_weights().existing(weights, facenet_cache_path())
    if name == "onet":
        return ONET_WEIGHTS.existing(weights, onet_weights_path())
    return IR50_WEIGHTS.existing(weights)


def torch_hub_dir() -> Path:
    """`torch.hub.get_dir()`, asked of torch only where torch is loaded already.

    Only `torch.hub.set_dir` (which needs torch loaded) makes the answer differ from
    the documented default: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else
    ~/.cache/torch/hub.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    return torch_home() / "hub"


def vggish_hub_path() -> Path:
    """Where torch's hub (and so torchvggish's download) keeps the VGGish checkpoint."""
    return torch_hub_dir() / "checkpoints" / VGGISH_FILE


def vggish_weights_file(weights: str | None) -> Path | None:
    """The VGGish checkpoint `pipeline.models.vggish.resolve_weights` would use without downloading,
    when it exists: the setting, then $AFFPIPE_VGGISH_WEIGHTS, then torch's hub cache."""
    return VGGISH_WEIGHTS.existing(weights, vggish_hub_path())

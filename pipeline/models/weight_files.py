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

from ..engine.stage import StageError
from .vggish_params import WEIGHTS_ENV as VGGISH_ENV, WEIGHTS_FILE as VGGISH_FILE


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


def weights_file(name: str, weights: str | None) -> Path | None:
    """The weight file a backbone would read, when it exists (its content belongs in the cache key)."""
    if name.startswith("random:"):
        return None
    try:
        if name == "facenet":
            from .backbones import resolve_facenet_weights  # its default path is facenet-pytorch's (torch) home

            return resolve_facenet_weights(weights)
        if name == "onet":
            path = Path(weights).expanduser() if weights else onet_weights_path()
        else:
            path = Path(weights).expanduser() if weights else None
    except StageError:
        return None
    return path if path is not None and path.is_file() else None


def torch_hub_dir() -> Path:
    """`torch.hub.get_dir()`, asked of torch only where torch is loaded already.

    Only `torch.hub.set_dir` (which needs torch loaded) makes the answer differ from
    the documented default: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else
    ~/.cache/torch/hub.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return Path(os.path.expanduser(home)) / "hub"


def vggish_weights_file(weights: str | None) -> Path | None:
    """The VGGish checkpoint `pipeline.models.vggish.resolve_weights` would use without downloading,
    when it exists: the setting, then $AFFPIPE_VGGISH_WEIGHTS, then torch's hub cache."""
    explicit = weights or os.environ.get(VGGISH_ENV)
    path = Path(explicit).expanduser() if explicit else torch_hub_dir() / "checkpoints" / VGGISH_FILE
    return path if path.is_file() else None

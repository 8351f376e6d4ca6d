"""Where backbone weight files are, found without importing torch.

Planning names every stage's input files once per trial (a weight file's
content belongs in the cache key), so a fully cached re-run asks for these
paths 600 times and must not pay torch's ~7 s import for them:
`pipeline.models.backbones` (which builds the networks) imports torch.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from ..engine.stage import StageError


@functools.lru_cache(maxsize=1)
def facenet_data_dir() -> Path:
    """facenet-pytorch's bundled weight folder, found without importing the package.

    Importing facenet_pytorch (torchvision and all) took 13 s of a 20-trial dry run here.
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    return Path(spec.origin).parent / "data" if spec and spec.origin else Path("facenet_pytorch/data")


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

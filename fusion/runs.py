"""Run folders: what a training run leaves behind, and how later commands read it back.

  <run>/config.json          resolved config: train settings, extraction config, fusion,
                             modalities, input widths, splits, shard keys read, library versions
  <run>/norm.npz             normalisation statistics of the training trials (predict reuses them)
  <run>/metrics.jsonl        one line per epoch
  <run>/best.pt, last.pt     checkpoints (last.pt also holds optimiser, schedulers, RNG states)
  <run>/predictions/<split>/<trial>.csv
  <run>/plots/*.png

Checkpoints hold only tensors and plain Python values, so they load with
``torch.load(weights_only=True)``: opening a run folder never executes pickled code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.engine.atomic import atomic_path, atomic_write_text

from .config import TrainConfig, train_config_from_dict


class FusionError(RuntimeError):
    """A user-facing failure of a training-side command; the message is one clear line."""


def write_json_atomic(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save_checkpoint_atomic(path: Path, obj: dict[str, Any]) -> None:
    """Temporary file + rename: a run killed while saving keeps its previous checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FusionError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: say which, in one line)
        raise FusionError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


# -- RNG states as plain values (weights_only-loadable) -------------------------------------------
def rng_state() -> dict[str, Any]:
    import random

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "random": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_to_tuples(state["random"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, (tuple, list)) else x


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


# -- reading a finished (or running) run ------------------------------------------------------------
@dataclass
class RunInfo:
    """A run folder read back: enough to rebuild its model and its inputs."""

    path: Path
    config: dict[str, Any]  # config.json as written
    train: TrainConfig

    @property
    def fusion(self) -> str:
        return self.config["fusion"]

    @property
    def modalities(self) -> list[str]:
        return list(self.config["modalities"])

    @property
    def input_dims(self) -> dict[str, int]:
        # in the run's modality order: heads concatenate modalities in the order of `dims`
        # (config.json is written with sorted keys, so its dict order means nothing)
        dims = self.config["input_dims"]
        return {m: int(dims[m]) for m in self.modalities}

    @property
    def extract_config(self) -> dict[str, Any]:
        return dict(self.config.get("extract_config") or {})

    @property
    def splits(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.config["splits"].items()}

    def checkpoint_path(self) -> Path:
        """best.pt when the run validated at least once, else last.pt."""
        for name in ("best.pt", "last.pt"):
            if (self.path / name).is_file():
                return self.path / name
        raise FusionError(f"{self.path}: no checkpoint (best.pt or last.pt); did the run train an epoch?")

    def build_model(self) -> torch.nn.Module:
        from .models import build_model, load_weights

        model = build_model(self.fusion, self.input_dims, self.train.window, self.train.model or None)
        ckpt = load_checkpoint(self.checkpoint_path())
        load_weights(model, ckpt["model"], self.checkpoint_path())
        model.eval()
        return model


def open_run(path: str | Path) -> RunInfo:
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise FusionError(f"{path}: not a run folder (no config.json); train one with `affpipe train`")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FusionError(f"{cfg_path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    for key in ("fusion", "modalities", "input_dims", "splits", "train"):
        if key not in config:
            raise FusionError(f"{cfg_path}: missing {key!r} (written by an incompatible affpipe version?)")
    return RunInfo(path=path, config=config, train=train_config_from_dict(config["train"], source=str(cfg_path)))

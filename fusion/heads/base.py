"""What every fusion head shares: the registry, the base class and the per-frame regressor.

A head receives the temporal encoders' outputs, one [B, L, d_m] tensor per
modality in the model's modality order, and returns unbounded [B, L, 2]
(valence, arousal); `FusionModel` applies the single tanh. Heads declare the
settings they read in `options` (name -> default), so `build_model` can reject
misspelt keys without each head re-implementing config parsing.
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

HEADS: dict[str, type["FusionHead"]] = {}


def register_head(name: str) -> Callable[[type["FusionHead"]], type["FusionHead"]]:
    """Class decorator: make a head buildable by name (`build_model(name, ...)`)."""

    def decorate(cls: type[FusionHead]) -> type[FusionHead]:
        if name in HEADS and HEADS[name] is not cls:
            raise ValueError(f"fusion head {name!r} is registered twice ({HEADS[name].__name__}, {cls.__name__})")
        cls.name = name
        HEADS[name] = cls
        return cls

    return decorate


class FusionHead(nn.Module):
    """Base class. Subclasses set `options` and `fixed_window` and implement `forward(feats)`.

    `fixed_window`: True when the head owns matrices over the time axis
    (W_jm in R^{L x L}), so it only runs on windows of exactly `window` frames.
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    fixed_window: ClassVar[bool] = False

    def __init__(self, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)
        self.window = window
        self.cfg = dict(cfg)

    def forward(self, feats: list[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class Regressor(nn.Module):
    """Per-frame Linear -> BatchNorm -> LeakyReLU -> Linear (the JCA/RJCMA prediction layer, tanh outside).

    BatchNorm normalises each hidden unit over all frames of the batch (B*L
    samples), so it is the same whether a frame sits early or late in a window.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.act = nn.LeakyReLU(0.01)
        self.fc2 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, in_dim] -> [B, L, out_dim]
        h = self.fc1(x)
        h = self.bn(h.transpose(1, 2)).transpose(1, 2)
        return self.fc2(self.act(h))


def matrix(rows: int, cols: int) -> nn.Parameter:
    """A plain learned matrix (the papers' W's have no bias), Xavier-initialised like the JCA code."""
    w = torch.empty(rows, cols)
    nn.init.xavier_uniform_(w)
    return nn.Parameter(w)


def check_int(cfg: dict[str, Any], key: str, head: str, low: int = 1) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"fusion head {head!r}: {key} must be an integer >= {low}, got {value!r}")
    return value


def check_split_width(cfg: dict[str, Any], width_key: str, heads_key: str, head: str) -> tuple[int, int]:
    """(width, heads) of a multi-head attention: both integers >= 1, the width a multiple of the heads."""
    width = check_int(cfg, width_key, head)
    heads = check_int(cfg, heads_key, head)
    if width % heads:
        raise ValueError(f"fusion head {head!r}: {width_key} ({width}) must be divisible by {heads_key} ({heads})")
    return width, heads


def check_float(cfg: dict[str, Any], key: str, head: str, low: float, high: float | None = None,
                low_open: bool = False) -> float:
    value = cfg[key]
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if not bad:
        bad = value <= low if low_open else value < low
        bad = bad or (high is not None and value > high)
    if bad:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'}{']' if high is not None else ')'}"
        raise ValueError(f"fusion head {head!r}: {key} must be a number in {rng}, got {value!r}")
    return float(value)


__all__ = ["HEADS", "register_head", "FusionHead", "Regressor", "matrix", "check_int", "check_float"]

"""Build a fusion model: one causal TCN per modality, then a registered fusion head, then tanh.

`build_model(fusion, dims, window, cfg)`; `cfg` (the ``train.model`` section of
a config) may hold, all optional:

Encoders (every head):
- ``tcn``: {modality: [widths...]} per-modality TCN widths (one level per entry);
  the key ``"default"`` applies to modalities not named. Built-in defaults:
  visual and text [256, 256, 128, 128], audio and any other name [64, 64, 32, 32]
  (widths the field's later work used for video/text and audio; LFAN, Zhang et al.
  ABAW2 2021, used visual [128]*4 and audio [32]*4).
- ``kernel``: TCN kernel size (5); ``dropout``: TCN dropout (0.1).
- ``tcn_batchnorm`` (null | true | false): BatchNorm1d over each TCN's output
  channels, as RJCMA's released model and ABAW3's LFAN apply before fusion.
  null = on for those released-code forms (``variant: dense`` and ``lfan`` with
  ``lfan_heads`` >= 2), off otherwise (``variant: paper``, concat, avtca, and
  single-head ``lfan``, whose ABAW2 code has no such layer); the resolved value
  is stored in the model's spec.

Heads (each reads only its own; see each module's docstring):
- ``hidden`` (64): regressor width (concat, jca, rjca, rjcma, grjca, hgrjca);
- ``iterations`` (null = the head's default: jca 1, rjca/rjcma/grjca/hgrjca 2);
- ``variant``: "paper" (the equations) | "dense" (the authors' released code);
- ``k`` (32): attention-map width of the paper variant;
- ``attn_dropout`` (0.1): dropout inside the dense variant and the AVT-CA blocks;
- ``project_joint`` (null = true for 2 modalities, false otherwise): dense variant's Linear(d, d) on J;
- ``temperature`` (0.1), ``gate_activation`` ("relu" | "identity"): GRJCA / HGRJCA gates;
- ``lfan_heads`` (1 | 2), ``lfan_dim`` (32), ``lfan_dropout`` (0.1): LFAN;
- ``d_model`` (64), ``heads`` (4), ``layers`` (1), ``mlp_ratio`` (2), ``n_classes`` (0 = no
  classifier): AVT-CA.

A key that no head and no encoder knows is an error (a misspelt setting must
not silently train the default). Keys that belong to another head are
ignored, so one config can be swept over several heads.
"""
from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from .heads import HEADS, FusionHead
from .tcn import TemporalConvNet

WIDE = [256, 256, 128, 128]
NARROW = [64, 64, 32, 32]
DEFAULT_TCN: dict[str, list[int]] = {"visual": WIDE, "text": WIDE, "audio": NARROW}
ENCODER_OPTIONS: dict[str, Any] = {"tcn": {}, "kernel": 5, "dropout": 0.1, "tcn_batchnorm": None}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def list_heads() -> list[str]:
    """Names `build_model` accepts, sorted."""
    return sorted(HEADS)


def _known_options() -> dict[str, Any]:
    known = dict(ENCODER_OPTIONS)
    for cls in HEADS.values():
        for key, value in cls.options.items():
            known.setdefault(key, value)
    return known


def _widths(modality: str, tcn: dict[str, Any]) -> list[int]:
    widths = tcn.get(modality, tcn.get("default", DEFAULT_TCN.get(modality, NARROW)))
    if (not isinstance(widths, (list, tuple)) or not widths
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
        raise ValueError(f"model config: tcn.{modality} must be a non-empty list of positive integers, got {widths!r}")
    return list(widths)


class FusionModel(nn.Module):
    """Per-modality TCNs + fusion head; forward({modality: [B, L, d_m]}) -> [B, L, 2] in [-1, 1].

    `modalities` is the fixed order in which the head sees the modalities (the
    order of `dims`). `spec` holds the resolved arguments, so
    ``build_model(**model.spec)`` rebuilds the same architecture for a checkpoint.
    """

    def __init__(self, fusion: str, dims: dict[str, int], window: int, cfg: dict[str, Any]):
        super().__init__()
        head_cls = HEADS[fusion]
        self.fusion = fusion
        self.window = window
        self.modalities: list[str] = list(dims)
        self.input_dims = dict(dims)
        tcn = cfg["tcn"]
        widths = {m: _widths(m, tcn) for m in self.modalities}
        kernel, dropout = cfg["kernel"], cfg["dropout"]
        if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 1:
            raise ValueError(f"model config: kernel must be a positive integer, got {kernel!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"model config: dropout must be a number in [0, 1], got {dropout!r}")
        head_cfg = {key: cfg.get(key, default) for key, default in head_cls.options.items()}
        norm = cfg["tcn_batchnorm"]
        if norm is None:  # RJCMA's and ABAW3-LFAN's released models have it; the equations and ABAW2's LFAN do not
            heads = head_cfg.get("lfan_heads")
            multi_head = isinstance(heads, int) and not isinstance(heads, bool) and heads >= 2
            norm = (fusion == "lfan" and multi_head) or head_cfg.get("variant") == "dense"
        if not isinstance(norm, bool):
            raise ValueError(f"model config: tcn_batchnorm must be true, false or null, got {norm!r}")
        self.encoders = nn.ModuleDict({
            m: TemporalConvNet(dims[m], widths[m], kernel_size=kernel, dropout=float(dropout), batch_norm=norm)
            for m in self.modalities
        })
        self.head: FusionHead = head_cls({m: widths[m][-1] for m in self.modalities}, window, head_cfg)
        resolved = {"tcn": widths, "kernel": kernel, "dropout": dropout, "tcn_batchnorm": norm, **head_cfg}
        self.spec: dict[str, Any] = {"fusion": fusion, "dims": dict(dims), "window": window, "cfg": resolved}

    @property
    def receptive_field(self) -> dict[str, int]:
        return {m: enc.receptive_field for m, enc in self.encoders.items()}

    def encode(self, x: dict[str, Tensor]) -> list[Tensor]:
        """Check the inputs against what the model was built for and run the TCNs (modality order)."""
        missing = [m for m in self.modalities if m not in x]
        extra = [m for m in x if m not in self.input_dims]
        if missing or extra:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"unexpected {', '.join(extra)}"] if extra else [])
            raise ValueError(f"fusion model inputs: {'; '.join(parts)} (model expects {', '.join(self.modalities)})")
        shape = None
        for m in self.modalities:
            t = x[m]
            if t.dim() != 3 or t.shape[-1] != self.input_dims[m]:
                raise ValueError(f"fusion model input {m!r} must be [B, L, {self.input_dims[m]}], got {tuple(t.shape)}")
            if shape is None:
                shape = tuple(t.shape[:2])
            elif tuple(t.shape[:2]) != shape:
                raise ValueError(f"fusion model inputs disagree on [B, L]: {self.modalities[0]} {shape}, "
                                 f"{m} {tuple(t.shape[:2])}")
        if self.head.fixed_window and shape[1] != self.window:
            raise ValueError(f"fusion head {self.fusion!r} was built for windows of exactly {self.window} frames "
                             f"(its time-axis matrices are {self.window}x{self.window}); got {shape[1]}: "
                             "pad shorter sequences to the window and mask them")
        return [self.encoders[m](x[m]) for m in self.modalities]

    def forward(self, x: dict[str, Tensor]) -> Tensor:
        return torch.tanh(self.head(self.encode(x)))

    def classify(self, x: dict[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Clip logits from heads that have a pooled classifier (avtca with n_classes > 0)."""
        if not hasattr(self.head, "classify"):
            raise RuntimeError(f"fusion head {self.fusion!r} has no classification head (use 'avtca' with n_classes > 0)")
        return self.head.classify(self.encode(x), mask)


def load_weights(model: FusionModel, state: dict[str, Tensor], source: Any) -> None:
    """Load a checkpoint into `model`; one that does not fit (another architecture, e.g. a run trained
    before a head was corrected to its released code) is one clear line instead of torch's key dump."""
    try:
        model.load_state_dict(state)
    except RuntimeError:
        own = model.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shaped = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
        first = (missing or unexpected or shaped or ["?"])[0]
        raise ValueError(f"{source}: checkpoint does not fit the {model.fusion!r} model this affpipe builds "
                         f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shaped)} reshaped "
                         f"parameters, e.g. {first!r}); it was trained with another architecture (an earlier "
                         f"affpipe version or config): retrain it") from None


def build_model(fusion: str, dims: dict[str, int], window: int, cfg: dict[str, Any] | None = None) -> FusionModel:
    """Validate the arguments (one clear line per mistake) and build the model."""
    if fusion not in HEADS:
        raise ValueError(f"unknown fusion head {fusion!r} (known: {', '.join(list_heads())})")
    if not dims:
        raise ValueError("build_model: dims must name at least one modality")
    for m, d in dims.items():
        if not isinstance(m, str) or not _NAME.match(m):
            raise ValueError(f"build_model: modality name {m!r} must be an identifier (letters, digits, _)")
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"build_model: input width of {m!r} must be a positive integer, got {d!r}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"build_model: window must be a positive integer, got {window!r}")
    cfg = dict(cfg or {})
    known = _known_options()
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f"model config: unknown setting(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    tcn = cfg.get("tcn", {})
    if not isinstance(tcn, dict):
        raise ValueError(f"model config: tcn must be a mapping of modality -> widths, got {tcn!r}")
    stray = sorted(set(tcn) - set(dims) - {"default"})
    if stray:
        raise ValueError(f"model config: tcn names modality(ies) {', '.join(stray)} that the model does not have "
                         f"({', '.join(dims)})")
    merged = {**ENCODER_OPTIONS, **cfg}
    return FusionModel(fusion, dict(dims), window, merged)


__all__ = ["build_model", "load_weights", "FusionModel", "list_heads", "DEFAULT_TCN"]

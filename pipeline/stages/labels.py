"""The `labels` stage: Aff-Wild2 valence/arousal (and optionally EXPR/AU) on the decoded frame grid.

Frame policy "truncate" (the only one; it is recorded in every shard's ``policy`` attribute):

    Annotation line k after the header (1-based) labels decoded frame k-1 (0-based), as the
    organisers pair line k with video frame k. The decoded frames define the grid: every
    decoded frame gets a row. Annotation lines beyond the last decoded frame are dropped and
    counted (``n_surplus_lines``); decoded frames beyond the last annotation line are
    unlabelled and counted (``n_missing_lines``). Frames whose value is below -1 (written -5)
    are unlabelled too. Nothing is shifted, stretched or resampled.

Why: the container's frame count and the label count disagree by +-1 in about a fifth of
Aff-Wild2's trials, and some videos have many more frames than labels. Keeping the decoded
grid means every modality lines up row for row, and the counts kept per trial (``n_labelled``
= annotation lines, ``n_decoded``) let a user audit or reject trials; ``max_mismatch`` turns a
difference larger than the user will accept into a `frame-mismatch` failure instead.

A trial without an annotation (test split, or a corpus without VA labels) gets an all-invalid
output, not an error: its frames still need predictions.

The key holds the trial name, not its split (version 2): the output never reads the split, so
moving a trial between folds reuses its label shard (version 1 wrote one shard per fold).

Optional tracks: manifest extra columns ``expr`` and ``au`` name EXPR / AU files of the same
layout (relative paths resolve against the manifest's folder); they are stored as extras
``expr`` (int8 [n], -1 = unlabelled) and ``au`` (int8 [n, m], -1 = unlabelled) under the same
policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.annotations import AnnotationError, read_au, read_expr, read_va
from ..sources.manifest import Trial
from ..engine.stage import ShardData, Stage, StageError, StageOutput, register_stage

POLICIES = ("truncate",)
#: The declared frame policy in one paragraph (README, CLI help, `cache ls`).
POLICY_TEXT = (
    "labels policy 'truncate': annotation line k after the header (1-based) labels decoded frame k-1; "
    "every decoded frame gets a row; annotation lines beyond the last decoded frame are dropped and "
    "counted (n_surplus_lines); decoded frames beyond the last annotation line are unlabelled and "
    "counted (n_missing_lines); values below -1 (written -5) are unlabelled; nothing is shifted or "
    "resampled; max_mismatch (default: none) fails trials whose line count differs from the decoded "
    "frame count by more than it."
)


def _extra_path(trial: Trial, column: str) -> Path | None:
    """A path from a manifest extra column, resolved like the manifest's own path columns."""
    value = (trial.extra or {}).get(column, "").strip()
    if not value:
        return None
    p = Path(value).expanduser()
    if p.is_absolute():
        return p
    manifest = trial.source.rsplit(":", 1)[0] if trial.source else ""
    return (Path(manifest).resolve().parent if manifest else Path.cwd()) / p


def _fit(values: np.ndarray, n: int, fill: Any) -> np.ndarray:
    """Truncate or pad (with `fill`) the first axis of `values` to n rows."""
    if values.shape[0] >= n:
        return values[:n]
    pad = np.full((n - values.shape[0],) + values.shape[1:], fill, dtype=values.dtype)
    return np.concatenate([values, pad])


@register_stage
class LabelsStage(Stage):
    """Valence/arousal targets per decoded frame under the declared "truncate" policy."""

    name = "labels"
    version = 2
    inputs = ("probe",)

    @dataclass
    class Settings:
        policy: str = "truncate"
        #: Largest accepted |annotation lines - decoded frames|; None accepts any (counts are kept).
        max_mismatch: int | None = None

        def __post_init__(self) -> None:
            # here, not in the stage's __init__: `affpipe config show` must refuse what extract refuses
            if self.policy not in POLICIES:
                raise ValueError(f"labels policy {self.policy!r} is not one of {', '.join(POLICIES)}")
            if self.max_mismatch is not None and int(self.max_mismatch) < 0:
                raise ValueError(f"labels max_mismatch must be >= 0 or None, got {self.max_mismatch}")

    def dim(self) -> int:
        return 2

    def input_files(self, trial: Trial) -> list[Path]:
        files = [trial.annotation] if trial.annotation else []
        return files + [p for p in (_extra_path(trial, "expr"), _extra_path(trial, "au")) if p]

    def _check_count(self, path: Path, k: int, n: int) -> None:
        limit = self.settings.max_mismatch
        if limit is not None and abs(k - n) > int(limit):
            raise StageError("frame-mismatch", f"{path}: {k} annotation line(s) for {n} decoded frame(s) "
                                               f"(difference {abs(k - n)} > max_mismatch {limit})")

    def _read(self, reader: Any, path: Path, trial: Trial) -> Any:
        if not path.is_file():
            raise StageError("missing-file", f"{path}: annotation file not found (trial {trial.trial})")
        try:
            return reader(path)
        except AnnotationError as exc:
            raise StageError("bad-annotation", str(exc)) from None

    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        n = upstream["probe"].n_frames
        features = np.zeros((n, 2), dtype=np.float32)
        valid = np.zeros(n, dtype=bool)
        extras: dict[str, np.ndarray] = {}
        attrs: dict[str, Any] = {"policy": self.settings.policy, "n_decoded": n,
                                 "annotation": str(trial.annotation) if trial.annotation else None}

        if trial.annotation:
            va = self._read(read_va, trial.annotation, trial)
            k = len(va)
            self._check_count(trial.annotation, k, n)
            m = min(k, n)
            valid[:m] = va.labelled[:m]
            features[:m, 0] = np.where(valid[:m], va.valence[:m], 0.0)
            features[:m, 1] = np.where(valid[:m], va.arousal[:m], 0.0)
            attrs.update(n_labelled=k, n_surplus_lines=max(0, k - n), n_missing_lines=max(0, n - k))
        else:
            attrs.update(n_labelled=0, n_surplus_lines=0, n_missing_lines=0)
        attrs["n_labelled_frames"] = int(valid.sum())

        expr_path = _extra_path(trial, "expr")
        if expr_path:
            expr = self._read(read_expr, expr_path, trial)
            self._check_count(expr_path, len(expr), n)
            extras["expr"] = _fit(np.where(expr.labelled, expr.label, -1).astype(np.int8), n, -1)
            attrs.update(expr_classes=list(expr.classes), expr_lines=len(expr))
        au_path = _extra_path(trial, "au")
        if au_path:
            au = self._read(read_au, au_path, trial)
            self._check_count(au_path, len(au), n)
            extras["au"] = _fit(au.values, n, -1)
            attrs.update(au_names=list(au.names), au_lines=len(au))
        return StageOutput(features=features, valid=valid, extras=extras, attrs=attrs)

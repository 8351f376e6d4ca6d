"""Training settings: the ``train`` section of the same config file the extractor reads.

One file drives both halves on purpose: the shards a run consumes are defined
by the ``stages`` section, so a run folder that records the whole file (plus
the shard keys it actually read) can be reproduced without guessing which
extraction produced its inputs. Unknown keys are errors for the same reason
the extractor rejects them: a misspelt ``lerning_rate`` silently ignored is a
week of wrong experiments.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine.config import ConfigError, load_config_file
from pipeline.engine.settings import build_settings

DEFAULT_STAGE_MAP = {"visual": "visual", "audio": "audio", "text": "text"}


@dataclass
class TrainConfig:
    """Everything that changes a run's numbers (recorded whole in the run's config.json)."""

    seed: int = 0
    window: int = 300  # frames per window (Aff-Wild2 practice; JCA-style heads fix it at build time)
    hop: int = 200  # stride between windows; a tail window always covers the last frames
    batch_size: int = 32
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0  # linear warm-up over this many epochs of steps, then ReduceLROnPlateau
    plateau_patience: int = 2
    plateau_factor: float = 0.5
    min_lr: float = 1e-6
    early_stopping_patience: int = 6  # epochs without a better val mean CCC before stopping; 0 = never
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    amp: bool = True  # mixed precision, used on CUDA only (CPU runs stay float32 and deterministic)
    device: str = "auto"
    threads: int = 0  # torch CPU threads while training (0 = all cores): CPU sums depend on the thread
    # count, so it is fixed per run for a config + seed to reproduce the same numbers
    num_workers: int = -1  # DataLoader workers; -1 = auto (0 on CPU, where the model is the bottleneck;
    #                        up to 8 on CUDA, so a GPU never waits for batches). Batches are identical either way.
    memory_budget_mb: int = 8192  # trials are held in memory when they fit, else opened lazily per worker
    modalities: list[str] = field(default_factory=lambda: ["visual", "audio", "text"])
    stage_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_STAGE_MAP))
    label_stage: str = "labels"
    valid_channel: bool = True  # append each modality's valid flag as one more input feature
    keep_other_identities: bool = False  # false: frames where the tracked face is another person's (faces
    #   `identity` != 0) are missing in face-derived modalities (visual); true: train on them as the subject's
    n_folds: int = 6
    plot_trials: int = 3  # val trials drawn as prediction-vs-label plots
    model: dict[str, Any] = field(default_factory=dict)  # passed to fusion.models.build_model as cfg

    def stage_of(self, modality: str) -> str:
        return self.stage_map.get(modality, modality)

    def workers_for(self, device_type: str) -> int:
        """DataLoader workers actually used on a device (resolves the -1 = auto setting)."""
        if self.num_workers >= 0:
            return self.num_workers
        if device_type != "cuda":
            return 0
        import os

        return max(1, min(8, (os.cpu_count() or 2) // 2))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __post_init__(self) -> None:
        # the one place training settings are checked: `train`, `evaluate` and `config show` all build this
        problems = self.problems()
        if problems:
            raise ConfigError(f"train.{problems[0]}")

    def problems(self) -> list[str]:
        """What is wrong with these values (empty when nothing): ones that would fail later obscurely."""
        checks = [
            (self.window >= 1, "window must be >= 1"),
            (1 <= self.hop <= self.window, "hop must be between 1 and window"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.epochs >= 0, "epochs must be >= 0"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"),
            (0 < self.plateau_factor < 1, "plateau_factor must be in (0, 1)"),
            (self.plateau_patience >= 0, "plateau_patience must be >= 0"),
            (self.early_stopping_patience >= 0, "early_stopping_patience must be >= 0"),
            (self.grad_clip >= 0, "grad_clip must be >= 0"),
            (self.num_workers >= -1, "num_workers must be >= 0 (or -1 for auto)"),
            (self.threads >= 0, "threads must be >= 0"),
            (self.memory_budget_mb >= 0, "memory_budget_mb must be >= 0"),
            (len(self.modalities) >= 1, "modalities must name at least one modality"),
            (len(set(self.modalities)) == len(self.modalities), "modalities must not repeat"),
            (self.n_folds >= 2, "n_folds must be >= 2"),
            (self.plot_trials >= 0, "plot_trials must be >= 0"),
        ]
        return [message for ok, message in checks if not ok]

    def validate(self, source: str = "config") -> "TrainConfig":
        """Check again after fields were changed in place (CLI overrides such as ``--epochs``)."""
        problems = self.problems()
        if problems:
            raise ConfigError(f"{source}: train.{problems[0]}")
        return self


def train_config_from_dict(values: dict[str, Any] | None, source: str = "config") -> TrainConfig:
    """A TrainConfig from a ``train`` section, through the settings schema every stage uses.

    Values are coerced or refused by `pipeline.engine.settings.build_settings` (unknown
    names and wrong types are errors), then checked by `TrainConfig.__post_init__`.
    Two conveniences on top: ``modalities`` may be ``"visual,audio"`` like the CLI
    flag, and a partial ``stage_map`` extends the defaults instead of replacing them.
    """
    values = dict(values or {})
    if isinstance(values.get("modalities"), str):
        values["modalities"] = [v.strip() for v in values["modalities"].split(",") if v.strip()]
    try:
        cfg = build_settings(TrainConfig, values, "train")
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    if "stage_map" in values:
        cfg.stage_map = {**DEFAULT_STAGE_MAP, **cfg.stage_map}
    return cfg


def load_config(path: str | Path | None) -> tuple[TrainConfig, dict[str, Any]]:
    """Read a config file: (train settings, the whole file as a dict for the cache reader)."""
    if path is None:
        return TrainConfig(), {}
    data = load_config_file(path)
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise ConfigError(f"{path}: 'train' must be an object")
    return train_config_from_dict(train, source=str(path)), data


def show_config(config: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """The whole resolved config, stages and training, every default filled in (`affpipe config show`).

    It goes through the same schema as `extract` (stage settings) and `train`
    (`train_config_from_dict`), so it refuses exactly what they refuse. Imports
    no torch: the command answers in well under a second.
    """
    from pipeline.engine.config import show_config as show_stages

    resolved = show_stages(config)
    if isinstance(config, (str, Path)):
        train = load_config_file(config).get("train")
        source = str(config)
    else:
        train, source = (config or {}).get("train"), "config"
    if train is not None and not isinstance(train, dict):
        raise ConfigError(f"{source}: 'train' must be an object")
    resolved["train"] = train_config_from_dict(train, source=source).to_dict()
    return resolved


__all__ = ["ConfigError", "TrainConfig", "load_config", "train_config_from_dict", "show_config", "DEFAULT_STAGE_MAP"]

"""Extraction config: which settings each stage runs with.

A config file is JSON (or TOML) with a ``stages`` section keyed by stage name,
an optional ``preset`` (``default`` or ``paper``), an optional ``fingerprint``
(``sampled`` or ``full``: how input files are identified, `pipeline.engine.identity`),
and a ``train`` section that the trainer reads. Only the settings that differ from the defaults need to be
written; `affpipe config show` prints the full resolved form. Unknown stage or
setting names are errors, because a misspelt setting silently ignored is
exactly how stale features end up in a paper.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from .stage import STAGES, Stage, settings_from_dict

#: Named bundles of stage settings. `paper` selects the stronger backbones the
#: literature used; they need weight files (see README, "Weights").
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "default": {},
    "paper": {"visual": {"backbone": "ir50"}, "audio": {"model": "vggish"}},
}


TOP_LEVEL = ("preset", "fingerprint", "stages", "train")


class ConfigError(ValueError):
    """Bad config input; the message names the file (and line/column for syntax errors)."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a JSON or TOML config file into a dict, with file:line:col on syntax errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    else:
        try:
            data = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be an object with 'stages' and/or 'train'")
    unknown = set(data) - set(TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))} "
                          f"(expected {', '.join(repr(k) for k in TOP_LEVEL)})")
    return data


def resolve_stage_settings(config: dict[str, Any] | str | Path | None, *, source: str = "config") -> dict[str, Any]:
    """Settings object for every registered stage: defaults < preset < explicit values."""
    from .. import stages as _register  # noqa: F401  (importing registers every stage)

    if isinstance(config, (str, Path)):
        source = str(config)
        config = load_config_file(config)
    config = dict(config or {})
    preset_name = config.get("preset", "default")
    if preset_name not in PRESETS:
        raise ConfigError(f"{source}: unknown preset {preset_name!r} (known: {', '.join(PRESETS)})")
    explicit = config.get("stages") or {}
    if not isinstance(explicit, dict):
        raise ConfigError(f"{source}: 'stages' must be an object keyed by stage name")
    unknown = set(explicit) - set(STAGES)
    if unknown:
        raise ConfigError(f"{source}: unknown stage(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(STAGES))})")
    out: dict[str, Any] = {}
    for name, cls in STAGES.items():
        given = explicit.get(name)
        if given is not None and not isinstance(given, dict):
            raise ConfigError(f"{source}: stages.{name} must be an object of setting: value, got {given!r}")
        values = {**PRESETS[preset_name].get(name, {}), **(given or {})}
        try:
            out[name] = settings_from_dict(cls, values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {exc}") from None
    return out


def fingerprint_mode(config: dict[str, Any] | str | Path | None) -> str:
    """How input files are identified: ``sampled`` (default) or ``full`` content hashing (`pipeline.engine.identity`)."""
    from .identity import MODES

    source = str(config) if isinstance(config, (str, Path)) else "config"
    data = load_config_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    mode = data.get("fingerprint", "sampled")
    if mode not in MODES:
        raise ConfigError(f"{source}: fingerprint must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def build_stages(config: dict[str, Any] | str | Path | None) -> dict[str, Stage]:
    """Instantiate every registered stage with its resolved settings."""
    settings = resolve_stage_settings(config)
    return {name: STAGES[name](settings[name]) for name in settings}


def show_config(config: dict[str, Any] | str | Path | None = None) -> dict[str, Any]:
    """The fully resolved config (what `affpipe config show` prints)."""
    settings = resolve_stage_settings(config)
    train: dict[str, Any] = {}
    if isinstance(config, (str, Path)):
        train = load_config_file(config).get("train", {}) or {}
    elif isinstance(config, dict):
        train = config.get("train", {}) or {}
    return {"fingerprint": fingerprint_mode(config),
            "stages": {name: dataclasses.asdict(s) for name, s in settings.items()}, "train": train}

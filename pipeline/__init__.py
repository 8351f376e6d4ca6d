"""affpipe extraction: manifest -> Dask stage graph -> frame-keyed HDF5 shard cache.

Python API (mirrors the CLI):
    pipeline.extract(manifest, cache="cache", config=None, stages=None, scheduler="processes")
    pipeline.open_cache(cache, manifest, config=None).load(trial, ["visual", "audio", "labels"])

The names below are resolved on first use (module ``__getattr__``), so that
``import pipeline.sources.manifest`` or ``affpipe config show`` does not pay for Dask,
h5py and the runner: the package is imported by every submodule import.

Layout: `engine` (stage contract, keys and plans, Dask runner, shard store, reader),
`media` (decode, align, track), `models` (networks and their weights), `sources`
(manifest, Aff-Wild2 layout, annotations, transcripts), `stages` (one file per
stage), `asr` (speech recognition for trials without transcripts).
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {
    "extract": "engine.runner", "ExtractSummary": "engine.runner",
    "open_cache": "engine.reader", "CacheReader": "engine.reader", "TrialArrays": "engine.reader",
    "MissingShardsError": "engine.reader",
    "read_manifest": "sources.manifest", "write_manifest": "sources.manifest", "Trial": "sources.manifest",
    "ManifestError": "sources.manifest",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))

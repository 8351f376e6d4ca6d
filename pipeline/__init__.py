"""affpipe extraction: manifest -> Dask stage graph -> frame-keyed HDF5 shard cache.

Python API (mirrors the CLI):
    pipeline.extract(manifest, cache="cache", config=None, stages=None, scheduler="processes")
    pipeline.open_cache(cache, manifest, config=None).load(trial, ["visual", "audio", "labels"])
"""
from __future__ import annotations

from .manifest import ManifestError, Trial, read_manifest, write_manifest
from .reader import CacheReader, MissingShardsError, TrialArrays, open_cache
from .runner import ExtractSummary, extract

__all__ = ["extract", "open_cache", "read_manifest", "write_manifest", "Trial", "ManifestError",
           "CacheReader", "TrialArrays", "MissingShardsError", "ExtractSummary"]

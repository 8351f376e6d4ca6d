"""What runs inside a Dask task: compute one (trial, stage) shard, or say why not.

Only small dicts travel through the scheduler (a task spec in, a status out);
arrays go from the stage straight into the shard file on the shared cache
path. Failures are returned as values, not raised, so Dask never retries or
cancels the other trials: the driver turns them into ledger entries. A
`StageError` is a verdict on the input (sticky: "failed before" until the input
changes); anything else (disk full, an unreadable upstream shard, a bug) is
reported as not sticky, so the next run tries again.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.manifest import Trial
from .shards import finite_problems, read_shard, write_shard
from .stage import STAGES, ShardData, Stage, StageError, StageOutput, settings_from_dict
from .store import CacheStore, format_exception


@functools.lru_cache(maxsize=1)
def _installed_versions() -> tuple[tuple[str, str], ...]:
    import importlib.metadata as md

    out = {}
    for dist in ("affpipe", "torch", "torchaudio", "torchvision", "facenet-pytorch", "decord",
                 "sentence-transformers", "numpy", "h5py"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return tuple(out.items())


def library_versions() -> dict[str, str]:
    """Versions of everything that can change the numbers in a shard.

    Read once per process: the lookup walks every installed distribution's metadata
    (~50 ms, once per shard before), and a running worker's imported libraries do not
    change under it.
    """
    return dict(_installed_versions())


def worker_name() -> str:
    """The Dask worker running this task ("local" under the local schedulers): shows where GPU tasks ran."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return "local"


def _check_rows(stage: str, out: StageOutput, n: int) -> None:
    """Every frame-keyed array must have exactly one row per decoded frame."""
    for name, arr in (("features", out.features), ("valid", out.valid)):
        if arr is not None and arr.shape[0] != n:
            raise StageError("frame-count", f"stage {stage} returned {arr.shape[0]} rows of {name} for {n} frames")


def _blocked(base: dict[str, Any], upstream_results: tuple[dict[str, Any], ...]) -> dict[str, Any] | None:
    for res in upstream_results:
        if res.get("status") not in ("done", "cached"):
            return {**base, "status": "blocked", "kind": res.get("kind", "upstream-failed"),
                    "message": f"upstream {res.get('stage')} did not complete: {res.get('message', '')}"}
    return None


def task_base(spec: dict[str, Any]) -> dict[str, Any]:
    return {"stage": spec["stage"], "trial": spec["trial"]["trial"], "key": spec["key"], "worker": worker_name()}


def failure(base: dict[str, Any], spec: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """A failure as a value: `StageError` is a sticky verdict on the input, anything else is retried."""
    if isinstance(exc, StageError):
        return {**base, "status": "failed", "kind": exc.kind, "message": str(exc),
                "traceback": format_exception(exc), "sticky": True}
    return {**base, "status": "failed", "kind": type(exc).__name__,
            "message": f"{spec['trial']['video']}: {exc}", "traceback": format_exception(exc), "sticky": False}


def stage_of(spec: dict[str, Any]) -> Stage:
    cls = STAGES[spec["stage"]]
    return cls(settings_from_dict(cls, spec["settings"]))


def write_output(spec: dict[str, Any], stage: Stage, trial: Trial, upstream: dict[str, ShardData],
                 out: StageOutput, path: Path) -> int:
    """Check a stage's output (rows, finite values) and write it as the shard at `path`; its frame count."""
    if spec["stage"] == "probe" or out.time is not None:
        time_grid = np.asarray(out.time, dtype=np.float64)
    else:
        time_grid = upstream["probe"].time
    n = int(time_grid.shape[0])
    _check_rows(spec["stage"], out, n)
    declared = out.attrs.get("frame_keyed_extras")
    bad = finite_problems(n, time_grid, out.features, out.valid, out.extras,
                          declared if isinstance(declared, list) else None)
    if bad:  # never cache numbers that would poison every experiment downstream
        raise StageError("non-finite", f"{spec['trial']['video']}: stage {spec['stage']} produced "
                                       f"{'; '.join(bad)}; nothing was written")
    probe_attrs = upstream["probe"].attrs if "probe" in upstream else out.attrs
    attrs = {
        "fps": probe_attrs.get("fps"),
        "n_decoded": probe_attrs.get("n_decoded", n),
        "n_container": probe_attrs.get("n_container"),
        "weights": "none",
        **out.attrs,
        "trial": trial.trial,
        "stage": spec["stage"],
        "key": spec["key"],
        "version": stage.version,
        "settings": spec["settings"],
        "upstream": spec["upstream_keys"],
        "fingerprint": spec["fingerprint"],
        "versions": library_versions(),
        "created": time.time(),
    }
    write_shard(path, frame=np.arange(n, dtype=np.int64), time=time_grid, features=out.features,
                valid=out.valid, extras=out.extras, attrs=attrs)
    return n


def compute_shard(spec: dict[str, Any], *upstream_results: dict[str, Any]) -> dict[str, Any]:
    """Run one stage for one trial and write its shard; return a small status dict.

    `spec`: cache, stage, settings (dict), trial (dict), key, path, upstream {stage: path}.
    """
    from .. import stages as _register  # noqa: F401  (registers stages in a fresh worker process)
    from .resources import bound_heap_growth

    bound_heap_growth()

    started = time.time()
    base = task_base(spec)
    blocked = _blocked(base, upstream_results)
    if blocked:
        return blocked
    store = CacheStore(spec["cache"])
    path = Path(spec["path"])
    try:
        with store.lock(spec["key"]):
            if path.exists():  # another run finished it while we waited for the lock
                return {**base, "status": "cached"}
            trial = Trial.from_dict(spec["trial"])
            stage = stage_of(spec)
            upstream = {name: read_shard(Path(p)) for name, p in spec["upstream"].items()}
            n = write_output(spec, stage, trial, upstream, stage.run(trial, upstream), path)
    except Exception as exc:  # noqa: BLE001  one broken trial must never stop the others
        return failure(base, spec, exc)
    return {**base, "status": "done", "seconds": time.time() - started, "frames": n}

"""Long-lived per-process resources: models loaded once per worker, not per task.

Every scheduler affpipe supports runs tasks inside long-lived processes (the
local cluster's workers, a user's `dask worker`, or this process for `sync` and
`threads`), so a process-wide cache keyed by what defines the model gives
"load once per worker" everywhere. `AffpipeWorkerPlugin` (pipeline.runner)
clears it on worker teardown.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, Hashable

_MODELS: dict[Hashable, Any] = {}
_LOCK = threading.Lock()
LOAD_COUNTS: dict[Hashable, int] = {}  # how often each model was built in this process (tests assert 1)


def get_model(key: Hashable, factory: Callable[[], Any]) -> Any:
    """Return the cached object for `key`, building it with `factory` on first use."""
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = factory()
            LOAD_COUNTS[key] = LOAD_COUNTS.get(key, 0) + 1
        return _MODELS[key]


def clear_models() -> None:
    with _LOCK:
        _MODELS.clear()


def resolve_device(requested: str = "auto") -> str:
    """'auto' means CUDA when this process sees a GPU, else CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def configure_torch_threads(n_threads: int | None = None) -> int:
    """Give torch cores / workers threads; oversubscription cost ~35% here (2 workers x 2 threads)."""
    import torch

    if n_threads is None:
        n_threads = int(os.environ.get("AFFPIPE_TORCH_THREADS", "0")) or max(1, os.cpu_count() or 1)
    torch.set_num_threads(max(1, n_threads))
    return torch.get_num_threads()

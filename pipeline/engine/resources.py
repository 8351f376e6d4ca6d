"""Long-lived per-process resources: models loaded once per worker, not per task.

Every scheduler affpipe supports runs tasks inside long-lived processes (the
local cluster's workers, a user's `dask worker`, or this process for `sync` and
`threads`), so a process-wide cache keyed by what defines the model gives
"load once per worker" everywhere. `AffpipeWorkerPlugin` (pipeline.engine.runner)
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


_HEAP_BOUNDED = False


def bound_heap_growth(threshold: int = 1 << 20) -> None:
    """Keep glibc from growing the heap with video length.

    glibc raises its mmap threshold dynamically each time a large block is freed,
    after which MTCNN's big, varying-size pyramid buffers come from the heap and
    fragment it: measured on a 720p video, peak RSS of `faces` grew from 3.1 GB
    (15 s) to 7.1 GB (60 s). A fixed threshold (which also switches the dynamic
    adjustment off) kept it flat at ~3.1 GB over 30 s. Set once per process via
    mallopt, so it works under every scheduler, not only where we control the env.
    """
    global _HEAP_BOUNDED
    if _HEAP_BOUNDED:
        return
    _HEAP_BOUNDED = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, threshold)
        libc.mallopt(m_trim_threshold, threshold)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def resolve_device(requested: str = "auto") -> str:
    """'auto' means CUDA when this process sees a GPU, else CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def threads_per_worker(workers_on_host: int = 1) -> int:
    """Torch threads for each of `workers_on_host` workers sharing this machine's cores.

    Cores / workers: oversubscribing cost ~35% here (2 workers x 2 threads on 2 cores).
    ``AFFPIPE_TORCH_THREADS`` overrides it, for a machine shared with other work or to
    time one core's worth per worker (bench/extract.py's long-video rows).
    """
    raw = os.environ.get("AFFPIPE_TORCH_THREADS", "").strip()
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"AFFPIPE_TORCH_THREADS must be a positive integer, got {raw!r}")
        return int(raw)
    return max(1, (os.cpu_count() or 1) // max(1, workers_on_host))


def configure_torch_threads(n_threads: int | None = None) -> int:
    """Set this process's torch threads (default `threads_per_worker()`); returns what torch now uses."""
    import torch

    torch.set_num_threads(max(1, n_threads if n_threads is not None else threads_per_worker()))
    return torch.get_num_threads()

"""Run a plan on Dask: one task per (trial, stage), any scheduler, live progress, failure ledger.

The scheduler is passed in by name, never owned beyond the run: `sync` and
`threads` use Dask's local schedulers in this process, `processes` starts a
`distributed.LocalCluster` of spawned single-threaded workers (models load once
per worker), and `tcp://host:port` drives an existing `dask scheduler` /
`dask worker` cluster whose workers share the cache path.
"""
from __future__ import annotations

import dataclasses
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import dask
from dask.callbacks import Callback

from .config import build_stages, fingerprint_mode
from .index import TrialIndex, file_stamp
from ..sources.manifest import Trial, read_manifest
from .plan import Task, make_plan, stage_order
from .resources import threads_per_worker
from .ranges import SPLIT_FRAMES, assemble_shard, compute_part, estimate_frames, n_parts, stage_align
from .store import CacheStore
from .worker import compute_shard

STATUSES = ("cached", "done", "failed", "blocked", "failed-before")


@dataclass
class ExtractSummary:
    """What one `extract` run did, per stage (tests and scripts read this, not timings)."""

    counts: dict[str, dict[str, int]]
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    cache: str = ""
    summary_path: str = ""
    #: per stage: compute seconds summed over tasks and frames written (for benchmarks)
    timing: dict[str, dict[str, float]] = field(default_factory=dict)
    #: per stage: the Dask workers that computed its shards and their frame-range parts ("local" for sync/threads)
    workers: dict[str, list[str]] = field(default_factory=dict)
    #: shards found damaged (failed checksum, truncated, unreadable): moved aside and recomputed
    damaged: list[dict[str, str]] = field(default_factory=list)
    #: per stage: trials computed as frame-range parts and assembled (pipeline.engine.ranges)
    split: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.get("failed", 0) + c.get("blocked", 0) + c.get("failed-before", 0) == 0
                   for c in self.counts.values())

    def computed(self, stage: str | None = None) -> int:
        stages = [stage] if stage else list(self.counts)
        return sum(self.counts[s].get("done", 0) for s in stages)

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts, "failures": self.failures, "seconds": self.seconds,
                "dry_run": self.dry_run, "cache": self.cache, "ok": self.ok, "timing": self.timing,
                "workers": self.workers, "damaged": self.damaged, "split": self.split}


# -- schedulers ---------------------------------------------------------------------------------

class AffpipeWorkerPlugin:
    """Per-worker setup: torch threads = cores / workers on the host; models and kept frames dropped on teardown."""

    name = "affpipe"

    def __init__(self, torch_threads: int | None = None):
        self.torch_threads = torch_threads

    def setup(self, worker: Any) -> None:
        from .resources import configure_torch_threads

        configure_torch_threads(self.torch_threads)

    def teardown(self, worker: Any) -> None:
        from ..media.decode import FRAME_CACHE
        from .resources import clear_models

        clear_models()
        FRAME_CACHE.clear()


def _worker_plugin(torch_threads: int | None) -> Any:
    from distributed import WorkerPlugin

    class _Plugin(AffpipeWorkerPlugin, WorkerPlugin):
        pass

    return _Plugin(torch_threads)


@contextmanager
def distributed_client(scheduler: str, workers: int | None) -> Iterator[Any]:
    """A `distributed.Client` for 'processes' (a local spawned cluster) or a tcp:// address."""
    from distributed import Client, LocalCluster

    # The nanny's default MALLOC_TRIM_THRESHOLD_ halved InceptionResnetV1 speed here; unset it.
    # worker-saturation inf: every task without inputs (the probes) goes to a worker at once, so
    # workers choose by `stage_priorities`; queued at the scheduler instead (the default), a trial's
    # probe waited until a worker ran dry, and the last trial's faces + visual ran alone at the end.
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                          "distributed.worker.multiprocessing-method": "spawn",
                          "distributed.worker.daemon": False,
                          "distributed.scheduler.worker-saturation": float("inf")}):
        if scheduler == "processes":
            n = workers or max(1, min(os.cpu_count() or 1, 4))
            # No dashboard, and the scheduler's HTTP server on a free port: no "Port 8787 is already in use".
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=40, scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            client = Client(cluster)
            threads = threads_per_worker(n)
        else:
            cluster = None
            client = Client(scheduler, timeout="20s")
            hosts: dict[str, int] = {}
            for w in client.scheduler_info(n_workers=-1)["workers"].values():
                hosts[w["host"]] = hosts.get(w["host"], 0) + 1
            threads = None if not hosts else threads_per_worker(max(hosts.values()))
        try:
            client.register_plugin(_worker_plugin(threads), name="affpipe")
            yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()


class _LocalProgress(Callback):
    """Feeds task starts and results of Dask's local schedulers to the progress display."""

    def __init__(self, on_start: Callable[[str], None], on_result: Callable[[str, dict], None]):
        super().__init__()
        self.on_start, self.on_result = on_start, on_result

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        self.on_start(key if isinstance(key, str) else str(key))

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(result, dict) and "status" in result:
            self.on_result(key if isinstance(key, str) else str(key), result)


# -- progress display ---------------------------------------------------------------------------

class StageProgress:
    """Live per-stage counts (done / cached / failed / running) with rich, then a summary table."""

    def __init__(self, tasks: list[Task], order: list[str], enabled: bool = True):
        self.order = order
        self.counts = {s: {k: 0 for k in (*STATUSES, "running", "todo")} for s in order}
        self.total = {s: 0 for s in order}
        for t in tasks:
            self.total[t.stage] += 1
            key = "todo" if t.status == "todo" else t.status
            self.counts[t.stage][key] += 1
        self.enabled = enabled
        self._progress = None
        self._ids: dict[str, Any] = {}

    def __enter__(self) -> "StageProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

            from .progress import stderr_progress

            self._progress = stderr_progress(TextColumn("{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                                             TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                             transient=False)
            self._progress.__enter__()
            for s in self.order:
                self._ids[s] = self._progress.add_task(s, total=self.total[s], counts="")
            self._refresh()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._refresh()
            self._progress.__exit__(*exc)

    def _refresh(self) -> None:
        if self._progress is None:
            return
        for s in self.order:
            c = self.counts[s]
            finished = c["cached"] + c["done"] + c["failed"] + c["blocked"] + c["failed-before"]
            text = (f"done {c['done']}  cached {c['cached']}  failed {c['failed'] + c['failed-before']}"
                    f"  blocked {c['blocked']}  running {c['running']}")
            self._progress.update(self._ids[s], completed=finished, counts=text)

    def started(self, stage: str) -> None:
        self.counts[stage]["running"] += 1
        self._refresh()

    def finished(self, stage: str, status: str, was_running: bool) -> None:
        c = self.counts[stage]
        if was_running:
            c["running"] = max(0, c["running"] - 1)
        c["todo"] = max(0, c["todo"] - 1)
        c[status] += 1
        self._refresh()

    def table(self) -> Any:
        from rich.table import Table

        table = Table(title="affpipe extract")
        for col in ("stage", "trials", "computed", "cached", "failed", "failed before", "blocked"):
            table.add_column(col, justify="right" if col != "stage" else "left")
        for s in self.order:
            c = self.counts[s]
            table.add_row(s, str(self.total[s]), str(c["done"]), str(c["cached"]), str(c["failed"]),
                          str(c["failed-before"]), str(c["blocked"]))
        return table


# -- the run ------------------------------------------------------------------------------------

def _spec(task: Task, store: CacheStore, settings: dict[str, Any], paths: dict[tuple[str, str], Path]
          ) -> dict[str, Any]:
    return {
        "cache": str(store.root),
        "stage": task.stage,
        "settings": settings,
        "trial": task.trial.to_dict(),
        "key": task.key,
        "path": str(task.path),
        "upstream": {dep: str(paths[(task.trial.trial, dep)]) for dep in task.upstream},
        "upstream_keys": task.upstream,
        "fingerprint": task.inputs,
    }


def extract(manifest: str | Path | list[Trial], cache: str | Path = "cache",
            config: dict[str, Any] | str | Path | None = None, stages: list[str] | None = None,
            scheduler: str = "processes", workers: int | None = None, dry_run: bool = False,
            retry_failed: bool = False, progress: bool = True, gpu: bool = False,
            console: Any = None, split_frames: int | None = SPLIT_FRAMES) -> ExtractSummary:
    """Extract the selected stages (and their dependencies) for every trial of a manifest.

    This is the Python API behind `affpipe extract`; it returns an `ExtractSummary`.
    `split_frames`: stages that can split a trial into frame ranges do so for trials
    longer than this, so several workers share one long video (`pipeline.engine.ranges`);
    None or 0 never splits. It is in no key: results are the same either way.
    """
    started = time.time()
    if scheduler not in ("processes", "threads", "sync") and not scheduler.startswith("tcp://"):
        raise ValueError(f"unknown scheduler {scheduler!r}: use processes, threads, sync or tcp://HOST:PORT")
    threads_per_worker()  # a bad AFFPIPE_TORCH_THREADS is an error before any work, not in a worker
    trials = read_manifest(manifest) if not isinstance(manifest, list) else manifest
    stage_objs = build_stages(config)
    order = stage_order(stages, stage_objs)
    store = CacheStore(cache)
    if not dry_run:
        store.ensure_writable()
    with store.hold(exclusive=False):  # gc and repair wait until this run ends
        return _extract_held(trials, stage_objs, order, store, config, scheduler, workers, dry_run,
                             retry_failed, progress, gpu, console, started, split_frames)


def _extract_held(trials: list[Trial], stage_objs: dict[str, Any], order: list[str], store: CacheStore,
                  config: Any, scheduler: str, workers: int | None, dry_run: bool, retry_failed: bool,
                  progress: bool, gpu: bool, console: Any, started: float,
                  split_frames: int | None = SPLIT_FRAMES) -> ExtractSummary:
    """Plan, build the graph (`build_graph`), run it (`schedule`), summarise."""
    tasks = make_plan(trials, stage_objs, order, store, retry_failed=retry_failed,
                      fingerprint_mode=fingerprint_mode(config))
    damaged = [{"trial": t.trial.trial, "stage": t.stage, "path": str(t.path), "problem": t.damaged}
               for t in tasks if t.damaged]
    prog = StageProgress(tasks, order, enabled=progress and not dry_run)

    if dry_run:
        counts = {s: {k: prog.counts[s][k] for k in ("cached", "todo", "failed-before", "blocked")} for s in order}
        return ExtractSummary(counts, [], time.time() - started, True, str(store.root), damaged=damaged)

    index = TrialIndex(store.root)
    failures = _settle_plan(tasks, store, index)
    graph = build_graph(tasks, stage_objs, order, store, gpu, split_frames)
    log = RunLog(graph.by_name, prog, store, index, failures)
    with prog:
        if graph.delayed:
            schedule(graph, scheduler, workers, log.started, log.finished, store)
    summary = ExtractSummary({s: {k: prog.counts[s][k] for k in STATUSES} for s in order}, failures,
                             time.time() - started, False, str(store.root), timing=log.timing,
                             workers=log.worker_names, damaged=damaged, split=log.split)
    summary.summary_path = str(store.save_run_summary(summary.to_dict()))
    if console is not None:
        console.print(prog.table())
    return summary


def _settle_plan(tasks: list[Task], store: CacheStore, index: TrialIndex) -> list[dict[str, Any]]:
    """Before computing: move damaged shards aside, index newly verified ones, ledger missing inputs.

    Returns the failures known before anything runs (inputs missing at plan time).
    """
    by_trial: dict[str, list[Task]] = {}
    for t in tasks:
        if t.damaged and t.path is not None and t.path.exists():
            store.quarantine(t.path)
        if t.reindex:
            by_trial.setdefault(t.trial.trial, []).append(t)
    for trial_id, ts in by_trial.items():
        index.record(trial_id, [t.index_entry() for t in ts])

    failures: list[dict[str, Any]] = []
    known = {e.key for e in store.ledger()}
    for t in tasks:  # inputs missing at plan time: one ledger entry per (trial, stage, key)
        if t.status == "blocked" and not t.blocked_by:
            if t.key not in known:
                store.record_failure(t.trial.trial, t.stage, t.key, t.error_kind, t.error, recipe=t.recipe)
            failures.append({"trial": t.trial.trial, "stage": t.stage, "kind": t.error_kind, "message": t.error})
    return failures


# -- graph building -----------------------------------------------------------------------------

@dataclass
class TaskGraph:
    """What one run computes: a Dask delayed per shard to compute, and the plan's tasks by Dask key."""

    delayed: list[Any]
    by_name: dict[str, Task]


def stage_priorities(order: list[str], stage_objs: dict[str, Any]) -> dict[str, int]:
    """Per stage: the longest chain of stages in this run that wait on it, itself included.

    Used as Dask's task priority (higher runs first where a worker has a choice): probe 3,
    faces 2, and the stages nothing waits on (visual, audio, labels, text) 1. Every trial's
    critical path (probe -> faces) starts before work that could wait, and the short tasks
    come last, where they even out the workers' finishing times (long tasks first, short
    ones last). A trial's visual task runs on the worker that ran its faces task (Dask places
    a task where its inputs were computed), which lets it reuse the frames faces decoded
    (`pipeline.media.decode._FrameCache`) on short clips.
    """
    height: dict[str, int] = {}
    for s in reversed(order):  # dependency order reversed: every consumer of s is done before s
        users = [d for d in order if s in stage_objs[d].inputs]
        height[s] = 1 + max((height[d] for d in users), default=0)
    return height


def build_graph(tasks: list[Task], stage_objs: dict[str, Any], order: list[str], store: CacheStore,
                gpu: bool = False, split_frames: int | None = SPLIT_FRAMES) -> TaskGraph:
    """One Dask delayed per (trial, stage) to compute, wired to its upstream tasks' results.

    An upstream shard that needs no computing enters as its status (cached, failed-before,
    blocked), so `compute_shard` can tell "blocked" without a task for it. Stages that split
    (`Stage.splits`) become range parts plus an assemble task under the shard's own key
    (`pipeline.engine.ranges`). Annotations: `stage_priorities`, and a GPU resource for
    GPU-capable stages when `gpu`.
    """
    settings = {name: dataclasses.asdict(obj.settings) for name, obj in stage_objs.items()}
    paths = {(t.trial.trial, t.stage): t.path for t in tasks if t.path is not None}
    priority = stage_priorities(order, stage_objs)
    graph: dict[tuple[str, str], Any] = {}
    upstream_index = {(t.trial.trial, t.stage): t for t in tasks}
    for t in (t for t in tasks if t.status == "todo"):
        ups = []
        for dep in stage_objs[t.stage].inputs:
            dep_task = upstream_index[(t.trial.trial, dep)]
            ups.append(graph[(t.trial.trial, dep)] if dep_task.status == "todo"
                       else {"status": dep_task.status, "stage": dep})
        annotations: dict[str, Any] = {"priority": priority[t.stage]}
        if gpu and stage_objs[t.stage].gpu_capable:
            annotations["resources"] = {"GPU": 1}
        spec = _spec(t, store, settings[t.stage], paths)
        parts = 1
        if split_frames and stage_objs[t.stage].splits(t.trial):
            parts = n_parts(estimate_frames(paths.get((t.trial.trial, "probe")), t.trial.video), split_frames,
                            stage_align(stage_objs[t.stage], t.trial))
        with dask.annotate(**annotations):
            if parts > 1:  # range tasks, then one assemble task under the shard's own name
                pieces = [dask.delayed(compute_part, pure=False)(spec, k, parts, *ups, dask_key_name=f"{t.name}-part{k}")
                          for k in range(parts)]
                graph[(t.trial.trial, t.stage)] = dask.delayed(assemble_shard, pure=False)(
                    spec, parts, *pieces, dask_key_name=t.name)
            else:
                graph[(t.trial.trial, t.stage)] = dask.delayed(compute_shard, pure=False)(
                    spec, *ups, dask_key_name=t.name)
    return TaskGraph(list(graph.values()), {t.name: t for t in tasks})


# -- scheduling ---------------------------------------------------------------------------------

class RunLog:
    """The driver's side of a run: task starts and results into progress, timings, index and ledger."""

    def __init__(self, by_name: dict[str, Task], prog: StageProgress, store: CacheStore, index: TrialIndex,
                 failures: list[dict[str, Any]]):
        self.by_name, self.prog, self.store, self.index, self.failures = by_name, prog, store, index, failures
        self.running: set[str] = set()
        self.timing: dict[str, dict[str, float]] = {}
        self.worker_names: dict[str, list[str]] = {}
        self.split: dict[str, int] = {}

    def started(self, name: str) -> None:
        if name in self.by_name:
            self.running.add(name)
            self.prog.started(self.by_name[name].stage)

    def finished(self, name: str, result: dict[str, Any]) -> None:
        task = self.by_name.get(name)
        if task is None:
            return
        status = result["status"]
        if status == "done":
            names = self.worker_names.setdefault(task.stage, [])
            for worker in (*result.get("part_workers", ()), result.get("worker")):  # where parts ran, too
                if worker not in names:
                    names.append(worker)
            t = self.timing.setdefault(task.stage, {"seconds": 0.0, "frames": 0})
            t["seconds"] += result.get("seconds", 0.0)
            t["frames"] += result.get("frames", 0)
            if result.get("parts"):
                self.split[task.stage] = self.split.get(task.stage, 0) + 1
        if status in ("done", "cached") and task.path is not None:
            try:  # just written and checked by its writer: its stamp spares the next plan a full read
                task.stamp = file_stamp(task.path) if status == "done" else None
                self.index.record(task.trial.trial, [task.index_entry()])
            except OSError:
                pass  # the shard vanished already: the next plan recomputes it
        if status == "failed":
            self.store.record_failure(result["trial"], result["stage"], result["key"], result["kind"],
                                      result["message"], result.get("traceback", ""),
                                      sticky=bool(result.get("sticky", False)), recipe=task.recipe)
            self.failures.append({k: result[k] for k in ("trial", "stage", "kind", "message")}
                                 | {"sticky": bool(result.get("sticky", False))})
        self.prog.finished(task.stage, status, name in self.running)
        self.running.discard(name)


def schedule(graph: TaskGraph, scheduler: str, workers: int | None, on_start: Callable[[str], None],
             on_result: Callable[[str, dict], None], store: CacheStore) -> None:
    """Run the graph on the named scheduler; task starts and results go to the callbacks as they happen."""
    if scheduler in ("sync", "threads"):
        from .resources import configure_torch_threads

        n = workers or (os.cpu_count() or 1)
        configure_torch_threads(threads_per_worker(n if scheduler == "threads" else 1))
        try:
            with _LocalProgress(on_start, on_result):
                dask.compute(*graph.delayed, scheduler="synchronous" if scheduler == "sync" else "threads",
                             num_workers=n)
        finally:  # this process outlives the run: it does not keep the run's frames
            from ..media.decode import FRAME_CACHE

            FRAME_CACHE.clear()
    else:
        _run_distributed(graph.delayed, scheduler, workers, on_start, on_result, graph.by_name, store)


def _run_distributed(delayed: list[Any], scheduler: str, workers: int | None,
                     on_start: Callable[[str], None], on_result: Callable[[str, dict], None],
                     by_name: dict[str, Task], store: CacheStore) -> None:
    """Submit every task (each delayed is one (trial, stage)), then poll results and what is running."""
    from distributed import as_completed

    if not (scheduler == "processes" or scheduler.startswith("tcp://")):
        raise ValueError(f"unknown scheduler {scheduler!r}: use processes, threads, sync or tcp://HOST:PORT")
    with distributed_client(scheduler, workers) as client:
        futures = client.compute(delayed, optimize_graph=False)
        pending = as_completed(futures)
        started: set[str] = set()
        while not pending.is_empty():
            for name in {str(k) for keys in client.processing().values() for k in keys} - started:
                if name in by_name:
                    started.add(name)
                    on_start(name)
            for fut in pending.next_batch(block=False):
                name = fut.key if isinstance(fut.key, str) else str(fut.key)
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001  a worker died (segfault, OOM): record, go on
                    task = by_name[name]
                    result = {"trial": task.trial.trial, "stage": task.stage, "key": task.key,
                              "status": "failed", "kind": type(exc).__name__, "sticky": False,
                              "message": f"{task.trial.video}: worker failed: {exc}"}
                on_result(name, result)
            time.sleep(0.1)

"""Cache keys and the per-(trial, stage) plan: what is cached, what to compute, what failed before.

Key of a shard = sha256 of (stage name, stage version, key-relevant settings,
per-trial parameters, upstream shard keys, input files' *content*
fingerprints, see `pipeline.engine.identity`). Because upstream keys enter the key,
changing one stage's settings changes the keys of that stage and of everything
downstream of it, for the trials it touches, and of nothing else; because
inputs are identified by content, moving, copying or touching a dataset
changes none.

The *recipe* is the same minus the input fingerprints (upstream recipes
instead of keys): what readers use, through the cache index, when the inputs
are not at hand (`pipeline.engine.index`).

A shard counts as cached only when it passes its checks: its checksums are
read in full whenever its file changed since the last verification, and a
damaged shard is planned for recomputation (and moved aside by the run).
"""
from __future__ import annotations

import errno
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .identity import FingerprintMemo
from .index import TrialIndex, file_stamp
from ..sources.manifest import Trial
from .shards import verify_shard
from .stage import STAGES, Stage
from .store import CacheStore


#: stat errors that mean "no shard there" (those Path.exists answers False to)
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


class PlanError(ValueError):
    """Unknown stage names or a stage graph that cannot be ordered."""


def stage_order(selected: Iterable[str] | None, stages: dict[str, Stage] | None = None) -> list[str]:
    """Selected stages plus everything they depend on, in dependency order.

    With `stages` (configured instances) a stage's dependencies are the
    instance's: text with ``asr_fallback: false`` does not pull in asr.
    """
    from .. import stages as _register  # noqa: F401

    wanted = list(selected) if selected else list(STAGES)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise PlanError(f"unknown stage(s): {', '.join(unknown)} (known: {', '.join(STAGES)})")
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise PlanError(f"stage dependency cycle through {name!r}")
        visiting.add(name)
        for dep in (stages[name] if stages and name in stages else STAGES[name]).inputs:
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(name)
    return order


@dataclass
class Task:
    """One (trial, stage) of a plan."""

    trial: Trial
    stage: str
    key: str
    path: Path | None
    status: str  # "cached" | "todo" | "failed-before" | "blocked" (an input is missing or upstream blocked)
    upstream: dict[str, str] = field(default_factory=dict)  # upstream stage -> key
    error_kind: str = ""
    error: str = ""
    blocked_by: str = ""  # the upstream stage whose failure blocks this task ("" = its own input)
    recipe: str = ""
    inputs: list[dict[str, Any]] = field(default_factory=list)  # content fingerprints of input_files
    damaged: str = ""  # why an existing shard at `path` is not trusted (it is recomputed)
    stamp: list[int] | None = None  # the shard file's (size, mtime, ctime) when last verified in full
    reindex: bool = False  # the index lacks this cached shard or its stamp is new: record it

    @property
    def name(self) -> str:
        """Readable Dask key."""
        return f"{self.stage}-{self.trial.trial}-{self.key[:8]}"

    def index_entry(self) -> dict[str, Any]:
        return {"stage": self.stage, "recipe": self.recipe, "key": self.key, "upstream": self.upstream,
                "inputs": self.inputs, "stamp": self.stamp}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def recipe_of(stage: Stage, trial: Trial, upstream_recipes: dict[str, str]) -> str:
    """Everything the key depends on except input content: computable without any input file."""
    return _digest({
        "stage": stage.name,
        "version": stage.version,
        "settings": stage.key_settings(),
        "trial": stage.trial_params(trial),
        "upstream": upstream_recipes,
    })


def task_key(stage: Stage, trial: Trial, upstream: dict[str, str], inputs: list[dict[str, Any]]) -> str:
    """The content address of one shard (see module docstring)."""
    return _digest({
        "stage": stage.name,
        "version": stage.version,
        "settings": stage.key_settings(),
        "trial": stage.trial_params(trial),
        "upstream": upstream,
        "inputs": inputs,
    })


def shard_is_sound(path: Path, stamp: list[int] | None, current: list[int]) -> tuple[str, list[int] | None]:
    """("", new stamp or None when unchanged) for a sound shard, (problem, None) for a damaged one.

    A shard whose (size, mtime, ctime) equals the stamp recorded at its last full
    verification is trusted without reading it; otherwise every dataset is read,
    which checks every checksum. `current`: the file's stamp, which the caller
    has just taken (one stat per shard is what a cached re-run costs).
    """
    if stamp is not None and list(stamp) == current:
        return "", None
    problems = verify_shard(path)
    if problems:
        return "; ".join(problems), None
    return "", current


def make_plan(trials: list[Trial], stages: dict[str, Stage], order: list[str], store: CacheStore,
              retry_failed: bool = False, fingerprint_mode: str = "sampled") -> list[Task]:
    """Key and status for every (trial, stage), computing nothing (reads only what checks need).

    Input fingerprints are memoised in the cache (`pipeline.engine.identity`); the memo
    is written back at the end (best effort on read-only caches).
    """
    failed = store.failed_keys()
    memo = FingerprintMemo(store.root / "fingerprints.json", fingerprint_mode)
    index = TrialIndex(store.root)
    tasks: list[Task] = []
    for trial in trials:
        keys: dict[str, str] = {}
        recipes: dict[str, str] = {}
        blocked: dict[str, Task] = {}
        for name in order:
            stage = stages[name]
            upstream = {dep: keys[dep] for dep in stage.inputs if dep in keys}
            recipe = recipe_of(stage, trial, {dep: recipes[dep] for dep in stage.inputs if dep in recipes})
            recipes[name] = recipe
            dead = [dep for dep in stage.inputs if dep in blocked]
            if dead:
                cause = blocked[dead[0]]
                key = _digest({"blocked": name, "trial": trial.trial, "by": cause.key})
                task = Task(trial, name, key, None, "blocked", upstream, cause.error_kind, cause.error, dead[0],
                            recipe=recipe)
                blocked[name] = task
                tasks.append(task)
                continue
            try:
                inputs = [memo.fingerprint(p) for p in stage.input_files(trial)]
            except OSError as exc:
                missing = exc.filename or "input"
                reason = "file not found" if isinstance(exc, FileNotFoundError) else (exc.strerror or str(exc))
                key = _digest({"missing": name, "trial": trial.trial, "file": str(missing)})
                task = Task(trial, name, key, None, "blocked", upstream, "missing-file",
                            f"{missing}: {reason} (manifest {trial.source or trial.trial})", recipe=recipe)
                blocked[name] = task
                tasks.append(task)
                continue
            key = task_key(stage, trial, upstream, inputs)
            keys[name] = key
            path = store.shard_path(name, trial.trial, key)
            task = Task(trial, name, key, path, "todo", upstream, recipe=recipe, inputs=inputs)
            try:  # the one stat a cached shard costs: existence and stamp at once
                current: list[int] | None = file_stamp(path)
            except OSError as exc:
                if exc.errno not in _ABSENT:  # as Path.exists: other errors are not "absent"
                    raise
                current = None
            if current is not None:
                known = [v for v in index.versions(trial.trial, name, recipe) if v.get("key") == key]
                recorded = known[0].get("stamp") if known else None
                problem, fresh = shard_is_sound(path, recorded, current)
                if problem:
                    task.damaged = problem
                else:
                    task.status = "cached"
                    task.stamp = fresh or recorded
                    task.reindex = not known or fresh is not None
            elif key in failed and not retry_failed:
                task.status = "failed-before"
                task.error_kind, task.error = failed[key].kind, failed[key].message
                blocked[name] = task
            tasks.append(task)
    memo.save()
    return tasks

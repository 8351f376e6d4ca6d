"""Cache keys and the per-(trial, stage) plan: what is cached, what to compute, what failed before.

Key of a shard = sha256 of (stage name, stage version, key-relevant settings,
per-trial parameters, upstream shard keys, input file fingerprints). Because
upstream keys enter the key, changing one stage's settings changes the keys of
that stage and of everything downstream of it, for the trials it touches, and
of nothing else.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from .manifest import Trial
from .stage import STAGES, Stage
from .store import CacheStore


class PlanError(ValueError):
    """Unknown stage names or a stage graph that cannot be ordered."""


def fingerprint(path: Path) -> dict[str, Any]:
    """Identity of an input file or folder: resolved path, size, mtime (content hashing 3M frames is too slow)."""
    p = Path(path).expanduser().resolve()
    st = p.stat()  # raises FileNotFoundError for missing inputs
    if p.is_dir():
        names = sorted(x.name for x in p.iterdir())
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        return {"path": str(p), "entries": len(names), "names": digest, "mtime_ns": st.st_mtime_ns}
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def stage_order(selected: Iterable[str] | None) -> list[str]:
    """Selected stages plus everything they depend on, in dependency order."""
    from . import stages as _register  # noqa: F401

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
        for dep in STAGES[name].inputs:
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

    @property
    def name(self) -> str:
        """Readable Dask key."""
        return f"{self.stage}-{self.trial.trial}-{self.key[:8]}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def task_key(stage: Stage, trial: Trial, upstream: dict[str, str]) -> str:
    """The content address of one shard (see module docstring). Raises OSError for missing inputs."""
    return _digest({
        "stage": stage.name,
        "version": stage.version,
        "settings": stage.key_settings(),
        "trial": stage.trial_params(trial),
        "upstream": upstream,
        "inputs": [fingerprint(p) for p in stage.input_files(trial)],
    })


def make_plan(trials: list[Trial], stages: dict[str, Stage], order: list[str], store: CacheStore,
              retry_failed: bool = False) -> list[Task]:
    """Key and status for every (trial, stage), computing nothing and reading only file metadata."""
    failed = store.failed_keys()
    tasks: list[Task] = []
    for trial in trials:
        keys: dict[str, str] = {}
        blocked: dict[str, Task] = {}
        for name in order:
            stage = stages[name]
            upstream = {dep: keys[dep] for dep in stage.inputs if dep in keys}
            dead = [dep for dep in stage.inputs if dep in blocked]
            if dead:
                cause = blocked[dead[0]]
                key = _digest({"blocked": name, "trial": trial.trial, "by": cause.key})
                task = Task(trial, name, key, None, "blocked", upstream, cause.error_kind, cause.error, dead[0])
                blocked[name] = task
                tasks.append(task)
                continue
            try:
                key = task_key(stage, trial, upstream)
            except OSError as exc:
                missing = exc.filename or "input"
                key = _digest({"missing": name, "trial": trial.trial, "file": str(missing)})
                task = Task(trial, name, key, None, "blocked", upstream, "missing-file",
                            f"{missing}: file not found (manifest {trial.source or trial.trial})")
                blocked[name] = task
                tasks.append(task)
                continue
            keys[name] = key
            path = store.shard_path(name, trial.trial, key)
            if path.exists():
                status = "cached"
            elif key in failed and not retry_failed:
                status = "failed-before"
            else:
                status = "todo"
            task = Task(trial, name, key, path, status, upstream)
            if status == "failed-before":
                task.error_kind, task.error = failed[key].kind, failed[key].message
                blocked[name] = task
            tasks.append(task)
    return tasks

"""Weight files users supply: where a network's weights are, their identity, and one kind of error.

Every network whose weights are not bundled (FaceNet, IR-50, VGGish, a Whisper model
folder, a sentence-transformers model) reads them from a local path named by a stage
setting or an environment variable, and records their sha256 so every feature says which
weights made it. Each network module describes its weights once as a `WeightsSource`;
this module resolves the path the same way for all of them and raises the same
``missing-weights`` error: what is missing and where it was looked for, how to get it,
and which setting (or variable) names it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..engine.identity import sha256_file  # noqa: F401  (re-exported: the weights' identity)
from ..engine.stage import StageError


def memo_sha256(path: str | Path) -> str:
    """`sha256_file`, once per process for a given (path, size, mtime): identities are asked per trial."""
    from ..engine.resources import get_model

    p = Path(path)
    st = p.stat()
    return get_model(("sha256", str(p), st.st_size, st.st_mtime_ns), lambda: sha256_file(p))


def load_state_dict(path: Path, arch: str) -> dict:
    """A checkpoint's state dict, unwrapped from ``{"state_dict": ...}`` and from nn.DataParallel's
    ``module.`` prefixes; anything else is a one-line ``bad-weights`` error naming the file."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise StageError("bad-weights", f"{path}: cannot read {arch} weights ({type(exc).__name__}: "
                                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StageError("bad-weights", f"{path}: {arch} weights are not a state_dict")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def _file_problem(path: Path) -> str | None:
    return None if path.is_file() else "not found"


@dataclass(frozen=True)
class WeightsSource:
    """How one network's weights are found and obtained (see module docstring).

    `what` names them in messages ("VGGish weights"); `get` says how to obtain them (a
    download address, a package to install); `stage` and `setting` name the stage setting
    that points at them, `env` the environment variable that may stand in for it.
    `has_default` says the network also looks in a default place (a cache, a package), so
    naming a path is an alternative to `get`, not a step after it. `problem` says why a
    named path is unusable (None when it is usable): by default, that it is not a file.
    """

    what: str
    get: str
    stage: str
    setting: str = "weights"
    env: str | None = None
    kind: str = "file"
    has_default: bool = False
    problem: Callable[[Path], str | None] = _file_problem

    def how_to_fix(self) -> str:
        names = f"the {self.stage} stage's '{self.setting}' setting" + (f" or ${self.env}" if self.env else "")
        return f"{self.get}, {'or' if self.has_default else 'then'} pass the {self.kind}'s path as {names}"

    def missing(self, problem: str = "not found", path: str | Path | None = None) -> StageError:
        """The one `missing-weights` error: ``[path: ]<what> <problem>; <how to get and name them>``."""
        where = f"{path}: " if path is not None else ""
        return StageError("missing-weights", f"{where}{self.what} {problem}; {self.how_to_fix()}")

    def named(self, value: str | os.PathLike | None) -> Path | None:
        """The path the setting `value` names, else the one `env` names, else None.

        A path that is named but unusable is an error right here: never a silent fall back
        to a default or to random weights.
        """
        candidates = [(value, f"the '{self.setting}' setting")]
        if self.env:
            candidates.append((os.environ.get(self.env, "").strip(), f"${self.env}"))
        for raw, source in candidates:
            if raw is not None and str(raw).strip():
                path = Path(str(raw).strip()).expanduser()
                problem = self.problem(path)
                if problem:
                    raise self.missing(f"{problem} (named by {source})", path)
                return path
        return None

    def resolve(self, value: str | os.PathLike | None, default: Path | None = None) -> Path:
        """`named(value)`, else `default` when it is usable; `missing-weights` when neither is."""
        path = self.named(value)
        if path is not None:
            return path
        if default is None:
            raise self.missing("needed and none is set")
        problem = self.problem(default)
        if problem:
            raise self.missing(problem, default)
        return default

    def existing(self, value: str | os.PathLike | None, default: Path | None = None) -> Path | None:
        """`resolve`, or None where it would raise: the file a cache key includes when there is one."""
        try:
            return self.resolve(value, default)
        except StageError:
            return None

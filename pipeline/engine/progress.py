"""Live progress bars on stderr, shared by `extract`, `train`, `evaluate` and `predict`.

stdout carries only results (``affpipe ... --json``), so every live display goes
to stderr and never mixes in. Rich decides what a non-terminal sees: a transient
display leaves nothing behind, a persistent one prints its final state once.
Rich is imported only when a display is switched on: this module is imported by
the Dask runner and the trainer alike and must cost neither torch nor dask.
"""
from __future__ import annotations

from typing import Any


def stderr_progress(*columns: Any, transient: bool) -> Any:
    """A `rich.progress.Progress` on stderr with `columns` (rich column objects), not yet started."""
    from rich.console import Console
    from rich.progress import Progress

    return Progress(*columns, transient=transient, console=Console(stderr=True))


class PhaseProgress:
    """One transient bar at a time (``title  ━━━━  n/total  eta``); every call is a no-op when disabled.

    A command goes through phases (loading trials, statistics, an epoch, inference);
    each `phase` replaces the previous bar, so the screen shows what runs now.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.p: Any = None  # the rich Progress while the display is live
        self.task: Any = None

    def __enter__(self) -> "PhaseProgress":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

            self.p = stderr_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), transient=True)
            self.p.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.p is not None:
            self.p.__exit__(*exc)

    def phase(self, title: str, total: int | None) -> None:
        """Replace the bar by a new one (`total` None: a count without a known end)."""
        if self.p is None:
            return
        if self.task is not None:
            self.p.remove_task(self.task)
        self.task = self.p.add_task(title, total=total)

    def tick(self, n: int = 1) -> None:
        """Advance the current bar by `n` (a trial loaded, a batch of windows predicted)."""
        if self.p is not None and self.task is not None:
            self.p.advance(self.task, n)

    def print(self, text: str) -> None:
        """One line above the bar (kept on screen when the bar goes)."""
        if self.p is not None:
            self.p.console.print(text, soft_wrap=True)


__all__ = ["stderr_progress", "PhaseProgress"]

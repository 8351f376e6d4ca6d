"""Names of the fusion heads, importing no torch (click's ``--fusion`` choices, `affpipe heads`).

The heads register themselves in `fusion.heads` when imported, which costs
torch's import (seconds); a test keeps this list equal to that registry.
"""
from __future__ import annotations

HEAD_NAMES: tuple[str, ...] = ("avtca", "concat", "grjca", "hgrjca", "jca", "lfan", "rjca", "rjcma")

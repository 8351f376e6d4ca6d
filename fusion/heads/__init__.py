"""Fusion heads, one module each, registered by name (`HEADS`) so configs say `fusion: rjca`.

Importing this package registers every head below; a new head is one module
plus its `@register_head("name")` and an import line here.
"""
from .base import HEADS, FusionHead, Regressor, register_head

from . import concat, lfan, rjca, jca, rjcma, grjca, hgrjca, avtca  # noqa: E402,F401  (registration)

__all__ = ["HEADS", "FusionHead", "Regressor", "register_head"]

"""Shared fixtures: where the real clips are, and skipping cleanly when they are absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_MEDIA = Path(os.environ.get("AFFPIPE_SHARED_MEDIA", REPO.parent / "shared" / "media"))


@pytest.fixture(scope="session")
def shared_media() -> Path:
    """The folder of real clips beside the checkout; tests that need it skip when it is absent."""
    if not (SHARED_MEDIA / "cremad").is_dir() or not (SHARED_MEDIA / "grid").is_dir():
        pytest.skip(f"real clips not found at {SHARED_MEDIA} (a fresh clone has no ../shared)")
    return SHARED_MEDIA

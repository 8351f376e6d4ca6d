"""Closed sets of names the CLI offers as choices, importing nothing heavy.

`affpipe --help` must answer in well under a second, so click's choices cannot
come from the stage registry (which imports the stages and numpy). The test
suite checks that these lists equal the registries (tests/test_cli_convention.py).
"""
from __future__ import annotations

#: every registered stage (`pipeline.engine.stage.STAGES`), upstream ones first
STAGE_NAMES: tuple[str, ...] = ("probe", "faces", "visual", "audio", "asr", "text", "labels")

#: Dask schedulers `pipeline.engine.runner.extract` runs locally; a ``tcp://HOST:PORT`` address is the other form
LOCAL_SCHEDULERS: tuple[str, ...] = ("processes", "threads", "sync")

#: dataset splits of a manifest
SPLITS: tuple[str, ...] = ("train", "val", "test")

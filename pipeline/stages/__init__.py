"""Every extraction stage; importing this package registers them (see pipeline.engine.stage.register_stage)."""
from . import asr, audio, faces, labels, probe, text, visual  # noqa: F401

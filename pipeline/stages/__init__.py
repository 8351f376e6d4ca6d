"""Every extraction stage; importing this package registers them (see pipeline.stage.register_stage)."""
from . import audio, labels, probe, text  # noqa: F401

"""The `probe` stage: the frame grid every other stage shares (decodable frames and their times).

Every frame-keyed array in the cache has one row per frame this stage counts, and
the `time` it stores (decoder timestamps, seconds from the video stream's start)
is the axis audio and text are aligned to. See `pipeline.decode.probe_video` for
why frames are counted by decoding rather than read from the container.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..decode import probe_video
from ..manifest import Trial
from ..stage import ShardData, Stage, StageOutput, register_stage


@register_stage
class ProbeStage(Stage):
    """Decode-verified frame count, timestamps and stream facts of the trial's video."""

    name = "probe"
    version = 1
    inputs = ()

    @dataclass
    class Settings:
        pass

    def run(self, trial: Trial, upstream: dict[str, ShardData]) -> StageOutput:
        p = probe_video(trial.video)
        return StageOutput(
            features=None, valid=None, time=p.time,
            attrs={"fps": p.fps, "n_decoded": p.n_decoded, "n_container": p.n_container,
                   "width": p.width, "height": p.height, "has_audio": p.has_audio,
                   "audio_sample_rate": p.audio_sample_rate, "audio_start": p.audio_start,
                   "video_start": p.video_start},
        )

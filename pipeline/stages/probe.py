"""The `probe` stage: the frame grid every other stage shares (decodable frames and their times).

Every frame-keyed array in the cache has one row per frame this stage counts, and
the `time` it stores (each decoded picture's own pts, seconds from the video stream's
start) is the axis audio and text are aligned to. Faces and visual read pixels with
the same decode loop (`pipeline.media.decode.iter_frames`), so row i is the same picture in
every stage. See `pipeline.media.decode` for why frames are counted by decoding with PyAV
(FFmpeg) rather than read from the container or from decord.

Version 2: PyAV replaces decord (decord's grid had phantom frames after discarded
priming packets and was shifted 12 frames on MPEG-1); every downstream key changes
with this stage's key.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..media.decode import probe_video
from ..sources.manifest import Trial
from ..engine.stage import ShardData, Stage, StageOutput, register_stage


@register_stage
class ProbeStage(Stage):
    """Decode-verified frame count, timestamps and stream facts of the trial's video."""

    name = "probe"
    version = 2
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

"""VGGish's fixed front-end and output constants, without importing torch.

torchvggish keeps these in ``vggish_params.py`` for the same reason: the audio
stage's settings are checked (``audio.sample_rate``, ``audio.embedding``) when a
config is read, and `affpipe config show` must not pay for torch to do it. The
network and its front end are in `pipeline.models.vggish`.
"""
from __future__ import annotations

SAMPLE_RATE = 16000
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
FFT = 512
N_MELS = 64
F_MIN, F_MAX = 125.0, 7500.0
LOG_OFFSET = 0.01
PATCH_FRAMES = 96  # 0.96 s of 10 ms frames per example
EMBEDDING_DIM = 128
#: What the last layer's output goes through: nothing (the seeds' choice) or torchvggish's ReLU.
EMBEDDINGS = ("linear", "relu")

WEIGHTS_FILE = "vggish-10086976.pth"
WEIGHTS_URL = f"https://github.com/harritaylor/torchvggish/releases/download/v0.1/{WEIGHTS_FILE}"
WEIGHTS_ENV = "AFFPIPE_VGGISH_WEIGHTS"

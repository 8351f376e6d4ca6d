"""VGGish (Hershey et al., ICASSP 2017): its log-mel front end and network, written here.

The architecture and front end follow Google's AudioSet VGGish release as ported
to PyTorch by torchvggish (github.com/harritaylor/torchvggish); the only
pretrained weights we load are that port's ``vggish-10086976.pth``. The front end
is reproduced exactly (mel triangles linear in mel, not torchaudio's linear in
Hz; 400-sample frames zero-padded to a 512-point FFT; magnitude, not power)
because the checkpoint was trained on exactly these inputs.

Checkpoint parameters are mapped to ours by name (`CHECKPOINT_NAMES`), so a
file with other names or shapes fails loudly instead of loading half a model.

Embedding (``VGGish(embedding=...)``): ``"linear"`` (default) is the output of the
last fully connected layer *before* any activation. That is what both seed
pipelines that use VGGish feed their models: RJCMA's preprocessing comments the
final ReLU out, and ABAW2/LFAN use the TF-slim model's linear ``embedding``
tensor. ``"relu"`` is torchvggish's own ``forward`` (ReLU after the last layer),
which zeroes every negative value (44-49% of them with random weights) and is
kept only to reproduce features made that way. AudioSet's PCA + 8-bit
quantisation post-processing is never applied (off in both seeds, too).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..engine.stage import StageError
from .weight_files import VGGISH_WEIGHTS, vggish_hub_path
from .weights import load_state_dict, sha256_file

from .vggish_params import (  # noqa: F401  (the constants, re-exported: `vggish.SAMPLE_RATE` reads as before)
    EMBEDDING_DIM, EMBEDDINGS, F_MAX, F_MIN, FFT, HOP, LOG_OFFSET, N_MELS, PATCH_FRAMES, SAMPLE_RATE, WEIGHTS_ENV,
    WEIGHTS_FILE, WEIGHTS_URL, WINDOW)


# -- front end ---------------------------------------------------------------------

def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_matrix() -> np.ndarray:
    """[257, 64] weights from magnitude-spectrum bins to VGGish's mel bands (DC bin excluded)."""
    bins_mel = _hz_to_mel(np.linspace(0.0, SAMPLE_RATE / 2, FFT // 2 + 1))
    edges = np.linspace(_hz_to_mel(F_MIN), _hz_to_mel(F_MAX), N_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0
    return weights.astype(np.float32)


_MEL = torch.from_numpy(mel_matrix())


def log_mel(samples: np.ndarray) -> np.ndarray:
    """VGGish log-mel frames of 16 kHz mono audio: float32 [n_frames, 64].

    Row j covers samples [j*160, j*160 + 400) (no padding), i.e. it starts at
    j * 10 ms and is centred 12.5 ms later.
    """
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if x.numel() < WINDOW:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = x.unfold(0, WINDOW, HOP) * torch.hann_window(WINDOW, periodic=True)
    magnitude = torch.fft.rfft(frames, n=FFT).abs()
    return torch.log(magnitude @ _MEL + LOG_OFFSET).numpy()


# -- network -----------------------------------------------------------------------

class VGGish(nn.Module):
    """VGG-style network: [B, 1, 96, 64] log-mel patches -> [B, 128] embeddings.

    `embedding` "linear": fc3's output as is (can be negative); "relu": after a ReLU.
    """

    def __init__(self, embedding: str = "linear") -> None:
        super().__init__()
        if embedding not in EMBEDDINGS:
            raise ValueError(f"VGGish embedding must be one of {', '.join(EMBEDDINGS)}, got {embedding!r}")
        self.embedding = embedding

        def conv(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, kernel_size=3, padding=1)

        self.conv1 = conv(1, 64)
        self.conv2 = conv(64, 128)
        self.conv3_1 = conv(128, 256)
        self.conv3_2 = conv(256, 256)
        self.conv4_1 = conv(256, 512)
        self.conv4_2 = conv(512, 512)
        self.fc1 = nn.Linear(512 * 4 * 6, 4096)
        self.fc2 = nn.Linear(4096, 4096)
        self.fc3 = nn.Linear(4096, EMBEDDING_DIM)
        self.pool = nn.MaxPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu
        x = self.pool(relu(self.conv1(x)))
        x = self.pool(relu(self.conv2(x)))
        x = self.pool(relu(self.conv3_2(relu(self.conv3_1(x)))))
        x = self.pool(relu(self.conv4_2(relu(self.conv4_1(x)))))
        # The TensorFlow original flattens channels-last (NHWC); its fc1 weights expect that order.
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
        x = relu(self.fc1(x))
        x = relu(self.fc2(x))
        x = self.fc3(x)
        return relu(x) if self.embedding == "relu" else x


#: torchvggish checkpoint name prefix -> our module name.
CHECKPOINT_NAMES = {
    "features.0": "conv1",
    "features.3": "conv2",
    "features.6": "conv3_1",
    "features.8": "conv3_2",
    "features.11": "conv4_1",
    "features.13": "conv4_2",
    "embeddings.0": "fc1",
    "embeddings.2": "fc2",
    "embeddings.4": "fc3",
}


def from_checkpoint_state_dict(state: dict[str, torch.Tensor], source: str,
                               embedding: str = "linear") -> VGGish:
    """Build a VGGish from a torchvggish-named state dict; every parameter must be there, with its shape."""
    with torch.device("meta"):  # shapes only: skip initialising 72M parameters we overwrite anyway
        model = VGGish(embedding)
    target = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for ck, name in CHECKPOINT_NAMES.items():
        for p in ("weight", "bias"):
            key = f"{ck}.{p}"
            if key not in state:
                raise StageError("bad-weights", f"{source}: not a torchvggish VGGish checkpoint "
                                                f"(parameter {key!r} missing)")
            value = torch.as_tensor(state[key]).float()
            if tuple(value.shape) != tuple(target[f"{name}.{p}"].shape):
                raise StageError("bad-weights", f"{source}: parameter {key!r} has shape {tuple(value.shape)}, "
                                                f"expected {tuple(target[f'{name}.{p}'].shape)}")
            mapped[f"{name}.{p}"] = value
    model.load_state_dict(mapped, strict=True, assign=True)
    return model.eval()


# -- weights -----------------------------------------------------------------------

def _online() -> bool:
    if os.environ.get("AFFPIPE_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket

    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def resolve_weights(path: str | os.PathLike | None, *, download: bool = True) -> Path:
    """Where the VGGish checkpoint is: the explicit path, then $AFFPIPE_VGGISH_WEIGHTS, then torch's
    hub cache (downloading into it only when online and `download`). Raises missing-weights."""
    named = VGGISH_WEIGHTS.named(path)
    if named is not None:
        return named
    cached = vggish_hub_path()
    if cached.is_file():
        return cached
    if download and _online():
        try:
            torch.hub.load_state_dict_from_url(WEIGHTS_URL, progress=False, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any network/HTTP failure means "not available"
            raise VGGISH_WEIGHTS.missing(f"not found, and the download failed ({exc.__class__.__name__})", cached) from None
        if cached.is_file():
            return cached
    raise VGGISH_WEIGHTS.missing("not found", cached)


def load_vggish(path: Path, device: str = "cpu", embedding: str = "linear") -> tuple[VGGish, str]:
    """(model in eval mode on `device`, sha256 of the weight file)."""
    state = load_state_dict(path, "VGGish")
    return from_checkpoint_state_dict(state, str(path), embedding).to(device), sha256_file(path)

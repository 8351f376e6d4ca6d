"""bench/gpu.sh: on a machine without CUDA it says so in one line and exits 0; the commands it would
run on a GPU machine are accepted by the benches they call (so an unattended run does not die on a
typo after the machine was booked)."""
from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.sh"


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=120)


def test_without_cuda_prints_one_clear_line_and_exits_0():
    res = run_script(CUDA_VISIBLE_DEVICES="")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA" in lines[0], res.stdout
    assert "==" not in res.stdout  # no benchmark part was started


def test_an_interpreter_without_torch_is_an_error_not_a_cpu_machine():
    res = run_script(PYTHON=str(REPO / "no-such-python"))
    assert res.returncode == 2 and "cannot import torch" in res.stderr and "no CUDA" not in res.stdout


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem + "_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_dry_run_commands_are_accepted_by_the_benches():
    res = run_script("--dry-run")
    assert res.returncode == 0, res.stderr
    commands = {line.split(":", 1)[0].split(" (")[0]: shlex.split(line.split(": ", 1)[1])
                for line in res.stdout.strip().splitlines()}
    assert set(commands) == {"extract", "train"}
    extract = commands["extract"]
    assert extract[1] == "bench/extract.py"
    args = _load(REPO / "bench" / "extract.py").build_parser().parse_args(extract[2:])
    assert args.device == "cuda" and args.skip_shared and args.single_720p and not args.skip_720p
    assert set(args.stages.split(",")) >= {"faces", "visual", "audio", "text"}
    train = commands["train"]
    assert train[1] == "bench/train.py"
    help_text = subprocess.run([sys.executable, str(REPO / "bench" / "train.py"), "--help"], capture_output=True,
                               text=True, timeout=120).stdout
    for flag in (a for a in train[2:] if a.startswith("--")):
        assert flag in help_text, f"bench/train.py has no {flag}"
    assert train[train.index("--devices") + 1] == "cuda" and "--epoch-head" in train

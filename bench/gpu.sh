#!/usr/bin/env bash
# GPU benchmark, unattended, in under 10 minutes (issue 12):
#   1. every GPU-capable extraction stage (faces guided and full-frame, visual onet/facenet*/ir50*,
#      audio vggish*, text) on generated 720p 30 fps video: frames/s per stage, end to end
#      (bench/extract.py --device cuda; * = random weights of the real architecture, speed only);
#   2. the trainer on the synthetic Aff-Wild2-sized cache (3M frames, bench/train.py --devices cuda):
#      loader windows/s, training steps/s and windows/s per head, one epoch's time.
#
#   bench/gpu.sh              run it (a machine without CUDA prints "no CUDA" and exits 0)
#   bench/gpu.sh --dry-run    print the commands it would run, run nothing
#
# Environment: PYTHON (interpreter; default .venv/bin/python, else python3), GPU_BENCH_SECONDS
# (length of the long 720p video, default 60), GPU_BENCH_FRAMES (synthetic cache frames, default
# 3000000), GPU_BENCH_CACHE (where the synthetic cache is built and kept for the next run; default a
# folder under /tmp), GPU_BENCH_HEADS (default all). Each part runs under its own time limit
# (GPU_BENCH_EXTRACT_S 300 s, GPU_BENCH_TRAIN_S 270 s), so one stuck part cannot hold the machine.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
SECONDS_720P="${GPU_BENCH_SECONDS:-60}"
FRAMES="${GPU_BENCH_FRAMES:-3000000}"
CACHE="${GPU_BENCH_CACHE:-/tmp/affpipe-gpu-bench-cache}"
HEADS="${GPU_BENCH_HEADS:-all}"
EXTRACT_S="${GPU_BENCH_EXTRACT_S:-300}"
TRAIN_S="${GPU_BENCH_TRAIN_S:-270}"

EXTRACT=("$PY" bench/extract.py --device cuda --skip-shared --single-720p --seconds "$SECONDS_720P")
TRAIN=("$PY" bench/train.py --devices cuda --frames "$FRAMES" --heads "$HEADS" --workers 0,4
       --epoch-head concat --keep "$CACHE")

if [[ "${1:-}" == "--dry-run" ]]; then
    echo "extract (limit ${EXTRACT_S}s): ${EXTRACT[*]}"
    echo "train (limit ${TRAIN_S}s): ${TRAIN[*]}"
    exit 0
fi

if ! "$PY" -c 'import torch' 2>/dev/null; then
    echo "bench/gpu.sh: cannot import torch with '$PY' (set PYTHON to the project's interpreter)" >&2
    exit 2
fi
cuda=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')
if [[ -z "$cuda" ]]; then
    echo "bench/gpu.sh: no CUDA device visible to torch on $(hostname): nothing to benchmark here (exit 0)"
    exit 0
fi

echo "bench/gpu.sh on ${cuda}, $(nproc) CPU cores, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
started=$(date +%s)
status=0
run_part() {  # name, limit, command...
    local name=$1 limit=$2
    shift 2
    echo
    echo "== ${name}: $*"
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "== ${name}: stopped at its ${limit}s limit (its progress lines above are what it measured)"
        status=1
    elif [[ $rc -ne 0 ]]; then
        echo "== ${name}: failed with exit status ${rc}"
        status=1
    fi
}
run_part "extraction stages on 720p" "$EXTRACT_S" "${EXTRACT[@]}"
run_part "trainer on the synthetic Aff-Wild2-sized cache" "$TRAIN_S" "${TRAIN[@]}"
echo
echo "bench/gpu.sh took $(( $(date +%s) - started )) s"
exit $status

"""How fast the CLI answers: wall time of fresh `affpipe` processes, and what each one imported.

    python bench/cli.py [--repeat 5]

`affpipe --help`, `affpipe heads` and `affpipe config show` must answer in under a
second: they import no torch, Dask or distributed (the heavy column says which
of those a command loaded; it must read "-" for those three). `import
pipeline.sources.manifest` must not load Dask either.

Each row is the median of `--repeat` fresh interpreters, so the numbers include
Python's own start-up; one more run per row, under `python -X importtime`, names
the heavy imports. The target is wall time, what a user waits for: "wall < 1 s"
judges the median wall time as measured, nothing else. Wall time grows with the
machine's load, so the verdict belongs to a quiet machine; the CPU column (user +
system, which hardly moves with load) is the floor a quiet machine's wall time
approaches, for reading a run on a busy one.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "dask", "distributed")
TARGET_S = 1.0

ROWS: list[tuple[str, str]] = [
    ("affpipe --help", "import sys, cli; sys.argv = ['affpipe', '--help']; cli.main()"),
    ("affpipe heads", "import sys, cli; sys.argv = ['affpipe', 'heads']; cli.main()"),
    ("affpipe config show", "import sys, cli; sys.argv = ['affpipe', 'config', 'show']; cli.main()"),
    ("import pipeline.sources.manifest", "import pipeline.sources.manifest"),
    ("import pipeline (lazy)", "import pipeline"),
    ("baseline: python -c pass", "pass"),
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(code: str, *flags: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{code!r} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    return proc


def measure(code: str) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one fresh interpreter running `code`, as a user runs it."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    _run(code)
    return time.perf_counter() - t0, _children_cpu() - cpu0


def heavy_imports(code: str) -> list[str]:
    """The heavy packages `code` imports, from one extra `-X importtime` run (kept out of the timings:
    printing a line per module slows the interpreter)."""
    proc = _run(code, "-X", "importtime")
    tops = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    return sorted(tops & set(HEAVY))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh interpreters per row (median reported)")
    args = ap.parse_args()
    print(f"{'command':<32} {'wall s':>7} {'min s':>7} {'cpu s':>7} {'wall < 1 s':>10}  heavy imports")
    for name, code in ROWS:
        runs = [measure(code) for _ in range(max(1, args.repeat))]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        heavy = heavy_imports(code)
        med, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"{name:<32} {med:>7.3f} {min(walls):>7.3f} {cpu:>7.3f} {'yes' if med < TARGET_S else 'NO':>10}  "
              f"{', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()

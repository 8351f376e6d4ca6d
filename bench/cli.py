"""How fast the CLI answers: wall time of fresh `affpipe` processes, and what each one imported.

    python bench/cli.py [--repeat 5]

`affpipe --help`, `affpipe heads` and `affpipe config show` must answer in under a
second: they import no torch, Dask or distributed (the heavy column says which
of those a command loaded; it must read "-" for those three). `import
pipeline.sources.manifest` must not load Dask either. Each row is the median of
`--repeat` fresh interpreters (`python -X importtime`), so the numbers include
Python's own start-up. Wall time depends on the machine's load (compare rows of
one run); CPU time (user + system) hardly does, so "< 1 s" reads the smaller of the two.
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


def measure(code: str) -> tuple[float, float, list[str]]:
    """Wall and CPU seconds of one fresh interpreter running `code`, and the heavy packages it imported.

    CPU seconds (user + system) barely move with the machine's load; wall seconds do.
    """
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True,
                          text=True)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode not in (0,):
        raise SystemExit(f"{code!r} failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
    tops = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}
    return wall, cpu, sorted(tops & set(HEAVY))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="fresh interpreters per row (median reported)")
    args = ap.parse_args()
    print(f"{'command':<28} {'wall s':>7} {'min s':>7} {'cpu s':>7} {'< 1 s':>6}  heavy imports")
    for name, code in ROWS:
        runs = [measure(code) for _ in range(max(1, args.repeat))]
        walls, cpus = [w for w, _, _ in runs], [c for _, c, _ in runs]
        heavy = sorted({h for _, _, hs in runs for h in hs})
        med, cpu = statistics.median(walls), statistics.median(cpus)
        print(f"{name:<28} {med:>7.3f} {min(walls):>7.3f} {cpu:>7.3f} {'yes' if min(med, cpu) < TARGET_S else 'NO':>6}  "
              f"{', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()

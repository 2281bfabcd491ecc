"""``make bench``: run every benchmark in ``tests/bench`` one after the other.

Each ``bench_*.py`` module is also runnable on its own (``python -m tests.bench.bench_decode``).
Benchmarks print their figures and ratios measured side by side in one run; they are not
tests and never fail on a slow machine. ``python -m tests.bench decode store`` runs a subset.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    names = sorted(p.stem for p in here.glob("bench_*.py"))
    if argv:
        wanted = {a.removeprefix("bench_") for a in argv}
        unknown = wanted - {n.removeprefix("bench_") for n in names}
        if unknown:
            print(
                f"unknown benchmark(s): {', '.join(sorted(unknown))}; have: "
                f"{', '.join(n.removeprefix('bench_') for n in names)}",
                file=sys.stderr,
            )
            return 2
        names = [n for n in names if n.removeprefix("bench_") in wanted]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        # A process per benchmark: one's imports and memory never colour another's figures.
        rc = subprocess.call([sys.executable, "-m", f"tests.bench.{name}"])
        print(f"--- {name}: {time.monotonic() - started:.1f} s, exit {rc}", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"\nbenchmarks that failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

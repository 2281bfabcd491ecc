"""What the storage benchmarks measure, measured one way: a workload's writes, fsyncs and memory.

A benchmark module runs its workload in a child process (``python -m <module> --child MODE
--cycles N --dir D``) that prints :func:`timed_io`'s figures as its last line; the parent runs
the child under ``strace -f -c`` (fsync and fdatasync calls) with :func:`run_child` and takes
per-reading figures with :func:`per_reading`, a run of zero cycles subtracted so that
start-up (schema, first files) does not count. Bytes are the process's own counters from
``/proc/self/io``: ``write_bytes`` (what reached the block layer) and ``wchar`` (all write
calls).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def io_counters() -> dict[str, int]:
    """This process's I/O counters (``/proc/self/io``)."""
    out = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = int(value)
    return out


def rss_kib() -> int:
    """This process's resident memory in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def timed_io(work: Callable[[], object]) -> dict[str, Any]:
    """Run ``work`` after a sync; its ``write_bytes``, ``wchar`` and wall-clock ``seconds``."""
    os.sync()
    before = io_counters()
    t0 = time.perf_counter()
    work()
    elapsed = time.perf_counter() - t0
    after = io_counters()
    return {
        "write_bytes": after["write_bytes"] - before["write_bytes"],
        "wchar": after["wchar"] - before["wchar"],
        "seconds": elapsed,
    }


def strace_fsyncs(out: Path) -> int:
    """fsync plus fdatasync calls from an ``strace -c -o out`` summary."""
    total = 0
    for line in out.read_text().splitlines():
        parts = line.split()
        if parts and parts[-1] in ("fsync", "fdatasync"):
            # "% time seconds usecs/call calls [errors] syscall"
            total += int(parts[3])
    return total


def run_child(
    module: str,
    mode: str,
    cycles: int,
    base: Path,
    extra: Sequence[str] = (),
    count_fsyncs: bool = True,
) -> dict[str, Any]:
    """Run ``module``'s child in a fresh directory under ``base``; its figures plus ``fsync``
    (NaN when strace is missing or ``count_fsyncs`` is off)."""
    strace = shutil.which("strace") if count_fsyncs else None
    with tempfile.TemporaryDirectory(dir=base) as d:
        out = Path(d) / "strace.txt"
        cmd = [sys.executable, "-m", module, "--child", mode, "--cycles", str(cycles), "--dir", d]
        cmd += extra
        if strace:
            cmd = [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", str(out), *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"bench child failed:\n{result.stderr[-3000:]}")
        figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
        figures["fsync"] = strace_fsyncs(out) if strace else float("nan")
    return figures


def per_reading(
    module: str, mode: str, cycles: int, base: Path, readings_per_cycle: int
) -> dict[str, float]:
    """fsyncs, bytes and write calls per reading, start-up subtracted; readings per second."""
    empty = run_child(module, mode, 0, base)
    full = run_child(module, mode, cycles, base)
    n = cycles * readings_per_cycle
    return {
        "fsync": (full["fsync"] - empty["fsync"]) / n,
        "write_bytes": (full["write_bytes"] - empty["write_bytes"]) / n,
        "wchar": (full["wchar"] - empty["wchar"]) / n,
        "readings_per_s": n / full["seconds"],
    }


def filesystem(base: Path) -> str:
    """The filesystem type under ``base`` (the figures depend on it)."""
    fs = subprocess.run(["df", "-T", str(base)], capture_output=True, text=True).stdout
    return fs.splitlines()[-1].split()[1] if fs else "?"


def print_memory(samples: Sequence[tuple[int, int]], what: str) -> None:
    """The resident-memory samples ``(cycle, KiB)`` and the growth after the first one."""
    print(
        f"resident memory over {what} (cycle: KiB): " + ", ".join(f"{c}: {k}" for c, k in samples)
    )
    first = samples[1][1] if len(samples) > 1 else samples[0][1]
    print(
        f"growth after warm-up: {samples[-1][1] - first} KiB "
        f"({(samples[-1][1] - first) / first * 100:+.1f} %)"
    )

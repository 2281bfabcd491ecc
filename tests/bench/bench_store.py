"""Storage cost of the buffer: bytes written and fsyncs per reading, and memory over time.

A poll cycle is 100 meters with one value each. Two ways of storing it, side by side in one
run on the same filesystem:

* ``tick``: the product's way, one transaction per schedule tick (``commit_tick`` of 100);
* ``per value``: one transaction per reading (what a naive logger does), for the ratio.

Bytes are the process's own counters from ``/proc/self/io`` (``write_bytes``: what reached
the block layer; ``wchar``: what went through write calls); fsync and fdatasync calls are
counted by running the workload under ``strace -c``. A run with zero cycles is subtracted,
so opening the database does not count. Then 10,000 accelerated cycles (commit, and an uplink
draining acknowledged batches as in service) sample the resident set size: it must stay flat.

Run: ``.venv/bin/python -m tests.bench.bench_store [--cycles N] [--memory-cycles N]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from logger.store.api import BufferLimits
from logger.store.sqlite import SqliteStore
from tests.support import iobench
from tests.support.iobench import filesystem, print_memory, rss_kib, timed_io
from tests.support.store import T0, FakeUplink, make_tick

METERS = 100


def child(mode: str, cycles: int, directory: str) -> None:
    """The measured workload (runs in a subprocess under strace)."""
    store = SqliteStore(
        Path(directory) / "buffer.db",
        BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0),
    )

    def work() -> None:
        for c in range(cycles):
            at = T0 + timedelta(minutes=15 * c)
            tick = make_tick(METERS, at)
            if mode == "tick":
                store.commit_tick(tick, now=at)
            else:
                for reading in tick:
                    store.commit_tick([reading], now=at)

    figures = timed_io(work)
    store.close()
    print(json.dumps(figures))


def per_reading(mode: str, cycles: int, base: Path) -> dict[str, float]:
    return iobench.per_reading("tests.bench.bench_store", mode, cycles, base, METERS)


def memory(cycles: int, base: Path) -> list[tuple[int, int]]:
    samples: list[tuple[int, int]] = []
    with tempfile.TemporaryDirectory(dir=base) as d:
        store = SqliteStore(
            Path(d) / "buffer.db",
            BufferLimits(max_bytes=64 * 1024 * 1024, max_age_s=None, min_free_bytes=0),
        )
        uplink = FakeUplink()
        for c in range(cycles):
            at = T0 + timedelta(minutes=15 * c)
            store.commit_tick(make_tick(METERS, at), now=at)
            if c % 10 == 9:  # the uplink drains every ten ticks
                uplink.drain(store, max_n=5000)
                uplink.received.clear()  # the receiver keeps them, not this process
            if c % (cycles // 10 or 1) == 0 or c == cycles - 1:
                samples.append((c + 1, rss_kib()))
        store.close()
    return samples


def size_and_drain(ticks: int, base: Path) -> dict[str, float]:
    """File size against the accounted bytes, and how fast the uplink can drain."""
    with tempfile.TemporaryDirectory(dir=base) as d:
        path = Path(d) / "buffer.db"
        store = SqliteStore(path, BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0))
        for c in range(ticks):
            at = T0 + timedelta(minutes=15 * c)
            store.commit_tick(make_tick(METERS, at), now=at)
        store._checkpoint()
        accounted = store.stats(T0).bytes
        file_bytes = path.stat().st_size
        t0 = time.perf_counter()
        drained = 0
        while True:
            batch = store.pending_batch(5000)
            if not batch.items:
                break
            assert batch.last_seq is not None
            drained += store.acknowledge(batch.epoch, up_to_seq=batch.last_seq)
        elapsed = time.perf_counter() - t0
        store.close()
    return {"accounted": accounted, "file": file_bytes, "drain_per_s": drained / elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--memory-cycles", type=int, default=10_000)
    parser.add_argument("--dir", default=None, help="filesystem to measure on (default: cwd)")
    parser.add_argument("--child", choices=("tick", "value"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.cycles, args.dir)
        return 0
    base = Path(args.dir or os.getcwd())
    print(f"filesystem: {filesystem(base)} at {base}")
    print(f"{METERS} meters per cycle, {args.cycles} cycles per mode")
    tick = per_reading("tick", args.cycles, base)
    value = per_reading("value", args.cycles, base)
    print(
        f"{'':24}{'fsync/reading':>15}{'bytes/reading':>15}{'wchar/reading':>15}{'readings/s':>12}"
    )
    for name, fig in (("one commit per tick", tick), ("one commit per value", value)):
        print(
            f"{name:24}{fig['fsync']:>15.4f}{fig['write_bytes']:>15.1f}{fig['wchar']:>15.1f}"
            f"{fig['readings_per_s']:>12.0f}"
        )
    print(
        f"ratio per-value / per-tick: fsync x{value['fsync'] / tick['fsync']:.0f}, "
        f"bytes x{value['write_bytes'] / max(tick['write_bytes'], 1e-9):.1f}, "
        f"wchar x{value['wchar'] / tick['wchar']:.1f}"
    )
    rounds = [size_and_drain(1000, base) for _ in range(3)]
    sd = dict(rounds[0], drain_per_s=statistics.median(r["drain_per_s"] for r in rounds))
    print(
        f"100,000 readings: database file {sd['file'] / 1e6:.1f} MB for "
        f"{sd['accounted'] / 1e6:.1f} MB accounted against max_bytes "
        f"(ratio {sd['file'] / sd['accounted']:.2f}); drained oldest-first in batches of "
        f"5,000 with acknowledgement: {sd['drain_per_s']:,.0f} readings/s (median of 3)"
    )
    samples = memory(args.memory_cycles, base)
    print_memory(samples, f"{args.memory_cycles} cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())

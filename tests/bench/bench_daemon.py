"""The daemon's storage cost per reading, and its resident memory over 10,000 cycles.

A cycle is one tick of 100 meters on four lanes, with 4 values each (energy, volume, power,
flow temperature: a typical heat meter), read by in-process meters, so the figures are the
daemon's own: the poller, the lane and store threads, one commit per tick, and the status file
it replaces each tick.
Time is virtual (each tick starts as soon as the previous one committed), so 10,000 cycles
take a minute, not a hundred days.

* **Bytes and fsyncs per reading** of the whole daemon process: ``write_bytes`` (what reached
  the block layer) and ``wchar`` (all write calls) from ``/proc/self/io``; fsync and fdatasync
  calls counted by running it under ``strace -f -c`` (the method and helpers of
  ``tests.support.iobench``). A run of zero cycles is subtracted, so start-up (schema,
  status file) does not count. Side by side in the same run: the store alone committing the
  same ticks, for the daemon's overhead; and the daemon with one commit per meter instead of
  per tick (what a logger without tick batching pays).
* **Resident memory** sampled every 1,000 cycles of a 10,000-cycle run with an uplink stand-in
  acknowledging batches every ten ticks (so the buffer stays at its working depth): it must
  stay flat after warm-up.

Run: ``.venv/bin/python -m tests.bench.bench_daemon [--cycles N] [--memory-cycles N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from logger.app import Daemon, SdNotify, load_config
from logger.config import Config
from logger.config.model import MeterConfig
from logger.readings import Reading, ValueKind, canonical_decimal
from logger.store.api import ReadingStore
from tests.support import iobench
from tests.support.daemon import VirtualTimer, config_toml, tcp_meter
from tests.support.iobench import filesystem, print_memory, rss_kib, run_child, timed_io

METERS = 100
VALUES = (
    ("0403", "energy", "Wh"),
    ("0C13", "volume", "m^3"),
    ("022B", "power", "W"),
    ("025A", "flow temperature", "°C"),
)
START = datetime(2026, 1, 1, tzinfo=UTC)


class HeatMeters:
    """In-process meters: four exact values per read that change every read."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, meter: MeterConfig, logger_time: datetime, clock_synced: bool) -> list[Reading]:
        self.reads += 1
        n = self.reads
        values = (n * 25, n * 1000 + 250_000, 9000 + n % 500, 653 + n % 40)
        scales = (0, -3, 0, -1)
        return [
            Reading(
                meter.id,
                key,
                quantity,
                unit,
                canonical_decimal(f"{v}E{s}"),
                ValueKind.NUMBER,
                logger_time,
            )
            for (key, quantity, unit), v, s in zip(VALUES, values, scales, strict=True)
        ]

    def close(self) -> None:
        pass


class PerMeterStore:
    """Commits each meter's readings on its own (the comparison: no tick batching)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def commit_tick(self, readings: Sequence[Reading], now: datetime | None = None) -> Any:
        result = None
        by_meter: dict[str, list[Reading]] = {}
        for r in readings:
            by_meter.setdefault(r.meter_id, []).append(r)
        for group in by_meter.values():
            result = self._inner.commit_tick(group, now)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _config(directory: Path) -> tuple[Path, Config]:
    path = directory / "logger.toml"
    # Four lanes (gateways) of 25 meters each, as a building with four risers would have.
    meters = [
        tcp_meter(f"heat{i:03d}", "15m", host=f"gw{i % 4}.invalid:502", unit_id=i // 4 + 1)
        for i in range(METERS)
    ]
    path.write_text(
        config_toml(
            directory / "state",
            meters,
            buffer={"max_bytes": "1 GiB", "min_free_disk": "4 MiB"},
        )
    )
    return path, load_config(path)


async def _run(
    daemon: Daemon, cycles: int, samples: list[tuple[int, int]] | None, drain_every: int
) -> None:
    task = asyncio.create_task(daemon.run())
    while daemon.poller is None or daemon.store is None:
        await asyncio.sleep(0.001)
    poller, store = daemon.poller, daemon.store
    done = 0
    step = max(cycles // 10, 1)
    while done < cycles:
        await asyncio.sleep(0.002)
        if poller.ticks == done:
            continue
        done = poller.ticks
        if drain_every and done % drain_every == 0:
            await _drain(daemon, store)
        if samples is not None and (done % step == 0 or done >= cycles):
            samples.append((done, rss_kib()))
    daemon.stop()
    await task


async def _drain(daemon: Daemon, store: ReadingStore) -> None:
    """The uplink's part: take the oldest batch and acknowledge it, on the store thread."""
    loop = asyncio.get_running_loop()

    def work() -> None:
        while True:
            batch = store.pending_batch(5000)
            if not batch.items:
                return
            store.acknowledge(batch.epoch, up_to_seq=batch.last_seq)

    await loop.run_in_executor(daemon.store_executor, work)


def store_alone(config: Config, cycles: int) -> None:
    """The same ticks committed straight to the store: no poller, threads or status file."""
    from logger.app import open_store

    store = open_store(config)
    meters = HeatMeters()
    for c in range(cycles):
        at = START + timedelta(minutes=15 * c)
        tick = [r for m in config.meters for r in meters.read(m, at, True)]
        store.commit_tick(tick)
    store.close()


def child(mode: str, cycles: int, directory: str, memory: bool) -> None:
    """The measured daemon (runs in a subprocess under strace)."""
    path, config = _config(Path(directory))
    if mode == "store":
        print(json.dumps(timed_io(lambda: store_alone(config, cycles))))
        return
    timer = VirtualTimer(START)
    store: Any = None
    if mode == "per-meter":
        from logger.app import open_store

        store = PerMeterStore(open_store(config))
    daemon = Daemon(
        path,
        config,
        reader_factory=lambda lane, cfg: HeatMeters(),
        notify=SdNotify(""),
        store=store,
        poller_options={"timer": timer},
    )
    timer.daemon = daemon
    samples: list[tuple[int, int]] | None = [] if memory else None
    figures = timed_io(
        lambda: asyncio.run(_run(daemon, cycles, samples, drain_every=10 if memory else 0))
    )
    print(json.dumps({**figures, "samples": samples}))


def measure(mode: str, cycles: int, base: Path, memory: bool = False) -> dict[str, Any]:
    extra = ["--memory"] if memory else []
    return run_child("tests.bench.bench_daemon", mode, cycles, base, extra, not memory)


def per_reading(mode: str, cycles: int, base: Path) -> dict[str, float]:
    return iobench.per_reading("tests.bench.bench_daemon", mode, cycles, base, METERS * len(VALUES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--memory-cycles", type=int, default=10_000)
    parser.add_argument("--dir", default=None, help="filesystem to measure on (default: cwd)")
    parser.add_argument("--child", choices=("tick", "per-meter", "store"), help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.cycles, args.dir, args.memory)
        return 0
    base = Path(args.dir or os.getcwd())
    print(f"filesystem: {filesystem(base)} at {base}")
    print(f"{METERS} meters x {len(VALUES)} values per cycle, {args.cycles} cycles per mode")
    daemon = per_reading("tick", args.cycles, base)
    naive = per_reading("per-meter", args.cycles, base)
    store = per_reading("store", args.cycles, base)
    print(
        f"{'':34}{'fsync/reading':>14}{'bytes/reading':>14}{'wchar/reading':>14}{'readings/s':>12}"
    )
    for name, fig in (
        ("daemon, one commit per tick", daemon),
        ("store alone, one commit per tick", store),
        ("daemon, one commit per meter", naive),
    ):
        print(
            f"{name:34}{fig['fsync']:>14.4f}{fig['write_bytes']:>14.1f}{fig['wchar']:>14.1f}"
            f"{fig['readings_per_s']:>12.0f}"
        )
    print(
        f"daemon / store alone: fsync x{daemon['fsync'] / store['fsync']:.2f}, "
        f"bytes x{daemon['write_bytes'] / max(store['write_bytes'], 1e-9):.2f} "
        "(the difference is the status file, rewritten each tick)"
    )
    print(
        f"per-meter / per-tick commits: fsync x{naive['fsync'] / daemon['fsync']:.0f}, "
        f"bytes x{naive['write_bytes'] / max(daemon['write_bytes'], 1e-9):.1f}"
    )
    mem = measure("tick", args.memory_cycles, base, memory=True)
    samples = mem["samples"]
    print_memory(
        samples,
        f"{args.memory_cycles} cycles ({args.memory_cycles * METERS:,} meter reads, "
        f"{mem['seconds']:.0f} s)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

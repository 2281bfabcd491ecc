"""Receiver storage throughput: durable inserts per second in batches of 10,000.

Run: ``.venv/bin/python -m tests.bench.bench_receiver_storage [--batches N]``

Measured side by side in one run, every figure durable (SQLite WAL + synchronous=FULL; a
PostgreSQL 15 server with fsync on, started for the run):

* ``Storage.push`` on SQLite and on PostgreSQL: new batches (insert path) and the same batches
  resent (duplicate path: compare every reading with what is stored);
* the same rows with a bare ``executemany`` into a table with no uniqueness or content check
  (the floor: what exactly-once costs on top of SQLite itself);
* one INSERT + COMMIT per reading (what a naive durable gateway does), sampled on 1,000.

Figures are medians over batches in readings per second; ratios are against the bare
``executemany`` floor and the one-commit-per-reading figure. This machine is shared: compare
ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from receiver.storage import Storage, open_storage
from tests.support.postgres import postgres_server
from tests.support.receiver_storage import batch

DEVICE = "urn:bench:logger"
THUMB = "b" * 40


async def _pushes(storage: Storage, batches: int, size: int, epoch: str) -> list[float]:
    rates = []
    for k in range(batches):
        columns = batch(k * size, size, records=20)
        start = time.perf_counter()
        result = await storage.push(DEVICE, THUMB, epoch, columns)
        rates.append(size / (time.perf_counter() - start))
        assert result.inserted + result.duplicates == size
    return rates


async def bench_storage(url: str, batches: int, size: int) -> dict[str, float]:
    storage = await open_storage(url)
    try:
        await _pushes(storage, 1, size, "warm-up")
        inserts = await _pushes(storage, batches, size, "e1")
        resends = await _pushes(storage, batches, size, "e1")
    finally:
        await storage.close()
    return {"insert": statistics.median(inserts), "resend": statistics.median(resends)}


def bench_bare_sqlite(path: Path, batches: int, size: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE r (epoch TEXT, seq INTEGER, meter TEXT, record TEXT, value TEXT, "
        "unit TEXT, quantity TEXT, source_time INTEGER, logger_time INTEGER, flags TEXT)"
    )
    rates = []
    for k in range(batches):
        c = batch(k * size, size, records=20)
        start = time.perf_counter()
        rows = [
            (
                "e1",
                c["Sequence"][i],
                c["Meter"][i],
                c["Record"][i],
                c["Value"][i],
                c["Unit"][i],
                c["Quantity"][i],
                None,
                c["LoggerTime"][i].timestamp(),  # type: ignore[attr-defined]
                c["Flags"][i],
            )
            for i in range(size)
        ]
        db.execute("BEGIN")
        db.executemany("INSERT INTO r VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        rates.append(size / (time.perf_counter() - start))
    one = 1000
    c = batch(0, one)
    start = time.perf_counter()
    for i in range(one):
        db.execute(
            "INSERT INTO r (epoch, seq, value) VALUES ('single', ?, ?)",
            (c["Sequence"][i], c["Value"][i]),
        )  # autocommit: one durable transaction per reading
    single = one / (time.perf_counter() - start)
    db.close()
    return {"executemany": statistics.median(rates), "single": single}


def _run(coro: Coroutine[Any, Any, dict[str, float]]) -> dict[str, float]:
    return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per figure")
    parser.add_argument("--size", type=int, default=10_000, help="readings per batch")
    args = parser.parse_args(argv)
    n, size = args.batches, args.size
    with tempfile.TemporaryDirectory(prefix="bench-receiver-") as tmp:
        bare = bench_bare_sqlite(Path(tmp) / "bare.db", n, size)
        sqlite_figures = _run(bench_storage(f"sqlite://{tmp}/receiver.db", n, size))
        with postgres_server(fsync=True) as server:
            url = _run_url(server.create_database)
            pg_figures = _run(bench_storage(url, n, size))
    floor = bare["executemany"]
    single = bare["single"]
    print(f"receiver storage, batches of {size:,}, {n} batches per figure, durable, medians")
    print(f"{'':38}{'readings/s':>12}{'vs bare':>10}{'vs 1 commit/reading':>22}")

    def line(name: str, rate: float) -> None:
        print(f"{name:38}{rate:12,.0f}{rate / floor:10.2f}{rate / single:21.1f}x")

    line("bare sqlite executemany (floor)", floor)
    line("sqlite, 1 commit per reading (1,000)", single)
    line("Storage.push sqlite, new", sqlite_figures["insert"])
    line("Storage.push sqlite, resent", sqlite_figures["resend"])
    line("Storage.push postgresql, new", pg_figures["insert"])
    line("Storage.push postgresql, resent", pg_figures["resend"])
    return 0


def _run_url(factory: Callable[[str], Coroutine[Any, Any, str]]) -> str:
    return asyncio.run(factory("bench"))


if __name__ == "__main__":
    raise SystemExit(main())

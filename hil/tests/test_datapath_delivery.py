"""Exactly-once delivery on a whole system of real processes, under a backlog.

Simulated meters → ``mbus-logger run`` (TPM key in swtpm) → ``mbus-receiver serve`` over
SignAndEncrypt, as :class:`hil.stack.Stack` builds it. Two scenarios the kill storm of
``test_scenarios.py`` does not reach, because there the buffer holds a few seconds of readings:

* a receiver outage of a simulated week: the logger's buffer holds a week of readings taken at
  the real 15-minute cadence (written into its buffer with the daemon stopped, time
  accelerated), then the daemon runs on with the receiver still away, polling live every
  few seconds and buffering behind the week; when the receiver is back everything arrives,
  exactly once and in sequence order, the poller keeps its slots while the backlog drains,
  and what it commits meanwhile follows the backlog within seconds;
* SIGKILL of the logger and of the receiver, alternately, at random moments while a large
  backlog drains (so kills land inside batches in flight, between the receiver's commit and
  the logger's deletion, and inside the logger's acknowledgement): afterwards the receiver
  holds every reading the logger committed, exactly once.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hil.stack import Bench, LoggerNode, LoggerSettings, ReceiverNode, Stack, wait_until

pytestmark = [pytest.mark.hil, pytest.mark.timeout(420)]

BENCH = Bench.from_env()
WEEK_TICKS = 7 * 24 * 4  # 15-minute cadence
WEEK_METERS = 20
WEEK_RECORDS = 10
OUTAGE_TICKS = 3
"""Live ticks the daemon polls while the receiver is still away, after the week."""
SETTINGS = LoggerSettings(interval="3s")
"""The accelerated cadence: a tick polls every simulated meter in about 1.8 s at 9600 Bd, so
3 s keeps slots from overlapping (a missed slot would be the poller's fault, not the bench's)."""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if not BENCH.own_receiver:
        pytest.skip("needs a receiver the suite runs itself (MBUS_HIL_ENDPOINT is set)")
    made = Stack(tmp_path / "stack", bench=BENCH, settings=SETTINGS)
    try:
        made.start()
        yield made
    finally:
        made.close()


def prefill_week(node: LoggerNode, end: datetime) -> tuple[int, int]:
    """A week of readings at the real cadence, committed as the daemon would (one transaction
    per tick), into the stopped logger's buffer. Returns (first, last) sequence numbers."""
    from logger.readings import Reading, ValueKind
    from logger.store.api import BufferLimits
    from logger.store.sqlite import SqliteStore

    assert not node.alive, "stop the logger before writing into its buffer"
    store = SqliteStore(node.state_dir / "buffer.db", BufferLimits())
    first = last = 0
    try:
        start = end - timedelta(minutes=15 * WEEK_TICKS)
        for tick in range(WEEK_TICKS):
            at = start + timedelta(minutes=15 * tick)
            readings = [
                Reading(
                    meter_id=f"week-{m:02d}",
                    key=f"{r:02d}:energy",
                    quantity="energy",
                    unit="Wh",
                    value=f"{1000 * m + tick}.{r}5",
                    kind=ValueKind.NUMBER,
                    logger_time=at,
                )
                for m in range(WEEK_METERS)
                for r in range(1, WEEK_RECORDS + 1)
            ]
            result = store.commit_tick(readings, now=at)
            assert result.first_seq is not None and result.last_seq is not None
            first = first or result.first_seq
            last = result.last_seq
    finally:
        store.close()
    return first, last


def delivered(receiver: ReceiverNode, node: LoggerNode) -> list[Any]:
    return receiver.snapshot(readings=True).for_device(node.application_uri)


def highest_stored(receiver: ReceiverNode, node: LoggerNode, epoch: str) -> int:
    """The receiver's highest stored sequence number of the epoch (a cheap probe; the full
    check reads everything once at the end)."""
    import asyncio

    from receiver.storage import open_storage

    async def probe() -> int:
        storage = await open_storage(receiver.db_url, create=False, pool_size=1)
        try:
            return await storage.acknowledged(node.application_uri, epoch) or 0
        finally:
            await storage.close()

    return asyncio.run(probe())


def wait_delivered(
    receiver: ReceiverNode, node: LoggerNode, epoch: str, upto: int, timeout: float
) -> list[Any]:
    """Wait until the receiver stored up to ``upto``; return everything it holds."""
    wait_until(
        f"the receiver to hold readings up to {upto} of {node.serial}",
        lambda: highest_stored(receiver, node, epoch) >= upto,
        timeout,
        0.2,
    )
    return delivered(receiver, node)


def assert_exactly_once(readings: list[Any], epoch: str, upto: int) -> None:
    mine = [r for r in readings if r.epoch == epoch]
    counts = Counter(r.sequence for r in mine)
    duplicates = sorted(s for s, n in counts.items() if n > 1)
    assert not duplicates, f"stored more than once: {duplicates[:10]}"
    missing = sorted(set(range(1, upto + 1)) - set(counts))
    assert not missing, f"never stored: {missing[:10]} ({len(missing)} in all)"
    arrival = [r.sequence for r in mine]
    assert arrival == sorted(arrival), "readings of one epoch arrived out of order"


def ticks(node: LoggerNode) -> int:
    """Ticks the running daemon has polled since it started (its status file, per tick)."""
    return int((node.status() or {}).get("ticks", 0))


def test_a_week_of_backlog_arrives_in_order_while_live_readings_follow(stack: Stack) -> None:
    node, receiver = stack.logger, stack.receiver
    epoch = node.buffer_stats()["epoch"]
    node.wait_readings(1)
    # The receiver goes away for a week. The week's readings, at the real cadence, are written
    # into the logger's buffer with the daemon stopped (time accelerated) ...
    receiver.stop()
    node.stop()
    first, last = prefill_week(node, datetime.now(UTC))
    assert last - first + 1 == WEEK_TICKS * WEEK_METERS * WEEK_RECORDS
    # ... then the daemon runs on, the receiver still away: it keeps polling at its cadence
    # and buffers the live readings behind the week.
    node.start()
    wait_until(f"{OUTAGE_TICKS} live ticks", lambda: ticks(node) >= OUTAGE_TICKS, 60, 0.2)
    buffered_live = node.committed()
    assert buffered_live > last, "no live reading was buffered during the outage"
    assert node.buffer_stats()["depth"] >= buffered_live - first + 1
    assert highest_stored(receiver, node, epoch) < first
    # The receiver is back: the backlog (the week and the outage's live readings) drains
    # while the poller goes on.
    ticks_before = ticks(node)
    receiver.start()
    started = time.monotonic()
    wait_delivered(receiver, node, epoch, buffered_live, timeout=120)
    drained = time.monotonic() - started
    during = node.committed()
    ticks_during = ticks(node) - ticks_before
    assert ticks_during >= 1 and during > buffered_live, (
        f"no live tick committed while the backlog drained ({drained:.1f} s)"
    )
    # What was committed during the drain arrives too, shortly after the backlog.
    got = wait_delivered(receiver, node, epoch, during, timeout=30)
    followed = time.monotonic() - started - drained
    assert_exactly_once(got, epoch, during)
    status = node.status() or {}
    assert all(m["missed_slots"] == 0 for m in status["meters"]), status["meters"]
    assert node.buffer_stats()["lost_total"] == 0
    week = [r for r in got if r.meter.startswith("week-")]
    assert len(week) == last - first + 1
    assert [r.logger_time for r in week] == sorted(r.logger_time for r in week)
    print(
        f"a week of backlog: {len(week):,} readings + {buffered_live - last} live from the "
        f"outage delivered in {drained:.1f} s ({len(week) / drained:,.0f} readings/s including "
        f"the receiver's start); {ticks_during} ticks, {during - buffered_live} readings "
        f"committed meanwhile, delivered {followed:.1f} s after the backlog"
    )


def test_kill9_of_logger_and_receiver_while_a_backlog_drains(stack: Stack) -> None:
    seed = int(os.environ.get("MBUS_HIL_SEED", random.randrange(1 << 30)))
    kills = int(os.environ.get("MBUS_HIL_KILLS", "30"))
    rng = random.Random(seed)
    node, receiver = stack.logger, stack.receiver
    epoch = node.buffer_stats()["epoch"]
    node.wait_readings(1)
    receiver.stop()
    node.stop()
    prefill_week(node, datetime.now(UTC))
    node.start()
    receiver.start()
    history: list[str] = []
    for n in range(kills):
        time.sleep(rng.uniform(0.0, 1.5))
        target = node if n % 2 == 0 else receiver
        target.kill9()
        history.append("logger" if target is node else "receiver")
        target.start()
    assert node.alive and receiver.alive
    done = node.committed()
    print(f"kill -9 while draining: seed {seed}, {Counter(history)}, {done} readings committed")
    got = wait_delivered(receiver, node, epoch, done, timeout=240)
    assert_exactly_once(got, epoch, done)
    stats = node.buffer_stats()
    assert stats["epoch"] == epoch and stats["lost_total"] == 0

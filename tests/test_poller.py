"""The poller: wall-clock grid, one commit per tick, lanes, failure isolation, health, clock."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from logger.config import Config
from logger.poller import Poller, WallTimer
from logger.readings import Reading
from logger.store.api import CommitResult, StoreError
from logger.store.memory import MemoryStore
from logger.store.sqlite import SqliteStore
from tests.support.daemon import (
    RTU_BUS,
    FakeMeters,
    VirtualTimer,
    make_config,
    rtu_meter,
    tcp_meter,
    utc,
)


class RecordingStore(MemoryStore):
    """The in-memory model, remembering each commit_tick call (one per tick expected)."""

    def __init__(self) -> None:
        super().__init__()
        self.ticks: list[list[Reading]] = []
        self.fail_next = 0

    def commit_tick(self, readings: Sequence[Reading], now: datetime | None = None) -> CommitResult:
        if self.fail_next:
            self.fail_next -= 1
            raise StoreError("buffer.db: disk I/O error (simulated)")
        self.ticks.append(list(readings))
        return super().commit_tick(readings, now)


def run_poller(
    config: Config,
    meters: FakeMeters,
    timer: VirtualTimer,
    store: Any = None,
    **kw: Any,
) -> Poller:
    poller = Poller(config, store or RecordingStore(), meters, timer=timer, **kw)
    timer.poller = poller
    asyncio.run(asyncio.wait_for(poller.run(), 60))
    return poller


def test_meters_are_read_on_the_wall_clock_grid_and_each_tick_commits_once(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        [
            tcp_meter("minute", "1m"),
            tcp_meter("quarter", "15m"),
            tcp_meter("offset", "15m", offset="7m"),
        ],
    )
    meters = FakeMeters()
    store = RecordingStore()
    timer = VirtualTimer(utc(2026, 3, 1, 10, 7, 30), stop_at=utc(2026, 3, 1, 10, 31))
    run_poller(config, meters, timer, store)

    minute = meters.times("minute")
    assert minute[0] == utc(2026, 3, 1, 10, 8)
    assert minute == [utc(2026, 3, 1, 10, 8) + timedelta(minutes=k) for k in range(23)]
    assert meters.times("quarter") == [utc(2026, 3, 1, 10, 15), utc(2026, 3, 1, 10, 30)]
    assert meters.times("offset") == [utc(2026, 3, 1, 10, 22)]
    # One transaction per tick: the slots where two meters were due gave one commit each.
    assert len(store.ticks) == 23
    by_time = {tick[0].logger_time: {r.meter_id for r in tick} for tick in store.ticks}
    assert by_time[utc(2026, 3, 1, 10, 15)] == {"minute", "quarter"}
    assert by_time[utc(2026, 3, 1, 10, 22)] == {"minute", "offset"}
    assert by_time[utc(2026, 3, 1, 10, 9)] == {"minute"}
    # Sequence numbers strictly increasing across ticks, no duplicates.
    seqs = [s.seq for s in store.read(0, 10_000)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_grid_follows_the_installation_time_zone(tmp_path: Path) -> None:
    # Kolkata is UTC+5:30: an hourly meter reads at local :00, i.e. at UTC :30.
    config = make_config(tmp_path, [tcp_meter("hourly", "1h")], timezone="Asia/Kolkata")
    meters = FakeMeters()
    timer = VirtualTimer(utc(2026, 3, 1, 10, 0), stop_at=utc(2026, 3, 1, 12, 45))
    run_poller(config, meters, timer)
    assert meters.times("hourly") == [
        utc(2026, 3, 1, 10, 30),
        utc(2026, 3, 1, 11, 30),
        utc(2026, 3, 1, 12, 30),
    ]


def test_a_dead_meter_is_logged_once_down_once_up_and_never_stops_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(
        tmp_path,
        [rtu_meter("good", "rs485", 1), rtu_meter("flaky", "rs485", 2), tcp_meter("other")],
        buses={"rs485": RTU_BUS},
    )
    meters = FakeMeters()
    meters.fail["flaky"] = 4
    store = RecordingStore()
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 10))
    caplog.set_level(logging.INFO, logger="logger.poller")
    poller = run_poller(config, meters, timer, store)

    assert len(meters.times("good")) == 9
    assert len(meters.times("flaky")) == 9  # still asked every minute while down
    # Every tick committed the good meters; the flaky one joined after it came back.
    assert all({"good", "other"} <= {r.meter_id for r in tick} for tick in store.ticks)
    assert [("flaky" in {r.meter_id for r in t}) for t in store.ticks] == [False] * 4 + [True] * 5
    messages = [r.getMessage() for r in caplog.records if "flaky" in r.getMessage()]
    down = [m for m in messages if "is down" in m]
    up = [m for m in messages if "back up" in m]
    assert len(down) == 1 and "no answer (simulated)" in down[0]
    assert len(up) == 1 and "after 4 failed poll(s)" in up[0]
    health = poller.health["flaky"]
    assert health.state == "up"
    assert health.consecutive_failures == 0
    assert health.failures == 4 and health.polls == 9
    assert health.last_error == "meter flaky: no answer (simulated)"
    assert health.last_success == utc(2026, 3, 1, 0, 9)
    assert poller.health["good"].failures == 0


def test_lanes_run_in_parallel_and_a_lane_reads_its_meters_one_at_a_time(tmp_path: Path) -> None:
    config = make_config(
        tmp_path,
        [
            rtu_meter("a1", "busA", 1),
            rtu_meter("a2", "busA", 2),
            rtu_meter("b1", "busB", 1),
        ],
        buses={"busA": RTU_BUS, "busB": {**RTU_BUS, "device": "/dev/zero"}},
    )
    meters = FakeMeters()
    b_started = threading.Event()

    def hook(meter_id: str) -> None:
        if meter_id == "b1":
            b_started.set()
            time.sleep(0.05)
        if meter_id == "a1":
            # Bus A waits for bus B to start: only possible if the lanes run in parallel.
            assert b_started.wait(10), "bus B never started while bus A was reading"

    meters.hook = hook
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 2))
    run_poller(config, meters, timer)
    calls = {c.meter_id: c for c in meters.calls if c.at == utc(2026, 3, 1, 0, 1)}
    assert calls["a1"].thread != calls["b1"].thread
    assert calls["a1"].thread == calls["a2"].thread
    assert calls["a1"].ended <= calls["a2"].started  # half duplex: never two at once
    assert "MainThread" not in {c.thread for c in meters.calls}  # never on the event loop


def test_readings_taken_before_the_clock_is_synchronised_are_flagged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, [tcp_meter("m")])
    meters = FakeMeters()
    store = RecordingStore()
    synced = iter([False, False, True, True])
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 5))
    caplog.set_level(logging.WARNING, logger="logger.poller")
    run_poller(config, meters, timer, store, clock_synced=lambda: next(synced))
    assert [c.synced for c in meters.calls] == [False, False, True, True]
    flags = [tick[0].clock_unsynced for tick in store.ticks]
    assert flags == [True, True, False, False]
    clock_lines = [r.getMessage() for r in caplog.records if "clock" in r.getMessage()]
    assert len(clock_lines) == 2  # once when found unsynchronised, once when it is set


def test_a_clock_jump_is_detected_and_the_grid_replanned_without_catch_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, [tcp_meter("m", "1m")])
    meters = FakeMeters()
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 3, 5))

    def hook(meter_id: str) -> None:
        if timer.t == utc(2026, 3, 1, 0, 2):
            timer.jump(3 * 3600)  # NTP answers: the clock steps forward by three hours

    meters.hook = hook
    caplog.set_level(logging.WARNING)
    poller = run_poller(config, meters, timer)
    times = meters.times("m")
    # The three hours of slots in between are not polled in a burst afterwards.
    assert times == [
        utc(2026, 3, 1, 0, 1),
        utc(2026, 3, 1, 0, 2),
        utc(2026, 3, 1, 3, 3),
        utc(2026, 3, 1, 3, 4),
    ]
    assert poller.clock.jumps == 1
    assert poller.clock.last_jump is not None and poller.clock.last_jump.seconds == pytest.approx(
        3 * 3600, abs=1
    )
    assert any("clock jumped" in r.getMessage() for r in caplog.records)


def test_a_backward_jump_replans_from_the_new_time(tmp_path: Path) -> None:
    config = make_config(tmp_path, [tcp_meter("m", "15m")])
    meters = FakeMeters()
    timer = VirtualTimer(utc(2026, 3, 1, 12, 10), max_advances=3)

    def hook(meter_id: str) -> None:
        if timer.t == utc(2026, 3, 1, 12, 15):
            timer.jump(-3600)

    meters.hook = hook
    poller = run_poller(config, meters, timer)
    # Without re-planning, the next poll would wait for 12:30 on the new clock (1 h 15 min).
    assert meters.times("m") == [utc(2026, 3, 1, 12, 15), utc(2026, 3, 1, 11, 30)]
    assert poller.clock.jumps == 1


def test_store_failure_is_logged_and_the_readings_do_not_count_as_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, [tcp_meter("m")])
    meters = FakeMeters()
    store = RecordingStore()
    store.fail_next = 1
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 1, 30))
    seen: list[Any] = []
    caplog.set_level(logging.ERROR)
    poller = run_poller(config, meters, timer, store, on_tick=seen.append)
    assert seen[0].commit is None and "disk I/O error" in seen[0].store_error
    assert poller.health["m"].last_success is None  # read, but not stored: not taken
    assert any("NOT stored" in r.getMessage() for r in caplog.records)


def test_reconfigure_between_ticks_keeps_health_and_applies_new_meters(tmp_path: Path) -> None:
    first = make_config(tmp_path, [tcp_meter("keep"), tcp_meter("drop")])
    second = make_config(tmp_path, [tcp_meter("keep"), tcp_meter("new", "2m")])
    meters = FakeMeters()
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 6, 30))
    poller = Poller(first, RecordingStore(), meters, timer=timer)
    timer.poller = poller

    def hook(meter_id: str) -> None:
        if timer.t == utc(2026, 3, 1, 0, 2) and meter_id == "keep":
            poller.reconfigure(second)

    meters.hook = hook
    asyncio.run(asyncio.wait_for(poller.run(), 30))
    assert meters.times("drop") == [utc(2026, 3, 1, 0, 1), utc(2026, 3, 1, 0, 2)]
    assert meters.times("new") == [utc(2026, 3, 1, 0, 4), utc(2026, 3, 1, 0, 6)]
    assert len(meters.times("keep")) == 6
    assert set(poller.health) == {"keep", "new"}
    assert poller.health["keep"].polls == 6
    assert all(r.closed for r in meters.readers.values() if "drop" in r.lane)


def test_a_slow_bus_does_not_delay_a_fast_meter_on_another_lane(tmp_path: Path) -> None:
    """Real time: a meter on a slow lane takes 1.6 s; a 1 s meter elsewhere keeps its grid."""
    config = make_config(
        tmp_path,
        [rtu_meter("slow", "rs485", 1, "1s"), tcp_meter("fast", "1s")],
        buses={"rs485": RTU_BUS},
    )
    meters = FakeMeters()
    meters.hook = lambda meter_id: time.sleep(1.6) if meter_id == "slow" else None
    store = RecordingStore()
    poller = Poller(config, store, meters, timer=WallTimer())

    async def main() -> None:
        task = asyncio.create_task(poller.run())
        await asyncio.sleep(3.2)
        poller.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    fast = meters.times("fast")
    assert len(fast) >= 3
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fast)]
    assert max(gaps) < 1.5, gaps
    assert len(meters.times("slow")) == 2  # its in-between slots were skipped, not queued
    assert poller.health["slow"].missed_slots >= 1
    # Stop waited for the slow read in flight and committed it.
    assert sum(1 for t in store.ticks for r in t if r.meter_id == "slow") == 2


def test_ticks_commit_to_sqlite_in_one_transaction_each(tmp_path: Path) -> None:
    config = make_config(tmp_path, [tcp_meter(f"m{i}") for i in range(20)])
    meters = FakeMeters()
    store = SqliteStore(tmp_path / "buffer.db")
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 3, 30))
    reports: list[Any] = []
    run_poller(config, meters, timer, store, on_tick=reports.append)
    try:
        assert [(r.commit.first_seq, r.commit.last_seq) for r in reports] == [
            (1, 20),
            (21, 40),
            (41, 60),
        ]
        assert store.stats().depth == 60
    finally:
        store.close()


def test_a_reader_bug_costs_the_meter_its_poll_and_is_traced_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, [tcp_meter("buggy"), tcp_meter("fine")])
    meters = FakeMeters()

    def hook(meter_id: str) -> None:
        if meter_id == "buggy":
            raise KeyError("vif 0x7f")  # not a MeterReadError: a bug in a decoder

    meters.hook = hook
    store = RecordingStore()
    timer = VirtualTimer(utc(2026, 3, 1, 0, 0, 30), stop_at=utc(2026, 3, 1, 0, 3, 30))
    caplog.set_level(logging.WARNING)
    poller = run_poller(config, meters, timer, store)
    assert [[r.meter_id for r in t] for t in store.ticks] == [["fine"]] * 3
    health = poller.health["buggy"]
    assert health.state == "down" and health.failures == 3
    assert health.last_error == "internal error: KeyError('vif 0x7f')"
    assert sum(1 for r in caplog.records if r.exc_info) == 1

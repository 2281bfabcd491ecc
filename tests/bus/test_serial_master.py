"""The M-Bus master on real ptys against the simulator (wire-speed timing, 19200 Bd)."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable

import pytest

from hil import scenarios
from logger.bus import AsyncMBus, BusError, MBusMaster, PortError, Quirks, timing
from logger.mbus import frames
from logger.mbus import slave as slave_core
from tests.support.mbus_sim import Faults, SimMeter, corpus_line, scenario_line, sim_line
from tests.support.mbus_wire import ABB_A41, SCHNEIDER_IEM, jmbus_frames

BAUD = 19200


def test_read_many_equals_the_served_telegrams() -> None:
    with corpus_line(4, BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        results = bus.read_many([1, 2, 3, 4])
        for r in results:
            assert r.ok, r.error
            assert r.address is not None
            assert r.telegrams == line.meter(r.address).expected_frames()
        assert bus.stats.timeouts == 0 and bus.stats.invalid == 0
        assert len(line.served) == 8  # SND_NKE and REQ_UD2 per meter


def test_multi_telegram_sets_come_out_whole() -> None:
    with scenario_line("multi", BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        abb = bus.read(address=9)
        iem = bus.read(secondary=line.meter(93).secondary)
    assert abb.ok and abb.telegrams == jmbus_frames(ABB_A41)
    assert iem.ok and iem.telegrams == jmbus_frames(SCHNEIDER_IEM)


def _fault_line(fault: Faults) -> list[SimMeter]:
    frames_ = scenarios.corpus_frames()
    return [SimMeter(1, [frames_[0][1]]), SimMeter(2, [frames_[1][1]], faults=fault)]


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Faults(silence=True), r"address 2: SND_NKE after 4 attempts \(no answer\)"),
        (Faults(garbage=True), r"address 2: SND_NKE after 4 attempts \(expected E5, got "),
        (Faults(bad_checksum=True), r"address 2: REQ_UD2 FCB=1 after 4 attempts \(checksum"),
        (Faults(truncate=True), r"address 2: REQ_UD2 FCB=1 after 4 attempts \(frame trunc"),
        (Faults(late=1.0), r"address 2: SND_NKE after 4 attempts \(no answer\)"),
    ],
)
def test_each_fault_is_a_clear_error_and_the_bus_goes_on(fault: Faults, message: str) -> None:
    with sim_line(_fault_line(fault), BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        started = time.monotonic()
        bad = bus.read(address=2)
        elapsed = time.monotonic() - started
        assert not bad.ok and re.match(message, str(bad.error)), bad.error
        # Bounded: 4 attempts of at most timeout + the longest frame's wire time each.
        bound = 2 * 4 * (bus.answer_timeout() + timing.wire_time(261, BAUD) + 0.1)
        assert elapsed < bound
        if fault.late:
            # The late answer lands after the master gave up; it must not pass as meter 1's.
            _wait_for(lambda: any(s["fault"] == "late" for s in line.served), 5.0)
        good = bus.read(address=1)
        assert good.ok, good.error
        assert good.telegrams == line.meter(1).expected_frames()


def _wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_a_lost_answer_is_retried_with_the_same_fcb() -> None:
    with scenario_line("multi", BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        line.set_faults(9, Faults(garbage=True, count=2))
        result = bus.read(address=9)
        assert result.ok and result.telegrams == jmbus_frames(ABB_A41)
        assert bus.stats.invalid == 2
        faulted = [s for s in line.served if s["fault"]]
        assert len(faulted) == 2


def test_echoing_converter_is_handled() -> None:
    with (
        corpus_line(2, BAUD, echo=True) as line,
        MBusMaster(line.path, BAUD, quirks=Quirks(echo=True)) as bus,
    ):
        results = bus.read_many([1, 2])
    assert all(r.ok for r in results), [r.error for r in results]
    assert results[0].telegrams == line.meter(1).expected_frames()


def test_meter_at_another_rate_and_its_fallback_quirk() -> None:
    frames_ = scenarios.corpus_frames()
    meters = [SimMeter(5, [frames_[0][1]], baudrate=9600)]
    with sim_line(meters, BAUD) as line, MBusMaster(line.path, BAUD, retries=0) as bus:
        plain = bus.read(address=5)
        assert plain.error == "address 5: SND_NKE after 1 attempts (no answer)"
        fallback = bus.read(address=5, quirks=Quirks(fallback_baudrate=9600))
        assert fallback.ok and fallback.baudrate == 9600
        assert fallback.telegrams == line.meter(5).expected_frames()


def test_switch_baudrate() -> None:
    with corpus_line(1, 9600) as line, MBusMaster(line.path, 9600) as bus:
        bus.switch_baudrate(1, 19200)
        assert bus.baudrate == 19200 and line.meter(1).slave.baudrate == 19200
        assert bus.read(address=1).ok
        line.meter(1).slave.baudrate = 9600  # the meter fell back after idling
        assert not bus.read(address=1, quirks=Quirks(retries=0)).ok
        assert bus.read(address=1, quirks=Quirks(fallback_baudrate=9600)).baudrate == 9600


class _NoSwitch(slave_core.Slave):
    """A meter that confirms a baud-rate change and keeps its rate."""

    def after_ack_sent(self) -> None:
        self.pending_baudrate = None


def test_switch_baudrate_detects_a_meter_that_did_not_switch() -> None:
    meter = SimMeter(1, [scenarios.corpus_frames()[0][1]])
    meter.slave = _NoSwitch(1, meter.slave.telegrams)
    with sim_line([meter], 9600) as line, MBusMaster(line.path, 9600) as bus:
        with pytest.raises(BusError, match="confirmed 19200 Bd but still answers at 9600"):
            bus.switch_baudrate(1, 19200)
        assert bus.read(address=1).ok


def test_application_reset_and_set_address() -> None:
    with corpus_line(1, BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        bus.application_reset(1)
        bus.set_primary_address(1, 77)
        assert line.meters[0].address == 77
        assert bus.read(address=77).ok
        with pytest.raises(BusError, match="set address 1 -> 5: no answer after 4 attempts"):
            bus.set_primary_address(1, 5)
        bus.select_for_readout(77, b"\x04\x13")
        bus.link_reset(255)  # broadcast: nobody answers, nothing to wait for
        assert line.served[-1]["request"] == frames.select_for_readout(77, b"\x04\x13").hex()


def test_primary_and_secondary_scan_on_a_pty() -> None:
    with (
        scenario_line("three", 38400, response_delay=0.005) as line,
        MBusMaster(line.path, 38400, timeout=0.04) as bus,
    ):
        entries = bus.scan_primary([*range(0, 60), 249, 250])
        assert [e.address for e in entries] == [1, 48, 250]
        assert all(e.error is None and e.secondary for e in entries)
    with (
        scenario_line("secondary8", 38400, response_delay=0.005) as line,
        MBusMaster(line.path, 38400, timeout=0.04) as bus,
    ):
        found, procedure = bus.scan_secondary()
    assert sorted(str(e.secondary) for e in found) == sorted(m.secondary for m in line.meters)
    assert procedure.selects < 185


def test_missing_port_is_a_port_error() -> None:
    with pytest.raises(PortError, match="cannot open /dev/does-not-exist"):
        MBusMaster("/dev/does-not-exist").open()
    with pytest.raises(BusError, match="baud rate 1234"):
        MBusMaster("/dev/null", 1234)


def test_two_users_of_one_port_do_not_interleave() -> None:
    with corpus_line(2, BAUD) as line:
        results: list[bool] = []

        def reader(address: int) -> None:
            # Each procedure opens and closes the (exclusive) port inside the port lock.
            bus = MBusMaster(line.path, BAUD, hold_open=False)
            for _ in range(3):
                results.append(bus.read(address=address).ok)

        threads = [threading.Thread(target=reader, args=(a,)) for a in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [True] * 6


def test_async_reads_never_block_the_event_loop() -> None:
    async def main() -> tuple[list[bool], float]:
        with corpus_line(3, 9600) as line:
            async with AsyncMBus(line.path, 9600) as bus:
                worst = 0.0
                done = False

                async def ticker() -> None:
                    nonlocal worst
                    while not done:
                        before = time.monotonic()
                        await asyncio.sleep(0.005)
                        worst = max(worst, time.monotonic() - before - 0.005)

                tick = asyncio.create_task(ticker())
                results = [await bus.read(address=a) for a in (1, 2, 3)]
                done = True
                await tick
                return [r.ok for r in results], worst

    oks, worst = asyncio.run(main())
    assert oks == [True, True, True]
    assert worst < 0.1


def test_pause_after_nke_quirk_waits_before_the_first_request() -> None:
    with corpus_line(1, BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        result = bus.read(address=1, quirks=Quirks(pause_after_nke=0.3))
        ack = next(s for s in line.served if s["kind"] == "ack")
        rsp = next(s for s in line.served if s["kind"] == "rsp_ud")
    assert result.ok
    assert rsp["t"] - ack["t"] >= 0.3


def test_reads_without_reset_keep_toggling_the_fcb() -> None:
    """A meter read with the no_reset quirk still holds the FCB of the previous read-out: the
    next one must start with the other FCB or it would only get the last telegram again."""
    with scenario_line("multi", BAUD) as line, MBusMaster(line.path, BAUD) as bus:
        no_reset = Quirks(no_reset=True)
        first = bus.read(address=9, quirks=no_reset)
        second = bus.read(address=9, quirks=no_reset)
        third = bus.read(address=9, quirks=no_reset)
    # Had the second read-out started with the same FCB, the meter would have repeated its
    # last telegram (which announces no more) and the read-out would hold only that one.
    assert first.telegrams == second.telegrams == third.telegrams == jmbus_frames(ABB_A41)
    assert [int(s["request"][2:4], 16) for s in line.served][:6] == [0x7B, 0x5B] * 3

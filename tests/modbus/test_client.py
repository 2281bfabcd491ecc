"""The Modbus clients against the simulated meter: TCP, RTU over a pty pair, errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from hil.modbus_sim import ModbusSim
from logger.config import (
    PROFILES,
    BusConfig,
    BusKind,
    MeterConfig,
    MeterKind,
    Quirks,
    RegisterFunction,
    RegisterSpec,
    RegisterType,
)
from logger.modbus import (
    ModbusConnectionError,
    ModbusExceptionResponse,
    ModbusTimeout,
)
from logger.modbus.client import RtuClient, TcpClient, read_all, read_meter
from logger.readings import FLAG_CLOCK_UNSYNCED, ValueKind

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def tcp_meter(
    port: int,
    profile: str,
    unit_id: int = 1,
    meter_id: str = "m",
    registers: tuple[RegisterSpec, ...] | None = None,
) -> MeterConfig:
    return MeterConfig(
        id=meter_id,
        kind=MeterKind.MODBUS_TCP,
        interval_s=60,
        unit_id=unit_id,
        host="127.0.0.1",
        port=port,
        profile=profile,
        registers=PROFILES[profile] if registers is None else registers,
    )


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_tcp_reads_every_profile_exactly_as_served(profile: str) -> None:
    with ModbusSim(PROFILES[profile], unit_id=7, salt=3) as sim:
        client = TcpClient("127.0.0.1", sim.port, timeout_s=2)
        try:
            meter = tcp_meter(sim.port, profile, unit_id=7)
            for _ in range(3):
                result = read_meter(client, meter, NOW)
                assert {r.key: r.value for r in result.readings} == sim.values()
                assert result.errors == []
                sim.advance()
        finally:
            client.close()
    first = result.readings[0]
    assert first.kind is ValueKind.NUMBER and first.logger_time == NOW
    assert first.unit == PROFILES[profile][0].unit


def test_values_change_over_time_and_counters_grow() -> None:
    with ModbusSim(PROFILES["eastron_sdm120"]) as sim:
        before = sim.values()
        after = sim.advance(4)
    assert Decimal(after["import_active_energy"]) > Decimal(before["import_active_energy"])
    assert after["voltage"] != before["voltage"]
    assert [r["step"] for r in sim.served] == [0, 4]


def test_rtu_over_a_pty_shares_the_port_lock() -> None:
    lock = threading.RLock()
    with ModbusSim(PROFILES["abb_b23"], unit_id=5, rtu=True, baudrate=19200) as sim:
        bus = BusConfig("rs485", BusKind.MODBUS_RTU, sim.device, 19200, "N", 1, 1.0, None, 1)
        meter = MeterConfig(
            id="hp",
            kind=MeterKind.MODBUS_RTU,
            interval_s=60,
            bus="rs485",
            unit_id=5,
            registers=PROFILES["abb_b23"],
        )
        client = RtuClient(bus, lock)
        try:
            # While another protocol holds the port, the read-out waits for it.
            done = threading.Event()
            result_box: list[object] = []

            def work() -> None:
                result_box.append(read_meter(client, meter, NOW))
                done.set()

            with lock:
                worker = threading.Thread(target=work)
                worker.start()
                assert not done.wait(0.3), "read went ahead while the port was locked"
                reads_while_locked = sim.reads
            assert done.wait(10)
            worker.join()
            assert reads_while_locked == 0
            (result,) = result_box
            assert {r.key: r.value for r in result.readings} == sim.values()  # type: ignore[attr-defined]
        finally:
            client.close()


def test_hole_in_the_map_is_read_register_by_register() -> None:
    # The profile leaves registers unmapped between its entries; the simulator refuses reads
    # across them (illegal data address) like a real meter. Merged reads fall back.
    with ModbusSim(PROFILES["carlo_gavazzi_em24"]) as sim:
        client = TcpClient("127.0.0.1", sim.port)
        try:
            result = read_meter(client, tcp_meter(sim.port, "carlo_gavazzi_em24"), NOW)
        finally:
            client.close()
    assert {r.key: r.value for r in result.readings} == sim.values()


def test_a_register_the_meter_lacks_is_reported_not_fatal() -> None:
    extra = RegisterSpec("missing", 0x0100, RegisterFunction.INPUT, RegisterType.FLOAT32)
    registers = (*PROFILES["eastron_sdm120"], extra)
    with ModbusSim(PROFILES["eastron_sdm120"]) as sim:
        client = TcpClient("127.0.0.1", sim.port)
        try:
            result = read_meter(
                client,
                tcp_meter(sim.port, "eastron_sdm120", registers=registers),
                NOW,
                clock_synced=False,
            )
            only_missing = tcp_meter(sim.port, "eastron_sdm120", registers=(extra,))
            with pytest.raises(ModbusExceptionResponse) as info:
                read_meter(client, only_missing, NOW)
        finally:
            client.close()
    assert len(result.readings) == len(PROFILES["eastron_sdm120"])
    assert len(result.errors) == 1 and "illegal data address" in result.errors[0]
    assert all(FLAG_CLOCK_UNSYNCED in r.flags for r in result.readings)
    assert info.value.code == 2 and not info.value.transient


def test_nobody_listening_is_a_connection_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = TcpClient("127.0.0.1", port, timeout_s=0.5, retries=0)
    try:
        t0 = time.monotonic()
        with pytest.raises(ModbusConnectionError, match=f"127.0.0.1:{port}"):
            read_meter(client, tcp_meter(port, "eastron_sdm120"), NOW)
        assert time.monotonic() - t0 < 5
    finally:
        client.close()


def test_silent_device_is_a_timeout_and_other_meters_still_read() -> None:
    with ModbusSim(PROFILES["eastron_sdm120"], unit_id=1) as sim:
        client = TcpClient("127.0.0.1", sim.port, timeout_s=0.3, retries=0)
        try:
            good = tcp_meter(sim.port, "eastron_sdm120", unit_id=1, meter_id="good")
            absent = tcp_meter(sim.port, "eastron_sdm120", unit_id=9, meter_id="absent")
            results = read_all(client, [absent, good], NOW)
        finally:
            client.close()
    assert isinstance(
        results["absent"], ModbusTimeout | ModbusConnectionError | ModbusExceptionResponse
    )
    good_read = results["good"]
    assert not isinstance(good_read, Exception)
    assert {r.key: r.value for r in good_read.readings} == sim.values()


def test_quirk_pause_between_requests_is_honoured() -> None:
    with ModbusSim(PROFILES["eastron_sdm630"]) as sim:
        client = TcpClient("127.0.0.1", sim.port, quirks=Quirks((("pause_between_requests", 0.1),)))
        try:
            t0 = time.monotonic()
            read_meter(client, tcp_meter(sim.port, "eastron_sdm630"), NOW)
            elapsed = time.monotonic() - t0
        finally:
            client.close()
    assert elapsed >= 0.2  # three requests, two pauses


def test_quirk_close_after_read_reconnects_each_time() -> None:
    with ModbusSim(PROFILES["eastron_sdm120"]) as sim:
        meter = MeterConfig(
            id="gw",
            kind=MeterKind.MODBUS_TCP,
            interval_s=60,
            unit_id=1,
            host="127.0.0.1",
            port=sim.port,
            registers=PROFILES["eastron_sdm120"],
            quirks=Quirks((("close_after_read", True),)),
        )
        client = TcpClient("127.0.0.1", sim.port)
        try:
            for _ in range(2):
                read_meter(client, meter, NOW)
                assert not client._client.connected
        finally:
            client.close()


def test_simulator_as_a_program(tmp_path: Path) -> None:
    log = tmp_path / "served.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hil.modbus_sim",
            "--profile",
            "abb_b23",
            "--unit",
            "4",
            "--step",
            "0.05",
            "--log",
            str(log),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        host, _, port = ready["tcp"].rpartition(":")
        client = TcpClient(host, int(port))
        try:
            result = read_meter(client, tcp_meter(int(port), "abb_b23", unit_id=4), NOW)
        finally:
            client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    served = [json.loads(line) for line in log.read_text().splitlines()]
    got = {r.key: r.value for r in result.readings}
    assert any(s["values"] == got for s in served), "read values were never served"


def test_several_meters_on_one_rtu_line_and_a_failing_one() -> None:
    from hil.modbus_sim import SimMeter

    second = SimMeter(PROFILES["eastron_sdm120"], unit_id=2, salt=5)
    broken = SimMeter(PROFILES["eastron_sdm120"], unit_id=3)
    broken.fail_with = 6  # server device busy
    with ModbusSim(
        PROFILES["carlo_gavazzi_em24"], unit_id=1, more=[second, broken], rtu=True, baudrate=38400
    ) as sim:
        bus = BusConfig("rs485", BusKind.MODBUS_RTU, sim.device, 38400, "N", 1, 1.0, None, 0)
        meters = [
            MeterConfig(
                id=f"u{unit}",
                kind=MeterKind.MODBUS_RTU,
                interval_s=60,
                bus="rs485",
                unit_id=unit,
                registers=PROFILES[profile],
            )
            for unit, profile in (
                (1, "carlo_gavazzi_em24"),
                (3, "eastron_sdm120"),
                (2, "eastron_sdm120"),
            )
        ]
        client = RtuClient(bus, threading.RLock())
        try:
            sim.advance()
            results = read_all(client, meters, NOW)
        finally:
            client.close()
    busy = results["u3"]
    assert isinstance(busy, ModbusExceptionResponse) and busy.code == 6 and busy.transient
    first, other = results["u1"], results["u2"]
    assert not isinstance(first, Exception) and not isinstance(other, Exception)
    assert {r.key: r.value for r in first.readings} == sim.values()
    assert {r.key: r.value for r in other.readings} == second.values()
    assert second.values() != sim.meters[3].values()  # salted: meters differ

"""The daemon's wiring: sd_notify, status file, SIGHUP reload, supervision, the uplink hook, the
clock override, and the readers against real simulated meters (pty, Modbus TCP)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hil import scenarios
from hil.modbus_sim import ModbusSim
from hil.sim import Faults, SimLine
from logger.app import (
    UPLINK_MODULE,
    Daemon,
    DaemonContext,
    MBusReader,
    ModbusReader,
    SdNotify,
    build_reader,
    clock_check,
    load_config,
)
from logger.config import PROFILES
from logger.mbus import decode
from logger.poller import MeterReadError
from logger.readings import readings_from_mbus
from tests.support.daemon import FakeMeters, config_toml, make_config, tcp_meter


class NotifyListener:
    """The systemd side of sd_notify: a datagram socket collecting messages."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> list[dict[str, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.messages
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(fields)

    async def wait_for(self, key: str, value: str | None = None, timeout: float = 10) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if any(key in m and (value is None or value in m[key]) for m in self.drain()):
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"no sd_notify {key}={value} within {timeout} s: {self.messages}")


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    sock = NotifyListener(str(tmp_path / "notify.sock"))
    yield sock
    sock.sock.close()


def notifier(tmp_path: Path) -> SdNotify:
    return SdNotify(str(tmp_path / "notify.sock"))


def write_config(path: Path, state: Path, meters: list[dict[str, Any]], **kw: Any) -> Path:
    path.write_text(config_toml(state, meters, **kw))
    return path


def test_sd_notify_ready_status_watchdog_and_stopping(
    tmp_path: Path, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # ping every 0.1 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    path = write_config(tmp_path / "logger.toml", tmp_path / "state", [tcp_meter("m", "1s")])
    meters = FakeMeters()
    daemon = Daemon(
        path,
        load_config(path),
        reader_factory=meters,
        notify=SdNotify(str(tmp_path / "notify.sock")),
    )

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        await listener.wait_for("READY", "1")
        await listener.wait_for("STATUS", "last tick")
        await listener.wait_for("WATCHDOG", "1")
        daemon.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    messages = listener.drain()
    ready = next(m for m in messages if m.get("READY") == "1")
    assert ready["MAINPID"] == str(os.getpid()) and "polling 1 meters" in ready["STATUS"]
    assert messages[-1].get("STOPPING") == "1"
    status_path = tmp_path / "state" / "status.json"
    status = json.loads(status_path.read_text())
    assert status_path.stat().st_mode & 0o777 == 0o644  # readable by `mbus-logger status` users
    assert not [p for p in status_path.parent.iterdir() if p.name.startswith(".status.json.")]
    assert status["state"] == "stopped"
    assert status["meters"][0]["state"] == "up"
    assert status["buffer"]["depth"] >= 1 and status["last_poll"]["commit"]["first_seq"] >= 1


def test_sd_notify_abstract_socket_and_no_socket() -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"mbus-logger-test-{os.getpid()}"
    server.bind("\0" + name)
    try:
        notify = SdNotify("@" + name)
        notify.ready("polling 3 meters")
        assert b"READY=1" in server.recv(1024)
        notify.close()
    finally:
        server.close()
    quiet = SdNotify("")
    assert not quiet.enabled
    quiet.ready("nothing happens")  # no socket, no error


def test_watchdog_is_not_pinged_when_the_poll_loop_stalls(
    tmp_path: Path, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logger.app as app

    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(app, "STALL_LIMIT_S", 0.3)
    path = write_config(tmp_path / "logger.toml", tmp_path / "state", [tcp_meter("m", "1s")])
    meters = FakeMeters()
    release = threading.Event()

    def hang(meter_id: str) -> None:
        release.wait(10)  # the read hangs: no progress

    meters.hook = hang
    daemon = Daemon(
        path,
        load_config(path),
        reader_factory=meters,
        notify=SdNotify(str(tmp_path / "notify.sock")),
    )

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        await listener.wait_for("READY", "1")
        assert daemon.poller is not None
        while not meters.calls:
            await asyncio.sleep(0.01)
        pinged = sum(1 for m in listener.drain() if "WATCHDOG" in m)
        # The read hangs beyond the limit: the event loop still runs, the poller does not.
        await asyncio.sleep(0.6)
        before = sum(1 for m in listener.drain() if "WATCHDOG" in m)
        await asyncio.sleep(0.5)
        after = sum(1 for m in listener.drain() if "WATCHDOG" in m)
        release.set()
        daemon.stop()
        await asyncio.wait_for(task, 10)
        assert pinged >= 1, "the watchdog was never pinged while the poller was fine"
        assert after == before, "watchdog pinged although a read has hung for too long"

    asyncio.run(main())


def test_sighup_reload_validates_first_and_keeps_the_running_configuration(
    tmp_path: Path, listener: NotifyListener
) -> None:
    state = tmp_path / "state"
    path = write_config(tmp_path / "logger.toml", state, [tcp_meter("old", "1s")])
    meters = FakeMeters()
    daemon = Daemon(
        path,
        load_config(path),
        reader_factory=meters,
        notify=SdNotify(str(tmp_path / "notify.sock")),
    )

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        await listener.wait_for("READY", "1")
        assert daemon.poller is not None
        # An invalid file: refused, the old meter keeps being read.
        path.write_text(path.read_text() + '\n[[meters]]\nid = "bad"\nkind = "mbus"\n')
        os.kill(os.getpid(), signal.SIGHUP)
        await listener.wait_for("STATUS", "reload refused")
        assert [m.id for m in daemon.poller.config.meters] == ["old"]
        assert daemon.last_reload_error and "an M-Bus meter needs" in daemon.last_reload_error
        status = json.loads((state / "status.json").read_text())
        assert "problem" in status["last_reload_error"]
        # A valid one: applied between ticks.
        write_config(path, state, [tcp_meter("old", "1s"), tcp_meter("new", "1s")])
        os.kill(os.getpid(), signal.SIGHUP)
        await listener.wait_for("STATUS", "reloaded: polling 2 meters")
        while "new" not in {c.meter_id for c in meters.calls}:
            await asyncio.sleep(0.05)
        daemon.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(main())
    reloading = [m for m in listener.messages if m.get("RELOADING") == "1"]
    assert len(reloading) == 2 and all("MONOTONIC_USEC" in m for m in reloading)
    assert daemon.reloads == 1 and daemon.last_reload_error is None


class FakeUplink:
    """A stand-in service plugged in through the uplink hook."""

    name = "uplink"

    def __init__(self, context: DaemonContext, fail: bool) -> None:
        self.context = context
        self.fail = fail
        self.depths: list[int] = []

    async def run(self, context: DaemonContext) -> None:
        while not context.stopping.is_set():
            stats = await context.in_store_thread(context.store.stats)
            self.depths.append(stats.depth)
            if self.fail and stats.depth > 0:
                raise RuntimeError("uplink crashed (simulated)")
            await asyncio.sleep(0.05)

    def status(self) -> dict[str, Any]:
        return {"checks": len(self.depths)}


@pytest.fixture
def fake_uplink_module(monkeypatch: pytest.MonkeyPatch) -> list[FakeUplink]:
    built: list[FakeUplink] = []
    module = types.ModuleType(UPLINK_MODULE)

    def build(context: DaemonContext) -> FakeUplink:
        service = FakeUplink(context, fail=getattr(module, "fail", False))
        built.append(service)
        return service

    module.build = build  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, UPLINK_MODULE, module)
    return built


UPLINK = """
[uplink]
endpoint = "opc.tcp://127.0.0.1:4840"
server_application_uri = "urn:test:receiver"
"""


def test_uplink_hook_runs_the_service_with_the_store_and_a_crash_stops_the_daemon(
    tmp_path: Path, fake_uplink_module: list[FakeUplink]
) -> None:
    path = write_config(
        tmp_path / "logger.toml", tmp_path / "state", [tcp_meter("m", "1s")], extra=UPLINK
    )
    sys.modules[UPLINK_MODULE].fail = True  # type: ignore[attr-defined]
    daemon = Daemon(path, load_config(path), reader_factory=FakeMeters(), notify=SdNotify(""))
    with pytest.raises(ExceptionGroup) as info:
        asyncio.run(asyncio.wait_for(daemon.run(), 20))
    assert "uplink crashed" in str(info.value.exceptions[0])
    service = fake_uplink_module[0]
    assert service.depths[0] == 0 and service.depths[-1] > 0
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["state"] == "stopped" and status["services"]["uplink"]["checks"] >= 2


def test_without_an_uplink_section_no_service_is_built(
    tmp_path: Path, fake_uplink_module: list[FakeUplink]
) -> None:
    path = write_config(tmp_path / "logger.toml", tmp_path / "state", [tcp_meter("m", "1s")])
    daemon = Daemon(path, load_config(path), reader_factory=FakeMeters(), notify=SdNotify(""))

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        while daemon.poller is None or daemon.poller.ticks < 1:
            await asyncio.sleep(0.02)
        daemon.stop()
        await task

    asyncio.run(asyncio.wait_for(main(), 20))
    assert fake_uplink_module == [] and daemon.services == []


def test_clock_override_and_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert clock_check("synchronised")() is True
    assert clock_check("unsynchronised")() is False
    flag = tmp_path / "synchronized"
    monkeypatch.setenv("MBUS_TIMESYNC_FLAG", str(flag))
    import logger.store.clock as clock

    monkeypatch.setattr(clock, "kernel_clock_synchronised", lambda: None)
    auto = clock_check("auto")
    assert auto() is False
    flag.touch()  # systemd-timesyncd creates it once NTP has set the clock
    assert auto() is True


def test_unsynchronised_clock_flags_stored_readings(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "logger.toml", tmp_path / "state", [tcp_meter("m", "1s")], clock="unsynchronised"
    )
    daemon = Daemon(path, load_config(path), reader_factory=FakeMeters(), notify=SdNotify(""))

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        while daemon.poller is None or daemon.poller.ticks < 1:
            await asyncio.sleep(0.02)
        daemon.stop()
        await task

    asyncio.run(asyncio.wait_for(main(), 20))
    from logger.store.sqlite import SqliteStore

    with SqliteStore(tmp_path / "state" / "buffer.db", readonly=True) as store:
        stored = store.read(0, 100)
    assert stored and all(s.reading.clock_unsynced for s in stored)


# --- readers against simulated meters -----------------------------------------------------


def mbus_config(tmp_path: Path, device: str, meters: list[dict[str, Any]]) -> Any:
    return make_config(
        tmp_path,
        meters,
        buses={"m": {"kind": "mbus", "device": device, "baud_rate": 9600, "retries": 1}},
    )


def test_mbus_reader_decodes_complete_multi_telegram_read_outs(tmp_path: Path) -> None:
    meters, _ = scenarios.build("multi")
    with SimLine(meters, baudrate=9600) as line:
        config = mbus_config(
            tmp_path,
            line.path,
            [
                {"id": "abb", "kind": "mbus", "bus": "m", "primary_address": 9},
                {"id": "iem", "kind": "mbus", "bus": "m", "primary_address": 93},
            ],
        )
        reader = build_reader("bus:m", config)
        assert isinstance(reader, MBusReader)
        now = datetime.now(UTC)
        try:
            abb = reader.read(config.meter("abb"), now, True)
            iem = reader.read(config.meter("iem"), now, False)
        finally:
            reader.close()
    expected = []
    for raw in scenarios.jmbus_cases()["test_ABB_A41_messages"]:
        expected.extend(decode(raw)["records"])
    assert abb == readings_from_mbus("abb", expected, now)
    assert len({r.key for r in abb}) > 10  # all five telegrams, not just the first
    assert iem and all(r.clock_unsynced for r in iem)


def test_mbus_reader_reports_a_meter_fault_as_a_read_error(tmp_path: Path) -> None:
    meters, _ = scenarios.build("synthetic", count=2)
    with SimLine(meters, baudrate=9600) as line:
        line.set_faults(2, Faults(bad_checksum=True))
        config = mbus_config(
            tmp_path,
            line.path,
            [
                {"id": "ok", "kind": "mbus", "bus": "m", "primary_address": 1},
                {"id": "bad", "kind": "mbus", "bus": "m", "primary_address": 2},
            ],
        )
        reader = build_reader("bus:m", config)
        try:
            with pytest.raises(MeterReadError, match="meter bad"):
                reader.read(config.meter("bad"), datetime.now(UTC), True)
            readings = reader.read(config.meter("ok"), datetime.now(UTC), True)
        finally:
            reader.close()
    served = line.served_by(1)[-1]["values"]
    energy = next(r for r in readings if r.key == "0403")
    assert energy.value == str(served["energy_wh"])


def test_mbus_reader_on_a_missing_port_fails_the_meter_not_the_daemon(tmp_path: Path) -> None:
    config = mbus_config(
        tmp_path,
        str(tmp_path / "ttyUSB9"),
        [{"id": "x", "kind": "mbus", "bus": "m", "primary_address": 1}],
    )
    reader = build_reader("bus:m", config)
    with pytest.raises(MeterReadError, match=r"meter x on bus m: cannot open"):
        reader.read(config.meter("x"), datetime.now(UTC), True)
    reader.close()


def test_modbus_reader_reads_a_simulated_tcp_meter_exactly(tmp_path: Path) -> None:
    with ModbusSim(PROFILES["eastron_sdm630"], unit_id=3) as sim:
        config = make_config(
            tmp_path,
            [
                {
                    "id": "sdm",
                    "kind": "modbus_tcp",
                    "host": f"{sim.host}:{sim.port}",
                    "unit_id": 3,
                    "profile": "eastron_sdm630",
                },
                {
                    "id": "wrong-unit",
                    "kind": "modbus_tcp",
                    "host": f"{sim.host}:{sim.port}",
                    "unit_id": 4,
                    "profile": "eastron_sdm630",
                    "timeout": "200ms",
                },
            ],
        )
        reader = build_reader(f"tcp:{sim.host}:{sim.port}", config)
        assert isinstance(reader, ModbusReader)
        try:
            readings = reader.read(config.meter("sdm"), datetime.now(UTC), True)
            values = sim.values()
            with pytest.raises(MeterReadError, match="meter wrong-unit"):
                reader.read(config.meter("wrong-unit"), datetime.now(UTC), True)
        finally:
            reader.close()
    assert {r.key: r.value for r in readings} == values


def test_modbus_reader_reads_a_simulated_rtu_meter_on_its_bus(tmp_path: Path) -> None:
    with ModbusSim(PROFILES["abb_b23"], unit_id=5, rtu=True) as sim:
        config = make_config(
            tmp_path,
            [
                {
                    "id": "abb",
                    "kind": "modbus_rtu",
                    "bus": "rs485",
                    "unit_id": 5,
                    "profile": "abb_b23",
                }
            ],
            buses={
                "rs485": {
                    "kind": "modbus_rtu",
                    "device": sim.device,
                    "baud_rate": 9600,
                    "parity": "N",
                    "timeout": "500ms",
                }
            },
        )
        reader = build_reader("bus:rs485", config)
        try:
            readings = reader.read(config.meter("abb"), datetime.now(UTC), True)
            values = sim.values()
        finally:
            reader.close()
    assert {r.key: r.value for r in readings} == values


def test_a_stopped_daemon_leaves_no_threads_behind(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "logger.toml",
        tmp_path / "state",
        [tcp_meter("a", "1s"), tcp_meter("b", "1s", host="other.invalid:502")],
    )
    before = set(threading.enumerate())
    daemon = Daemon(path, load_config(path), reader_factory=FakeMeters(), notify=SdNotify(""))

    async def main() -> None:
        task = asyncio.create_task(daemon.run())
        while daemon.poller is None or daemon.poller.ticks < 2:
            await asyncio.sleep(0.02)
        daemon.stop()
        await task

    asyncio.run(asyncio.wait_for(main(), 20))
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []

"""Reports' arguments, and the uplink service's round when the receiver misbehaves."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from logger import __version__, contract
from logger.config.model import Installation
from logger.store.api import BufferLimits, StoreStats
from logger.store.sqlite import SqliteStore
from logger.uplink.errors import NetworkDown
from logger.uplink.reports import (
    cert_days_left,
    config_version_number,
    installation_report,
    location_text,
    status_arguments,
)
from logger.uplink.service import UplinkService
from tests.support.daemon import make_config, tcp_meter
from tests.support.secure_channel import SharedPki
from tests.support.store import make_tick


def test_location_and_installation_report() -> None:
    inst = Installation(site="Plant 4", description="boiler room", latitude=47.5, longitude=8.25)
    assert location_text(inst) == "Plant 4 - boiler room - 47.500000,8.250000"
    assert location_text(Installation()) == ""
    report = installation_report("SN-1", inst)
    assert report.arguments() == ("SN-1", "Plant 4 - boiler room - 47.500000,8.250000", __version__)


def test_status_arguments_follow_the_contract() -> None:
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    stats = StoreStats("e", 12, 1000, 1, 12, now, 90.5, 13, 4, 1)
    meters: list[dict[str, Any]] = [
        {"meter": "a", "state": "up", "consecutive_failures": 0, "last_success": now.isoformat()},
        {"meter": "b", "state": "down", "consecutive_failures": 3, "last_error": "timeout"},
        {"meter": "c", "state": "unknown"},
    ]
    args = status_arguments(stats, meters, 200, 7, "refused")
    names = [a.name for a in contract.REPORT_STATUS_INPUT]
    doc = dict(zip(names, args, strict=True))
    assert doc["BufferDepth"] == 12 and doc["OldestAgeSeconds"] == 90.5 and doc["Losses"] == 4
    assert doc["CertificateDaysLeft"] == 200 and doc["ConfigVersion"] == 7
    assert doc["MeterIds"] == ["a", "b", "c"] and doc["MeterOk"] == [True, False, False]
    assert doc["MeterFailures"] == [0, 3, 0] and doc["MeterLastError"] == ["", "timeout", ""]
    assert doc["MeterLastSuccess"] == [now, None, None] and doc["ConfigProblem"] == "refused"
    assert cert_days_left(now + dt.timedelta(days=10, hours=5), now) == 10
    assert cert_days_left(now - dt.timedelta(hours=1), now) == -1
    assert [config_version_number(v) for v in (None, "3", "x", "-1")] == [0, 3, 0, 0]


class _Caller:
    def __init__(self, fail: BaseException | None) -> None:
        self.fail = fail
        self.calls: list[str] = []

    async def call(self, method: str, *args: Any) -> Any:
        self.calls.append(method)
        if self.fail is not None and method == contract.GET_CONFIGURATION:
            raise self.fail
        if method == contract.GET_CONFIGURATION:
            return [0, ""]
        if method == contract.PUSH_READINGS:
            return [args[1][-1], len(args[1]), 0]
        return []


@pytest.mark.parametrize("fail", [NetworkDown("receiver away"), ValueError("odd answer"), None])
def test_a_round_never_raises_and_keeps_unsent_readings(
    spki: SharedPki, tmp_path: Path, fail: BaseException | None
) -> None:
    uplink = '[uplink]\nendpoint = "opc.tcp://127.0.0.1:4840"\nserver_application_uri = "urn:x"\n'
    config = make_config(spki.device.state_dir, [tcp_meter("m")], extra=uplink)
    store = SqliteStore(tmp_path / "buffer.db", BufferLimits(None, None, 0))
    store.commit_tick(make_tick(5))

    async def in_store(fn: Any, *args: Any) -> Any:
        return fn(*args)

    poller = SimpleNamespace(config=config, health_snapshot=lambda: [], reconfigure=None)
    context: Any = SimpleNamespace(
        config=config,
        store=store,
        in_store_thread=in_store,
        poller=poller,
        config_path=tmp_path / "logger.toml",
        reload_hooks=[],
        stopping=asyncio.Event(),
    )
    caller = _Caller(fail)
    service = UplinkService(context, caller)

    async def one_round() -> None:
        task = asyncio.create_task(service.run(context))
        while service.rounds < 1:
            await asyncio.sleep(0.01)
        context.stopping.set()  # the round under way finishes, then run() returns
        await asyncio.wait_for(task, 10)

    try:
        asyncio.run(one_round())
        pusher = service.pusher
        assert pusher is not None
        if fail is None:
            assert store.stats().depth == 0 and pusher.stats.last_error is None
            assert caller.calls == [
                contract.REPORT_INSTALLATION,
                contract.GET_CONFIGURATION,
                contract.PUSH_READINGS,
                contract.REPORT_STATUS,
            ]
        else:
            assert store.stats().depth == 5  # nothing sent, nothing lost
            assert pusher.stats.last_error == str(fail)
            status = service.status()
            assert status is not None and status["pusher"]["last_error"] == str(fail)
    finally:
        store.close()

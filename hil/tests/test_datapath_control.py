"""The operator's side of the data path on real processes: configuration from the cloud,
installation reports into the registry, and bad requests against ``mbus-receiver serve``.

* A configuration set with ``mbus-receiver config set`` is running on the logger within one
  configuration poll; an invalid one is refused, reported upstream (the receiver's audit log
  names the reason, ``devices`` shows which version the logger runs) and the last good one
  stays in force - also across a restart of the logger.
* ``ReportInstallation`` reaches the receiver and ``mbus-receiver devices --format json`` is
  what ``mbus-provision registry import-installations`` takes: the logger is marked installed
  at the reported location.
* Bad requests from an authenticated logger (its TPM key): oversized batch, arrays of unequal
  length, repeated and decreasing sequence numbers, a resent sequence number with other
  content - each gets its OPC UA status code, changes nothing, and is audited.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hil.stack import Bench, Stack, wait_until
from logger import contract

pytestmark = [pytest.mark.hil, pytest.mark.timeout(300)]

BENCH = Bench.from_env()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    if not BENCH.own_receiver:
        pytest.skip("needs a receiver the suite runs itself (MBUS_HIL_ENDPOINT is set)")
    made = Stack(tmp_path / "stack", bench=BENCH)
    try:
        made.start()
        yield made
    finally:
        made.close()


def _layer(stack: Stack, ids: set[str]) -> dict[str, Any]:
    meters = []
    for m in stack.meters.specs:
        if m.id not in ids:
            continue
        if m.kind == "mbus":
            where: dict[str, Any] = (
                {"primary_address": int(m.address)}
                if m.address.isdigit() and int(m.address) <= 250
                else {"secondary_address": m.address}
            )
            meters.append({"id": m.id, "kind": "mbus", "bus": "mbus0", **where})
        else:
            meters.append(
                {
                    "id": m.id,
                    "kind": m.kind,
                    "host": m.host,
                    "unit_id": m.unit_id,
                    "profile": m.profile,
                }
            )
    return {"default_interval": stack.settings.interval, "meters": meters}


def _devices(stack: Stack) -> list[dict[str, Any]]:
    done = stack.receiver.cli("devices", "--format", "json")
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def test_configuration_from_the_cloud_within_one_poll(stack: Stack, tmp_path: Path) -> None:
    node, receiver = stack.logger, stack.receiver
    uri = node.application_uri
    poll_s = 10.0  # hil.stack.LoggerSettings.config_poll_interval
    node.wait_readings(1)
    first = next(m.id for m in stack.meters.specs if m.kind == "mbus")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(_layer(stack, {first, "main-supply"})))
    set_at = time.monotonic()
    receiver.cli("config", "set", "--device", uri, str(good))
    wait_until(
        "the logger to run cloud configuration 1",
        lambda: str((node.status() or {}).get("cloud_version")) == "1",
        poll_s + 15,
        0.2,
    )
    applied_after = time.monotonic() - set_at
    assert applied_after <= poll_s + 5, f"applied after {applied_after:.1f} s"
    wait_until(
        "the meters of configuration 1 to be polled",
        lambda: (
            {m["meter"] for m in (node.status() or {}).get("meters", [])} == {first, "main-supply"}
        ),
        30,
        0.2,
    )
    # The running version reaches the receiver with the next status report.
    wait_until(
        "the receiver to see configuration 1 in use",
        lambda: [d["config_version_in_use"] for d in _devices(stack)] == [1],
        30,
        0.5,
    )

    # Invalid: a meter on a bus the logger does not have.
    bad = tmp_path / "bad.json"
    layer = _layer(stack, {first})
    layer["meters"].append({"id": "ghost", "kind": "mbus", "bus": "mbus9", "primary_address": 7})
    bad.write_text(json.dumps(layer))
    receiver.cli("config", "set", "--device", uri, str(bad))
    refused = wait_until(
        "the refusal to be reported to the receiver",
        lambda: [e for e in receiver.audit_events() if e.event == "config.refused"],
        poll_s + 30,
        0.5,
    )
    assert "mbus9" in refused[0].detail and uri == refused[0].device_uri
    device = wait_until(
        "devices to show the mismatch",
        lambda: next(
            (d for d in _devices(stack) if "runs config 1, current is 2" in d["status"]), None
        ),
        30,
        0.5,
    )
    assert device["config_version"] == 2 and device["config_version_in_use"] == 1
    status = node.status() or {}
    assert str(status.get("cloud_version")) == "1"
    assert {m["meter"] for m in status["meters"]} == {first, "main-supply"}
    # The last good layer is what a restarted logger runs.
    node.stop()
    node.start()
    assert str((node.status() or {}).get("cloud_version")) == "1"
    assert node.buffer_stats()["lost_total"] == 0


def test_installation_report_marks_the_logger_installed_in_the_registry(
    stack: Stack, tmp_path: Path
) -> None:
    node = stack.logger
    device = wait_until(
        "the logger's installation report",
        lambda: next((d for d in _devices(stack) if d["location"]), None),
        60,
        0.5,
    )
    assert device["application_uri"] == node.application_uri
    assert device["serial"] == node.serial and node.serial in device["location"]
    report = tmp_path / "devices.json"
    report.write_text(json.dumps(_devices(stack)))
    results = stack.provisioning.json("registry", "import-installations", str(report))
    assert [r["result"] for r in results] == ["installed"], results
    row = next(r for r in stack.provisioning.registry() if r["serial"] == node.serial)
    assert row["state"] == "installed" and row["location"] == device["location"]


def _columns(start: int, n: int, value: str | None = None) -> dict[str, list[Any]]:
    now = datetime.now(UTC)
    return {
        "Sequence": list(range(start, start + n)),
        "Meter": ["probe"] * n,
        "Record": [f"r{i % 3}" for i in range(start, start + n)],
        "Value": [value or f"{i}.5" for i in range(start, start + n)],
        "Unit": ["Wh"] * n,
        "Quantity": ["energy"] * n,
        "SourceTime": [None] * n,
        "LoggerTime": [now] * n,
        "Flags": [""] * n,
    }


def _args(columns: dict[str, list[Any]], epoch: str) -> list[Any]:
    return [epoch] + [columns[a.name] for a in contract.PUSH_READINGS_INPUT if a.array]


def test_bad_requests_change_nothing_and_are_audited(stack: Stack) -> None:
    from logger.tpm import open_device_key
    from logger.uplink.connection import UplinkSettings, connect
    from logger.uplink.errors import ProtocolError

    node, receiver = stack.logger, stack.receiver
    node.wait_readings(1)
    node.stop()  # one user of the logger's TPM key at a time
    epoch = "hil-probe-epoch"
    settings = UplinkSettings(
        endpoint=receiver.endpoint,
        state_dir=node.state_dir,
        tcti=node.tcti,
        server_uri=receiver.application_uri,
    )

    async def scenario() -> tuple[list[str], list[Any]]:
        with open_device_key(node.state_dir, node.tcti) as key:
            conn = await connect(settings, key)
            try:
                ack = await conn.call(contract.PUSH_READINGS, *_args(_columns(1, 6), epoch))
                assert ack == [6, 6, 0]
                before = await asyncio.to_thread(receiver.snapshot)
                cases = []
                cases.append(_columns(7, contract.MAX_BATCH + 1))
                unequal = _columns(7, 4)
                unequal["Unit"] = unequal["Unit"][:3]
                cases.append(unequal)
                repeated = _columns(7, 4)
                repeated["Sequence"] = [7, 8, 8, 9]
                cases.append(repeated)
                decreasing = _columns(7, 4)
                decreasing["Sequence"] = [7, 9, 8, 10]
                cases.append(decreasing)
                cases.append(_columns(5, 4, value="999"))  # 5 and 6 differ from what is stored
                codes = []
                for columns in cases:
                    with pytest.raises(ProtocolError) as info:
                        await conn.call(contract.PUSH_READINGS, *_args(columns, epoch))
                    codes.append(info.value.detail)
                after = await asyncio.to_thread(receiver.snapshot)
                assert after.readings == before.readings
                assert after.latest == before.latest
                return codes, after.readings
            finally:
                await conn.close()

    codes, readings = asyncio.run(scenario())
    assert codes == [
        "BadRequestTooLarge",
        "BadInvalidArgument",
        "BadSequenceNumberInvalid",
        "BadSequenceNumberInvalid",
        "BadInvalidArgument",
    ]
    assert sorted(r.sequence for r in readings if r.epoch == epoch) == [1, 2, 3, 4, 5, 6]
    bad = [e for e in receiver.audit_events() if e.event == "request.bad"]
    assert len(bad) >= len(codes)
    assert all(e.device_uri == node.application_uri for e in bad)
    assert any("different content" in e.detail for e in bad)
    done = receiver.cli("audit", "verify", "--format", "json")
    assert json.loads(done.stdout)["ok"] is True

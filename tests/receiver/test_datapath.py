"""The data path on a real receiver over SignAndEncrypt: pushes, bad requests, reports, and the
browseable address space an operator's client sees."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies as sp

from logger import contract
from logger.tpm import open_device_key
from logger.uplink.connection import Connection, connect
from logger.uplink.errors import ProtocolError
from tests.support.datapath import datapath_receiver, push_args
from tests.support.receiver_storage import batch, run
from tests.support.secure_channel import SharedPki, uplink_settings


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("datapath-pki"))
    yield shared
    shared.close()


async def _operator(url: str, spki: SharedPki) -> Client:
    client = Client(url, timeout=5)
    client.application_uri = spki.operator.application_uri
    policy = sp.SecurityPolicyBasic256Sha256(
        spki.rx.cert, spki.operator.cert, spki.operator.key, ua.MessageSecurityMode.SignAndEncrypt
    )
    client.security_policy = policy  # type: ignore[assignment]
    client.uaclient.set_security(policy)
    await client.connect()
    return client


class _Logger:
    """A logger's connection to the receiver (file key of the shared PKI)."""

    def __init__(self, spki: SharedPki, url: str) -> None:
        self.spki, self.url = spki, url
        self.conn: Connection | None = None
        self._key: Any = None

    async def __aenter__(self) -> Connection:
        self._key = open_device_key(self.spki.device.state_dir)
        self.conn = await connect(
            uplink_settings(self.url, self.spki.device, self.spki.rx), self._key
        )
        return self.conn

    async def __aexit__(self, *exc: object) -> None:
        if self.conn is not None:
            await self.conn.close()
        self._key.close()


async def _status_of(conn: Connection, columns: dict[str, list[object]], epoch: str = "e1") -> str:
    with pytest.raises(ProtocolError) as info:
        await conn.call(contract.PUSH_READINGS, *push_args(columns, epoch))
    return info.value.detail


def test_bad_requests_get_a_status_change_nothing_and_are_audited(
    spki: SharedPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with datapath_receiver(spki.rx, tmp_path) as (srv, _dp):
            storage = srv.storage
            uri = spki.device.application_uri
            async with _Logger(spki, srv.endpoint_url) as conn:
                assert await conn.call(contract.PUSH_READINGS, *push_args(batch(1, 10), "e1")) == [
                    10,
                    10,
                    0,
                ]
                before = [r async for r in storage.export(uri)]
                audited = len(await storage.audit_entries())
                cases: list[tuple[dict[str, list[object]], str]] = []
                cases.append((batch(11, contract.MAX_BATCH + 1), "BadRequestTooLarge"))
                unequal = batch(11, 5)
                unequal["Value"] = unequal["Value"][:-1]
                cases.append((unequal, "BadInvalidArgument"))
                repeated = batch(11, 5)
                repeated["Sequence"] = [11, 12, 12, 13, 14]
                cases.append((repeated, "BadSequenceNumberInvalid"))
                decreasing = batch(11, 5)
                decreasing["Sequence"] = [11, 12, 15, 14, 16]
                cases.append((decreasing, "BadSequenceNumberInvalid"))
                # A resent sequence number with other content; the new ones beside it must not
                # be stored either (whole or nothing).
                changed = batch(8, 6)
                changed["Value"] = ["0", *changed["Value"][1:]]
                cases.append((changed, "BadInvalidArgument"))
                empty_meter = batch(11, 2)
                empty_meter["Meter"] = ["m1", ""]
                cases.append((empty_meter, "BadInvalidArgument"))
                for columns, expected in cases:
                    assert await _status_of(conn, columns) == expected
                assert await _status_of(conn, batch(11, 2), epoch="") == "BadInvalidArgument"
                # Nothing changed...
                assert [r async for r in storage.export(uri)] == before
                assert await storage.acknowledged(uri, "e1") == 10
                # ...and every refusal is in the audit log, attributed to the channel's device.
                entries = (await storage.audit_entries())[audited:]
                bad = [e for e in entries if e.event == "request.bad"]
                assert len(bad) == len(cases) + 1
                assert all(e.device_uri == uri for e in bad)
                assert any("different content" in e.detail for e in bad)
                assert (await storage.verify_audit()).ok
                # The logger goes on where it left off.
                assert await conn.call(contract.PUSH_READINGS, *push_args(batch(11, 3), "e1")) == [
                    13,
                    3,
                    0,
                ]

    run(scenario())


async def _browse_value(client: Client, path: list[str]) -> Any:
    idx = await client.get_namespace_index(contract.NAMESPACE_URI)
    node = await client.nodes.objects.get_child(
        [f"{idx}:{contract.RECEIVER_OBJECT}", f"{idx}:{contract.LOGGERS_FOLDER}"]
    )
    for name in path:
        node = await node.get_child(ua.QualifiedName(name, idx))
    return node


def test_operators_browse_loggers_meters_and_latest_exact_values(
    spki: SharedPki, tmp_path: Path
) -> None:
    uri = spki.device.application_uri

    async def scenario() -> None:
        async with datapath_receiver(spki.rx, tmp_path) as (srv, dp):
            async with _Logger(spki, srv.endpoint_url) as conn:
                first = batch(1, 8, records=4)
                await conn.call(contract.PUSH_READINGS, *push_args(first))
                second = batch(9, 4, records=4)
                second["Value"][-1] = "12.340"  # trailing zero: must stay as sent
                second["Value"][0] = "text value"
                await conn.call(contract.PUSH_READINGS, *push_args(second))
                await conn.call(
                    contract.REPORT_INSTALLATION, spki.device.serial, "Boiler room 2", "9.9"
                )
                await conn.call(
                    contract.REPORT_STATUS,
                    *(42, 3.5, 7, 900, 0, ["m1"], [True], [0], [None], [""], ""),
                )
            assert dp.address_space is not None
            await dp.address_space.flush()  # the view is written in the background
            client = await _operator(srv.endpoint_url, spki)
            try:
                newest = {f"r{int(str(s)) % 4}": i for i, s in enumerate(second["Sequence"])}
                for record, i in newest.items():
                    node = await _browse_value(client, [uri, "Meters", "m1", record])
                    data = await node.read_data_value()
                    assert data.Value.Value == second["Value"][i]
                    assert data.Value.VariantType == ua.VariantType.String
                    assert data.SourceTimestamp == second["LoggerTime"][i]
                    unit = await node.get_child(
                        ua.QualifiedName("Unit", node.nodeid.NamespaceIndex)
                    )
                    assert await unit.read_value() == "Wh"
                    seq = await node.get_child(
                        ua.QualifiedName("Sequence", node.nodeid.NamespaceIndex)
                    )
                    assert await seq.read_value() == second["Sequence"][i]
                    double = await node.get_child(
                        ua.QualifiedName("ValueDouble", node.nodeid.NamespaceIndex)
                    )
                    value = await double.read_value()
                    text = second["Value"][i]
                    assert (math.isnan(value) and text == "text value") or value == float(str(text))
                location = await _browse_value(client, [uri, "Location"])
                assert await location.read_value() == "Boiler room 2"
                depth = await _browse_value(client, [uri, "BufferDepth"])
                assert await depth.read_value() == 42
                # Values are read-only for operators.
                node = await _browse_value(client, [uri, "Meters", "m1", "r0"])
                with pytest.raises(ua.UaStatusCodeError):
                    await node.write_value(ua.Variant("1", ua.VariantType.String))
            finally:
                await client.disconnect()
        # A restarted receiver rebuilds the tree from its storage.
        async with datapath_receiver(spki.rx, tmp_path) as (srv, dp):
            client = await _operator(srv.endpoint_url, spki)
            try:
                node = await _browse_value(client, [uri, "Meters", "m1", "r0"])
                assert await node.read_value() == "12.340"
                firmware = await _browse_value(client, [uri, "FirmwareVersion"])
                assert await firmware.read_value() == "9.9"
            finally:
                await client.disconnect()

    run(scenario())


def test_methods_declare_their_arguments_from_the_contract(spki: SharedPki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with datapath_receiver(spki.rx, tmp_path) as (srv, _dp):
            client = await _operator(srv.endpoint_url, spki)
            try:
                idx = await client.get_namespace_index(contract.NAMESPACE_URI)
                obj = await client.nodes.objects.get_child(f"{idx}:{contract.RECEIVER_OBJECT}")
                for name, (inputs, outputs) in contract.METHODS.items():
                    method = await obj.get_child(f"{idx}:{name}")
                    for prop, spec in (("InputArguments", inputs), ("OutputArguments", outputs)):
                        if not spec:
                            continue
                        declared = await (await method.get_child(f"0:{prop}")).read_value()
                        assert [a.Name for a in declared] == [a.name for a in spec]
                        assert [a.ValueRank for a in declared] == [
                            1 if a.array else -1 for a in spec
                        ]
            finally:
                await client.disconnect()

    run(scenario())


def test_a_refused_configuration_is_reported_and_audited_once(
    spki: SharedPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with datapath_receiver(spki.rx, tmp_path) as (srv, _dp):
            storage = srv.storage
            uri = spki.device.application_uri
            version = await storage.set_config(uri, '{"meters": []}', "op@test")
            async with _Logger(spki, srv.endpoint_url) as conn:
                got = await conn.call(contract.GET_CONFIGURATION, 0)
                assert got[0] == version and '"meters"' in got[1]
                assert await conn.call(contract.GET_CONFIGURATION, version) == [version, ""]
                status: tuple[object, ...] = (0, 0.0, 0, 900, 0, [], [], [], [], [])
                for _ in range(3):
                    await conn.call(contract.REPORT_STATUS, *status, "version 1 refused: bus x")
            refused = [e for e in await storage.audit_entries() if e.event == "config.refused"]
            assert len(refused) == 1 and "bus x" in refused[0].detail
            device = await storage.device(uri)
            assert device is not None and device.status is not None
            assert device.status.config_version == 0

    run(scenario())

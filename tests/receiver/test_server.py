"""The receiver as loggers and operators see it: methods, roles, live revocation, audit log."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies as sp
from cryptography.hazmat.primitives import serialization

from logger import contract
from logger.tpm import open_device_key
from logger.tpm.state import ski_name
from logger.uplink.connection import connect
from logger.uplink.errors import CertificateRejected, ProtocolError
from provisioning import profile
from receiver.server import ReceiverServer
from tests.support.pki import TestPki
from tests.support.receiver_storage import batch, execute_raw, run
from tests.support.secure_channel import SharedPki, running_receiver, uplink_settings


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("server-pki"))
    yield shared
    shared.close()


def _push_args(columns: dict[str, list[object]], epoch: str = "epoch-1") -> list[object]:
    return [epoch] + [columns[a.name] for a in contract.PUSH_READINGS_INPUT if a.array]


async def _operator_client(url: str, spki: SharedPki) -> Client:
    client = Client(url, timeout=5)
    client.application_uri = spki.operator.application_uri
    policy = sp.SecurityPolicyBasic256Sha256(
        spki.rx.cert, spki.operator.cert, spki.operator.key, ua.MessageSecurityMode.SignAndEncrypt
    )
    client.security_policy = policy  # type: ignore[assignment]
    client.uaclient.set_security(policy)
    await client.connect()
    return client


def test_a_logger_pushes_and_data_is_attributed_to_its_certificate(
    spki: SharedPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(spki.device.state_dir) as key:
                conn = await connect(uplink_settings(srv.endpoint_url, spki.device, spki.rx), key)
                try:
                    ack = await conn.call(contract.PUSH_READINGS, *_push_args(batch(1, 10)))
                    assert ack == [10, 10, 0]
                    again = await conn.call(contract.PUSH_READINGS, *_push_args(batch(1, 10)))
                    assert again == [10, 0, 10]
                    await conn.call(
                        contract.REPORT_INSTALLATION, spki.device.serial, "Boiler room", "1.0"
                    )
                    # A bad batch: an OPC UA status, nothing stored, audited.
                    bad = batch(11, 5)
                    bad["Meter"] = bad["Meter"][:-1]
                    with pytest.raises(ProtocolError) as info:
                        await conn.call(contract.PUSH_READINGS, *_push_args(bad))
                    assert "BadInvalidArgument" in str(info.value)
                    # Installation reports cannot claim another serial.
                    with pytest.raises(ProtocolError):
                        await conn.call(contract.REPORT_INSTALLATION, "SN-OTHER", "x", "1.0")
                finally:
                    await conn.close()
            storage = srv.storage
            assert await storage.acknowledged(spki.device.application_uri, "epoch-1") == 10
            device = await storage.device(spki.device.application_uri)
            assert device is not None
            assert device.thumbprint == profile.thumbprint(spki.device.cert)
            await srv.drain()
            events = [e.event for e in await storage.audit_entries()]
            assert "request.bad" in events

    run(scenario())


def test_an_operator_reads_but_cannot_push_or_write(spki: SharedPki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            client = await _operator_client(srv.endpoint_url, spki)
            try:
                idx = await client.get_namespace_index(contract.NAMESPACE_URI)
                obj = await client.nodes.objects.get_child(f"{idx}:{contract.RECEIVER_OBJECT}")
                trust = await obj.call_method(f"{idx}:{contract.GET_TRUST_LIST}")
                assert len(trust[0]) == 2
                null = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)
                args = [
                    ua.Variant(
                        [null if x is None else x for x in v] if a.type == "DateTime" else v,  # type: ignore[attr-defined]
                        getattr(ua.VariantType, a.type),
                        is_array=a.array,
                    )
                    for a, v in zip(
                        contract.PUSH_READINGS_INPUT, _push_args(batch(1, 3)), strict=True
                    )
                ]
                with pytest.raises(ua.UaStatusCodeError) as info:
                    await obj.call_method(f"{idx}:{contract.PUSH_READINGS}", *args)
                assert info.value.code == ua.StatusCodes.BadUserAccessDenied
                with pytest.raises(ua.UaStatusCodeError) as info:
                    await obj.call_method(
                        f"{idx}:{contract.GET_CONFIGURATION}", ua.Variant(0, ua.VariantType.UInt32)
                    )
                assert info.value.code == ua.StatusCodes.BadUserAccessDenied
                node = client.get_node(
                    ua.NodeId(ua.Int32(ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductName))
                )
                assert await node.read_value()  # reading is fine
                with pytest.raises(ua.UaStatusCodeError) as info:
                    await node.write_value(ua.DataValue(ua.Variant("x", ua.VariantType.String)))
                assert info.value.code == ua.StatusCodes.BadUserAccessDenied
            finally:
                await client.disconnect()
            assert await srv.storage.devices() == []
            events = [e.event for e in await srv.storage.audit_entries()]
            assert "request.denied" in events

    run(scenario())


async def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


def test_revocation_closes_a_live_session_without_a_restart(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    try:
        rx = pki.receiver("acme")
        device = pki.device("acme")

        async def scenario() -> None:
            async with running_receiver(rx, tmp_path, reload_interval_s=0.1) as srv:
                with open_device_key(device.state_dir) as key:
                    settings = uplink_settings(srv.endpoint_url, device, rx)
                    conn = await connect(settings, key)
                    assert conn.is_connected()
                    pki.revoke(device.cert)  # CRL published to rx.dir (blocks briefly)
                    await _wait_for(lambda: srv.closed_channels >= 1)
                    await _wait_for(lambda: not conn.is_connected())
                    await conn.close()
                    with pytest.raises(CertificateRejected):
                        await connect(settings, key)
                await srv.drain()
                entries = await srv.storage.audit_entries()
                assert any(
                    e.event == "cert.revoked" and "live session closed" in e.detail for e in entries
                )
                assert any(e.event == "trust.reloaded" for e in entries)

        run(scenario())
    finally:
        pki.close()


def test_a_crl_with_a_bad_signature_is_ignored_on_reload(spki: SharedPki, tmp_path: Path) -> None:
    rx_dir = tmp_path / "rx"
    shutil.copytree(spki.rx.dir, rx_dir)
    rx = type(spki.rx)(rx_dir, spki.rx.org, spki.rx.application_uri, spki.rx.cert, spki.rx.key)
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        forged = profile.make_crl(spki.pki.ca_cert("acme"), other.ca_key("acme"), [], 10**6, 30)
    finally:
        other.close()

    async def scenario() -> None:
        async with running_receiver(rx, tmp_path) as srv:
            (rx_dir / "crl" / f"{ski_name(spki.pki.ca_cert('acme'))}.pem").write_bytes(
                forged.public_bytes(serialization.Encoding.PEM)
            )
            assert srv.gate.changed()
            await srv.reload_trust()
            # The previous, genuine CRL is still in force: the logger still gets in.
            with open_device_key(spki.device.state_dir) as key:
                conn = await connect(uplink_settings(srv.endpoint_url, spki.device, rx), key)
                await conn.close()
            entries = await srv.storage.audit_entries()
            reload = [e for e in entries if e.event == "trust.reloaded"]
            assert reload and "not signed by that CA" in reload[-1].detail

    run(scenario())


def test_tampering_with_the_audit_log_is_detected(spki: SharedPki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            device = spki.pki.device("acme")
            spki.pki.revoke(device.cert)
            await srv.reload_trust()
            with open_device_key(device.state_dir) as key:
                for _ in range(2):
                    with pytest.raises(CertificateRejected):
                        await connect(uplink_settings(srv.endpoint_url, device, spki.rx), key)
            await srv.drain()
            assert (await srv.storage.verify_audit()).ok
            entries = await srv.storage.audit_entries()
            victim = next(e for e in entries if e.event == "cert.revoked")
            url = srv.storage.url
        # An intruder erases the trace of the revoked logger's attempts.
        await execute_raw(url, f"UPDATE audit SET event = 'cert.ok' WHERE id = {victim.id}")
        from receiver.storage import open_storage

        storage = await open_storage(url)
        try:
            verdict = await storage.verify_audit()
            assert not verdict.ok
            assert verdict.first_bad_id == victim.id
        finally:
            await storage.close()

    run(scenario())


def test_server_methods_are_declared_from_the_contract(spki: SharedPki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            assert isinstance(srv, ReceiverServer)
            client = await _operator_client(srv.endpoint_url, spki)
            try:
                idx = await client.get_namespace_index(contract.NAMESPACE_URI)
                obj = await client.nodes.objects.get_child(f"{idx}:{contract.RECEIVER_OBJECT}")
                for name, (inputs, _outputs) in contract.METHODS.items():
                    method = await obj.get_child(f"{idx}:{name}")
                    if not inputs:
                        continue
                    prop = await method.get_child("0:InputArguments")
                    declared = await prop.read_value()
                    assert [a.Name for a in declared] == [a.name for a in inputs]
                    assert [a.ValueRank for a in declared] == [1 if a.array else -1 for a in inputs]
            finally:
                await client.disconnect()

    run(scenario())


def test_methods_are_complete_and_fixed_before_start(spki: SharedPki, tmp_path: Path) -> None:
    """A receiver never starts with a method node that has no handler, a handler cannot
    replace the gate's GetTrustList, and the methods cannot change under live sessions."""

    async def handler(who: object, args: dict[str, object]) -> list[object]:
        return []

    async def scenario() -> None:
        own = {m: handler for m in contract.METHODS if m != contract.GET_TRUST_LIST}
        async with running_receiver(spki.rx, tmp_path) as srv:
            assert ReceiverServer.served_methods() == set(contract.METHODS)
            with pytest.raises(RuntimeError, match="fixed once it has started"):
                srv.set_methods(own)
            idle = ReceiverServer(srv.rdir, srv.storage, methods=own)
            incomplete = dict(own)
            del incomplete[contract.PUSH_READINGS]
            with pytest.raises(ValueError, match=r"missing \['PushReadings'\]"):
                idle.set_methods(incomplete)
            with pytest.raises(ValueError, match=r"not allowed \['GetTrustList'\]"):
                idle.set_methods({**own, contract.GET_TRUST_LIST: handler})

    run(scenario())

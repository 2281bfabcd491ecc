"""The receiver's gate, attacked over real OPC UA on 127.0.0.1.

SECURITY.md gap 2: three crafted clients entered a stock asyncua server offering only
SignAndEncrypt endpoints and wrote to it. Each is replayed here against our receiver and must
get no session and change nothing; then the certificate checks (revoked, expired, not yet
valid, other organization, wrong role), each audited.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies as sp
from cryptography.hazmat.primitives import serialization

from logger.tpm import open_device_key
from logger.uplink.connection import connect
from logger.uplink.errors import CertificateRejected
from provisioning import profile
from receiver.server import ReceiverServer
from tests.support.pki import DeviceDir, TestPki
from tests.support.receiver_storage import run
from tests.support.secure_channel import (
    SharedPki,
    crafted_client,
    running_receiver,
    uplink_settings,
)


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("gate-pki"))
    yield shared
    shared.close()


async def _events(srv: ReceiverServer) -> list[str]:
    await srv.drain()
    return [e.event for e in await srv.storage.audit_entries()]


async def _attempt_write(client: Client) -> None:
    """What the attacks of SECURITY.md did once inside: a session and a Write."""
    await client.connect()
    try:
        node = client.get_node(
            ua.NodeId(ua.Int32(ua.ObjectIds.Server_ServerStatus_BuildInfo_ProductName))
        )
        await node.write_value(ua.DataValue(ua.Variant("owned", ua.VariantType.String)))
    finally:
        await client.disconnect()


def test_bypass_a_none_channel_gets_no_session(spki: SharedPki, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            client = crafted_client(srv.endpoint_url, None, None, spki.rx.cert)
            with pytest.raises(ua.UaStatusCodeError) as info:
                await _attempt_write(client)
            assert info.value.code == ua.StatusCodes.BadUserAccessDenied
            assert "channel.insecure" in await _events(srv)

    run(scenario())


def test_bypass_b_untrusted_channel_certificate_with_empty_claim(
    spki: SharedPki, tmp_path: Path
) -> None:
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        evil_cert, evil_key = other.leaf("acme", "logger")
    finally:
        other.close()

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            client = crafted_client(
                srv.endpoint_url, evil_cert, evil_key, spki.rx.cert, claimed_cert=b""
            )
            with pytest.raises(ua.UaStatusCodeError) as info:
                await _attempt_write(client)
            # Refused at OpenSecureChannel, with an ERR the client can read.
            assert info.value.code == ua.StatusCodes.BadSecurityChecksFailed
            # An impostor CA with the org CA's very name: untrusted, not "another org".
            assert "cert.rejected" in await _events(srv)

    run(scenario())


def test_bypass_c_untrusted_channel_certificate_claiming_a_trusted_one(
    spki: SharedPki, tmp_path: Path
) -> None:
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        evil_cert, evil_key = other.leaf("acme", "logger")
    finally:
        other.close()
    trusted_der = spki.device.cert.public_bytes(serialization.Encoding.DER)

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            for policy in (
                sp.SecurityPolicyBasic256Sha256,
                sp.SecurityPolicyAes128Sha256RsaOaep,
                sp.SecurityPolicyAes256Sha256RsaPss,
            ):
                client = crafted_client(
                    srv.endpoint_url,
                    evil_cert,
                    evil_key,
                    spki.rx.cert,
                    claimed_cert=trusted_der,
                    policy=policy,
                )
                with pytest.raises(ua.UaStatusCodeError) as info:
                    await _attempt_write(client)
                assert info.value.code == ua.StatusCodes.BadSecurityChecksFailed
            devices = await srv.storage.devices()
            assert devices == []  # nothing was attributed to the impersonated logger

    run(scenario())


def test_the_user_manager_gate_holds_without_the_channel_gate(
    spki: SharedPki, tmp_path: Path
) -> None:
    """Defence in depth: ActivateSession checks the channel certificate on its own."""
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        evil_cert, evil_key = other.leaf("acme", "logger")
    finally:
        other.close()
    trusted_der = spki.device.cert.public_bytes(serialization.Encoding.DER)

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            srv._channel_gate = lambda der: None  # type: ignore[method-assign]
            from receiver import _compat

            assert srv.server is not None
            _compat.gate_endpoints(srv.server, lambda der: None)
            for p in srv.server.bserver._policies:  # type: ignore[union-attr]
                if isinstance(p, _compat.GatedPolicyFactory):
                    p._gate = lambda der: None
            client = crafted_client(
                srv.endpoint_url, evil_cert, evil_key, spki.rx.cert, claimed_cert=trusted_der
            )
            with pytest.raises(ua.UaStatusCodeError) as info:
                await _attempt_write(client)
            assert info.value.code == ua.StatusCodes.BadUserAccessDenied

    run(scenario())


def test_only_sign_and_encrypt_endpoints_with_the_three_policies(
    spki: SharedPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            from logger.uplink import _compat as client_compat

            endpoints = await client_compat.get_endpoints(srv.endpoint_url, 5.0)
            offered = {(e.policy_name, e.mode) for e in endpoints}
            assert offered == {
                ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
                ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"),
                ("Basic256Sha256", "SignAndEncrypt"),
            }
            # A Sign-only channel is refused even with a trusted certificate.
            client = crafted_client(
                srv.endpoint_url,
                spki.operator.cert,
                spki.operator.key,
                spki.rx.cert,
                timeout=1.0,
            )
            policy = sp.SecurityPolicyBasic256Sha256(
                spki.rx.cert, spki.operator.cert, spki.operator.key, ua.MessageSecurityMode.Sign
            )
            client.security_policy = policy  # type: ignore[assignment]
            client.uaclient.set_security(policy)
            with pytest.raises(Exception):  # noqa: B017 - the server drops the channel
                await _attempt_write(client)

    run(scenario())


def _logger_refused(spki: SharedPki, tmp_path: Path, device: DeviceDir, event: str) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(device.state_dir) as key, pytest.raises(CertificateRejected):
                await connect(uplink_settings(srv.endpoint_url, device, spki.rx), key)
            assert event in await _events(srv)

    run(scenario())


def test_revoked_logger_is_refused(spki: SharedPki, tmp_path: Path) -> None:
    device = spki.pki.device("acme")
    spki.pki.revoke(device.cert)
    _logger_refused(spki, tmp_path, device, "cert.revoked")


def test_logger_of_another_organization_is_refused(spki: SharedPki, tmp_path: Path) -> None:
    device = spki.pki.device("globex")
    # The logger trusts acme's receiver (say, moved to the wrong site); acme must refuse it.
    spki.pki.pki.write_trust(device.state_dir, "acme")
    _logger_refused(spki, tmp_path, device, "cert.wrong_organization")


def _crafted_logger(spki: SharedPki, **kw: Any) -> tuple[Any, Any]:
    return spki.pki.leaf("acme", "logger", **kw)


@pytest.mark.parametrize("case", ["expired", "not_yet_valid", "receiver_role", "weak"])
def test_bad_logger_certificates_are_refused_and_audited(
    spki: SharedPki, tmp_path: Path, case: str
) -> None:
    now = profile.utcnow()
    if case == "expired":
        cert, key = _crafted_logger(
            spki, not_before=now - dt.timedelta(days=40), not_after=now - dt.timedelta(days=1)
        )
        event = "cert.expired"
    elif case == "not_yet_valid":
        cert, key = _crafted_logger(
            spki, not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=40)
        )
        event = "cert.not_yet_valid"
    elif case == "receiver_role":
        cert, key = spki.pki.leaf("acme", "receiver", dns=("127.0.0.1",))
        event = "cert.wrong_role"
    else:
        cert, key = _crafted_logger(spki, key_bits=1024)
        event = "cert.rejected"

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            client = crafted_client(srv.endpoint_url, cert, key, spki.rx.cert)
            with pytest.raises(Exception):  # noqa: B017 - refused at OPN (or key too small)
                await _attempt_write(client)
            assert event in await _events(srv)

    run(scenario())


def test_repeated_refusals_do_not_flood_the_audit_log(spki: SharedPki, tmp_path: Path) -> None:
    # Attack: a client hammering the endpoint to fill the audit log (and the disk under it).
    cert, key = _crafted_logger(spki, key_bits=1024)

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            for _ in range(8):
                client = crafted_client(srv.endpoint_url, cert, key, spki.rx.cert)
                with pytest.raises(Exception):  # noqa: B017 - refused at OPN
                    await _attempt_write(client)
            await srv.drain()
            rejected = [e for e in await srv.storage.audit_entries() if e.event == "cert.rejected"]
            assert len(rejected) == 1
            srv._audit_recent = {k: (v[0] - 61.0, v[1]) for k, v in srv._audit_recent.items()}
            client = crafted_client(srv.endpoint_url, cert, key, spki.rx.cert)
            with pytest.raises(Exception):  # noqa: B017
                await _attempt_write(client)
            await srv.drain()
            rejected = [e for e in await srv.storage.audit_entries() if e.event == "cert.rejected"]
            assert len(rejected) == 2
            assert "+7 identical" in rejected[-1].detail

    run(scenario())


def test_control_the_crafted_clients_do_get_into_a_stock_asyncua_server(
    spki: SharedPki, tmp_path: Path
) -> None:
    """The attacks above are real: against a stock asyncua server (SignAndEncrypt endpoints
    only, a certificate validator set) the same clients get a session and write. If asyncua
    ever closes these holes itself, this test says so."""
    from asyncua import Server
    from asyncua.crypto.validator import CertificateValidator

    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        evil_cert, evil_key = other.leaf("acme", "logger")
    finally:
        other.close()
    trusted_der = spki.device.cert.public_bytes(serialization.Encoding.DER)

    async def scenario() -> None:
        server = Server()
        await server.init()
        server.set_endpoint("opc.tcp://127.0.0.1:0")
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.iserver.certificate = spki.rx.cert
        server.iserver.private_key = spki.rx.key
        server.set_certificate_validator(CertificateValidator())  # the documented protection
        idx = await server.register_namespace("urn:control")
        var = await server.nodes.objects.add_variable(idx, "Setpoint", 1.0)
        await var.set_writable()
        await server.start()
        try:
            assert server.bserver is not None
            url = f"opc.tcp://127.0.0.1:{server.bserver.port}"
            written = []
            for channel_cert, channel_key, claim in (
                (None, None, None),  # (a) None channel
                (evil_cert, evil_key, b""),  # (b) untrusted channel certificate, empty claim
                (evil_cert, evil_key, trusted_der),  # (c) claims a trusted certificate
            ):
                client = crafted_client(url, channel_cert, channel_key, spki.rx.cert, claim)
                await client.connect()
                try:
                    await client.get_node(var.nodeid).write_value(42.0)
                    written.append(await var.read_value())
                finally:
                    await client.disconnect()
            assert written == [42.0, 42.0, 42.0]
        finally:
            await server.stop()

    run(scenario())

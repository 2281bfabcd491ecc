"""The logger against real OPC UA servers on 127.0.0.1: ours, and rogue stock asyncua ones.

Every rogue server must be refused *before the device key is used* (``key.operations`` stays
0): the validation runs on the certificate from GetEndpoints, before OpenSecureChannel.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from cryptography.hazmat.primitives import serialization

from logger.tpm import open_device_key
from logger.tpm.state import ski_name
from logger.uplink.connection import connect
from logger.uplink.errors import (
    CertificateRejected,
    NetworkDown,
    NoAcceptablePolicy,
    ProtocolError,
    ServerUntrusted,
)
from logger.uplink.trust import apply_trust_list
from logger.uplink.validation import TrustStore
from provisioning import profile
from tests.support.pki import DeviceDir, TestPki
from tests.support.receiver_storage import run
from tests.support.secure_channel import (
    SharedPki,
    rogue_server,
    running_receiver,
    stale_crl,
    uplink_settings,
)


def test_connects_to_its_receiver_with_the_strongest_policy(
    spki: SharedPki, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(spki.device.state_dir) as key:
                conn = await connect(uplink_settings(srv.endpoint_url, spki.device, spki.rx), key)
                try:
                    assert conn.info.policy == "Aes256_Sha256_RsaPss"
                    assert conn.info.thumbprint == profile.thumbprint(spki.rx.cert)
                    assert 1 <= conn.key_operations <= 4
                    assert conn.is_connected()
                finally:
                    await conn.close()

    run(scenario())


@pytest.mark.parametrize(
    ("policy", "name"),
    [
        (ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt, "Aes128_Sha256_RsaOaep"),
        (ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, "Basic256Sha256"),
    ],
)
def test_each_policy_against_a_server_that_offers_only_it(
    spki: SharedPki, policy: ua.SecurityPolicyType, name: str
) -> None:
    async def scenario() -> None:
        async with rogue_server(spki.rx.cert, spki.rx.key, (policy,)) as url:
            with open_device_key(spki.device.state_dir) as key:
                conn = await connect(uplink_settings(url, spki.device, spki.rx), key)
                assert conn.info.policy == name
                assert conn.key_operations <= 4
                await conn.close()

    run(scenario())


def test_weak_or_unsigned_policies_are_never_used(spki: SharedPki) -> None:
    # Attack: a downgrade - the server offers only None, Sign and the deprecated policies.
    weak = (
        ua.SecurityPolicyType.NoSecurity,
        ua.SecurityPolicyType.Basic256Sha256_Sign,
        ua.SecurityPolicyType.Basic128Rsa15_SignAndEncrypt,
        ua.SecurityPolicyType.Basic256_SignAndEncrypt,
    )

    async def scenario() -> None:
        async with rogue_server(spki.rx.cert, spki.rx.key, weak) as url:
            with open_device_key(spki.device.state_dir) as key:
                with pytest.raises(NoAcceptablePolicy) as info:
                    await connect(uplink_settings(url, spki.device, spki.rx), key)
                assert key.operations == 0
        assert "Basic256Sha256_Sign" not in str(info.value) or "offers" in str(info.value)
        assert "Aes256_Sha256_RsaPss" in str(info.value)

    run(scenario())


def _rogue_cases(spki: SharedPki, tmp: Path) -> dict[str, tuple[object, object, str]]:
    pki = spki.pki
    uri = spki.rx.application_uri
    now = profile.utcnow()
    other = TestPki.create(tmp / "other", root_name="Evil Root")
    try:
        other_rx = other.receiver("acme", application_uri=uri)
    finally:
        other.close()
    wrong_uri = pki.leaf("acme", "receiver", "urn:acme:receiver:fake", ("127.0.0.1",))
    wrong_host = pki.leaf("acme", "receiver", uri, ("receiver.acme.example",))
    expired = pki.leaf(
        "acme",
        "receiver",
        uri,
        ("127.0.0.1",),
        not_before=now - dt.timedelta(days=40),
        not_after=now - dt.timedelta(days=1),
    )
    sha1 = pki.sha1_leaf("acme", "receiver", uri)
    weak = pki.leaf("acme", "receiver", uri, ("127.0.0.1",), key_bits=1024)
    return {
        "other CA": (other_rx.cert, other_rx.key, "untrusted"),
        "wrong URI": (*wrong_uri, "uri"),
        "wrong host": (*wrong_host, "host"),
        "expired": (*expired, "expired"),
        "SHA-1": (*sha1, "weak_signature"),
        "1024-bit": (*weak, "weak_key"),
    }


def test_rogue_servers_are_refused_before_the_key_is_used(spki: SharedPki, tmp_path: Path) -> None:
    cases = _rogue_cases(spki, tmp_path)

    async def scenario() -> None:
        servers = [
            rogue_server(cert, rogue_key, application_uri=spki.rx.application_uri)  # type: ignore[arg-type]
            for cert, rogue_key, _ in cases.values()
        ]
        # Started side by side: a stock server takes about a second to start and to stop.
        urls = await asyncio.gather(*(s.__aenter__() for s in servers))
        try:
            with open_device_key(spki.device.state_dir) as key:
                for (name, (_c, _k, reason)), url in zip(cases.items(), urls, strict=True):
                    with pytest.raises(ServerUntrusted) as info:
                        await connect(uplink_settings(url, spki.device, spki.rx), key)
                    assert info.value.reason == reason, name
                    assert key.operations == 0, name
        finally:
            await asyncio.gather(*(s.__aexit__(None, None, None) for s in servers))

    run(scenario(), timeout=120)


def test_revoked_server_is_refused(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path)
    try:
        rx = pki.receiver("acme")
        device = pki.device("acme")
        pki.revoke(rx.cert)
        pki.pki.write_trust(device.state_dir, "acme")

        async def scenario() -> None:
            async with rogue_server(rx.cert, rx.key) as url:
                with open_device_key(device.state_dir) as key:
                    with pytest.raises(ServerUntrusted) as info:
                        await connect(uplink_settings(url, device, rx), key)
                    assert info.value.reason == "revoked"
                    assert key.operations == 0

        run(scenario())
    finally:
        pki.close()


def test_our_revoked_certificate_is_reported_as_rejected(spki: SharedPki, tmp_path: Path) -> None:
    device = spki.pki.device("acme")
    spki.pki.revoke(device.cert)

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(device.state_dir) as key:
                with pytest.raises(CertificateRejected) as info:
                    await connect(uplink_settings(srv.endpoint_url, device, spki.rx), key)
                assert info.value.permanent

    run(scenario())


def test_network_down_is_transient(spki: SharedPki) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nobody listens there

    async def scenario() -> None:
        with open_device_key(spki.device.state_dir) as key:
            with pytest.raises(NetworkDown) as info:
                await connect(
                    uplink_settings(f"opc.tcp://127.0.0.1:{port}", spki.device, spki.rx), key
                )
            assert not info.value.permanent

    run(scenario())


def _copy_device(spki: SharedPki, tmp_path: Path) -> DeviceDir:
    state = tmp_path / "state"
    shutil.copytree(spki.device.state_dir, state)
    d = spki.device
    return DeviceDir(state, d.org, d.serial, d.application_uri, d.cert, d.tcti)


def test_stale_crls_recover_through_get_trust_list(spki: SharedPki, tmp_path: Path) -> None:
    """Stale CRLs: no data goes out; the trust list from the receiver makes them fresh."""
    device = _copy_device(spki, tmp_path)
    crl_path = device.state_dir / "crl" / f"{ski_name(spki.pki.ca_cert('acme'))}.pem"
    crl_path.write_bytes(stale_crl(spki.pki, "acme").public_bytes(serialization.Encoding.PEM))

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(device.state_dir) as key:
                settings = uplink_settings(srv.endpoint_url, device, spki.rx)
                conn = await connect(settings, key)
                try:
                    assert conn.recovery
                    from logger.uplink.errors import TrustStale

                    with pytest.raises(TrustStale):
                        await conn.call("GetConfiguration", 0)
                    certs, crls = await conn.get_trust_list()
                finally:
                    await conn.close()
                update = apply_trust_list(device.state_dir, certs, crls)
                assert update.new_crls and not update.rejected
                TrustStore.load(device.state_dir).check_fresh(profile.utcnow())
                conn = await connect(settings, key)
                assert not conn.recovery
                await conn.close()

    run(scenario())


def test_trust_list_accepts_only_what_a_trusted_ca_signed(spki: SharedPki, tmp_path: Path) -> None:
    # Attack: a (compromised) receiver serves a forged CRL and a new root of its own.
    device = _copy_device(spki, tmp_path)
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        forged = profile.make_crl(spki.pki.ca_cert("acme"), other.ca_key("acme"), [], 10**6, 30)
        evil_root = other.root_cert()
    finally:
        other.close()
    older = stale_crl(spki.pki, "acme")
    der = serialization.Encoding.DER
    update = apply_trust_list(
        device.state_dir,
        [evil_root.public_bytes(der)],
        [forged.public_bytes(der), older.public_bytes(der)],
    )
    assert not update.new_crls and not update.new_anchors
    assert len(update.rejected) == 3
    assert any("not signed by that CA" in r for r in update.rejected)
    assert any("stale" in r for r in update.rejected)
    assert any("not signed by a CA the logger already trusts" in r for r in update.rejected)
    # The installed trust is untouched and still valid.
    TrustStore.load(device.state_dir).check_fresh(profile.utcnow())


def test_secure_channel_token_is_renewed_before_expiry(spki: SharedPki, tmp_path: Path) -> None:
    """A short token lifetime: the channel is renewed (one sign + one decrypt each time) and
    keeps working past several lifetimes."""

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(spki.device.state_dir) as key:
                settings = uplink_settings(
                    srv.endpoint_url, spki.device, spki.rx, channel_lifetime_ms=400
                )
                conn = await connect(settings, key)
                try:
                    after_connect = key.operations
                    await asyncio.sleep(1.3)  # > 3 lifetimes; renewal at 75 %
                    assert await conn.call("GetConfiguration", 0) == [0, ""]
                    renewals = (key.operations - after_connect) // 2
                    assert renewals >= 3
                    assert conn.is_connected()
                finally:
                    await conn.close()

    run(scenario())


def test_trust_list_accepts_a_renewed_org_ca_but_not_another_organizations(
    spki: SharedPki, tmp_path: Path
) -> None:
    device = _copy_device(spki, tmp_path)
    renewed = profile.make_org_ca(
        "acme",
        profile.new_rsa_key(2048).public_key(),
        spki.pki.root_cert(),
        spki.pki.ca_key("root"),
        years=5,
    )
    der = serialization.Encoding.DER
    update = apply_trust_list(
        device.state_dir,
        [spki.pki.ca_cert("globex").public_bytes(der), renewed.public_bytes(der)],
        [],
    )
    assert len(update.new_anchors) == 1 and "acme" in update.new_anchors[0]
    assert len(update.rejected) == 1 and "globex" in update.rejected[0]
    assert renewed in TrustStore.load(device.state_dir).anchors


def test_control_a_stock_asyncua_client_accepts_the_rogue_server(
    spki: SharedPki, tmp_path: Path
) -> None:
    """SECURITY.md gap 1 is real: asyncua's own client, with no server certificate given,
    connects to a server whose certificate comes from an unrelated CA."""
    from asyncua import Client
    from asyncua.crypto import security_policies as sp

    from tests.support.pki import DEVICE_KEY_PASSPHRASE

    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        rogue = other.receiver("acme", application_uri=spki.rx.application_uri)
    finally:
        other.close()

    async def scenario() -> None:
        async with rogue_server(rogue.cert, rogue.key) as url:
            client = Client(url, timeout=5)
            client.application_uri = spki.device.application_uri
            await client.set_security(
                sp.SecurityPolicyBasic256Sha256,
                str(spki.device.state_dir / "device-cert.pem"),
                str(spki.device.state_dir / "device-key.pem"),
                private_key_password=DEVICE_KEY_PASSPHRASE,
            )
            await client.connect()
            try:
                assert await client.nodes.server_state.read_value() is not None
            finally:
                await client.disconnect()

    run(scenario())


def test_method_node_is_resolved_once_per_connection(spki: SharedPki, tmp_path: Path) -> None:
    """Browsing to the method costs round trips: done at the first call of a connection, not
    at every call; a failed call forgets it, and a new connection browses afresh."""

    async def scenario() -> None:
        async with running_receiver(spki.rx, tmp_path) as srv:
            with open_device_key(spki.device.state_dir) as key:
                settings = uplink_settings(srv.endpoint_url, spki.device, spki.rx)
                for _connection in range(2):
                    conn = await connect(settings, key)
                    session = conn._client.client.uaclient.session
                    paths = _count_browse_paths(session)
                    try:
                        for _ in range(3):
                            assert await conn.call("GetConfiguration", 0) == [0, ""]
                        assert len(paths) == 2  # the object, then its method, once
                        certs, crls = await conn.get_trust_list()
                        assert certs and crls
                        assert len(paths) == 4  # another method: resolved once too
                        with pytest.raises(ProtocolError):
                            await conn.call("ReportInstallation", "SN-NOT-MINE", "x", "1.0")
                        assert await conn.call("GetConfiguration", 0) == [0, ""]
                        assert len(paths) == 6  # GetConfiguration kept; the failed one forgot
                        await conn.call("ReportInstallation", spki.device.serial, "x", "1.0")
                        assert len(paths) == 8
                    finally:
                        await conn.close()

    run(scenario())


def _count_browse_paths(session: Any) -> list[object]:
    """Record every browse path ``session`` translates (what resolving a method node costs)."""
    paths: list[object] = []
    translate = session.translate_browsepaths_to_nodeids

    async def counting(bpaths: list[object]) -> Any:
        paths.extend(bpaths)
        return await translate(bpaths)

    session.translate_browsepaths_to_nodeids = counting
    return paths

"""The server-certificate rules of SECURITY.md, one test per rule, with the attack it stands for.

Pure: no network. The same validator is the receiver's gate (purpose "client"), tested there.
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from logger.uplink.validation import TrustStore, ValidationError, split_der_chain, validate
from provisioning import profile
from tests.support.pki import TestPki
from tests.support.secure_channel import SharedPki, stale_crl

HOST = "127.0.0.1"


def _store(spki: SharedPki) -> TrustStore:
    return TrustStore.load(spki.device.state_dir)


def _check(spki: SharedPki, cert, uri: str | None = None, host: str = HOST, store=None) -> None:
    validate(
        cert,
        store or _store(spki),
        purpose="server",
        expected_uri=uri or spki.rx.application_uri,
        hostname=host,
    )


def _code(spki: SharedPki, cert, **kw) -> str:
    with pytest.raises(ValidationError) as info:
        _check(spki, cert, **kw)
    return info.value.code


def test_the_organizations_receiver_is_accepted(spki: SharedPki) -> None:
    path = validate(
        spki.rx.cert,
        _store(spki),
        purpose="server",
        expected_uri=spki.rx.application_uri,
        hostname="localhost",
    )
    assert path.application_uri == spki.rx.application_uri
    assert [c.subject for c in path.path[1:]] == [
        spki.pki.ca_cert("acme").subject,
        spki.pki.root_cert().subject,
    ]


def test_rogue_server_with_a_certificate_of_another_ca(spki: SharedPki, tmp_path: Path) -> None:
    # Attack: a server with a certificate from an unrelated CA (SECURITY.md gap 1).
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        rogue = other.receiver("acme", application_uri=spki.rx.application_uri)
        assert _code(spki, rogue.cert) == "untrusted"
    finally:
        other.close()


def test_server_of_another_organization_under_the_same_root(spki: SharedPki) -> None:
    # Attack: globex's receiver (same cloud root) impersonating acme's.
    cert, _ = spki.pki.leaf("globex", "receiver", spki.rx.application_uri, ("127.0.0.1",))
    assert _code(spki, cert) == "untrusted"


def test_wrong_application_uri(spki: SharedPki) -> None:
    # Attack: a genuine certificate of the org, but for another application.
    cert, _ = spki.pki.leaf("acme", "receiver", "urn:acme:receiver:other", ("127.0.0.1",))
    assert _code(spki, cert) == "uri"


def test_wrong_host(spki: SharedPki) -> None:
    # Attack: the right receiver's certificate served from another host (DNS spoofing).
    assert _code(spki, spki.rx.cert, host="evil.example.net") == "host"
    assert _code(spki, spki.rx.cert, host="10.0.0.1") == "host"


def test_expired_and_not_yet_valid(spki: SharedPki) -> None:
    now = profile.utcnow()
    expired, _ = spki.pki.leaf(
        "acme",
        "receiver",
        spki.rx.application_uri,
        ("127.0.0.1",),
        not_before=now - dt.timedelta(days=40),
        not_after=now - dt.timedelta(days=1),
    )
    assert _code(spki, expired) == "expired"
    future, _ = spki.pki.leaf(
        "acme",
        "receiver",
        spki.rx.application_uri,
        ("127.0.0.1",),
        not_before=now + dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=40),
    )
    with pytest.raises(ValidationError) as info:
        _check(spki, future)
    assert info.value.code == "not_yet_valid"
    assert "clock" in str(info.value)


def test_sha1_signed(spki: SharedPki) -> None:
    cert, _ = spki.pki.sha1_leaf("acme", "receiver", spki.rx.application_uri)
    assert _code(spki, cert) == "weak_signature"


def test_1024_bit_key(spki: SharedPki) -> None:
    cert, _ = spki.pki.leaf(
        "acme", "receiver", spki.rx.application_uri, ("127.0.0.1",), key_bits=1024
    )
    assert _code(spki, cert) == "weak_key"


def test_operator_certificate_is_not_a_server(spki: SharedPki) -> None:
    # An operator's client certificate (EKU clientAuth only) cannot act as a server.
    with pytest.raises(ValidationError) as info:
        validate(spki.operator.cert, _store(spki), purpose="server")
    assert info.value.code == "key_usage"


def test_revoked_server(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path)
    try:
        rx = pki.receiver("acme")
        device = pki.device("acme")
        validate(rx.cert, TrustStore.load(device.state_dir), purpose="server")
        pki.revoke(rx.cert)
        pki.pki.write_trust(device.state_dir, "acme")  # the logger got the new CRL
        with pytest.raises(ValidationError) as info:
            validate(rx.cert, TrustStore.load(device.state_dir), purpose="server")
        assert info.value.code == "revoked"
    finally:
        pki.close()


def test_revoked_organization_ca_on_the_root_crl(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path)
    try:
        rx = pki.receiver("acme")
        device = pki.device("acme")
        pki.revoke_org("acme")
        pki.pki.write_trust(device.state_dir, "acme")
        with pytest.raises(ValidationError) as info:
            validate(rx.cert, TrustStore.load(device.state_dir), purpose="server")
        assert info.value.code == "revoked"
        assert "CA certificate" in str(info.value)
    finally:
        pki.close()


def _state_copy(spki: SharedPki, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    shutil.copytree(spki.device.state_dir, state)
    return state


def test_crl_signed_by_the_wrong_ca_is_rejected(spki: SharedPki, tmp_path: Path) -> None:
    # Attack: a CRL that names the org CA but is signed by another key (forged, "empty" CRL).
    state = _state_copy(spki, tmp_path)
    other = TestPki.create(tmp_path / "other", root_name="Evil Root")
    try:
        forged = profile.make_crl(spki.pki.ca_cert("acme"), other.ca_key("acme"), [], 999, 30)
    finally:
        other.close()
    from logger.tpm.state import ski_name

    (state / "crl" / f"{ski_name(spki.pki.ca_cert('acme'))}.pem").write_bytes(
        forged.public_bytes(serialization.Encoding.PEM)
    )
    with pytest.raises(ValidationError) as info:
        validate(spki.rx.cert, TrustStore.load(state), purpose="server")
    assert info.value.code == "crl_bad"
    assert "not signed by that CA" in str(info.value)


def test_crl_past_next_update_is_rejected(spki: SharedPki, tmp_path: Path) -> None:
    state = _state_copy(spki, tmp_path)
    from logger.tpm.state import ski_name

    (state / "crl" / f"{ski_name(spki.pki.ca_cert('acme'))}.pem").write_bytes(
        stale_crl(spki.pki, "acme").public_bytes(serialization.Encoding.PEM)
    )
    store = TrustStore.load(state)
    with pytest.raises(ValidationError) as info:
        validate(spki.rx.cert, store, purpose="server")
    assert info.value.code == "crl_stale"
    with pytest.raises(ValidationError):
        store.check_fresh(profile.utcnow())
    # The trust-recovery connection may use it (still verified, still applied).
    validate(spki.rx.cert, store, purpose="server", allow_stale_crl=True)


def test_missing_crl_fails_closed(spki: SharedPki, tmp_path: Path) -> None:
    state = _state_copy(spki, tmp_path)
    for path in (state / "crl").glob("*.pem"):
        path.unlink()
    with pytest.raises(ValidationError) as info:
        validate(spki.rx.cert, TrustStore.load(state), purpose="server")
    assert info.value.code == "crl_missing"


def test_chain_sent_with_the_certificate_is_split(spki: SharedPki) -> None:
    der = b"".join(
        c.public_bytes(serialization.Encoding.DER)
        for c in (spki.rx.cert, spki.pki.ca_cert("acme"), spki.pki.root_cert())
    )
    leaf, *chain = split_der_chain(der)
    assert leaf == spki.rx.cert and len(chain) == 2
    validate(leaf, _store(spki), purpose="server", presented=chain)
    with pytest.raises(ValidationError):
        split_der_chain(der[:-10])

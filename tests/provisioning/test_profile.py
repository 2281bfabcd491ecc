"""The certificate profile as pure functions, and the test PKI's attack material."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from provisioning import profile
from provisioning.profile import ProfileError
from tests.support.pki import TestPki


def test_limits_of_the_profile(test_pki: TestPki) -> None:
    ca, ca_key = test_pki.ca_cert("acme"), test_pki.ca_key("acme")
    entity = profile.logger_entity("acme", "SN-1", "urn:acme:logger:SN-1")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ProfileError, match="2048-4096 required"):
        profile.issue_end_entity(entity, weak.public_key(), ca, ca_key)
    key = profile.new_rsa_key()
    with pytest.raises(ProfileError, match="five-year maximum"):
        profile.issue_end_entity(entity, key.public_key(), ca, ca_key, days=5 * 365 + 2)
    # Never beyond the issuing CA.
    near_end = ca.not_valid_after_utc - dt.timedelta(days=10)
    cert = profile.issue_end_entity(entity, key.public_key(), ca, ca_key, days=365, now=near_end)
    assert cert.not_valid_after_utc == ca.not_valid_after_utc
    with pytest.raises(ProfileError, match="expired on"):
        profile.issue_end_entity(
            entity, key.public_key(), ca, ca_key, now=ca.not_valid_after_utc + dt.timedelta(days=1)
        )
    for bad_uri in ("not a uri", "", "urn:" + "x" * 300):
        with pytest.raises(ProfileError):
            profile.logger_entity("acme", "SN-1", bad_uri)


def test_csr_identity_checks_signature_and_claims(test_pki: TestPki) -> None:
    key = profile.new_rsa_key()
    entity = profile.logger_entity("acme", "SN-1", "urn:acme:logger:SN-1", ("10.0.0.5",))
    csr = profile.build_csr(entity, key)
    assert profile.csr_identity(csr, "t") == ("SN-1", "urn:acme:logger:SN-1")
    assert profile.csr_dns_names(csr) == ("10.0.0.5",)
    no_san = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(entity.subject())
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ProfileError, match="no subjectAltName"):
        profile.csr_identity(no_san, "t")
    two = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(entity.subject())
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("urn:a"), x509.UniformResourceIdentifier("urn:b")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ProfileError, match="exactly one URI"):
        profile.csr_identity(two, "t")


def test_attack_material_has_the_claimed_defect(test_pki: TestPki, tmp_path: Path) -> None:
    now = profile.utcnow()
    expired, _ = test_pki.leaf(
        not_after=now - dt.timedelta(days=1), not_before=now - dt.timedelta(days=30)
    )
    assert expired.not_valid_after_utc < now
    future, _ = test_pki.leaf(not_before=now + dt.timedelta(days=1))
    assert future.not_valid_before_utc > now
    weak, weak_key = test_pki.leaf(key_bits=1024)
    assert weak_key.key_size == 1024 and weak.public_key().key_size == 1024  # type: ignore[union-attr]
    wrong, _ = test_pki.leaf(
        role="receiver", application_uri="urn:evil:receiver", dns=("127.0.0.1",)
    )
    assert profile.application_uri(wrong) == "urn:evil:receiver"
    sha1, _ = test_pki.sha1_leaf()
    assert sha1.signature_hash_algorithm is not None
    assert sha1.signature_hash_algorithm.name == "sha1"
    # Signed by the real org CA (cryptography verifies SHA-1 only at the primitive level).
    ca_public: Any = test_pki.ca_cert("acme").public_key()
    ca_public.verify(sha1.signature, sha1.tbs_certificate_bytes, padding.PKCS1v15(), hashes.SHA1())
    other = TestPki.create(tmp_path / "other", root_name="Other Root")
    foreign, _ = other.leaf(role="receiver", dns=("127.0.0.1",))
    # Same subject names as ours ("acme Organization CA"), different keys: only the
    # signature tells them apart.
    assert foreign.issuer == test_pki.ca_cert("acme").subject
    with pytest.raises(InvalidSignature):
        foreign.verify_directly_issued_by(test_pki.ca_cert("acme"))
    other.close()
    # A rogue receiver directory around any certificate.
    rogue = test_pki.write_receiver_dir(
        tmp_path / "rogue",
        *test_pki.leaf(
            role="receiver",
            dns=("127.0.0.1",),
            not_after=now - dt.timedelta(days=1),
            not_before=now - dt.timedelta(days=10),
        ),
    )
    assert (rogue.dir / "server-cert.pem").exists() and (rogue.dir / "trust").is_dir()


def test_bad_crls_for_attack_tests(test_pki: TestPki) -> None:
    ca = test_pki.ca_cert("acme")
    ca_public: Any = ca.public_key()
    stale = test_pki.stale_crl()
    assert stale.is_signature_valid(ca_public)
    assert stale.next_update_utc is not None and stale.next_update_utc < profile.utcnow()
    forged = test_pki.forged_crl()
    assert forged.issuer == ca.subject and not forged.is_signature_valid(ca_public)
    assert test_pki.crl("acme").is_signature_valid(ca_public)

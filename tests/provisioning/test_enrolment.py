"""Enrolment end to end through the commands, with swtpm, checked by openssl and tpm2-tools."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from logger.tpm import DeviceState, PcrPolicyNotSatisfied, open_device_key
from provisioning.profile import ROLE_LOGGER, certificate_role, thumbprint
from tests.provisioning.conftest import Cli
from tests.support.swtpm import tpm2_tools


def openssl_verify(
    cert: Path, state_or_dir: Path, crl_check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` with the trust anchors and CRLs found in a state/receiver dir."""
    bundle = state_or_dir / ".verify-ca.pem"
    crls = state_or_dir / ".verify-crl.pem"
    bundle.write_bytes(
        b"".join(p.read_bytes() for p in sorted((state_or_dir / "trust").glob("*.pem")))
    )
    crls.write_bytes(b"".join(p.read_bytes() for p in sorted((state_or_dir / "crl").glob("*.pem"))))
    args = ["openssl", "verify", "-CAfile", str(bundle)]
    if crl_check:
        args += ["-CRLfile", str(crls), "-crl_check_all"]
    return subprocess.run([*args, str(cert)], capture_output=True, text=True, check=False)


def test_enrol_with_tpm_verify_revoke(org_cli: Cli, tcti: str) -> None:
    cli = org_cli
    rx = cli.base / "rx"
    assert (
        cli.provision(
            "server",
            "issue",
            "acme",
            "--dns",
            "127.0.0.1",
            "--dns",
            "localhost",
            "--application-uri",
            "urn:acme:receiver",
            "--out",
            str(rx),
        ).code
        == 0
    )
    state = cli.base / "state"
    r = cli.provision(
        "device",
        "enroll",
        "acme",
        "--serial",
        "SN-0001",
        "--application-uri",
        "urn:acme:logger:SN-0001",
        "--dns",
        "logger-1.local",
        "--tpm",
        tcti,
        "--state-dir",
        str(state),
        "--format",
        "json",
    )
    assert r.code == 0, r.err
    doc = r.json()
    cert_path = state / "device-cert.pem"
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert doc["thumbprint"] == thumbprint(cert)

    # The profile of SECURITY.md.
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.content_commitment
    assert ku.value.key_encipherment and ku.value.data_encipherment
    assert not ku.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku and ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert ROLE_LOGGER in eku and certificate_role(cert) == "logger"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:acme:logger:SN-0001"]
    assert san.get_values_for_type(x509.DNSName) == ["logger-1.local"]
    assert cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "SN-0001"
    org_ca = x509.load_pem_x509_certificate((cli.pki / "orgs/acme/ca-cert.pem").read_bytes())
    assert org_ca.not_valid_before_utc <= cert.not_valid_before_utc
    assert cert.not_valid_after_utc <= org_ca.not_valid_after_utc
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days <= 5 * 365 + 1

    # Key in the TPM, persistent, matching the certificate; the CSR was signed there.
    assert "0x81000002" in tpm2_tools(tcti, "tpm2_getcap", "handles-persistent")
    with open_device_key(state, tcti) as key:
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
        sig = key.private_key.sign(b"hello", padding.PKCS1v15(), hashes.SHA256())
        cert.public_key().verify(sig, b"hello", padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr,call-arg,arg-type]

    # State dir: identity, chain, trust, CRLs; modes.
    st = DeviceState.open(state)
    assert st.identity().key.handle == 0x81000002 and st.identity().organization == "acme"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert len(st.trust_anchors()) == 2 and len(st.crls()) == 2
    assert [c.subject for c in st.chain()] == [org_ca.subject, st.chain()[1].subject]

    # openssl (an outside checker) accepts the chain with CRL checks ...
    ok = openssl_verify(cert_path, state)
    assert ok.returncode == 0, ok.stderr
    # ... registry says manufactured ...
    rows = cli.provision("registry", "list", "--format", "json").json()
    assert [(r["serial"], r["state"], r["thumbprint"]) for r in rows] == [
        ("SN-0001", "manufactured", doc["thumbprint"])
    ]
    # ... and after revocation the CRL published to the receiver dir makes openssl refuse.
    crl_before = sorted(p.read_bytes() for p in (rx / "crl").glob("*.pem"))
    r = cli.provision("device", "revoke", "--serial", "SN-0001", "--reason", "key-compromise")
    assert r.code == 0, r.err
    assert sorted(p.read_bytes() for p in (rx / "crl").glob("*.pem")) != crl_before
    bad = openssl_verify(cert_path, rx)
    assert bad.returncode != 0 and "certificate revoked" in bad.stderr
    crl = x509.load_pem_x509_crl((cli.pki / "orgs/acme/crl.pem").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert crl.next_update_utc is not None and crl.next_update_utc > crl.last_update_utc
    events = [e["action"] for e in _events(cli.pki, doc["thumbprint"])]
    assert events == ["issue", "revoke"]
    rows = cli.provision("registry", "list", "--format", "json").json()
    assert rows[0]["state"] == "revoked"


def _events(pki: Path, tp: str) -> list[dict[str, str]]:
    from provisioning.registry import Registry

    with Registry(pki / "registry.sqlite") as reg:
        return reg.events(tp)


def test_pcr_bound_enrolment_refuses_after_extend(org_cli: Cli, tcti: str) -> None:
    state = org_cli.base / "state"
    r = org_cli.provision(
        "device",
        "enroll",
        "acme",
        "--serial",
        "SN-PCR",
        "--application-uri",
        "urn:acme:logger:SN-PCR",
        "--tpm",
        tcti,
        "--pcr",
        "sha256:16",
        "--state-dir",
        str(state),
    )
    assert r.code == 0, r.err
    info = org_cli.logger(
        "key", "info", "--state-dir", str(state), "--tpm", tcti, "--format", "json"
    ).json()
    assert info["pcr_policy"] == "sha256:16" and len(info["auth_policy"]) == 64
    assert "userwithauth" not in info["attributes"]
    with open_device_key(state, tcti) as key:
        key.private_key.sign(b"before", padding.PKCS1v15(), hashes.SHA256())
        tpm2_tools(tcti, "tpm2_pcrextend", "16:sha256=" + "ab" * 32)
        try:
            key.private_key.sign(b"after", padding.PKCS1v15(), hashes.SHA256())
        except PcrPolicyNotSatisfied as exc:
            assert "PCR policy not satisfied" in str(exc)
        else:
            raise AssertionError("the PCR-bound key signed after a PCR extend")


def test_offline_enrolment_and_renewal_keep_uri_change_key(org_cli: Cli, tcti: str) -> None:
    cli = org_cli
    state = cli.base / "dev"
    csr = cli.base / "dev.csr"
    r = cli.logger(
        "cert",
        "csr",
        "--state-dir",
        str(state),
        "--tpm",
        tcti,
        "--serial",
        "SN-7",
        "--application-uri",
        "urn:acme:logger:SN-7",
        "--org",
        "acme",
        "--out",
        str(csr),
    )
    assert r.code == 0, r.err
    cert1 = cli.base / "dev.pem"
    chain = cli.base / "chain.pem"
    crl = cli.base / "crl.pem"
    r = cli.provision(
        "device",
        "sign",
        "acme",
        str(csr),
        "--out",
        str(cert1),
        "--chain-out",
        str(chain),
        "--crl-out",
        str(crl),
    )
    assert r.code == 0, r.err
    r = cli.logger(
        "cert",
        "install",
        "--state-dir",
        str(state),
        "--tpm",
        tcti,
        str(cert1),
        "--chain",
        str(chain),
        "--crl",
        str(crl),
    )
    assert r.code == 0, r.err
    shown = cli.logger("cert", "show", "--state-dir", str(state), "--format", "json").json()
    assert shown["application_uri"] == "urn:acme:logger:SN-7"
    assert shown["issuer_chain"] == ["CN=acme Organization CA,O=acme", "CN=Test Root"]
    assert 1820 <= shown["days_left"] <= 1826
    first_tp = shown["thumbprint"]
    first_key = cli.logger(
        "key", "info", "--state-dir", str(state), "--tpm", tcti, "--format", "json"
    ).json()

    # Renewal at the station: new key in the other slot, same URI, old cert superseded.
    r = cli.provision(
        "device",
        "renew",
        "--serial",
        "SN-7",
        "--state-dir",
        str(state),
        "--tpm",
        tcti,
        "--format",
        "json",
    )
    assert r.code == 0, r.err
    renewed = r.json()
    new_cert = x509.load_pem_x509_certificate((state / "device-cert.pem").read_bytes())
    second_key = cli.logger(
        "key", "info", "--state-dir", str(state), "--tpm", tcti, "--format", "json"
    ).json()
    assert renewed["application_uri"] == "urn:acme:logger:SN-7"
    assert second_key["handle"] == "0x81000003" != first_key["handle"]
    assert second_key["public_key"] != first_key["public_key"]
    with open_device_key(state, tcti) as key:
        assert key.public_key().public_numbers() == new_cert.public_key().public_numbers()  # type: ignore[union-attr]
    identity = json.loads((state / "identity.json").read_text())
    assert identity["previous_key"]["handle"] == "0x81000002"
    rows = {
        r["thumbprint"]: r for r in cli.provision("registry", "list", "--format", "json").json()
    }
    assert rows[first_tp]["state"] == "superseded"
    assert rows[renewed["thumbprint"]]["state"] == "manufactured"
    # The receiver reports the new certificate in use: installed, the old one revoked.
    report = cli.base / "devices.json"
    report.write_text(
        json.dumps(
            [
                {
                    "application_uri": "urn:acme:logger:SN-7",
                    "thumbprint": renewed["thumbprint"].upper(),
                    "location": "Basel, boiler room",
                }
            ]
        )
    )
    r = cli.provision("registry", "import-installations", str(report))
    assert r.code == 0, r.err
    rows = {
        r["thumbprint"]: r for r in cli.provision("registry", "list", "--format", "json").json()
    }
    assert rows[first_tp]["state"] == "revoked"
    assert rows[renewed["thumbprint"]]["state"] == "installed"
    assert rows[renewed["thumbprint"]]["location"] == "Basel, boiler room"
    assert openssl_verify(state / "device-cert.pem", state).returncode == 0
    old = x509.load_pem_x509_certificate(cert1.read_bytes())
    org_crl = x509.load_pem_x509_crl((cli.pki / "orgs/acme/crl.pem").read_bytes())
    assert org_crl.get_revoked_certificate_by_serial_number(old.serial_number) is not None
    assert org_crl.get_revoked_certificate_by_serial_number(new_cert.serial_number) is None

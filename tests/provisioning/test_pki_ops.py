"""PKI operations: receivers, operators, batches, CRL refresh, organization revocation."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import stat
import subprocess
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from logger.tpm import open_device_key
from provisioning import profile
from provisioning.pki import Pki
from provisioning.profile import certificate_role, thumbprint, utcnow
from tests.provisioning.conftest import Cli
from tests.provisioning.test_enrolment import openssl_verify
from tests.support.pki import PASSPHRASE, TestPki


def test_server_issue_writes_a_receiver_dir_without_ca_keys(org_cli: Cli) -> None:
    out = org_cli.base / "rx"
    r = org_cli.provision(
        "server",
        "issue",
        "acme",
        "--dns",
        "rx.acme.example",
        "--dns",
        "127.0.0.1",
        "--application-uri",
        "urn:acme:receiver",
        "--out",
        str(out),
        "--format",
        "json",
    )
    assert r.code == 0, r.err
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {"server-cert.pem", "server-key.pem", "receiver.json", "chain.pem"} <= set(names)
    assert len([n for n in names if n.startswith("trust/")]) == 2
    assert len([n for n in names if n.startswith("crl/")]) == 2
    # Exactly one private key in the directory: the receiver's own, encrypted, 0600.
    keys = [p for p in out.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]
    assert keys == [out / "server-key.pem"]
    assert b"ENCRYPTED PRIVATE KEY" in keys[0].read_bytes()
    assert stat.S_IMODE(keys[0].stat().st_mode) == 0o600
    load_pem_private_key(keys[0].read_bytes(), b"receiver secret")
    cert = x509.load_pem_x509_certificate((out / "server-cert.pem").read_bytes())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku and certificate_role(cert) == "receiver"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["rx.acme.example"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert openssl_verify(out / "server-cert.pem", out).returncode == 0
    meta = json.loads((out / "receiver.json").read_text())
    assert meta["thumbprint"] == thumbprint(cert) and meta["org"] == "acme"
    # Never inside the PKI directory, never over an existing receiver.
    r = org_cli.provision(
        "server",
        "issue",
        "acme",
        "--dns",
        "x",
        "--application-uri",
        "urn:acme:r2",
        "--out",
        str(org_cli.pki / "rx"),
    )
    assert r.code == 4 and "inside the PKI directory" in r.err
    r = org_cli.provision(
        "server",
        "issue",
        "acme",
        "--dns",
        "x",
        "--application-uri",
        "urn:acme:r2",
        "--out",
        str(out),
    )
    assert r.code == 4 and "already holds a receiver certificate" in r.err


def test_client_issue_marks_the_operator_role(org_cli: Cli) -> None:
    out = org_cli.base / "alice"
    r = org_cli.provision("client", "issue", "acme", "--name", "alice", "--out", str(out))
    assert r.code == 0, r.err
    cert = x509.load_pem_x509_certificate((out / "client-cert.pem").read_bytes())
    assert certificate_role(cert) == "operator"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert ExtendedKeyUsageOID.SERVER_AUTH not in eku
    assert "OU=operator" in cert.subject.rfc4514_string()
    assert openssl_verify(out / "client-cert.pem", out).returncode == 0


def cert_of(state: Path) -> Any:
    return x509.load_pem_x509_certificate((state / "device-cert.pem").read_bytes())


def test_batch_issue_encrypted_pkcs12_and_manifest(org_cli: Cli) -> None:
    out = org_cli.base / "batch"
    r = org_cli.provision(
        "batch",
        "issue",
        "acme",
        "--count",
        "3",
        "--out",
        str(out),
        "--serial-prefix",
        "LEG-",
        "--format",
        "json",
    )
    assert r.code == 0, r.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert [d["serial"] for d in manifest["devices"]] == ["LEG-0001", "LEG-0002", "LEG-0003"]
    rows = {
        row["serial"]: row
        for row in org_cli.provision("registry", "list", "--format", "json").json()
    }
    for item in manifest["devices"]:
        p12 = out / item["file"]
        assert stat.S_IMODE(p12.stat().st_mode) == 0o600
        key, cert, chain = pkcs12.load_key_and_certificates(p12.read_bytes(), b"batch secret")
        assert cert is not None and key is not None and len(chain) == 2
        assert thumbprint(cert) == item["thumbprint"]
        assert rows[item["serial"]]["state"] == "manufactured"
        assert rows[item["serial"]]["thumbprint"] == item["thumbprint"]
    # openssl opens the PKCS#12 with the passphrase, and not without it.
    ok = subprocess.run(
        [
            "openssl",
            "pkcs12",
            "-in",
            str(out / "LEG-0001.p12"),
            "-passin",
            "pass:batch secret",
            "-nokeys",
            "-clcerts",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0 and "BEGIN CERTIFICATE" in ok.stdout
    bad = subprocess.run(
        ["openssl", "pkcs12", "-in", str(out / "LEG-0001.p12"), "-passin", "pass:wrong", "-nokeys"],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0
    assert (
        next(iter(csv.DictReader(io.StringIO((out / "manifest.csv").read_text()))))["serial"]
        == "LEG-0001"
    )
    # On a logger without a TPM: the PKCS#12 becomes the device's identity.
    state = org_cli.base / "legacy-state"
    r = org_cli.logger(
        "cert", "install", "--state-dir", str(state), "--p12", str(out / "LEG-0002.p12")
    )
    assert r.code == 0, r.err
    shown = org_cli.logger("cert", "show", "--state-dir", str(state), "--format", "json").json()
    assert shown["application_uri"] == "urn:acme:logger:LEG-0002"
    assert shown["thumbprint"] == manifest["devices"][1]["thumbprint"]
    secret = state / "device-key.secret"
    secret.write_bytes(b"device secret")
    secret.chmod(0o600)
    with open_device_key(state) as device_key:
        assert device_key.kind == "file"
        assert profile.same_public_key(device_key.public_key(), cert_of(state).public_key())
    r = org_cli.logger(
        "cert", "install", "--state-dir", str(state), "--p12", str(out / "LEG-0003.p12")
    )
    assert r.code == 4 and "already holds a device identity" in r.err
    # A second batch never reuses a serial and never writes into a non-empty directory.
    r = org_cli.provision("batch", "issue", "acme", "--count", "1", "--out", str(out))
    assert r.code == 4 and "not empty" in r.err
    r = org_cli.provision(
        "batch",
        "issue",
        "acme",
        "--count",
        "1",
        "--out",
        str(org_cli.base / "b2"),
        "--serial-prefix",
        "LEG-",
        "--format",
        "json",
    )
    assert r.code == 0 and r.json()[0]["serial"] == "LEG-0004"


def test_crl_refresh_after_half_life_and_publish(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path)
    rx = pki.receiver()
    before = pki.crl("acme")
    number = before.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert pki.pki.refresh_crls() == []  # fresh: nothing to do
    later = utcnow() + dt.timedelta(days=16)  # past half of the 30-day lifetime
    assert pki.pki.refresh_crls(now=later) == ["root", "acme"]
    after = pki.crl("acme")
    assert after.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    assert after.next_update_utc is not None and after.next_update_utc > later
    assert after.is_signature_valid(pki.ca_cert("acme").public_key())  # type: ignore[arg-type]
    published = [x509.load_pem_x509_crl(p.read_bytes()) for p in (rx.dir / "crl").glob("*.pem")]
    assert any(c.next_update_utc == after.next_update_utc for c in published)
    pki.close()


def test_org_revoke_puts_the_org_ca_on_the_root_crl(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path, orgs=("acme", "beta"))
    rx = pki.receiver("beta")
    device = pki.device("beta")
    assert openssl_verify(device.state_dir / "device-cert.pem", rx.dir).returncode == 0
    pki.revoke_org("beta")
    root_crl = pki.crl("root")
    assert (
        root_crl.get_revoked_certificate_by_serial_number(pki.ca_cert("beta").serial_number)
        is not None
    )
    bad = openssl_verify(device.state_dir / "device-cert.pem", rx.dir)
    assert bad.returncode != 0 and "certificate revoked" in bad.stderr
    pki.close()


def test_registry_list_formats_and_org_filter(org_cli: Cli) -> None:
    pki = TestPki(org_cli.base, Pki(org_cli.pki, PASSPHRASE))
    pki.org("beta")
    a = pki.device("acme")
    b = pki.device("beta")
    pki.close()
    rows = org_cli.provision("registry", "list", "--org", "beta", "--format", "json").json()
    assert [r["serial"] for r in rows] == [b.serial]
    assert set(rows[0]) >= {"serial", "org", "state", "thumbprint", "not_after", "location"}
    out = org_cli.provision("registry", "list", "--format", "csv").out
    assert {r["serial"] for r in csv.DictReader(io.StringIO(out))} == {a.serial, b.serial}
    text = org_cli.provision("registry", "list").out
    assert text.splitlines()[0].split()[:3] == ["SERIAL", "APPLICATION_URI", "ORG"]
    r = org_cli.provision("registry", "list", "--org", "nope")
    assert r.code == 4

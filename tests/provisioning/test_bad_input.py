"""Bad input: each a clear error, the documented exit code, and no partial state left."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from provisioning import profile
from provisioning.registry import Registry
from tests.provisioning.conftest import Cli
from tests.support.pki import TestPki
from tests.support.swtpm import tpm2_tools


def registry_counts(pki: Path) -> tuple[int, int, int]:
    with Registry(pki / "registry.sqlite") as reg:
        db = reg._db
        devices, certs, events = (
            int(db.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in ("devices", "certificates", "events")
        )
        return devices, certs, events


def enrol(
    cli: Cli, *extra: str, serial: str = "SN-1", org: str = "acme", state: str = "state"
) -> tuple[int, str]:
    r = cli.provision(
        "device",
        "enroll",
        org,
        "--serial",
        serial,
        "--application-uri",
        f"urn:acme:logger:{serial}",
        "--state-dir",
        str(cli.base / state),
        *extra,
    )
    return r.code, r.err


def test_wrong_passphrase_touches_nothing(
    org_cli: Cli, tcti: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = registry_counts(org_cli.pki)
    monkeypatch.setenv("MBUS_PKI_PASSPHRASE", "not the passphrase")
    code, err = enrol(org_cli, "--tpm", tcti)
    assert code == 4
    assert "acme CA key" in err and "wrong passphrase" in err
    assert not (org_cli.base / "state").exists()
    assert registry_counts(org_cli.pki) == before
    assert "0x81000002" not in tpm2_tools(tcti, "tpm2_getcap", "handles-persistent")


def test_passphrase_file_must_be_private(org_cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MBUS_PKI_PASSPHRASE")
    secret = org_cli.base / "pass"
    secret.write_text("test pki passphrase\n")
    secret.chmod(0o644)
    r = org_cli.provision(
        "--passphrase-file", str(secret), "org", "create", "beta", "--contact", "b@beta.example"
    )
    assert r.code == 4 and "readable by group or others" in r.err
    secret.chmod(0o600)
    r = org_cli.provision(
        "--passphrase-file", str(secret), "org", "create", "beta", "--contact", "b@beta.example"
    )
    assert r.code == 0, r.err
    r = org_cli.provision("org", "create", "gamma", "--contact", "g@gamma.example")
    assert r.code == 4 and "MBUS_PKI_PASSPHRASE" in r.err


def test_unknown_org_and_duplicate_serial(org_cli: Cli) -> None:
    code, err = enrol(org_cli, "--file-key", org="nope")
    assert code == 4 and "unknown organization 'nope'" in err
    assert not (org_cli.base / "state").exists()
    assert enrol(org_cli, "--file-key")[0] == 0
    before = registry_counts(org_cli.pki)
    code, err = enrol(org_cli, "--file-key", state="other")
    assert code == 4 and "serial SN-1 is already registered" in err
    assert not (org_cli.base / "other").exists()
    # Same URI under another serial: one to one.
    r = org_cli.provision(
        "device",
        "enroll",
        "acme",
        "--serial",
        "SN-2",
        "--application-uri",
        "urn:acme:logger:SN-1",
        "--state-dir",
        str(org_cli.base / "o2"),
        "--file-key",
    )
    assert r.code == 4 and "already bound to serial SN-1" in r.err
    assert registry_counts(org_cli.pki) == before
    # An enrolled state dir is never overwritten.
    code, err = enrol(org_cli, "--file-key", serial="SN-3")
    assert code == 4 and "already holds a device identity" in err


def test_enrolling_into_a_state_dir_others_can_open_is_refused(org_cli: Cli) -> None:
    # A state dir prepared by hand with the default 0755 would hand the device's key file and
    # identity to every local user: refused before anything is issued or written.
    state = org_cli.base / "state"
    state.mkdir()
    state.chmod(0o755)
    before = registry_counts(org_cli.pki)
    code, err = enrol(org_cli, "--file-key")
    assert code == 2
    assert f"state directory {state} is accessible by group or others (mode 0755)" in err
    assert "chmod 700" in err
    assert registry_counts(org_cli.pki) == before
    assert list(state.iterdir()) == [] and state.stat().st_mode & 0o777 == 0o755
    state.chmod(0o700)
    assert enrol(org_cli, "--file-key")[0] == 0


def test_a_missing_state_dir_is_created_0700(org_cli: Cli) -> None:
    state = org_cli.base / "new" / "state"
    assert enrol(org_cli, "--file-key", state="new/state")[0] == 0
    assert state.stat().st_mode & 0o777 == 0o700


def test_expired_ca_refuses_to_issue(cli: Cli) -> None:
    pki = TestPki.create(cli.base, orgs=())  # same directory as the CLI's --pki
    pki.expired_org("old")
    pki.close()
    before = registry_counts(cli.pki)
    code, err = enrol(cli, "--file-key", org="old")
    assert code == 4 and "the old CA expired on" in err
    assert not (cli.base / "state").exists()
    assert registry_counts(cli.pki) == before


def test_no_tpm_reachable_leaves_nothing(org_cli: Cli) -> None:
    before = registry_counts(org_cli.pki)
    code, err = enrol(org_cli, "--tpm", "swtpm:host=127.0.0.1,port=1")
    assert code == 3
    assert "no TPM reachable at swtpm:host=127.0.0.1,port=1" in err
    assert not (org_cli.base / "state").exists()
    assert registry_counts(org_cli.pki) == before


def test_failure_after_key_creation_evicts_the_key(
    org_cli: Cli, tcti: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the TPM key exists (here the signing step) undoes every step."""
    from provisioning.pki import Pki

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Pki, "sign_device_csr", broken)
    before = registry_counts(org_cli.pki)
    with pytest.raises(OSError, match="No space left"):
        enrol(org_cli, "--tpm", tcti)
    assert "0x81000002" not in tpm2_tools(tcti, "tpm2_getcap", "handles-persistent")
    assert not (org_cli.base / "state").exists()
    assert registry_counts(org_cli.pki) == before
    code, err = enrol(org_cli, "--tpm", tcti, "--dns", "bad name")
    assert code == 2 and "invalid --dns name 'bad name'" in err


def test_malformed_and_mismatched_csr(org_cli: Cli, test_pki: TestPki) -> None:
    cli = org_cli
    bad = cli.base / "bad.csr"
    bad.write_text("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n")
    r = cli.provision("device", "sign", "acme", str(bad), "--out", str(cli.base / "x.pem"))
    assert r.code == 2 and "is not a certificate signing request" in r.err
    assert not (cli.base / "x.pem").exists()

    assert (
        cli.provision(
            "device",
            "register",
            "acme",
            "--serial",
            "SN-5",
            "--application-uri",
            "urn:acme:logger:SN-5",
        ).code
        == 0
    )
    key = profile.new_rsa_key()

    def csr(serial: str, uri: str, org: str = "acme", cn: str | None = None) -> Path:
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
                x509.NameAttribute(NameOID.COMMON_NAME, cn or serial),
                x509.NameAttribute(NameOID.SERIAL_NUMBER, serial),
            ]
        )
        req = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(subject)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        path = cli.base / f"{serial}-{abs(hash((uri, org, cn)))}.csr"
        path.write_bytes(req.public_bytes(serialization.Encoding.PEM))
        return path

    before = registry_counts(cli.pki)
    cases = [
        (csr("SN-5", "urn:acme:logger:OTHER"), "does not match serial SN-5's registration"),
        (csr("SN-5", "urn:acme:logger:SN-5", org="evil"), "organization evil is not acme"),
        (csr("SN-5", "urn:acme:logger:SN-5", cn="someone"), "must carry the device serial"),
    ]
    for path, message in cases:
        r = cli.provision("device", "sign", "acme", str(path), "--out", str(cli.base / "o.pem"))
        assert r.code in (2, 4) and message in r.err, r.err
        assert not (cli.base / "o.pem").exists()
    assert registry_counts(cli.pki) == before
    r = cli.provision(
        "device",
        "sign",
        "acme",
        str(csr("SN-5", "urn:acme:logger:SN-5")),
        "--out",
        str(cli.base / "o.pem"),
    )
    assert r.code == 0, r.err


def test_bad_names_are_usage_errors(org_cli: Cli) -> None:
    r = org_cli.provision("org", "create", "Bad Org", "--contact", "x@y.z")
    assert r.code == 2 and "invalid organization name" in r.err
    r = org_cli.provision("org", "create", "beta", "--contact", "not-an-email")
    assert r.code == 2 and "invalid contact address" in r.err
    code, err = enrol(org_cli, "--file-key", serial="SN 1")
    assert code == 2 and "invalid serial number" in err
    r = org_cli.provision(
        "device",
        "enroll",
        "acme",
        "--serial",
        "SN-9",
        "--application-uri",
        "urn:acme:logger:SN-9",
        "--state-dir",
        str(org_cli.base / "s9"),
        "--tpm",
        "swtpm:host=127.0.0.1,port=1",
        "--pcr",
        "sha256:99",
    )
    assert r.code == 2 and "PCR indexes are 0-23" in r.err
    r = org_cli.provision("root", "init", "--name", "again")
    assert r.code == 4 and "already has a root CA" in r.err


def test_revoked_org_cannot_issue(org_cli: Cli) -> None:
    assert org_cli.provision("org", "revoke", "acme").code == 0
    code, err = enrol(org_cli, "--file-key")
    assert code == 4 and "has been revoked" in err


def test_pki_dir_open_to_others_is_refused(org_cli: Cli) -> None:
    org_cli.pki.chmod(0o755)
    r = org_cli.provision("registry", "list")
    assert r.code == 4 and "chmod 700" in r.err
    org_cli.pki.chmod(0o700)
    assert org_cli.provision("registry", "list").code == 0

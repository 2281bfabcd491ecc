"""A throw-away PKI for tests, built with the project's own provisioning code.

    from tests.support.pki import TestPki
    pki = TestPki.create(tmp_path)                     # root CA (+ org "acme") in tmp_path/pki
    rx = pki.receiver("acme", dns=("127.0.0.1", "localhost"))   # a receiver directory
    dev = pki.device("acme")                           # file-key logger state dir
    dev = pki.device("acme", tcti=tcti)                # TPM-key logger (swtpm fixture)
    op = pki.operator("acme", "alice")                 # operator client (read-only role)
    pki.revoke(dev.cert)                               # org CRL re-signed, published to rx.dir

Attack material (the secure-channel tests need each): :meth:`TestPki.leaf` builds a
certificate with the product's exact extensions but any validity, key size or URI;
:meth:`TestPki.sha1_leaf` re-signs one with SHA-1 through openssl (``cryptography`` refuses to
sign with SHA-1); :meth:`TestPki.create` with another directory gives a second, unrelated root
("other CA"); :meth:`TestPki.expired_org` an organization whose CA has expired;
:meth:`TestPki.stale_crl` and :meth:`TestPki.forged_crl` CRLs past nextUpdate or signed by
the wrong key.

CA keys are 2048 bits here (3072 in the product) to keep fixtures fast. The root is backdated
three years so that expired and not-yet-valid certificates can be issued inside its validity.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from logger.tpm.filekey import write_key_file
from logger.tpm.state import DeviceState, atomic_write, pem_certs
from provisioning import profile
from provisioning.enroll import KeyOptions
from provisioning.pki import Pki
from provisioning.station import enroll_device

PASSPHRASE = b"test pki passphrase"
RECEIVER_PASSPHRASE = b"test receiver passphrase"
CLIENT_PASSPHRASE = b"test client passphrase"
DEVICE_KEY_PASSPHRASE = b"test device key passphrase"


@dataclass
class ReceiverDir:
    """What ``mbus-provision server issue`` wrote (see provisioning.pki for the layout)."""

    dir: Path
    org: str
    application_uri: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    passphrase: bytes = RECEIVER_PASSPHRASE

    @property
    def cert_path(self) -> Path:
        return self.dir / "server-cert.pem"

    @property
    def key_path(self) -> Path:
        return self.dir / "server-key.pem"


@dataclass
class DeviceDir:
    """An enrolled logger: its state dir (logger.tpm.state layout) and identity."""

    state_dir: Path
    org: str
    serial: str
    application_uri: str
    cert: x509.Certificate
    tcti: str | None  # None: file key, opened with device-key.secret in the state dir


@dataclass
class ClientDir:
    dir: Path
    org: str
    name: str
    application_uri: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    passphrase: bytes = CLIENT_PASSPHRASE


class TestPki:
    """A PKI directory with a root CA; organizations, receivers, devices, operators on demand."""

    __test__ = False  # not a pytest test class

    def __init__(self, base: Path, pki: Pki) -> None:
        self.base = base
        self.pki = pki
        self._count = 0

    @classmethod
    def create(
        cls, base: Path, orgs: tuple[str, ...] = ("acme",), root_name: str = "Test Root CA"
    ) -> TestPki:
        base.mkdir(parents=True, exist_ok=True)
        pki = Pki(base / "pki", PASSPHRASE)
        now = profile.utcnow()
        pki.init_root(root_name, years=20, key_bits=2048, now=now - dt.timedelta(days=3 * 365))
        pki.resign_crl("root", now)  # the backdated CRL would be stale already
        made = cls(base, pki)
        for org in orgs:
            made.org(org)
        return made

    def close(self) -> None:
        self.pki.close()

    @property
    def dir(self) -> Path:
        return self.pki.root

    def _next(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count:04d}"

    # -- CAs -------------------------------------------------------------------------------
    def org(self, name: str, contact: str | None = None) -> x509.Certificate:
        if self.pki.registry.org(name) is None:
            self.pki.create_org(name, contact or f"pki@{name}.example", years=10, key_bits=2048)
        return self.pki.ca(name).cert

    def expired_org(self, name: str) -> x509.Certificate:
        """An organization whose CA expired yesterday (issued two years ago for one year)."""
        start = profile.utcnow() - dt.timedelta(days=366 + 1)
        self.pki.create_org(name, f"pki@{name}.example", years=1, key_bits=2048, now=start)
        return self.pki.ca(name).cert

    def root_cert(self) -> x509.Certificate:
        return self.pki.ca("root").cert

    def ca_cert(self, org: str) -> x509.Certificate:
        return self.pki.ca(org).cert

    def ca_key(self, org: str) -> rsa.RSAPrivateKey:
        return self.pki.ca_key(self.pki.ca(org))

    def crl(self, name: str) -> x509.CertificateRevocationList:
        return self.pki.crl(name)

    # -- end entities through the product's commands' code -----------------------------
    def receiver(
        self,
        org: str = "acme",
        dns: tuple[str, ...] = ("127.0.0.1", "localhost"),
        application_uri: str | None = None,
        out: Path | None = None,
    ) -> ReceiverDir:
        name = self._next("receiver-")
        out = out or self.base / name
        uri = application_uri or f"urn:{org}:receiver:{name}"
        cert = self.pki.issue_receiver(org, dns, uri, out, RECEIVER_PASSPHRASE)
        key = serialization.load_pem_private_key(
            (out / "server-key.pem").read_bytes(), RECEIVER_PASSPHRASE
        )
        assert isinstance(key, rsa.RSAPrivateKey)
        return ReceiverDir(out, org, uri, cert, key)

    def device(
        self,
        org: str = "acme",
        serial: str | None = None,
        application_uri: str | None = None,
        tcti: str | None = None,
        dns: tuple[str, ...] = (),
        pcrs: str | None = None,
        state_dir: Path | None = None,
        days: int = 365,
    ) -> DeviceDir:
        """Enrol a logger with ``device enroll``'s code: TPM key if ``tcti``, else file key."""
        serial = serial or self._next("SN-")
        uri = application_uri or f"urn:{org}:logger:{serial}"
        state_dir = state_dir or self.base / f"state-{serial}"
        options = KeyOptions(
            tcti=tcti,
            use_file=tcti is None,
            pcrs=pcrs,
            file_passphrase=DEVICE_KEY_PASSPHRASE if tcti is None else None,
        )
        installed = enroll_device(self.pki, org, serial, uri, state_dir, options, dns, days)
        if tcti is None:
            # The daemon's secret, as the factory would provision it (0600 file).
            from logger.tpm.filekey import write_private_bytes

            write_private_bytes(state_dir / "device-key.secret", DEVICE_KEY_PASSPHRASE)
        return DeviceDir(state_dir, org, serial, uri, installed.certificate, tcti)

    def operator(self, org: str = "acme", name: str | None = None) -> ClientDir:
        name = name or self._next("operator-")
        out = self.base / f"client-{name}"
        cert = self.pki.issue_operator(org, name, out, CLIENT_PASSPHRASE)
        key = serialization.load_pem_private_key(
            (out / "client-key.pem").read_bytes(), CLIENT_PASSPHRASE
        )
        assert isinstance(key, rsa.RSAPrivateKey)
        return ClientDir(out, org, name, profile.application_uri(cert) or "", cert, key)

    def revoke(self, cert: x509.Certificate, reason: str | None = None) -> None:
        """Revoke through the product: registry, the issuer's CRL, every publish target."""
        self.pki.revoke(profile.thumbprint(cert), reason)

    def revoke_org(self, org: str) -> None:
        self.pki.revoke_org(org)

    # -- attack material ---------------------------------------------------------------
    def leaf(
        self,
        org: str = "acme",
        role: str = "logger",
        application_uri: str | None = None,
        dns: tuple[str, ...] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        key_bits: int = 2048,
        serial: str | None = None,
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """A certificate with the product's extensions but *any* validity, key size or URI.

        Not recorded in the registry (an attacker's certificate would not be either). For an
        expired one: ``not_after=now - 1 day``; not yet valid: ``not_before=now + 1 day``;
        weak: ``key_bits=1024``; wrong URI: ``application_uri="urn:evil"``.
        """
        now = profile.utcnow()
        serial = serial or self._next("X-")
        uri = application_uri or f"urn:{org}:{role}:{serial}"
        entity = profile.EndEntity(
            role,
            dns[0] if role == "receiver" and dns else serial,
            uri,
            org,
            tuple(dns),
            serial if role == "logger" else None,
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=key_bits)
        cert = profile.build_end_entity(
            entity,
            key.public_key(),
            self.ca_cert(org),
            self.ca_key(org),
            not_before or now - dt.timedelta(minutes=5),
            not_after or now + dt.timedelta(days=30),
        )
        return cert, key

    def sha1_leaf(
        self,
        org: str = "acme",
        role: str = "receiver",
        application_uri: str | None = None,
        dns: tuple[str, ...] = ("127.0.0.1", "localhost"),
    ) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        """The profile's certificate signed with SHA-1 by the org CA (openssl does the
        signing; ``cryptography`` no longer signs with SHA-1)."""
        cert, key = self.leaf(org, role, application_uri, dns)
        ca_key = self.ca_key(org)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            (t / "ca.key").write_bytes(
                ca_key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            (t / "ca.pem").write_bytes(pem_certs([self.ca_cert(org)]))
            (t / "leaf.key").write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            san = ",".join(
                [f"URI:{profile.application_uri(cert)}"]
                + [f"IP:{d}" if d.replace(".", "").isdigit() else f"DNS:{d}" for d in dns]
            )
            eku = "serverAuth,clientAuth" if role != "operator" else "clientAuth"
            (t / "ext.cnf").write_text(
                "basicConstraints=critical,CA:FALSE\n"
                "keyUsage=critical,digitalSignature,nonRepudiation,keyEncipherment,"
                "dataEncipherment\n"
                f"extendedKeyUsage={eku}\n"
                f"subjectAltName={san}\n"
                "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
            )
            subject = "/" + "/".join(a.rfc4514_string() for a in cert.subject.rdns)
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-new",
                    "-key",
                    str(t / "leaf.key"),
                    "-subj",
                    subject,
                    "-out",
                    str(t / "leaf.csr"),
                ],
                check=True,
                capture_output=True,
            )
            subprocess.run(
                [
                    "openssl",
                    "x509",
                    "-req",
                    "-in",
                    str(t / "leaf.csr"),
                    "-CA",
                    str(t / "ca.pem"),
                    "-CAkey",
                    str(t / "ca.key"),
                    "-CAcreateserial",
                    "-sha1",
                    "-days",
                    "30",
                    "-extfile",
                    str(t / "ext.cnf"),
                    "-out",
                    str(t / "leaf.pem"),
                ],
                check=True,
                capture_output=True,
            )
            sha1 = x509.load_pem_x509_certificate((t / "leaf.pem").read_bytes())
        return sha1, key

    def stale_crl(self, name: str = "acme") -> x509.CertificateRevocationList:
        """The CA's current revocations in a CRL whose nextUpdate passed yesterday (properly
        signed by the CA: only its age is wrong). Not written anywhere."""
        ca = self.pki.ca(name)
        start = profile.utcnow() - dt.timedelta(days=31)
        return profile.make_crl(
            ca.cert,
            self.pki.ca_key(ca),
            self.pki._revoked_entries(ca),
            number=1,
            days=30,
            now=start,
        )

    def forged_crl(self, name: str = "acme") -> x509.CertificateRevocationList:
        """A fresh, empty CRL naming the CA as issuer but signed by another key (the attack:
        un-revoking a device with a CRL the CA never signed)."""
        ca = self.pki.ca(name)
        impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return profile.make_crl(ca.cert, impostor, [], number=10**6, days=30)

    def write_receiver_dir(
        self, out: Path, cert: x509.Certificate, key: rsa.RSAPrivateKey, org: str = "acme"
    ) -> ReceiverDir:
        """A receiver directory around any certificate (e.g. a rogue server's)."""
        from logger.tpm.state import ensure_private_dir

        ensure_private_dir(out)
        write_key_file(out / "server-key.pem", key, RECEIVER_PASSPHRASE)
        atomic_write(out / "server-cert.pem", pem_certs([cert]))
        atomic_write(out / "chain.pem", pem_certs(self.pki.chain(org)))
        self.pki.write_trust(out, org)
        return ReceiverDir(out, org, profile.application_uri(cert) or "", cert, key)

    def device_state(self, device: DeviceDir) -> DeviceState:
        return DeviceState.open(device.state_dir)

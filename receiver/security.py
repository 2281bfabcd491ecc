"""The receiver's security: its directory, the certificate gate, roles, CRL reloading.

The receiver directory (written by ``mbus-provision server issue``, layout in
:mod:`provisioning.pki`) holds the receiver's certificate and encrypted key, its chain, the org
and root CA certificates (``trust/``) and their CRLs (``crl/``) - and never a CA private key.
:func:`scan_for_private_keys` reads *every* file and refuses to start when any private key
other than the receiver's own ``server-key.pem`` is there (or when that one is a CA's key):
a CA key on an internet-facing host would let whoever breaks in mint loggers.

The gate (:class:`Gate`) decides on the certificate of the secure channel - the certificate
the client proved possession of in OpenSecureChannel - never on what it claims later:

* chain to *this* organization's CA (issued directly by it; the root above), valid in time,
  RSA 2048-4096, no SHA-1, keyUsage/EKU of a client, not revoked (fresh, verified CRLs of the
  org CA and the root);
* a role from the certificate (provisioning puts it in the EKU): ``logger`` (may push) or
  ``operator`` (browse, read, and only :data:`logger.contract.OPERATOR_METHODS`); any other
  (a receiver's certificate, no role) is refused.

Every refusal is classified for the audit log (``rejected``, ``revoked``, ``expired``,
``not_yet_valid``, ``wrong_organization``, ``wrong_role``) - see :func:`audit_event`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from logger.tpm.errors import KeyFileError
from logger.tpm.filekey import load_key_file, read_secret_file
from logger.uplink.validation import (
    TrustStore,
    ValidationError,
    application_uri,
    check_crl,
    describe,
    split_der_chain,
    thumbprint,
    utcnow,
    validate,
)
from provisioning.profile import certificate_role

_LOGGER = logging.getLogger(__name__)

PASSPHRASE_ENV = "MBUS_RECEIVER_PASSPHRASE"
CREDENTIAL_NAME = "mbus-receiver-key"
OWN_KEY = "server-key.pem"
OWN_CERT = "server-cert.pem"
_MAX_SCAN_BYTES = 16 * 1024 * 1024


class ReceiverSetupError(Exception):
    """The receiver directory or its secret is not usable; the message says what to fix."""


# -- the directory ---------------------------------------------------------------------------


def _looks_like_private_key(data: bytes) -> bool:
    if b"PRIVATE KEY-----" in data:
        return True
    if data[:1] != b"\x30":
        return False
    try:
        serialization.load_der_private_key(data, password=None)
    except TypeError:
        return True  # encrypted DER PKCS#8: a key that wants a password
    except (ValueError, Exception):
        return False
    return True


def scan_for_private_keys(directory: Path) -> list[Path]:
    """Every file under ``directory`` that holds a private key (PEM, DER, PKCS#12)."""
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() in (".p12", ".pfx"):
                found.append(path)
                continue
            try:
                with path.open("rb") as fh:
                    data = fh.read(_MAX_SCAN_BYTES)
            except OSError as exc:
                raise ReceiverSetupError(f"cannot read {path} to check it: {exc}") from exc
            if _looks_like_private_key(data):
                found.append(path)
    return found


def read_passphrase(passphrase_file: Path | None) -> bytes:
    """``--passphrase-file`` (0600), else $MBUS_RECEIVER_PASSPHRASE, else the systemd credential."""
    if passphrase_file is not None:
        try:
            return read_secret_file(passphrase_file, "receiver passphrase file")
        except KeyFileError as exc:
            raise ReceiverSetupError(str(exc)) from exc
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidate = Path(creds) / CREDENTIAL_NAME
        if candidate.exists():
            data = candidate.read_bytes().rstrip(b"\r\n")
            if data:
                return data
    raise ReceiverSetupError(
        f"the receiver's key is encrypted: set {PASSPHRASE_ENV}, give --passphrase-file, or "
        f"provide the systemd credential '{CREDENTIAL_NAME}'"
    )


@dataclass
class ReceiverDir:
    """A loaded receiver directory."""

    path: Path
    org: str
    application_uri: str
    dns: tuple[str, ...]
    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    chain: list[x509.Certificate]
    trust: TrustStore
    org_ca: x509.Certificate

    @classmethod
    def load(cls, path: Path, passphrase: bytes) -> ReceiverDir:
        if not path.is_dir():
            raise ReceiverSetupError(f"receiver directory {path} does not exist")
        keys = scan_for_private_keys(path)
        own = path / OWN_KEY
        others = [k for k in keys if k.resolve() != own.resolve()]
        if others:
            raise ReceiverSetupError(
                "refusing to start: the receiver directory holds private key material that is "
                f"not the receiver's own key: {', '.join(str(p) for p in others)} - a CA key "
                "must never be on the receiver (move it to the PKI host)"
            )
        try:
            cert = x509.load_pem_x509_certificate((path / OWN_CERT).read_bytes())
        except (OSError, ValueError) as exc:
            raise ReceiverSetupError(f"receiver certificate {path / OWN_CERT}: {exc}") from exc
        try:
            key = load_key_file(own, passphrase, "receiver key")
        except KeyFileError as exc:
            raise ReceiverSetupError(str(exc)) from exc
        own_pub = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

        def _pub(c: x509.Certificate) -> bytes:
            return c.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )

        if own_pub != _pub(cert):
            raise ReceiverSetupError(f"{own} does not belong to {path / OWN_CERT}")
        try:
            trust = TrustStore.load(path)
        except ValidationError as exc:
            raise ReceiverSetupError(f"receiver trust: {exc}") from exc
        if any(own_pub == _pub(a) for a in trust.anchors):
            raise ReceiverSetupError(
                f"refusing to start: {own} is a CA's private key, not a receiver key"
            )
        org_ca = next((a for a in trust.anchors if a.subject == cert.issuer), None)
        if org_ca is None:
            raise ReceiverSetupError(
                f"the CA that issued {path / OWN_CERT} ({cert.issuer.rfc4514_string()}) is "
                f"not in {path / 'trust'}"
            )
        chain: list[x509.Certificate] = []
        if (path / "chain.pem").exists():
            chain = x509.load_pem_x509_certificates((path / "chain.pem").read_bytes())
        meta: dict[str, object] = {}
        if (path / "receiver.json").exists():
            try:
                meta = json.loads((path / "receiver.json").read_text())
            except ValueError as exc:
                raise ReceiverSetupError(f"{path / 'receiver.json'}: {exc}") from exc
        org = str(meta.get("org") or _attr(org_ca, NameOID.ORGANIZATION_NAME) or "")
        uri = str(meta.get("application_uri") or application_uri(cert) or "")
        dns_list = meta.get("dns")
        dns = tuple(str(d) for d in dns_list) if isinstance(dns_list, list) else ()
        return cls(path, org, uri, dns, cert, key, chain, trust, org_ca)


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


# -- the gate -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who a secure channel belongs to: everything its session does is attributed here."""

    role: str  # "logger" | "operator"
    application_uri: str
    thumbprint: str
    subject: str
    not_after: dt.datetime
    certificate: bytes

    @property
    def serial(self) -> str | None:
        cert = x509.load_der_x509_certificate(self.certificate)
        return _attr(cert, NameOID.SERIAL_NUMBER)


class Refused(Exception):
    """The gate refused a certificate; ``event`` is the audit event name."""

    def __init__(self, event: str, message: str, thumbprint_: str = "", uri: str = "") -> None:
        super().__init__(message)
        self.event = event
        self.thumbprint = thumbprint_
        self.uri = uri


_EVENTS = {
    "revoked": "cert.revoked",
    "expired": "cert.expired",
    "not_yet_valid": "cert.not_yet_valid",
}


def audit_event(code: str) -> str:
    return _EVENTS.get(code, "cert.rejected")


class Gate:
    """The certificate check for secure channels, with reloadable trust (see module doc)."""

    def __init__(self, rdir: ReceiverDir) -> None:
        self.rdir = rdir
        self.org_ca = rdir.org_ca
        self.store = rdir.trust
        self._signature = self._files_signature()

    def check(self, der: bytes | None, now: dt.datetime | None = None) -> Principal:
        if not der:
            raise Refused(
                "channel.insecure",
                "no client certificate: the channel is not secured (SecurityMode None)",
            )
        try:
            # OPC UA senders may append their chain to the certificate.
            cert, *presented = split_der_chain(der)
        except ValidationError as exc:
            raise Refused("cert.rejected", f"malformed client certificate: {exc}") from exc
        tp = thumbprint(cert)
        uri = application_uri(cert) or ""
        org_of_cert = _attr(cert, NameOID.ORGANIZATION_NAME)
        try:
            path = validate(
                cert, self.store, purpose="client", now=now or utcnow(), presented=presented
            )
        except ValidationError as exc:
            event = audit_event(exc.code)
            if exc.code == "untrusted" and cert.issuer != self.org_ca.subject:
                event = "cert.wrong_organization"
                message = (
                    f"client certificate {describe(cert)} (organization {org_of_cert!r}) is "
                    f"not issued by this receiver's organization CA "
                    f"{self.org_ca.subject.rfc4514_string()}"
                )
                raise Refused(event, message, tp, uri) from exc
            raise Refused(event, str(exc), tp, uri) from exc
        if path.issuer != self.org_ca:
            raise Refused(
                "cert.wrong_organization",
                f"client certificate {describe(cert)} is issued by "
                f"{path.issuer.subject.rfc4514_string()}, not this organization's CA",
                tp,
                uri,
            )
        role = certificate_role(cert)
        if role not in ("logger", "operator"):
            raise Refused(
                "cert.wrong_role",
                f"client certificate {describe(cert)} has role {role or 'none'}: only loggers "
                "and operators may open sessions",
                tp,
                uri,
            )
        return Principal(
            role,
            path.application_uri,
            tp,
            cert.subject.rfc4514_string(),
            cert.not_valid_after_utc,
            der,
        )

    # -- reloading ----------------------------------------------------------------------
    def _files_signature(self) -> tuple[tuple[str, int, int], ...]:
        items = []
        for sub in ("trust", "crl"):
            for path in sorted((self.rdir.path / sub).glob("*.pem")):
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                items.append((str(path), st.st_mtime_ns, st.st_size))
        return tuple(items)

    def changed(self) -> bool:
        return self._files_signature() != self._signature

    def reload(self, now: dt.datetime | None = None) -> list[str]:
        """Re-read trust/ and crl/; keep the old CRL of a CA whose new one does not verify.

        Returns the problems found (for the log and the audit log). A CRL that is merely
        stale is installed (and will refuse everyone until the provider re-signs it: fail
        closed); one with a bad signature or wrong issuer is ignored.
        """
        now = now or utcnow()
        signature = self._files_signature()
        try:
            fresh = TrustStore.load(self.rdir.path)
        except ValidationError as exc:
            self._signature = signature
            return [f"trust reload failed, keeping the previous trust: {exc}"]
        problems: list[str] = []
        crls = []
        for crl in fresh.crls:
            issuers = [a for a in fresh.anchors if a.subject == crl.issuer]
            ok = False
            for issuer in issuers:
                try:
                    check_crl(crl, issuer, now)
                except ValidationError as exc:
                    if exc.code == "crl_stale":
                        ok = True
                        problems.append(str(exc))
                        break
                    problems.append(str(exc))
                    continue
                ok = True
                break
            if ok:
                crls.append(crl)
            else:
                old = [c for c in self.store.crls if c.issuer == crl.issuer]
                crls.extend(old)
                if not issuers:
                    problems.append(f"CRL of unknown issuer {crl.issuer.rfc4514_string()}")
        anchors = fresh.anchors if self.org_ca in fresh.anchors else self.store.anchors
        if self.org_ca not in fresh.anchors:
            problems.append("the organization CA vanished from trust/; keeping the old anchors")
        self.store = TrustStore(anchors, crls)
        self._signature = signature
        return problems

    def trust_list(self) -> tuple[list[bytes], list[bytes]]:
        """DER CA certificates and their current CRLs, for GetTrustList."""
        certs = [a.public_bytes(serialization.Encoding.DER) for a in self.store.anchors]
        crls = [c.public_bytes(serialization.Encoding.DER) for c in self.store.crls]
        return certs, crls


__all__ = [
    "Gate",
    "Principal",
    "ReceiverDir",
    "ReceiverSetupError",
    "Refused",
    "audit_event",
    "read_passphrase",
    "scan_for_private_keys",
]

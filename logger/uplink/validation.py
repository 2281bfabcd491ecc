"""Certificate path validation for OPC UA application instance certificates.

One validator serves both ends of the channel: the logger checks the receiver's certificate
(purpose ``"server"``) and the receiver's gate checks the certificate that opened a secure
channel (purpose ``"client"``). Pure ``cryptography``, no asyncua, no clock of its own (``now``
is passed in), so tests can put every rule on trial.

Why our own chain walk and not asyncua's ``CertificateValidator``/``TrustStore``: those match
revocations by serial number only, never verify a CRL's signature, issuer or nextUpdate, ignore
intermediates and skip trust entirely when no store is configured (SECURITY.md, "Known gaps").
And why not ``cryptography.x509.verification`` alone: it has no revocation and applies the
Web PKI profile (DNS-only server names, no OPC UA ApplicationUri).

Rules (each failure names the certificate and the rule; :class:`ValidationError.code` says
which kind, for classification and the audit log):

* the leaf is issued directly by an *issuing* anchor (a trusted CA that is not self-signed,
  i.e. the organization's CA); the path continues through trusted CAs up to a self-signed
  anchor (the root) - a certificate of another organization, or one that only chains to the
  root through a CA we do not hold, is refused (``untrusted``);
* every certificate in the path: signature verifies, not SHA-1/MD5 signed (``weak_signature``),
  RSA 2048-4096 bits (``weak_key``), inside its validity (``expired``/``not_yet_valid``);
* CAs: basicConstraints CA:TRUE and keyUsage keyCertSign; the leaf: CA:FALSE, keyUsage
  digitalSignature + keyEncipherment (+ dataEncipherment), EKU serverAuth or clientAuth as the
  purpose asks (``key_usage``);
* revocation: for every certificate below the root, a CRL of its issuer must be present,
  carry the issuer's name, verify under the issuer's key and not be past its nextUpdate
  (``crl_missing``/``crl_bad``/``crl_stale``); the certificate must not be on it (``revoked``,
  matched by issuer *and* serial number);
* the leaf's SAN URI equals the expected ApplicationUri (``uri``) and, for a server, the host
  the logger dialled is in the SAN as a DNS name or IP address (``host``).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 4096
CLOCK_SKEW = dt.timedelta(minutes=5)
# A clock before this never ran NTP (a Raspberry Pi without RTC boots in 1970 or at the last
# fake-hwclock save): say so instead of blaming the certificate.
CLOCK_UNSET_BEFORE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
_WEAK_HASHES = ("sha1", "md5")


class ValidationError(Exception):
    """A certificate (or CRL) failed a rule; ``code`` names the rule, the message the detail."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 over the DER certificate, lowercase hex: how OPC UA names certificates."""
    return cert.fingerprint(hashes.SHA1()).hex()


def describe(cert: x509.Certificate) -> str:
    return f"{cert.subject.rfc4514_string()} [{thumbprint(cert)[:16]}]"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def split_der_chain(blob: bytes) -> list[x509.Certificate]:
    """A DER certificate, or several concatenated (OPC UA sends a chain that way)."""
    certs: list[x509.Certificate] = []
    pos = 0
    while pos < len(blob):
        if blob[pos] != 0x30 or pos + 2 > len(blob):
            raise ValidationError("untrusted", f"certificate data is not DER at offset {pos}")
        first = blob[pos + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(blob):
                raise ValidationError("untrusted", f"bad DER length at offset {pos}")
            length = int.from_bytes(blob[pos + 2 : pos + 2 + n], "big")
            header = 2 + n
        end = pos + header + length
        if end > len(blob):
            raise ValidationError("untrusted", f"truncated certificate at offset {pos}")
        try:
            certs.append(x509.load_der_x509_certificate(blob[pos:end]))
        except ValueError as exc:
            raise ValidationError("untrusted", f"certificate at offset {pos}: {exc}") from None
        pos = end
    if not certs:
        raise ValidationError("untrusted", "no certificate")
    return certs


def _is_self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, now: dt.datetime
) -> None:
    """A CRL is usable for ``issuer`` only if it names it, verifies under its key and is fresh."""
    if crl.issuer != issuer.subject:
        raise ValidationError(
            "crl_bad",
            f"CRL issued by {crl.issuer.rfc4514_string()} is not the CRL of {describe(issuer)}",
        )
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or not crl.is_signature_valid(key):
        raise ValidationError(
            "crl_bad", f"the CRL of {describe(issuer)} is not signed by that CA (signature invalid)"
        )
    algo = crl.signature_hash_algorithm
    if algo is None or algo.name in _WEAK_HASHES:
        raise ValidationError("crl_bad", f"the CRL of {describe(issuer)} uses a weak signature")
    next_update = crl.next_update_utc
    if next_update is None:
        raise ValidationError("crl_bad", f"the CRL of {describe(issuer)} has no nextUpdate")
    if now > next_update:
        raise ValidationError(
            "crl_stale",
            f"the CRL of {describe(issuer)} is stale: its nextUpdate "
            f"{next_update:%Y-%m-%d %H:%M} UTC has passed",
        )
    if crl.last_update_utc > now + CLOCK_SKEW:
        raise ValidationError(
            "crl_bad",
            f"the CRL of {describe(issuer)} is issued in the future "
            f"({crl.last_update_utc:%Y-%m-%d %H:%M} UTC): is the clock set?",
        )


@dataclass
class TrustStore:
    """Trust anchors (CA certificates) and CRLs, as installed in ``trust/`` and ``crl/``."""

    anchors: list[x509.Certificate]
    crls: list[x509.CertificateRevocationList] = field(default_factory=list)

    @classmethod
    def load(cls, root: Path) -> TrustStore:
        """Read ``root/trust/*.pem`` and ``root/crl/*.pem`` (device state dir or receiver dir).

        Raises :class:`ValidationError` (``untrusted``) when a file is unreadable: a trust
        directory we cannot read is no trust at all.
        """
        anchors: list[x509.Certificate] = []
        crls: list[x509.CertificateRevocationList] = []
        for path in sorted((root / "trust").glob("*.pem")):
            try:
                anchors.extend(x509.load_pem_x509_certificates(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ValidationError("untrusted", f"trust anchor {path}: {exc}") from None
        for path in sorted((root / "crl").glob("*.pem")):
            try:
                crls.append(x509.load_pem_x509_crl(path.read_bytes()))
            except (OSError, ValueError) as exc:
                raise ValidationError("crl_bad", f"CRL {path}: {exc}") from None
        if not anchors:
            raise ValidationError("untrusted", f"no trust anchors in {root / 'trust'}")
        return cls(anchors, crls)

    def issuing_anchors(self) -> list[x509.Certificate]:
        """The CAs that may issue end-entity certificates: anchors that are not roots."""
        issuing = [a for a in self.anchors if not _is_self_signed(a)]
        return issuing or list(self.anchors)

    def crl_for(
        self, issuer: x509.Certificate, now: dt.datetime, allow_stale: bool = False
    ) -> x509.CertificateRevocationList:
        """The newest usable CRL of ``issuer``; the reason when there is none.

        ``allow_stale`` accepts a CRL past its nextUpdate (still verified and still applied):
        only for the trust-recovery connection that fetches fresh CRLs and pushes nothing.
        """
        candidates = [c for c in self.crls if c.issuer == issuer.subject]
        if not candidates:
            raise ValidationError("crl_missing", f"no CRL of {describe(issuer)} is installed")
        candidates.sort(key=lambda c: c.last_update_utc, reverse=True)
        first_error: ValidationError | None = None
        for crl in candidates:
            try:
                check_crl(crl, issuer, now)
            except ValidationError as exc:
                if allow_stale and exc.code == "crl_stale":
                    return crl
                first_error = first_error or exc
                continue
            return crl
        assert first_error is not None
        raise first_error

    def check_fresh(self, now: dt.datetime) -> None:
        """Every anchor has a usable CRL (the logger refuses to push otherwise)."""
        for anchor in self.anchors:
            self.crl_for(anchor, now)

    def earliest_next_update(self) -> dt.datetime | None:
        times = [c.next_update_utc for c in self.crls if c.next_update_utc is not None]
        return min(times) if times else None


def _check_cert(cert: x509.Certificate, now: dt.datetime, what: str) -> None:
    algo = cert.signature_hash_algorithm
    if algo is None or algo.name in _WEAK_HASHES:
        name = algo.name if algo is not None else "unknown"
        raise ValidationError(
            "weak_signature", f"{what} {describe(cert)} is signed with {name.upper()}"
        )
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValidationError("weak_key", f"{what} {describe(cert)} does not have an RSA key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise ValidationError(
            "weak_key",
            f"{what} {describe(cert)} has a {key.key_size}-bit RSA key "
            f"(allowed {MIN_RSA_BITS}-{MAX_RSA_BITS})",
        )
    if now < cert.not_valid_before_utc - CLOCK_SKEW:
        if now < CLOCK_UNSET_BEFORE:
            hint = f"the clock is not set (it says {now:%Y-%m-%d}): set it (NTP) and retry"
        else:
            hint = f"is the clock right? it says {now:%Y-%m-%d %H:%M} UTC"
        raise ValidationError(
            "not_yet_valid",
            f"{what} {describe(cert)} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC ({hint})",
        )
    if now > cert.not_valid_after_utc:
        raise ValidationError(
            "expired",
            f"{what} {describe(cert)} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _check_ca(cert: x509.Certificate) -> None:
    bc = _ext(cert, x509.BasicConstraints)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise ValidationError("key_usage", f"issuer {describe(cert)} is not a CA")
    ku = _ext(cert, x509.KeyUsage)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise ValidationError("key_usage", f"issuer {describe(cert)} may not sign certificates")


def _check_leaf_usage(cert: x509.Certificate, purpose: str) -> None:
    bc = _ext(cert, x509.BasicConstraints)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise ValidationError("key_usage", f"{describe(cert)} is a CA, not an application")
    ku = _ext(cert, x509.KeyUsage)
    if not isinstance(ku, x509.KeyUsage):
        raise ValidationError("key_usage", f"{describe(cert)} has no keyUsage")
    missing = [
        name
        for name, ok in (
            ("digitalSignature", ku.digital_signature),
            ("keyEncipherment", ku.key_encipherment),
        )
        if not ok
    ]
    if missing:
        raise ValidationError("key_usage", f"{describe(cert)} lacks keyUsage {', '.join(missing)}")
    eku = _ext(cert, x509.ExtendedKeyUsage)
    wanted = (
        ExtendedKeyUsageOID.SERVER_AUTH
        if purpose == "server"
        else (ExtendedKeyUsageOID.CLIENT_AUTH)
    )
    if isinstance(eku, x509.ExtendedKeyUsage) and wanted not in list(eku):
        raise ValidationError(
            "key_usage",
            f"{describe(cert)} is not for {'servers' if purpose == 'server' else 'clients'} "
            f"(extendedKeyUsage lacks {wanted.dotted_string})",
        )


def _host_in_san(cert: x509.Certificate, host: str) -> bool:
    san = _ext(cert, x509.SubjectAlternativeName)
    if not isinstance(san, x509.SubjectAlternativeName):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        wanted = host.rstrip(".").lower()
        return any(d.rstrip(".").lower() == wanted for d in san.get_values_for_type(x509.DNSName))
    return address in san.get_values_for_type(x509.IPAddress)


@dataclass(frozen=True)
class ValidatedPath:
    """What a successful validation established."""

    leaf: x509.Certificate
    path: tuple[x509.Certificate, ...]  # leaf first, root last
    application_uri: str

    @property
    def issuer(self) -> x509.Certificate:
        return self.path[1]


def validate(
    leaf: x509.Certificate,
    store: TrustStore,
    *,
    purpose: str,
    now: dt.datetime | None = None,
    expected_uri: str | None = None,
    hostname: str | None = None,
    presented: Sequence[x509.Certificate] = (),
    allow_stale_crl: bool = False,
) -> ValidatedPath:
    """Validate ``leaf`` for ``purpose`` (``"server"`` or ``"client"``); see the module rules.

    ``presented`` are certificates the peer sent along (they may fill gaps between the issuing
    CA and the root, never replace an anchor). Raises :class:`ValidationError`.
    """
    if purpose not in ("server", "client"):
        raise ValueError(f"purpose must be 'server' or 'client', not {purpose!r}")
    now = now or utcnow()
    what = "server certificate" if purpose == "server" else "client certificate"
    _check_cert(leaf, now, what)
    _check_leaf_usage(leaf, purpose)
    uri = application_uri(leaf)
    if uri is None:
        raise ValidationError("uri", f"{what} {describe(leaf)} has no ApplicationUri in its SAN")
    if expected_uri is not None and uri != expected_uri:
        raise ValidationError(
            "uri", f"{what} {describe(leaf)} is for {uri!r}, expected {expected_uri!r}"
        )
    if hostname is not None and not _host_in_san(leaf, hostname):
        raise ValidationError(
            "host", f"{what} {describe(leaf)} is not issued for host {hostname!r} (SAN)"
        )
    issuer = next((a for a in store.issuing_anchors() if _issued_by(leaf, a)), None)
    if issuer is None:
        raise ValidationError(
            "untrusted",
            f"{what} {describe(leaf)} is not issued by a trusted CA "
            f"(issuer {leaf.issuer.rfc4514_string()})",
        )
    path = [leaf, issuer]
    pool = list(store.anchors) + [c for c in presented if c not in store.anchors]
    current = issuer
    while not _is_self_signed(current):
        if len(path) > 6:
            raise ValidationError("untrusted", f"{what} {describe(leaf)}: path too long")
        parent = next((c for c in pool if c not in path and _issued_by(current, c)), None)
        if parent is None:
            raise ValidationError(
                "untrusted",
                f"{describe(current)} does not chain to a trusted root "
                f"(issuer {current.issuer.rfc4514_string()} unknown)",
            )
        path.append(parent)
        current = parent
    if current not in store.anchors:
        raise ValidationError("untrusted", f"root {describe(current)} is not a trust anchor")
    for ca in path[1:]:
        _check_cert(ca, now, "CA certificate")
        _check_ca(ca)
    for cert, ca in itertools.pairwise(path):
        crl = store.crl_for(ca, now, allow_stale_crl)
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            who = what if cert is leaf else "CA certificate"
            raise ValidationError(
                "revoked",
                f"{who} {describe(cert)} is revoked (since "
                f"{entry.revocation_date_utc:%Y-%m-%d %H:%M} UTC, CRL of {describe(ca)})",
            )
    return ValidatedPath(leaf, tuple(path), uri)


__all__ = [
    "CLOCK_SKEW",
    "MAX_RSA_BITS",
    "MIN_RSA_BITS",
    "TrustStore",
    "ValidatedPath",
    "ValidationError",
    "application_uri",
    "check_crl",
    "describe",
    "split_der_chain",
    "thumbprint",
    "validate",
]

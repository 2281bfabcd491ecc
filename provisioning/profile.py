"""Certificate profiles of the product's PKI, as pure functions on ``cryptography`` objects.

No files, no clock of its own (``now`` is passed in where it matters, so tests can issue
expired and not-yet-valid certificates), no registry: :mod:`provisioning.pki` does the I/O.

Profiles (SECURITY.md, OPC UA Part 6 "application instance certificate"):

================  ==========================================================================
root CA           CN=<name>; basicConstraints CA:TRUE (critical); keyUsage keyCertSign,
                  cRLSign (critical); SKI; RSA-3072 by default; SHA-256; 20 years
org CA            CN=<org> Organization CA, O=<org>; CA:TRUE pathlen:0; keyCertSign, cRLSign;
                  SKI + AKI; inside the root's validity; 10 years
logger (device)   CN=<serial>, O=<org>, OU=logger, serialNumber=<serial>; SAN URI =
                  ApplicationUri (+ DNS names); keyUsage digitalSignature, nonRepudiation,
                  keyEncipherment, dataEncipherment (critical); EKU clientAuth, serverAuth,
                  ROLE_LOGGER; CA:FALSE (critical); SKI + AKI; RSA 2048-4096; SHA-256;
                  at most 5 years and never beyond the issuing CA
receiver          as logger, OU=receiver, SAN URI + DNS names (at least one), EKU serverAuth,
                  clientAuth, ROLE_RECEIVER
operator client   as logger, OU=operator, CN=<name>, SAN URI urn:<org>:operator:<name>,
                  EKU clientAuth, ROLE_OPERATOR - the receiver gives it read-only access
================  ==========================================================================

Roles. The receiver must tell an operator's OPC UA client (browse and read only) from a logger
(may push). Each end-entity certificate carries its role twice: in the subject
(``OU=logger|operator|receiver``, visible in UaExpert's certificate view) and as an extended key
usage OID under ``2.25`` (ITU-T X.667 UUID OIDs, no registration needed) - the EKU is what
:func:`certificate_role` reads, because it is part of the signed extension set a CA controls
and tools do not rewrite it. Any other OPC UA stack ignores the unknown EKU OIDs (the
extension is not critical).

Thumbprints are SHA-1 over the DER certificate, lowercase hex, as OPC UA uses them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The certificate identifiers the device and this tool must compute alike.
from logger.tpm.state import application_uri as application_uri
from logger.tpm.state import thumbprint as thumbprint

ROLE_LOGGER = x509.ObjectIdentifier("2.25.201893187014271843356375117325541785201")
ROLE_OPERATOR = x509.ObjectIdentifier("2.25.201893187014271843356375117325541785202")
ROLE_RECEIVER = x509.ObjectIdentifier("2.25.201893187014271843356375117325541785203")
_ROLES = {ROLE_LOGGER: "logger", ROLE_OPERATOR: "operator", ROLE_RECEIVER: "receiver"}

MAX_END_ENTITY_DAYS = 5 * 365 + 1  # five years, leap day included
DEFAULT_DEVICE_DAYS = MAX_END_ENTITY_DAYS
_BACKDATE = dt.timedelta(minutes=5)  # tolerate clocks a little behind the CA's
_ORG_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_SERIAL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ProfileError(ValueError):
    """A request that the profile does not allow (bad name, URI, key, validity)."""


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def normalise_thumbprint(text: str) -> str:
    value = text.replace(":", "").strip().lower()
    if not re.fullmatch(r"[0-9a-f]{40}", value):
        raise ProfileError(f"invalid thumbprint {text!r}: expected 40 hex digits (SHA-1)")
    return value


def check_org_name(org: str) -> str:
    if not _ORG_RE.fullmatch(org):
        raise ProfileError(
            f"invalid organization name {org!r}: use 1-63 lowercase letters, "
            "digits, '.', '_' or '-', starting with a letter or digit"
        )
    return org


def check_serial(serial: str) -> str:
    if not _SERIAL_RE.fullmatch(serial):
        raise ProfileError(
            f"invalid serial number {serial!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return serial


def check_application_uri(uri: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+", uri) or len(uri) > 255:
        raise ProfileError(
            f"invalid ApplicationUri {uri!r}: expected an absolute URI such "
            "as urn:example:logger:SN-0001"
        )
    return uri


_DNS_RE = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)


def check_dns_name(name: str) -> str:
    """A host name or an IP address (IPs go into the SAN as iPAddress)."""
    try:
        ipaddress.ip_address(name)
        return name
    except ValueError:
        pass
    if not _DNS_RE.fullmatch(name):
        raise ProfileError(f"invalid --dns name {name!r}: expected a host name or IP address")
    return name


def check_rsa_public_key(key: object, what: str) -> rsa.RSAPublicKey:
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProfileError(f"{what}: only RSA keys are allowed (OPC UA security policies)")
    if not 2048 <= key.key_size <= 4096:
        raise ProfileError(f"{what}: RSA key of {key.key_size} bits; 2048-4096 required")
    return key


def new_rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _random_serial() -> int:
    return x509.random_serial_number()


def _ca_extensions(
    builder: x509.CertificateBuilder, path_length: int | None, public_key: rsa.RSAPublicKey
) -> x509.CertificateBuilder:
    return (
        builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=path_length), critical=True
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _validity(
    issuer: x509.Certificate | None, now: dt.datetime, days: int, what: str
) -> tuple[dt.datetime, dt.datetime]:
    """Validity window: from a little before ``now``, ``days`` long, inside the issuer's."""
    if days < 1:
        raise ProfileError(f"{what}: validity must be at least one day, got {days}")
    not_before = now - _BACKDATE
    not_after = now + dt.timedelta(days=days)
    if issuer is not None:
        if issuer.not_valid_after_utc <= now:
            raise ProfileError(
                f"{what}: the issuing CA {issuer.subject.rfc4514_string()} expired on "
                f"{issuer.not_valid_after_utc:%Y-%m-%d}; it cannot issue certificates"
            )
        if issuer.not_valid_before_utc > now:
            raise ProfileError(
                f"{what}: the issuing CA is not valid yet (from "
                f"{issuer.not_valid_before_utc:%Y-%m-%d})"
            )
        not_before = max(not_before, issuer.not_valid_before_utc)
        not_after = min(not_after, issuer.not_valid_after_utc)
    return not_before, not_after


def make_root_ca(
    name: str, key: rsa.RSAPrivateKey, years: int = 20, now: dt.datetime | None = None
) -> x509.Certificate:
    now = now or utcnow()
    if not name.strip():
        raise ProfileError("the root CA needs a name")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    not_before, not_after = _validity(None, now, years * 365 + years // 4, "root CA")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    builder = _ca_extensions(builder, 1, key.public_key())
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
    )
    return builder.sign(key, hashes.SHA256())


def make_org_ca(
    org: str,
    key_public: rsa.RSAPublicKey,
    root_cert: x509.Certificate,
    root_key: rsa.RSAPrivateKey,
    years: int = 10,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    now = now or utcnow()
    check_org_name(org)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{org} Organization CA"),
        ]
    )
    not_before, not_after = _validity(root_cert, now, years * 365 + years // 4, f"org CA {org}")
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root_cert.subject)
        .public_key(key_public)
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    builder = _ca_extensions(builder, 0, key_public)
    builder = builder.add_extension(_aki(root_cert), critical=False)
    return builder.sign(root_key, hashes.SHA256())


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


@dataclass(frozen=True)
class EndEntity:
    """What goes into an end-entity certificate, independent of where its key lives."""

    role: str  # "logger" | "receiver" | "operator"
    common_name: str
    application_uri: str
    organization: str
    dns_names: tuple[str, ...] = ()
    serial: str | None = None  # manufacturing serial (loggers)

    def subject(self) -> x509.Name:
        attrs = [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.organization),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, self.role),
            x509.NameAttribute(NameOID.COMMON_NAME, self.common_name),
        ]
        if self.serial:
            attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, self.serial))
        return x509.Name(attrs)

    def san(self) -> x509.SubjectAlternativeName:
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(self.application_uri)]
        for dns in self.dns_names:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(dns)))
            except ValueError:
                names.append(x509.DNSName(dns))
        return x509.SubjectAlternativeName(names)


def logger_entity(
    org: str, serial: str, application_uri: str, dns_names: tuple[str, ...] = ()
) -> EndEntity:
    return EndEntity(
        "logger",
        check_serial(serial),
        check_application_uri(application_uri),
        check_org_name(org),
        tuple(dns_names),
        serial,
    )


def receiver_entity(org: str, application_uri: str, dns_names: tuple[str, ...]) -> EndEntity:
    if not dns_names:
        raise ProfileError("a receiver certificate needs at least one --dns name")
    return EndEntity(
        "receiver",
        dns_names[0],
        check_application_uri(application_uri),
        check_org_name(org),
        tuple(dns_names),
    )


def operator_entity(org: str, name: str) -> EndEntity:
    check_serial(name)
    return EndEntity("operator", name, f"urn:{check_org_name(org)}:operator:{name}", org)


def _eku_for(role: str) -> x509.ExtendedKeyUsage:
    if role == "logger":
        return x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH, ROLE_LOGGER]
        )
    if role == "receiver":
        return x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH, ROLE_RECEIVER]
        )
    if role == "operator":
        return x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ROLE_OPERATOR])
    raise ProfileError(f"unknown certificate role {role!r}")


def issue_end_entity(
    entity: EndEntity,
    public_key: object,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    days: int = DEFAULT_DEVICE_DAYS,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Sign an OPC UA application instance certificate for ``entity`` under the profile:
    RSA 2048-4096, at most five years, inside the issuing CA's validity, SHA-256."""
    now = now or utcnow()
    key = check_rsa_public_key(public_key, f"{entity.role} {entity.common_name}")
    if days > MAX_END_ENTITY_DAYS:
        raise ProfileError(
            f"validity of {days} days exceeds the five-year maximum ({MAX_END_ENTITY_DAYS} days)"
        )
    not_before, not_after = _validity(ca_cert, now, days, f"{entity.role} {entity.common_name}")
    return build_end_entity(entity, key, ca_cert, ca_key, not_before, not_after)


def build_end_entity(
    entity: EndEntity,
    public_key: rsa.RSAPublicKey,
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
) -> x509.Certificate:
    """The certificate body of the profile with *no* policy checks.

    The product issues only through :func:`issue_end_entity`; this is public so the test PKI
    can build what an attacker would present (1024-bit keys, expired or not-yet-valid
    certificates) with exactly the product's extensions.
    """
    builder = (
        x509.CertificateBuilder()
        .subject_name(entity.subject())
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(_random_serial())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_eku_for(entity.role), critical=False)
        .add_extension(entity.san(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    return builder.sign(ca_key, hashes.SHA256())


# -- CSRs ----------------------------------------------------------------------------------


def build_csr(entity: EndEntity, key: rsa.RSAPrivateKey) -> x509.CertificateSigningRequest:
    """A CSR for ``entity`` signed by ``key`` - with a TPM key, the signature is made inside
    the TPM (tpm2-pytss's key object signs through TPM2_Sign)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(entity.subject())
        .add_extension(entity.san(), critical=False)
        .sign(key, hashes.SHA256())
    )


def load_csr(data: bytes, where: str) -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise ProfileError(f"{where} is not a certificate signing request: {exc}") from None
    return csr


def csr_identity(csr: x509.CertificateSigningRequest, where: str) -> tuple[str, str]:
    """(serial, ApplicationUri) claimed by a device CSR, after checking its signature."""
    if not csr.is_signature_valid:
        raise ProfileError(f"{where}: the CSR's signature does not match its public key")
    check_rsa_public_key(csr.public_key(), where)
    serials = csr.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(serials) != 1 or len(cns) != 1 or serials[0].value != cns[0].value:
        raise ProfileError(
            f"{where}: subject {csr.subject.rfc4514_string()} must carry the "
            "device serial as CN and serialNumber"
        )
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ProfileError(
            f"{where}: the CSR has no subjectAltName with the ApplicationUri"
        ) from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise ProfileError(
            f"{where}: the CSR must carry exactly one URI (the ApplicationUri), found {len(uris)}"
        )
    return str(serials[0].value), uris[0]


def csr_dns_names(csr: x509.CertificateSigningRequest) -> tuple[str, ...]:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return tuple(names)


# -- CRLs ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RevokedEntry:
    serial_number: int
    revoked_at: dt.datetime
    reason: x509.ReasonFlags | None = None


REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
}


def parse_reason(text: str | None) -> x509.ReasonFlags | None:
    if text is None:
        return None
    try:
        return REASONS[text]
    except KeyError:
        raise ProfileError(
            f"unknown revocation reason {text!r}; one of {', '.join(REASONS)}"
        ) from None


def make_crl(
    ca_cert: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    revoked: list[RevokedEntry],
    number: int,
    days: int,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL of ``ca_cert`` with CRL number, AKI and ``nextUpdate = now + days``."""
    now = now or utcnow()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_aki(ca_cert), critical=False)
    )
    for entry in revoked:
        rb = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial_number)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not None and entry.reason != x509.ReasonFlags.unspecified:
            rb = rb.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(rb.build())
    return builder.sign(ca_key, hashes.SHA256())


# -- reading certificates back -------------------------------------------------------------


def certificate_role(cert: x509.Certificate) -> str | None:
    """``"logger"``, ``"operator"``, ``"receiver"`` from the role EKU, or None (no role)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    roles = {_ROLES[oid] for oid in eku if oid in _ROLES}
    return roles.pop() if len(roles) == 1 else None


def subject_attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str | None:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else None


def same_public_key(a: object, b: object) -> bool:
    def der(key: object) -> bytes:
        if not isinstance(key, rsa.RSAPublicKey):
            return b""
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return der(a) != b"" and der(a) == der(b)

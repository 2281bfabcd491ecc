"""Enrolment and renewal: the device-side steps and the factory station that chains them.

The device side (``mbus-logger cert csr`` / ``cert install``) needs no CA key and no registry:

1. :func:`make_csr` creates the device key (in the TPM, or an encrypted file without one),
   records it in the state directory's ``identity.json`` (as ``pending_key`` when a current
   key exists, i.e. renewal), and returns a CSR signed by that key - inside the TPM.
2. The cloud signs it (:meth:`provisioning.pki.Pki.sign_device_csr`).
3. :func:`install_certificate` checks that the certificate belongs to the device's key (the
   current or the pending one), names the device's serial and ApplicationUri, and chains to
   the trust anchors; then writes certificate, chain, trust anchors and CRLs atomically,
   ``identity.json`` last. A pending key is promoted; the key it replaces becomes
   ``previous_key`` (kept until the next renewal so a rollback stays possible).

The station (``mbus-provision device enroll``) runs the same three steps in one process, and
undoes them when a later one fails: the TPM key is evicted, written files are removed, the
registry transaction is rolled back.

Renewal alternates the TPM key between two persistent handles (``H`` and ``H + 1``), so the key
in use is never overwritten; the slot being reused holds the key from two generations ago.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from logger.tpm.device import DeviceKey, open_key_ref
from logger.tpm.errors import KeyFileError
from logger.tpm.filekey import write_key_file
from logger.tpm.state import DeviceState, Identity, KeyRef
from provisioning import profile
from provisioning.profile import thumbprint

_LOGGER = logging.getLogger(__name__)

DEFAULT_HANDLE = 0x81000002


class EnrolmentError(Exception):
    """The certificate does not fit the device, or the device state forbids the step."""


@dataclass
class KeyOptions:
    """How to make the device key."""

    tcti: str | None = None  # TPM at this TCTI (None: the default device)
    use_file: bool = False  # no TPM: encrypted key file
    file_passphrase: bytes | None = None
    handle: int = DEFAULT_HANDLE
    auth: bytes | None = None
    pcrs: str | None = None  # "sha256:0,7"
    replace: bool = False  # allow overwriting an occupied TPM handle


@dataclass
class Undo:
    """Compensating actions for a multi-step enrolment, run in reverse on failure."""

    actions: list[tuple[str, Callable[[], None]]] = field(default_factory=list)

    def file(self, path: Path) -> None:
        """Remove ``path`` on failure - only if it does not exist now (never delete old data)."""
        if path.exists():
            return

        def _remove() -> None:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

        self.actions.append((f"remove {path}", _remove))

    def restore(self, path: Path) -> None:
        """Put back ``path`` as it is now (or remove it if it does not exist yet)."""
        if not path.exists():
            self.file(path)
            return
        content = path.read_bytes()
        mode = path.stat().st_mode & 0o777

        def _restore() -> None:
            from logger.tpm.state import atomic_write

            atomic_write(path, content, mode)

        self.actions.append((f"restore {path}", _restore))

    def new_state(self, state_dir: Path, *extra: str) -> DeviceState:
        """Create the state directory of a first enrolment. On failure it goes again if it was
        created here, else every file an enrolment writes into it that was not there before
        (identity, certificate, chain, trust, CRLs and the ``extra`` names)."""
        self.file(state_dir)
        state = DeviceState.create(state_dir)
        for path in (
            state.identity_path,
            state.cert_path,
            state.chain_path,
            state.trust_dir,
            state.crl_dir,
            *(state.root / name for name in extra),
        ):
            self.file(path)
        return state

    def tpm_key(self, tcti: str | None, handle: int) -> None:
        def _evict() -> None:
            from logger.tpm.tpm import Tpm

            with Tpm(tcti) as tpm:
                if tpm.has_handle(handle):
                    tpm.evict(handle)

        self.actions.append((f"evict TPM key 0x{handle:08x}", _evict))

    def run(self) -> None:
        for what, action in reversed(self.actions):
            try:
                action()
            except Exception as exc:  # undo must try every step
                _LOGGER.error("could not %s: %s", what, exc)


@contextlib.contextmanager
def undo_on_failure() -> Iterator[Undo]:
    undo = Undo()
    try:
        yield undo
    except BaseException:
        undo.run()
        raise


def _create_key(
    state: DeviceState, options: KeyOptions, slot_in_use: KeyRef | None, undo: Undo
) -> KeyRef:
    """Create the device key; returns its reference. Registers its removal in ``undo``."""
    if options.use_file:
        if not options.file_passphrase:
            raise KeyFileError(
                "a file key needs a passphrase (--key-passphrase-file or the "
                "MBUS_DEVICE_KEY_PASSPHRASE environment variable)"
            )
        name = "device-key.pem"
        if slot_in_use is not None and slot_in_use.type == "file" and slot_in_use.path == name:
            name = "device-key-next.pem"
        path = state.root / name
        if path.exists() and not options.replace:
            raise EnrolmentError(f"{path} already exists; refusing to overwrite a key")
        undo.file(path)
        write_key_file(path, profile.new_rsa_key(2048), options.file_passphrase)
        return KeyRef("file", path=name)
    from logger.tpm.tpm import PcrSelection, Tpm

    pcrs = PcrSelection.parse(options.pcrs) if options.pcrs else None
    handle = options.handle
    replace = options.replace
    if slot_in_use is not None and slot_in_use.type == "tpm":
        assert slot_in_use.handle is not None
        # Renewal: the other slot of the pair; whatever is there is two generations old.
        handle = slot_in_use.handle + 1 if slot_in_use.handle % 2 == 0 else slot_in_use.handle - 1
        replace = True
    with Tpm(options.tcti) as tpm:
        if tpm.has_handle(handle) and not replace:
            raise EnrolmentError(
                f"TPM handle 0x{handle:08x} already holds a key; give "
                "--replace-key to overwrite it or choose another --handle"
            )
        tpm.create_key(handle, options.auth, pcrs, replace=replace)
    undo.tpm_key(options.tcti, handle)
    return KeyRef("tpm", handle=handle, pcrs=str(pcrs) if pcrs else None, auth=bool(options.auth))


def _open(state: DeviceState, ref: KeyRef, options: KeyOptions) -> DeviceKey:
    """Open ``ref`` with the secret the station holds (passphrase or auth value), if any."""
    secret = options.file_passphrase if ref.type == "file" else options.auth
    return open_key_ref(state, ref, options.tcti, secret=secret or None)


def make_csr(
    state_dir: Path,
    options: KeyOptions,
    serial: str | None = None,
    application_uri: str | None = None,
    org: str | None = None,
    dns_names: tuple[str, ...] = (),
    new_key: bool = False,
) -> x509.CertificateSigningRequest:
    """Device side, step 1: make (or reuse) the key and return a CSR it signed.

    * no identity yet: ``serial``, ``application_uri`` and ``org`` are required; a key is made.
    * identity, no certificate yet: the existing key is reused (a retried first enrolment).
    * identity and certificate: a renewal - a *new* key is made as ``pending_key`` (the
      current one keeps working until the new certificate is installed). ``new_key`` forces
      this even without a certificate.
    """
    state = DeviceState.create(state_dir)
    with undo_on_failure() as undo:
        return csr_with_undo(state, options, undo, serial, application_uri, org, dns_names, new_key)


def csr_with_undo(
    state: DeviceState,
    options: KeyOptions,
    undo: Undo,
    serial: str | None = None,
    application_uri: str | None = None,
    org: str | None = None,
    dns_names: tuple[str, ...] = (),
    new_key: bool = False,
) -> x509.CertificateSigningRequest:
    """:func:`make_csr` with the caller's :class:`Undo` (the station undoes several steps)."""
    state_dir = state.root
    undo.restore(state.identity_path)
    if state.has_identity():
        identity = state.identity()
        for given, have, what in (
            (serial, identity.serial, "serial"),
            (application_uri, identity.application_uri, "ApplicationUri"),
            (org, identity.organization or None, "organization"),
        ):
            if given is not None and have is not None and given != have:
                raise EnrolmentError(
                    f"the state dir {state_dir} belongs to {what} {have}, "
                    f"not {given}; the identity never changes"
                )
        if org and not identity.organization:
            identity = Identity(
                identity.serial,
                identity.application_uri,
                identity.key,
                org,
                identity.pending_key,
                identity.previous_key,
            )
        if identity.pending_key is not None:
            ref = identity.pending_key
        elif new_key or state.has_certificate():
            ref = _create_key(state, options, identity.key, undo)
            identity = Identity(
                identity.serial,
                identity.application_uri,
                identity.key,
                identity.organization,
                ref,
                identity.previous_key,
            )
        else:
            ref = identity.key
    else:
        if not (serial and application_uri and org):
            raise EnrolmentError(
                f"{state_dir} holds no identity yet: give --serial, --application-uri and --org"
            )
        profile.check_serial(serial)
        profile.check_application_uri(application_uri)
        profile.check_org_name(org)
        undo.file(state.identity_path)
        ref = _create_key(state, options, None, undo)
        identity = Identity(serial, application_uri, ref, org)
    entity = profile.logger_entity(
        identity.organization, identity.serial, identity.application_uri, dns_names
    )
    with _open(state, ref, options) as key:
        csr = profile.build_csr(entity, key.private_key)
    state.save_identity(identity)
    return csr


@dataclass(frozen=True)
class Installed:
    certificate: x509.Certificate
    thumbprint: str
    renewed: bool
    trust_established: bool  # trust anchors were taken from the chain (first install)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def verify_chain(
    cert: x509.Certificate,
    chain: list[x509.Certificate],
    anchors: list[x509.Certificate],
    now: dt.datetime,
) -> None:
    """Leaf -> chain -> one of ``anchors``: signatures, CA flags and validity at ``now``.

    Enough to refuse a wrong or foreign certificate at installation; the uplink's full peer
    validation (CRLs, URIs, key usage) lives with the uplink.
    """
    anchor_der = {_der(a) for a in anchors}
    pool = chain + anchors
    current = cert
    for _depth in range(5):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise EnrolmentError(
                f"{current.subject.rfc4514_string()} is not valid now "
                f"({current.not_valid_before_utc:%Y-%m-%d} to "
                f"{current.not_valid_after_utc:%Y-%m-%d})"
            )
        if current is not cert and _der(current) in anchor_der:
            return
        issuer = next(
            (c for c in pool if c.subject == current.issuer and _der(c) != _der(current)), None
        )
        if issuer is None:
            break
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise EnrolmentError(
                f"{current.subject.rfc4514_string()} is not signed by "
                f"{issuer.subject.rfc4514_string()}: {exc}"
            ) from None
        try:
            is_ca = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise EnrolmentError(f"{issuer.subject.rfc4514_string()} is not a CA")
        current = issuer
    raise EnrolmentError(
        f"{cert.subject.rfc4514_string()} does not chain to the installed trust anchors"
    )


def install_certificate(
    state_dir: Path,
    cert: x509.Certificate,
    chain: list[x509.Certificate] | None = None,
    crls: list[x509.CertificateRevocationList] | None = None,
    options: KeyOptions | None = None,
    now: dt.datetime | None = None,
) -> Installed:
    """Device side, step 3 (see the module docstring). Nothing is written on a mismatch."""
    now = now or profile.utcnow()
    state = DeviceState.open(state_dir)
    identity = state.identity()
    if profile.subject_attr(cert, x509.oid.NameOID.SERIAL_NUMBER) != identity.serial:
        raise EnrolmentError(
            f"the certificate is for serial "
            f"{profile.subject_attr(cert, x509.oid.NameOID.SERIAL_NUMBER)}, "
            f"this device is {identity.serial}"
        )
    if profile.application_uri(cert) != identity.application_uri:
        raise EnrolmentError(
            f"the certificate's ApplicationUri {profile.application_uri(cert)}"
            f" is not this device's ({identity.application_uri})"
        )
    if profile.certificate_role(cert) != "logger":
        raise EnrolmentError("the certificate is not a logger certificate (role EKU missing)")
    # Which key does it belong to? Compare public keys read from the key store itself.
    renewed = False
    target: KeyRef | None = None
    for ref, is_pending in ((identity.pending_key, True), (identity.key, False)):
        if ref is None:
            continue
        public = _public_key_of(state, ref, options or KeyOptions())
        if profile.same_public_key(public, cert.public_key()):
            target, renewed = ref, is_pending
            break
    if target is None:
        raise EnrolmentError(
            "the certificate does not match this device's key; it was issued for another CSR"
        )
    chain = chain if chain is not None else state.chain()
    anchors = state.trust_anchors()
    trust_established = False
    if not anchors:
        roots = [c for c in chain if c.subject == c.issuer]
        if not roots:
            raise EnrolmentError("no trust anchors installed and the chain holds no root CA")
        anchors = roots + [c for c in chain if c.subject != c.issuer]
        trust_established = True
    verify_chain(cert, chain, anchors, now)
    for crl in crls or []:
        issuer = next((c for c in chain + anchors if c.subject == crl.issuer), None)
        if issuer is None or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            raise EnrolmentError(
                f"CRL of {crl.issuer.rfc4514_string()} is not signed by a CA of the chain"
            )
        if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
            raise EnrolmentError("the certificate is already revoked")
    # Write: trust, CRLs, chain, certificate, identity last.
    if trust_established:
        for ca in anchors:
            state.write_trust_anchor(ca)
    for crl in crls or []:
        issuer = next(c for c in chain + anchors if c.subject == crl.issuer)
        state.write_crl(crl, issuer)
    state.write_chain(chain)
    state.write_certificate(cert)
    if renewed:
        assert identity.pending_key is not None
        state.save_identity(
            Identity(
                identity.serial,
                identity.application_uri,
                identity.pending_key,
                identity.organization,
                None,
                identity.key,
            )
        )
    return Installed(cert, thumbprint(cert), renewed, trust_established)


def install_pkcs12(
    state_dir: Path,
    data: bytes,
    p12_passphrase: bytes,
    key_passphrase: bytes,
    now: dt.datetime | None = None,
) -> Installed:
    """The legacy batch flow on the device: key and certificate from an encrypted PKCS#12.

    The key is re-encrypted under the device's own passphrase (``key_passphrase``, the
    secret the daemon gets as the credential ``mbus-device-key``) into ``device-key.pem``; the
    identity comes from the certificate (serial, ApplicationUri, organization). Only into a
    state directory that holds no identity yet.
    """
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, p12_passphrase)
    except ValueError:
        raise EnrolmentError(
            "cannot open the PKCS#12 file: wrong passphrase or damaged file"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey) or cert is None:
        raise EnrolmentError("the PKCS#12 file must hold an RSA key and its certificate")
    if not profile.same_public_key(key.public_key(), cert.public_key()):
        raise EnrolmentError("the PKCS#12 file's key does not match its certificate")
    serial = profile.subject_attr(cert, x509.oid.NameOID.SERIAL_NUMBER)
    uri = profile.application_uri(cert)
    org = profile.subject_attr(cert, x509.oid.NameOID.ORGANIZATION_NAME) or ""
    if not serial or not uri or profile.certificate_role(cert) != "logger":
        raise EnrolmentError("the PKCS#12 certificate is not a logger certificate of this PKI")
    if (state_dir / "identity.json").exists():
        raise EnrolmentError(f"{state_dir} already holds a device identity")
    if not key_passphrase:
        raise KeyFileError(
            "the device key file needs a passphrase (--secret-file or MBUS_DEVICE_KEY_PASSPHRASE)"
        )
    with undo_on_failure() as undo:
        state = undo.new_state(state_dir, "device-key.pem")
        write_key_file(state.root / "device-key.pem", key, key_passphrase)
        state.save_identity(Identity(serial, uri, KeyRef("file", path="device-key.pem"), org))
        return install_certificate(
            state.root,
            cert,
            list(extra),
            None,
            KeyOptions(use_file=True, file_passphrase=key_passphrase),
            now,
        )


def _public_key_of(state: DeviceState, ref: KeyRef, options: KeyOptions) -> object:
    """The public half of a key reference, read from where the key lives."""
    if ref.type == "tpm":
        from logger.tpm.tpm import Tpm

        assert ref.handle is not None
        with Tpm(options.tcti) as tpm:
            pem = tpm.key_info(ref.handle).public_key_pem
        return serialization.load_pem_public_key(pem.encode())
    with _open(state, ref, options) as key:
        return key.public_key()


__all__ = [
    "DEFAULT_HANDLE",
    "EnrolmentError",
    "Installed",
    "KeyOptions",
    "install_certificate",
    "install_pkcs12",
    "csr_with_undo",
    "make_csr",
    "verify_chain",
]

"""The device state directory: the logger's identity on disk.

Written by ``mbus-provision device enroll`` (factory) or ``mbus-logger cert csr`` + ``cert
install`` (offline enrolment, renewal); read by the uplink, ``cert show`` and ``key info``.
Every file is written atomically (temporary file, fsync, rename, fsync of the directory), so a
power cut leaves the old or the new version, never half a certificate. Directories are created
0700 (only the leaf: missing parents as the OS makes them); a state directory that group or
others can access is refused.

Layout (all certificates and CRLs PEM, readable by openssl)::

    STATE_DIR/                      0700
      identity.json                 metadata, see below
      device-cert.pem               the device's own certificate (leaf only)
      chain.pem                     its issuers, nearest first: org CA, then root CA
      trust/                        trust anchors for validating servers: one CA cert per file,
        <SKI-hex>.pem               named by the CA's subject key identifier (root and org CA)
      crl/                          the current CRL of each CA in trust/, one per file,
        <SKI-hex>.pem               named by the *issuing* CA's subject key identifier
      device-key.pem                only for file keys: encrypted PKCS#8, 0600
      device-key.secret             optional: passphrase / TPM auth value, 0600 (a systemd
                                    credential ``mbus-device-key`` is preferred)

``identity.json``::

    {
      "version": 1,
      "serial": "SN-0001",                      # manufacturing serial number
      "application_uri": "urn:example:logger:SN-0001",
      "organization": "acme",                   # org CA the certificate comes from ("" if unknown)
      "key": {"type": "tpm", "handle": "0x81000002", "pcrs": "sha256:0,7" | null,
              "auth": false}
           | {"type": "file", "path": "device-key.pem"},
      "pending_key": <key ref> | null,          # a renewal key whose certificate is not yet
                                                # installed; promoted by cert install
      "previous_key": <key ref> | null          # the key before the last renewal
    }

The TCTI is not recorded: the station may reach the TPM differently from the device itself
(default ``device:/dev/tpmrm0``); callers pass it.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from logger.fileio import replace_file
from logger.tpm.errors import StateDirError

IDENTITY = "identity.json"
DEVICE_CERT = "device-cert.pem"
CHAIN = "chain.pem"
TRUST_DIR = "trust"
CRL_DIR = "crl"
KEY_FILE = "device-key.pem"
SECRET_FILE = "device-key.secret"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` mode 0700 when missing; refuse an existing one others may write.

    Only the leaf is created 0700: missing parents get the mode the OS gives them (0777 less
    the umask), as ``mkdir -p`` does, because a parent such as ``/var/lib`` is shared and
    is not ours to lock down. Used for directories that hold public material (trust anchors,
    CRLs, certificates); a directory that holds a key or an identity uses
    :func:`ensure_secret_dir`.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise StateDirError(f"{path} is not a directory")
    if st.st_mode & 0o022:
        raise StateDirError(
            f"directory {path} is writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it"
        )
    return path


def check_secret_dir(
    path: Path, what: str, holds: str, error: type[Exception] = StateDirError
) -> Path:
    """Refuse ``path`` unless it is a directory only its owner can open (no group/other bits).

    For the device state directory and the PKI directory: what they hold (an encrypted key,
    its secret, the identity, the CA keys) is safe only while nobody else can even list it,
    so an existing directory that group or others may read is refused rather than silently
    tightened: a wrong mode usually means a wrong deployment, and the operator must know.
    ``error`` lets the owner of the directory raise its own exception class (exit codes).
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise error(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise error(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); "
            f"chmod 700 it - it holds {holds}"
        )
    return path


def ensure_secret_dir(
    path: Path, what: str, holds: str, error: type[Exception] = StateDirError
) -> Path:
    """Create ``path`` 0700 when missing (only the leaf, see :func:`ensure_private_dir`), then
    :func:`check_secret_dir` it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file in the way: check_secret_dir names it
    except OSError as exc:
        raise error(f"cannot create {what} {path}: {exc.strerror}") from None
    return check_secret_dir(path, what, holds, error)


STATE_DIR_HOLDS = "the device's identity and key reference"


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably (:func:`logger.fileio.replace_file`),
    creating its directory (0700) when missing; ``mode`` 0644 suits certificates and CRLs."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    replace_file(path, data, mode)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 thumbprint of the DER certificate, lowercase hex (OPC UA's identifier)."""
    return hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def application_uri(cert: x509.Certificate) -> str | None:
    """The first URI of the subjectAltName (the OPC UA ApplicationUri), None without one."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def pem_certs(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def ski_name(cert: x509.Certificate) -> str:
    """File stem for a CA: hex subject key identifier (stable across re-issue of the file)."""
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(cert.public_key()).digest
    return ski.hex()


def load_pem_certs(path: Path, what: str) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StateDirError(f"{what} {path} does not exist") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise StateDirError(f"{what} {path} is not a PEM certificate file: {exc}") from None
    return certs


@dataclass(frozen=True)
class KeyRef:
    """Where the device key is: a TPM persistent handle or an encrypted file."""

    type: str  # "tpm" | "file"
    handle: int | None = None
    pcrs: str | None = None
    auth: bool = False
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.type == "tpm":
            assert self.handle is not None
            return {
                "type": "tpm",
                "handle": f"0x{self.handle:08x}",
                "pcrs": self.pcrs,
                "auth": self.auth,
            }
        return {"type": "file", "path": self.path}

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> KeyRef:
        if not isinstance(doc, dict) or doc.get("type") not in ("tpm", "file"):
            raise StateDirError(f"{where}: key reference must have type 'tpm' or 'file'")
        if doc["type"] == "tpm":
            try:
                handle = int(str(doc["handle"]), 0)
            except (KeyError, ValueError):
                raise StateDirError(f"{where}: TPM key reference needs a handle") from None
            pcrs = doc.get("pcrs")
            if pcrs is not None and not isinstance(pcrs, str):
                raise StateDirError(f"{where}: pcrs must be a string like sha256:0,7")
            return cls("tpm", handle=handle, pcrs=pcrs, auth=bool(doc.get("auth", False)))
        path = doc.get("path")
        if not isinstance(path, str) or not path or "/" in path:
            raise StateDirError(f"{where}: file key reference needs a file name in the state dir")
        return cls("file", path=path)

    def describe(self) -> str:
        if self.type == "tpm":
            assert self.handle is not None
            extra = f", PCR policy {self.pcrs}" if self.pcrs else ""
            extra += ", auth value" if self.auth else ""
            return f"TPM handle 0x{self.handle:08x}{extra}"
        return f"encrypted file {self.path}"


@dataclass(frozen=True)
class Identity:
    serial: str
    application_uri: str
    key: KeyRef
    organization: str = ""
    pending_key: KeyRef | None = None
    previous_key: KeyRef | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "serial": self.serial,
            "application_uri": self.application_uri,
            "organization": self.organization,
            "key": self.key.as_dict(),
            "pending_key": self.pending_key.as_dict() if self.pending_key else None,
            "previous_key": self.previous_key.as_dict() if self.previous_key else None,
        }


@dataclass
class DeviceState:
    """Typed access to one state directory (paths, loading, atomic installation)."""

    root: Path
    _identity: Identity | None = field(default=None, repr=False)

    @classmethod
    def create(cls, root: Path) -> DeviceState:
        """The state dir, created 0700 when missing (CLI.md); refused when group or others
        can access it."""
        ensure_secret_dir(root, "state directory", STATE_DIR_HOLDS)
        return cls(root)

    @classmethod
    def open(cls, root: Path) -> DeviceState:
        """An existing state dir: never created here, so a mistyped ``--state-dir`` on a
        read-only command (``key info``, ``cert show``) or in the daemon's configuration is an
        error rather than a new empty directory."""
        if not root.exists():
            raise StateDirError(
                f"state directory {root} does not exist (is the device enrolled? "
                "check --state-dir / paths.state_dir)"
            )
        check_secret_dir(root, "state directory", STATE_DIR_HOLDS)
        return cls(root)

    # paths
    @property
    def identity_path(self) -> Path:
        return self.root / IDENTITY

    @property
    def cert_path(self) -> Path:
        return self.root / DEVICE_CERT

    @property
    def chain_path(self) -> Path:
        return self.root / CHAIN

    @property
    def trust_dir(self) -> Path:
        return self.root / TRUST_DIR

    @property
    def crl_dir(self) -> Path:
        return self.root / CRL_DIR

    def key_file_path(self, ref: KeyRef) -> Path:
        assert ref.path is not None
        return self.root / ref.path

    # identity
    def has_identity(self) -> bool:
        return self.identity_path.exists()

    def identity(self) -> Identity:
        if self._identity is None:
            self._identity = self._load_identity()
        return self._identity

    def _load_identity(self) -> Identity:
        where = str(self.identity_path)
        try:
            doc = json.loads(self.identity_path.read_text())
        except FileNotFoundError:
            raise StateDirError(
                f"{where} does not exist: the device is not enrolled "
                "(run 'mbus-logger cert csr' or 'mbus-provision device enroll')"
            ) from None
        except (OSError, ValueError) as exc:
            raise StateDirError(f"{where} is not readable JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1:
            raise StateDirError(f"{where}: unsupported identity format")
        for name in ("serial", "application_uri"):
            if not isinstance(doc.get(name), str) or not doc[name]:
                raise StateDirError(f"{where}: missing {name}")
        pending = doc.get("pending_key")
        previous = doc.get("previous_key")
        return Identity(
            serial=doc["serial"],
            application_uri=doc["application_uri"],
            organization=str(doc.get("organization") or ""),
            key=KeyRef.from_dict(doc.get("key"), where),
            pending_key=KeyRef.from_dict(pending, where) if pending else None,
            previous_key=KeyRef.from_dict(previous, where) if previous else None,
        )

    def save_identity(self, identity: Identity) -> None:
        ensure_secret_dir(self.root, "state directory", STATE_DIR_HOLDS)
        atomic_write(
            self.identity_path, (json.dumps(identity.as_dict(), indent=2) + "\n").encode(), 0o600
        )
        self._identity = identity

    def update_identity(self, **changes: Any) -> Identity:
        identity = replace(self.identity(), **changes)
        self.save_identity(identity)
        return identity

    # certificates
    def has_certificate(self) -> bool:
        return self.cert_path.exists()

    def certificate(self) -> x509.Certificate:
        certs = load_pem_certs(self.cert_path, "device certificate")
        if len(certs) != 1:
            raise StateDirError(
                f"device certificate {self.cert_path} must hold exactly one "
                f"certificate, found {len(certs)}"
            )
        return certs[0]

    def chain(self) -> list[x509.Certificate]:
        if not self.chain_path.exists():
            return []
        return load_pem_certs(self.chain_path, "certificate chain")

    def trust_anchors(self) -> list[x509.Certificate]:
        if not self.trust_dir.is_dir():
            return []
        certs: list[x509.Certificate] = []
        for path in sorted(self.trust_dir.glob("*.pem")):
            certs.extend(load_pem_certs(path, "trust anchor"))
        return certs

    def crls(self) -> list[x509.CertificateRevocationList]:
        if not self.crl_dir.is_dir():
            return []
        crls: list[x509.CertificateRevocationList] = []
        for path in sorted(self.crl_dir.glob("*.pem")):
            try:
                crls.append(x509.load_pem_x509_crl(path.read_bytes()))
            except ValueError as exc:
                raise StateDirError(f"CRL {path} is not a PEM CRL: {exc}") from None
        return crls

    # installation
    def write_certificate(self, cert: x509.Certificate) -> None:
        atomic_write(self.cert_path, pem_certs([cert]))

    def write_chain(self, chain: list[x509.Certificate]) -> None:
        atomic_write(self.chain_path, pem_certs(chain))

    def write_trust_anchor(self, cert: x509.Certificate) -> Path:
        ensure_private_dir(self.trust_dir)
        path = self.trust_dir / f"{ski_name(cert)}.pem"
        atomic_write(path, pem_certs([cert]))
        return path

    def write_crl(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> Path:
        """Store ``crl`` under the issuing CA's name, replacing the previous one."""
        ensure_private_dir(self.crl_dir)
        path = self.crl_dir / f"{ski_name(issuer)}.pem"
        atomic_write(path, crl.public_bytes(serialization.Encoding.PEM))
        return path


__all__ = [
    "CHAIN",
    "CRL_DIR",
    "DEVICE_CERT",
    "IDENTITY",
    "KEY_FILE",
    "SECRET_FILE",
    "TRUST_DIR",
    "DeviceState",
    "Identity",
    "KeyRef",
    "application_uri",
    "atomic_write",
    "check_secret_dir",
    "ensure_private_dir",
    "ensure_secret_dir",
    "load_pem_certs",
    "pem_certs",
    "ski_name",
    "thumbprint",
]

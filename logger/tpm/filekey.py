"""The no-TPM fallback: an encrypted PKCS#8 key file and the secrets that open it.

For development machines and the legacy batch flow (loggers without a TPM). The key file is
encrypted PEM (PKCS#8, openssl opens it with the passphrase), mode 0600, and refused when group
or others can read it - a key anyone on the box can copy is not a device identity. The daemon
gets the passphrase from a systemd credential (``$CREDENTIALS_DIRECTORY/<name>``, which systemd
can keep encrypted with the TPM or a host key) or from a 0600 file; never from the command line
(visible in ``ps``) or the configuration (copied around, backed up).
"""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import NoDigestInfo, Prehashed
from cryptography.hazmat.primitives.hashes import HashAlgorithm

from logger.fileio import replace_file
from logger.tpm.errors import KeyFileError

#: Name of the systemd credential (LoadCredential=/SetCredentialEncrypted=) holding the
#: passphrase of the device key file, or the auth value of the TPM key.
CREDENTIAL_NAME = "mbus-device-key"


def check_private_file(path: Path, what: str) -> None:
    """Refuse a secret file that group or others can read, or that is not a regular file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyFileError(f"{what} {path} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{what} {path} is not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{what} {path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
        )


def read_secret_file(path: Path, what: str = "secret file") -> bytes:
    """A passphrase or auth value from a 0600 file; one trailing newline is not part of it."""
    check_private_file(path, what)
    data = path.read_bytes()
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise KeyFileError(f"{what} {path} is empty")
    return data


def find_secret(state_dir: Path, secret_file: Path | None = None) -> bytes | None:
    """The device key's secret: explicit file, then systemd credential, then the state dir.

    Returns None when none of them exists (a TPM key with an empty auth value needs none).
    """
    if secret_file is not None:
        return read_secret_file(secret_file)
    creds = os.environ.get("CREDENTIALS_DIRECTORY")
    if creds:
        candidate = Path(creds) / CREDENTIAL_NAME
        if candidate.exists():
            # systemd makes credentials 0400/0440 root-owned in a private mount: trust its mode.
            data = candidate.read_bytes().rstrip(b"\r\n")
            if data:
                return data
    local = state_dir / "device-key.secret"
    if local.exists():
        return read_secret_file(local, "device key secret")
    return None


def write_private_bytes(path: Path, data: bytes) -> None:
    """Write a secret atomically and durably, mode 0600 from the first byte (no umask window)."""
    replace_file(path, data, 0o600)


def encrypt_private_key(key: rsa.RSAPrivateKey, passphrase: bytes) -> bytes:
    """Encrypted PKCS#8 PEM (PBES2, AES-256-CBC) that ``openssl pkey`` opens."""
    if not passphrase:
        raise KeyFileError("refusing to write a private key with an empty passphrase")
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )


def write_key_file(path: Path, key: rsa.RSAPrivateKey, passphrase: bytes) -> None:
    write_private_bytes(path, encrypt_private_key(key, passphrase))


def load_key_file(
    path: Path, passphrase: bytes | None, what: str = "key file"
) -> rsa.RSAPrivateKey:
    """Load an encrypted RSA key file after checking its mode; clear errors for each failure."""
    check_private_file(path, what)
    if not passphrase:
        raise KeyFileError(f"{what} {path} needs a passphrase and none was given")
    data = path.read_bytes()
    if b"ENCRYPTED" not in data:
        raise KeyFileError(f"{what} {path} is not encrypted; refusing to use it")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except ValueError:
        raise KeyFileError(f"{what} {path}: wrong passphrase or damaged file") from None
    except TypeError as exc:
        raise KeyFileError(f"{what} {path}: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{what} {path} does not hold an RSA key")
    return key


class CountingRsaKey(rsa.RSAPrivateKey):
    """A software RSA key that counts its private-key operations, like the TPM key does.

    The uplink reports private-key operations per connection whatever holds the key; keeping
    the counter in both implementations lets it do so without knowing which one it has.
    """

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self._lock = threading.Lock()
        self.operations = 0

    def _count(self) -> None:
        with self._lock:
            self.operations += 1

    def sign(
        self,
        data: bytes,
        padding: asym_padding.AsymmetricPadding,
        algorithm: HashAlgorithm | Prehashed | NoDigestInfo,
    ) -> bytes:
        self._count()
        return self._key.sign(data, padding, algorithm)

    def decrypt(self, ciphertext: bytes, padding: asym_padding.AsymmetricPadding) -> bytes:
        self._count()
        return self._key.decrypt(ciphertext, padding)

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        return self._key.private_numbers()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        return self._key.private_bytes(encoding, format, encryption_algorithm)

    def __copy__(self) -> CountingRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> CountingRsaKey:
        return self

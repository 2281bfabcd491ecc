"""``mbus-provision update``: the manufacturer's update signing key and signed bundles.

The signing key is Ed25519, kept encrypted (PKCS#8 PEM, openssl opens it with the PKI
passphrase) under the PKI directory; its public half is what devices pin at enrolment
(``mbus-logger update trust``). The bundle format lives in :mod:`logger.update`, next to its
verifier, so writer and reader cannot drift::

    PKI/update/signing-key.pem        encrypted Ed25519 private key, 0600
    PKI/update/update-signing.pub     its public key (SubjectPublicKeyInfo PEM), 0644
"""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from logger.cli.common import OK, USAGE, CliError, add_format, emit
from logger.fileio import replace_file
from logger.update import (
    PRODUCT,
    UpdateError,
    key_fingerprint,
    parse_version,
    write_bundle,
)

KEY_DIR = "update"
PRIVATE_KEY = "signing-key.pem"
PUBLIC_KEY = "update-signing.pub"


class SigningKeyError(Exception):
    """The update signing key is missing, unprotected or cannot be opened."""


def key_paths(pki: Path) -> tuple[Path, Path]:
    return pki / KEY_DIR / PRIVATE_KEY, pki / KEY_DIR / PUBLIC_KEY


def generate_signing_key(pki: Path, passphrase: bytes) -> tuple[Path, str]:
    """Create the signing key pair under ``pki``; refuses to overwrite an existing key.

    Returns the public key's path and its SHA-256 fingerprint (SubjectPublicKeyInfo DER).
    """
    if not passphrase:
        raise SigningKeyError("refusing to write the update signing key without a passphrase")
    private_path, public_path = key_paths(pki)
    if private_path.exists():
        raise SigningKeyError(f"an update signing key already exists at {private_path}")
    pki.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_path.parent.mkdir(mode=0o700, exist_ok=True)
    for directory in (pki, private_path.parent):
        if directory.stat().st_mode & 0o077:
            raise SigningKeyError(
                f"{directory} is accessible by group or others "
                f"(mode {stat.S_IMODE(directory.stat().st_mode):04o}); "
                "refusing to write a key there"
            )
    key = Ed25519PrivateKey.generate()
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    replace_file(private_path, encrypted, 0o600)
    replace_file(public_path, public, 0o644)
    return public_path, key_fingerprint(public)


def load_signing_key(pki: Path, passphrase: bytes) -> Ed25519PrivateKey:
    """Open the encrypted signing key; refuses a key file group or others can read."""
    private_path, _ = key_paths(pki)
    try:
        st = private_path.stat()
    except FileNotFoundError:
        raise SigningKeyError(
            f"no update signing key at {private_path} (create it with 'update keygen')"
        ) from None
    if st.st_mode & 0o077:
        raise SigningKeyError(
            f"update signing key {private_path} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it"
        )
    if not passphrase:
        raise SigningKeyError("the update signing key needs the PKI passphrase")
    try:
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=passphrase)
    except (ValueError, TypeError):
        raise SigningKeyError(
            f"update signing key {private_path}: wrong passphrase or damaged file"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{private_path} does not hold an Ed25519 key")
    return key


def sign_release(
    pki: Path,
    passphrase: bytes,
    release_dir: Path,
    out: Path,
    *,
    version: str,
    architecture: str = "all",
    product: str = PRODUCT,
    created: str | None = None,
) -> dict[str, Any]:
    """Pack ``release_dir`` into a bundle signed with the PKI's update key."""
    key = load_signing_key(pki, passphrase)
    manifest = write_bundle(
        release_dir,
        out,
        version=version,
        sign=key.sign,
        product=product,
        architecture=architecture,
        created=created,
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return {
        "bundle": str(out),
        "product": manifest.product,
        "version": manifest.version,
        "architecture": manifest.architecture,
        "created": manifest.created,
        "files": len(manifest.entries),
        "bytes": manifest.total_bytes,
        "key_sha256": key_fingerprint(public),
    }


# --------------------------------------------------------------------------------------------
# Command line (mounted by provisioning.cli)


def register(subparsers: Any) -> None:
    """Add ``update keygen`` and ``update sign`` to ``mbus-provision``."""
    parser = subparsers.add_parser(
        "update",
        help="the update signing key and signed update bundles",
        description="The manufacturer's update signing key (Ed25519) and signed bundles.",
    )
    sub = parser.add_subparsers(dest="update_command", metavar="ACTION")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        # SUPPRESS: a --pki/--passphrase-file given before the sub-command stays in effect.
        p.add_argument("--pki", type=Path, default=argparse.SUPPRESS, help="PKI directory")
        p.add_argument(
            "--passphrase-file",
            type=Path,
            default=argparse.SUPPRESS,
            help="file with the PKI passphrase (default: $MBUS_PKI_PASSPHRASE)",
        )
        add_format(p)

    p = sub.add_parser("keygen", help="create the update signing key (encrypted, in the PKI)")
    common(p)
    p.set_defaults(handler=_keygen)

    p = sub.add_parser("sign", help="pack and sign a release tree as an update bundle")
    p.add_argument("release_dir", type=Path, metavar="RELEASE_DIR")
    common(p)
    p.add_argument("--version", required=True, help="release version (N.N.N)")
    p.add_argument("--out", type=Path, required=True, help="bundle file to write")
    p.add_argument(
        "--architecture",
        default="all",
        help="Debian architecture the release runs on (amd64, arm64, ...; default all)",
    )
    p.add_argument("--product", default=PRODUCT, help=f"product name (default {PRODUCT})")
    p.set_defaults(handler=_sign)


def _pki(args: argparse.Namespace) -> Path:
    pki = getattr(args, "pki", None)
    if pki is None:
        raise CliError("--pki DIR is required", USAGE)
    return Path(pki)


def _passphrase(args: argparse.Namespace) -> bytes:
    path = getattr(args, "passphrase_file", None)
    if path is not None:
        from logger.tpm.errors import KeyFileError
        from logger.tpm.filekey import read_secret_file

        try:
            return read_secret_file(Path(path), "passphrase file")
        except KeyFileError as exc:
            raise CliError(str(exc), USAGE) from None
    value = os.environ.get("MBUS_PKI_PASSPHRASE", "")
    if not value:
        raise CliError(
            "the update signing key needs the PKI passphrase: set MBUS_PKI_PASSPHRASE "
            "or give --passphrase-file",
            USAGE,
        )
    return value.encode()


def _keygen(args: argparse.Namespace) -> int:
    try:
        public_path, fingerprint = generate_signing_key(_pki(args), _passphrase(args))
    except (SigningKeyError, UpdateError) as exc:
        raise CliError(str(exc), USAGE) from None
    emit(
        args,
        {"public_key": str(public_path), "sha256": fingerprint},
        f"update signing key created; public key {public_path}\n"
        f"SHA-256 {fingerprint} (pin it on devices: mbus-logger update trust)",
    )
    return OK


def _sign(args: argparse.Namespace) -> int:
    try:
        parse_version(args.version)
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    try:
        doc = sign_release(
            _pki(args),
            _passphrase(args),
            args.release_dir,
            args.out,
            version=args.version,
            architecture=args.architecture,
            product=args.product,
        )
    except (SigningKeyError, UpdateError) as exc:
        raise CliError(str(exc), USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot write the bundle: {exc}", USAGE) from None
    emit(
        args,
        doc,
        f"{doc['bundle']}: {doc['product']} {doc['version']} ({doc['architecture']}), "
        f"{doc['files']} entries, signed with key {doc['key_sha256'][:16]}...",
    )
    return OK

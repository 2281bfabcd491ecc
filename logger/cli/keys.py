"""``mbus-logger key info`` and ``mbus-logger cert show|csr|install``: the device's identity.

The device-side half of the offline enrolment (``cert csr`` on the device, ``mbus-provision
device sign`` at the cloud, ``cert install`` on the device) and the technician's view of the
key and certificate. tpm2-pytss is imported only by the commands that reach the TPM.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path
from typing import Any

from logger.cli.common import (
    OK,
    PERMANENT,
    TRANSIENT,
    USAGE,
    CliError,
    add_format,
    print_json,
)


def _fail(exc: Exception) -> CliError:
    """Our key/state/enrolment errors -> CliError with the exit code of CLI.md."""
    from logger.tpm.errors import DeviceKeyError, StateDirError

    if isinstance(exc, DeviceKeyError):
        return CliError(str(exc), TRANSIENT if exc.transient else PERMANENT)
    if isinstance(exc, StateDirError | ValueError):
        return CliError(str(exc), USAGE)
    return CliError(str(exc), PERMANENT)


def _quiet_tss(args: argparse.Namespace) -> None:
    if not getattr(args, "verbose", False):
        os.environ.setdefault("TSS2_LOG", "all+NONE")


def _key_info(args: argparse.Namespace) -> int:
    from logger.tpm.errors import DeviceKeyError, StateDirError
    from logger.tpm.state import DeviceState

    _quiet_tss(args)
    try:
        state = DeviceState.open(Path(args.state_dir))
        identity = state.identity()
        ref = identity.key
        doc: dict[str, Any] = {
            "state_dir": str(state.root),
            "type": ref.type,
            "pending_key": identity.pending_key.describe() if identity.pending_key else None,
        }
        if ref.type == "tpm":
            from logger.tpm.tpm import Tpm

            assert ref.handle is not None
            with Tpm(args.tpm) as tpm:
                info = tpm.key_info(ref.handle)
            doc.update(info.as_dict())
            doc.update({"tcti": tpm.tcti, "pcr_policy": ref.pcrs, "auth_value": ref.auth})
        else:
            path = state.key_file_path(ref)
            from logger.tpm.filekey import check_private_file

            check_private_file(path, "device key file")
            doc.update(
                {
                    "path": str(path),
                    "mode": f"{path.stat().st_mode & 0o777:04o}",
                    "encrypted": b"ENCRYPTED" in path.read_bytes(),
                }
            )
            if state.has_certificate():
                from cryptography.hazmat.primitives import serialization

                doc["public_key"] = (
                    state.certificate()
                    .public_key()
                    .public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    )
                    .decode()
                )
    except (DeviceKeyError, StateDirError) as exc:
        raise _fail(exc) from None
    if args.format == "json":
        print_json(doc)
    else:
        for name, value in doc.items():
            if name == "public_key":
                print(f"{name}:\n{value}", end="")
            else:
                print(f"{name}: {value if value is not None else '-'}")
    return OK


def _cert_show(args: argparse.Namespace) -> int:
    from logger.tpm.errors import StateDirError
    from logger.tpm.state import DeviceState, application_uri, thumbprint

    try:
        state = DeviceState.open(Path(args.state_dir))
        cert = state.certificate()
        chain = state.chain()
    except StateDirError as exc:
        raise _fail(exc) from None
    now = dt.datetime.now(dt.UTC)
    left = cert.not_valid_after_utc - now
    doc = {
        "path": str(state.cert_path),
        "subject": cert.subject.rfc4514_string(),
        "application_uri": application_uri(cert),
        "thumbprint": thumbprint(cert),
        "not_before": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "not_after": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "days_left": left.days,
        "issuer_chain": [cert.issuer.rfc4514_string()]
        + [c.issuer.rfc4514_string() for c in chain if c.subject != c.issuer],
    }
    if args.format == "json":
        print_json(doc)
    else:
        for name, value in doc.items():
            if name == "issuer_chain":
                print("issuer chain:")
                for depth, issuer in enumerate(value, 1):  # type: ignore[arg-type]
                    print(f"  {depth}. {issuer}")
            else:
                print(f"{name}: {value}")
        if left.days < 183:
            print(f"warning: the certificate expires in {left.days} days; renew it")
    return OK


def _cert_csr(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from logger.tpm.errors import DeviceKeyError, StateDirError
    from logger.tpm.state import atomic_write
    from provisioning.enroll import EnrolmentError, make_csr
    from provisioning.profile import ProfileError

    _quiet_tss(args)
    options = _options(args)
    out = Path(args.out)
    try:
        csr = make_csr(
            Path(args.state_dir),
            options,
            args.serial,
            args.application_uri,
            args.org,
            tuple(args.dns or ()),
            new_key=args.new_key,
        )
        atomic_write(out, csr.public_bytes(serialization.Encoding.PEM))
    except (DeviceKeyError, StateDirError, EnrolmentError, ProfileError) as exc:
        raise _fail(exc) from None
    print(f"CSR for {csr.subject.rfc4514_string()} written to {out}")
    return OK


def _options(args: argparse.Namespace) -> Any:
    from logger.tpm.filekey import read_secret_file
    from provisioning.enroll import KeyOptions

    options = KeyOptions(tcti=args.tpm, use_file=bool(getattr(args, "file_key", False)))
    if getattr(args, "pcr", None):
        options.pcrs = args.pcr
    if getattr(args, "handle", None):
        from logger.tpm.tpm import parse_handle

        try:
            options.handle = parse_handle(args.handle)
        except ValueError as exc:
            raise CliError(str(exc), USAGE) from None
    secret_file = getattr(args, "secret_file", None)
    if secret_file:
        try:
            secret = read_secret_file(Path(secret_file), "device key secret file")
        except Exception as exc:
            raise _fail(exc) from None
        # The key reference in the state dir says which of the two the secret opens.
        options.file_passphrase = secret
        if not options.use_file:
            options.auth = secret
    elif options.use_file:
        value = os.environ.get("MBUS_DEVICE_KEY_PASSPHRASE")
        options.file_passphrase = value.encode() if value else None
    return options


def _cert_install(args: argparse.Namespace) -> int:
    from cryptography import x509

    from logger.tpm.errors import DeviceKeyError, StateDirError
    from logger.tpm.state import load_pem_certs
    from provisioning.enroll import EnrolmentError, install_certificate, install_pkcs12

    _quiet_tss(args)
    if bool(args.cert) == bool(args.p12):
        raise CliError("give either CERT or --p12 FILE", USAGE)
    try:
        if args.p12:
            options = _options(args)
            p12_pass = _p12_passphrase(args)
            key_pass = (
                options.file_passphrase or os.environ.get("MBUS_DEVICE_KEY_PASSPHRASE", "").encode()
            )
            installed = install_pkcs12(
                Path(args.state_dir), Path(args.p12).read_bytes(), p12_pass, key_pass
            )
        else:
            certs = load_pem_certs(Path(args.cert), "certificate")
            chain = load_pem_certs(Path(args.chain), "chain") if args.chain else None
            crls = []
            if args.crl:
                data = Path(args.crl).read_bytes()
                marker = b"-----BEGIN X509 CRL-----"
                for part in data.split(marker)[1:]:
                    crls.append(x509.load_pem_x509_crl(marker + part))
            installed = install_certificate(
                Path(args.state_dir),
                certs[0],
                chain if chain is not None else certs[1:] or None,
                crls,
                _options(args),
            )
    except (DeviceKeyError, StateDirError, EnrolmentError) as exc:
        raise _fail(exc) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the certificate, chain or CRL: {exc}", USAGE) from None
    print(
        f"installed {installed.thumbprint}"
        + (" (renewal: the new key is now in use)" if installed.renewed else "")
        + (" - trust anchors taken from the chain" if installed.trust_established else "")
    )
    return OK


def _p12_passphrase(args: argparse.Namespace) -> bytes:
    from logger.tpm.filekey import read_secret_file

    if args.p12_passphrase_file:
        try:
            return read_secret_file(Path(args.p12_passphrase_file), "PKCS#12 passphrase file")
        except Exception as exc:
            raise _fail(exc) from None
    value = os.environ.get("MBUS_BATCH_PASSPHRASE")
    if not value:
        raise CliError(
            "the PKCS#12 file needs its batch passphrase: --p12-passphrase-file "
            "or MBUS_BATCH_PASSPHRASE",
            USAGE,
        )
    return value.encode()


def register(subparsers: Any) -> None:
    key = subparsers.add_parser("key", help="the device key (TPM or encrypted file)")
    key_sub = key.add_subparsers(dest="key_command", metavar="SUBCOMMAND")
    key_sub.required = True
    p = key_sub.add_parser("info", help="handle, attributes, public key, policy")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--tpm", metavar="TCTI", help="default device:/dev/tpmrm0")
    add_format(p)
    p.set_defaults(handler=_key_info)

    cert = subparsers.add_parser("cert", help="the device certificate: show, CSR, install")
    cert_sub = cert.add_subparsers(dest="cert_command", metavar="SUBCOMMAND")
    cert_sub.required = True
    p = cert_sub.add_parser("show", help="subject, URI, thumbprint, validity, issuers")
    p.add_argument("--state-dir", required=True)
    add_format(p)
    p.set_defaults(handler=_cert_show)

    p = cert_sub.add_parser("csr", help="make the key (if needed) and a CSR signed by it")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--tpm", metavar="TCTI", help="default device:/dev/tpmrm0")
    p.add_argument(
        "--file-key",
        action="store_true",
        help="no TPM: encrypted key file (MBUS_DEVICE_KEY_PASSPHRASE)",
    )
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--serial", help="first enrolment: the manufacturing serial number")
    p.add_argument("--application-uri", help="first enrolment: the ApplicationUri")
    p.add_argument("--org", help="first enrolment: the organization")
    p.add_argument("--dns", action="append", metavar="NAME")
    p.add_argument("--pcr", metavar="BANK:N,N", help="bind a new TPM key to these PCRs")
    p.add_argument("--handle", help="persistent handle for a new TPM key")
    p.add_argument(
        "--secret-file", metavar="FILE", help="0600 file: TPM auth value or key file passphrase"
    )
    p.add_argument("--new-key", action="store_true", help="renewal: always make a new key")
    p.set_defaults(handler=_cert_csr)

    p = cert_sub.add_parser("install", help="install a signed certificate")
    p.add_argument("--state-dir", required=True)
    p.add_argument("cert", metavar="CERT", nargs="?")
    p.add_argument(
        "--p12",
        metavar="FILE",
        help="legacy batch: key and certificate from an encrypted PKCS#12 file",
    )
    p.add_argument(
        "--p12-passphrase-file",
        metavar="FILE",
        help="the batch passphrase (else MBUS_BATCH_PASSPHRASE)",
    )
    p.add_argument("--chain", metavar="FILE")
    p.add_argument("--crl", metavar="FILE")
    p.add_argument("--tpm", metavar="TCTI", help="default device:/dev/tpmrm0")
    p.add_argument(
        "--secret-file", metavar="FILE", help="0600 file: TPM auth value or key file passphrase"
    )
    p.set_defaults(handler=_cert_install)

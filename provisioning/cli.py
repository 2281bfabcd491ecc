"""``mbus-provision``: the cloud provider's and the factory station's command line.

A thin layer over :mod:`provisioning.pki`, :mod:`provisioning.station`,
:mod:`provisioning.batch` and :mod:`provisioning.reminders`: parse, call, print. Conventions
of CLI.md: ``--pki DIR`` (created 0700 when missing), the CA passphrase from
``--passphrase-file`` or ``MBUS_PKI_PASSPHRASE`` (never an option value), ``--format json``
prints one JSON document, exit codes from :mod:`logger.cli.common`:

* 2 - bad input: a malformed name, URI, CSR or option;
* 3 - transient: no TPM reachable, an SMTP server or webhook down (retry later);
* 4 - refused: wrong passphrase, unknown organization, duplicate serial, expired CA, a CSR
  that does not match the registration, a revoked organization.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from logger.cli.common import (
    CHECK_FAILED,
    OK,
    PERMANENT,
    TRANSIENT,
    USAGE,
    CliError,
    add_format,
    emit,
    print_json,
    print_table,
    run_handler,
)

_LOGGER = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


# -- secrets ------------------------------------------------------------------------------


def _secret(args: argparse.Namespace, option: str, env: str, what: str) -> bytes | None:
    """A secret from ``--<option>`` (a 0600 file) or the environment variable ``env``."""
    from logger.tpm.filekey import read_secret_file

    path = getattr(args, option, None)
    if path:
        return read_secret_file(Path(path), what)
    value = os.environ.get(env)
    return value.encode() if value else None


def _pki_passphrase(args: argparse.Namespace) -> bytes | None:
    return _secret(args, "passphrase_file", "MBUS_PKI_PASSPHRASE", "PKI passphrase file")


@contextlib.contextmanager
def _open_pki(args: argparse.Namespace) -> Iterator[Any]:
    from provisioning.pki import Pki

    pki = Pki(Path(args.pki), _pki_passphrase(args))
    try:
        yield pki
    finally:
        pki.close()


def _utc(value: dt.datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def _cert_doc(cert: Any) -> dict[str, Any]:
    from provisioning import profile

    return {
        "thumbprint": profile.thumbprint(cert),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "application_uri": profile.application_uri(cert),
        "serial_number": f"{cert.serial_number:x}",
        "not_before": _utc(cert.not_valid_before_utc),
        "not_after": _utc(cert.not_valid_after_utc),
    }


# -- root and organizations -----------------------------------------------------------------


def _root_init(args: argparse.Namespace) -> int:
    with _open_pki(args) as pki:
        cert = pki.init_root(args.name, years=args.years)
    emit(
        args,
        _cert_doc(cert),
        f"root CA {args.name} created, thumbprint {_cert_doc(cert)['thumbprint']}",
    )
    return OK


def _org_create(args: argparse.Namespace) -> int:
    with _open_pki(args) as pki:
        cert = pki.create_org(args.org, args.contact, years=args.years)
    doc = {"org": args.org, "contact": args.contact, **_cert_doc(cert)}
    emit(
        args,
        doc,
        f"organization {args.org} created (CA thumbprint {doc['thumbprint']}, "
        f"valid until {doc['not_after']})",
    )
    return OK


def _org_revoke(args: argparse.Namespace) -> int:
    with _open_pki(args) as pki:
        pki.revoke_org(args.org, args.reason)
    emit(
        args,
        {"org": args.org, "revoked": True},
        f"organization CA of {args.org} revoked; root CRL re-signed and published",
    )
    return OK


# -- devices --------------------------------------------------------------------------------


def _key_options(args: argparse.Namespace) -> Any:
    from logger.tpm.tpm import parse_handle
    from provisioning.enroll import KeyOptions

    use_file = bool(getattr(args, "file_key", False))
    auth = None
    if getattr(args, "auth_file", None):
        from logger.tpm.filekey import read_secret_file

        auth = read_secret_file(Path(args.auth_file), "TPM auth value file")
    passphrase = None
    if use_file:
        passphrase = _secret(
            args, "key_passphrase_file", "MBUS_DEVICE_KEY_PASSPHRASE", "device key passphrase file"
        )
    if use_file and (getattr(args, "pcr", None) or auth):
        raise CliError("--pcr and --auth-file apply to TPM keys, not to --file-key", USAGE)
    try:
        handle = parse_handle(args.handle) if getattr(args, "handle", None) else None
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    options = KeyOptions(
        tcti=getattr(args, "tpm", None),
        use_file=use_file,
        file_passphrase=passphrase,
        auth=auth,
        pcrs=getattr(args, "pcr", None),
        replace=bool(getattr(args, "replace_key", False)),
    )
    if handle is not None:
        options.handle = handle
    if options.pcrs:
        from logger.tpm.tpm import PcrSelection

        try:
            PcrSelection.parse(options.pcrs)
        except ValueError as exc:
            raise CliError(str(exc), USAGE) from None
    return options


def _installed_doc(installed: Any, state_dir: str, serial: str) -> dict[str, Any]:
    return {
        "serial": serial,
        "state_dir": state_dir,
        "renewed": installed.renewed,
        **_cert_doc(installed.certificate),
    }


def _device_enroll(args: argparse.Namespace) -> int:
    from provisioning.station import enroll_device

    options = _key_options(args)
    with _open_pki(args) as pki:
        installed = enroll_device(
            pki,
            args.org,
            args.serial,
            args.application_uri,
            Path(args.state_dir),
            options,
            tuple(args.dns or ()),
            args.days,
        )
    doc = _installed_doc(installed, args.state_dir, args.serial)
    emit(
        args,
        doc,
        f"enrolled {args.serial} ({args.application_uri}) in {args.org}: "
        f"thumbprint {doc['thumbprint']}, valid until {doc['not_after']}, state manufactured",
    )
    return OK


def _device_register(args: argparse.Namespace) -> int:
    with _open_pki(args) as pki:
        pki.register_device(args.org, args.serial, args.application_uri)
    emit(
        args,
        {"serial": args.serial, "application_uri": args.application_uri, "org": args.org},
        f"registered {args.serial} as {args.application_uri}",
    )
    return OK


def _device_sign(args: argparse.Namespace) -> int:
    from logger.tpm.state import atomic_write, pem_certs
    from provisioning import profile

    try:
        data = Path(args.csr).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read CSR {args.csr}: {exc.strerror}", USAGE) from None
    csr = profile.load_csr(data, args.csr)
    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} already exists; refusing to overwrite it", USAGE)
    with _open_pki(args) as pki, pki.registry.transaction():
        cert = pki.sign_device_csr(
            args.org,
            csr,
            args.csr,
            days=args.days,
            expect_serial=args.serial,
            expect_uri=args.application_uri,
        )
        atomic_write(out, pem_certs([cert]))
        if args.chain_out:
            atomic_write(Path(args.chain_out), pem_certs(pki.chain(args.org)))
        if args.crl_out:
            atomic_write(
                Path(args.crl_out),
                pki.ca(args.org).crl_path.read_bytes() + pki.ca("root").crl_path.read_bytes(),
            )
    doc = _cert_doc(cert)
    emit(args, doc, f"signed {doc['subject']} -> {out} (thumbprint {doc['thumbprint']})")
    return OK


def _device_revoke(args: argparse.Namespace) -> int:
    if bool(args.thumbprint) == bool(args.serial):
        raise CliError("give either a THUMBPRINT or --serial SN", USAGE)
    revoked: list[str] = []
    with _open_pki(args) as pki:
        if args.thumbprint:
            pki.revoke(args.thumbprint, args.reason)
            from provisioning.profile import normalise_thumbprint

            revoked.append(normalise_thumbprint(args.thumbprint))
        else:
            if pki.registry.device(args.serial) is None:
                raise CliError(f"serial {args.serial} is not registered", PERMANENT)
            rows = [
                r
                for r in pki.registry.certificates(kind="logger", device_serial=args.serial)
                if r.state != "revoked"
            ]
            if not rows:
                raise CliError(f"serial {args.serial} has no certificate to revoke", PERMANENT)
            for row in rows:
                pki.revoke(row.thumbprint, args.reason)
                revoked.append(row.thumbprint)
    emit(args, {"revoked": revoked}, "\n".join(f"revoked {t}" for t in revoked))
    return OK


def _device_renew(args: argparse.Namespace) -> int:
    from provisioning.station import renew_device

    options = _key_options(args)
    with _open_pki(args) as pki:
        installed = renew_device(pki, args.serial, Path(args.state_dir), options, args.days)
    doc = _installed_doc(installed, args.state_dir, args.serial)
    emit(
        args,
        doc,
        f"renewed {args.serial}: new key, thumbprint {doc['thumbprint']}, valid "
        f"until {doc['not_after']}; the previous certificate is superseded",
    )
    return OK


# -- batch, servers, clients ----------------------------------------------------------------


def _batch_issue(args: argparse.Namespace) -> int:
    from provisioning.batch import issue_batch

    passphrase = _secret(
        args, "batch_passphrase_file", "MBUS_BATCH_PASSPHRASE", "batch passphrase file"
    )
    with _open_pki(args) as pki:
        items = issue_batch(
            pki,
            args.org,
            args.count,
            Path(args.out),
            passphrase or b"",
            args.serial_prefix,
            args.uri_template,
            args.days,
        )
    docs = [i.as_dict() for i in items]
    emit(
        args,
        docs,
        lambda: print_table(docs, ["serial", "application_uri", "thumbprint", "not_after", "file"]),
    )
    return OK


def _server_issue(args: argparse.Namespace) -> int:
    passphrase = _secret(
        args, "receiver_passphrase_file", "MBUS_RECEIVER_PASSPHRASE", "receiver passphrase file"
    )
    with _open_pki(args) as pki:
        cert = pki.issue_receiver(
            args.org,
            tuple(args.dns),
            args.application_uri,
            Path(args.out),
            passphrase or b"",
            args.days,
        )
    doc = {"dir": args.out, **_cert_doc(cert)}
    emit(
        args,
        doc,
        f"receiver directory {args.out} written (thumbprint {doc['thumbprint']});"
        " it is now a publish target for the CRLs of " + args.org,
    )
    return OK


def _client_issue(args: argparse.Namespace) -> int:
    passphrase = _secret(
        args, "client_passphrase_file", "MBUS_CLIENT_PASSPHRASE", "client passphrase file"
    )
    with _open_pki(args) as pki:
        cert = pki.issue_operator(args.org, args.name, Path(args.out), passphrase or b"", args.days)
    doc = {"dir": args.out, "role": "operator", **_cert_doc(cert)}
    emit(
        args,
        doc,
        f"operator client certificate for {args.name} written to {args.out} "
        f"(read-only role, thumbprint {doc['thumbprint']})",
    )
    return OK


# -- CRLs, registry, reminders -------------------------------------------------------------


def _crl_refresh(args: argparse.Namespace) -> int:
    with _open_pki(args) as pki:
        done = pki.refresh_crls(days=args.days, force=args.force)
    emit(
        args,
        {"resigned": done},
        "re-signed: " + (", ".join(done) if done else "nothing (all CRLs fresh)"),
    )
    return OK


def _registry_list(args: argparse.Namespace) -> int:
    from provisioning.profile import utcnow

    with _open_pki(args) as pki:
        if args.org and pki.registry.org(args.org) is None:
            raise CliError(f"unknown organization {args.org!r}", PERMANENT)
        rows = pki.registry.device_rows(args.org, utcnow())
    columns = ["serial", "application_uri", "org", "thumbprint", "state", "location", "not_after"]
    if args.format == "json":
        print_json(rows)
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    else:
        print_table(rows, columns)
    return OK


def _registry_import(args: argparse.Namespace) -> int:
    try:
        raw = Path(args.file).read_text() if args.file != "-" else sys.stdin.read()
        reports = json.loads(raw)
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", USAGE) from None
    except ValueError as exc:
        raise CliError(f"{args.file} is not JSON: {exc}", USAGE) from None
    if isinstance(reports, dict) and isinstance(reports.get("devices"), list):
        reports = reports["devices"]
    if not isinstance(reports, list) or not all(isinstance(r, dict) for r in reports):
        raise CliError(
            f"{args.file}: expected a list of device objects (the receiver's "
            "'devices --format json')",
            USAGE,
        )
    with _open_pki(args) as pki:
        results = pki.import_installations(reports)
    emit(
        args,
        results,
        lambda: print_table(results, ["application_uri", "serial", "thumbprint", "result"]),
    )
    return OK


def _remind(args: argparse.Namespace) -> int:
    from provisioning import reminders
    from provisioning.profile import utcnow

    smtp = webhook = None
    try:
        if args.smtp:
            if not args.sender:
                raise CliError("--smtp needs --from ADDR", USAGE)
            smtp = reminders.Smtp.parse(args.smtp, args.sender)
        if args.webhook:
            webhook = reminders.Webhook(args.webhook)
        with _open_pki(args) as pki:
            result = reminders.run(
                pki.registry, utcnow(), args.within, smtp, webhook, args.to, args.dry_run
            )
    except ValueError as exc:
        raise CliError(str(exc), USAGE) from None
    doc = {
        "dry_run": result.dry_run,
        "sent": [r.as_dict() for r in result.sent],
        "failed": [{**r.as_dict(), "error": e} for r, e in result.failed],
    }

    def text() -> None:
        verb = "would send" if result.dry_run else "sent"
        for r in result.sent:
            print(
                f"{verb}: {r.kind} {r.serial or r.subject} ({r.application_uri or '-'}, "
                f"{r.thumbprint}) expires {r.not_after:%Y-%m-%d}, {r.days_left} days left, "
                f"threshold {r.threshold} -> {r.contact or '(no contact)'}"
            )
        for r, e in result.failed:
            print(f"FAILED: {r.thumbprint}: {e}")
        if not result.sent and not result.failed:
            print("no reminders due")

    emit(args, doc, text)
    return TRANSIENT if result.failed else OK


# -- parser ---------------------------------------------------------------------------------


def _key_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--tpm", metavar="TCTI", help="the device's TPM (default device:/dev/tpmrm0)"
    )
    group.add_argument(
        "--file-key",
        action="store_true",
        help="no TPM: an encrypted key file in the state dir (passphrase from "
        "--key-passphrase-file or MBUS_DEVICE_KEY_PASSPHRASE)",
    )
    p.add_argument("--handle", help="persistent TPM handle of the key (default 0x81000002)")
    p.add_argument(
        "--pcr",
        metavar="BANK:N,N",
        help="bind the TPM key to the current values of these PCRs, e.g. sha256:0,7",
    )
    p.add_argument(
        "--auth-file",
        metavar="FILE",
        help="0600 file holding an authorization value for the TPM key",
    )
    p.add_argument(
        "--replace-key", action="store_true", help="overwrite a key already at the TPM handle"
    )
    p.add_argument("--key-passphrase-file", metavar="FILE", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mbus-provision",
        description="PKI, device enrolment, registry, revocation and reminders.",
    )
    parser.add_argument(
        "--pki",
        metavar="DIR",
        default=os.environ.get("MBUS_PKI_DIR"),
        help="the PKI directory (created 0700 when missing; env MBUS_PKI_DIR)",
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="file holding the CA key passphrase (else MBUS_PKI_PASSPHRASE)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(
        group: Any,
        name: str,
        handler: Handler,
        help_text: str,
        formats: tuple[str, ...] = ("text", "json"),
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text)
        add_format(p, formats)
        p.set_defaults(handler=handler)
        return p

    root = sub.add_parser("root", help="the root CA").add_subparsers(dest="sub", required=True)
    p = command(root, "init", _root_init, "create the root CA")
    p.add_argument("--name", required=True)
    p.add_argument("--years", type=int, default=20)

    org = sub.add_parser("org", help="organization CAs").add_subparsers(dest="sub", required=True)
    p = command(org, "create", _org_create, "create an organization CA signed by the root")
    p.add_argument("org")
    p.add_argument(
        "--contact", required=True, metavar="EMAIL", help="receives the organization's reminders"
    )
    p.add_argument("--years", type=int, default=10)
    p = command(org, "revoke", _org_revoke, "put an organization CA on the root's CRL")
    p.add_argument("org")
    p.add_argument("--reason", default="cessation-of-operation")

    dev = sub.add_parser("device", help="loggers").add_subparsers(dest="sub", required=True)
    p = command(dev, "enroll", _device_enroll, "factory enrolment: TPM key, CSR, certificate")
    p.add_argument("org")
    p.add_argument("--serial", required=True)
    p.add_argument("--application-uri", required=True)
    p.add_argument("--dns", action="append", metavar="NAME")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--days", type=int, default=1826)
    _key_args(p)
    p = command(dev, "register", _device_register, "bind a serial to its ApplicationUri")
    p.add_argument("org")
    p.add_argument("--serial", required=True)
    p.add_argument("--application-uri", required=True)
    p = command(dev, "sign", _device_sign, "sign a device CSR (offline enrolment, renewal)")
    p.add_argument("org")
    p.add_argument("csr")
    p.add_argument("--out", required=True, metavar="CERT")
    p.add_argument("--chain-out", metavar="FILE", help="also write the CA chain")
    p.add_argument("--crl-out", metavar="FILE", help="also write the org and root CRLs")
    p.add_argument("--serial", help="refuse unless the CSR is for this serial")
    p.add_argument("--application-uri", help="refuse unless the CSR carries this URI")
    p.add_argument("--days", type=int, default=1826)
    p = command(dev, "revoke", _device_revoke, "revoke a device certificate")
    p.add_argument("thumbprint", nargs="?")
    p.add_argument("--serial")
    p.add_argument(
        "--reason", default=None, help="key-compromise, superseded, cessation-of-operation, ..."
    )
    p = command(dev, "renew", _device_renew, "new TPM key and certificate, same identity")
    p.add_argument("--serial", required=True)
    p.add_argument("--state-dir", required=True)
    p.add_argument("--days", type=int, default=1826)
    _key_args(p)

    batch = sub.add_parser("batch", help="legacy key+certificate batches").add_subparsers(
        dest="sub", required=True
    )
    p = command(batch, "issue", _batch_issue, "issue N encrypted PKCS#12 identities")
    p.add_argument("org")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--serial-prefix")
    p.add_argument("--uri-template", default="urn:{org}:logger:{serial}")
    p.add_argument("--days", type=int, default=1826)
    p.add_argument(
        "--batch-passphrase-file",
        metavar="FILE",
        help="passphrase of the PKCS#12 files (else MBUS_BATCH_PASSPHRASE)",
    )

    server = sub.add_parser("server", help="receivers").add_subparsers(dest="sub", required=True)
    p = command(server, "issue", _server_issue, "write a receiver directory")
    p.add_argument("org")
    p.add_argument("--dns", action="append", required=True, metavar="NAME")
    p.add_argument("--application-uri", required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--days", type=int, default=825)
    p.add_argument(
        "--receiver-passphrase-file",
        metavar="FILE",
        help="passphrase for the receiver key (else MBUS_RECEIVER_PASSPHRASE)",
    )

    client = sub.add_parser("client", help="operators' OPC UA clients").add_subparsers(
        dest="sub", required=True
    )
    p = command(client, "issue", _client_issue, "operator client certificate (read-only role)")
    p.add_argument("org")
    p.add_argument("--name", required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--days", type=int, default=825)
    p.add_argument(
        "--client-passphrase-file",
        metavar="FILE",
        help="passphrase for the client key (else MBUS_CLIENT_PASSPHRASE)",
    )

    crl = sub.add_parser("crl", help="CRLs").add_subparsers(dest="sub", required=True)
    p = command(crl, "refresh", _crl_refresh, "re-sign CRLs past half their lifetime")
    p.add_argument("--days", type=int, default=30, help="lifetime of a new CRL")
    p.add_argument("--force", action="store_true", help="re-sign every CRL now")

    reg = sub.add_parser("registry", help="the fleet registry").add_subparsers(
        dest="sub", required=True
    )
    p = command(reg, "list", _registry_list, "list devices", ("text", "json", "csv"))
    p.add_argument("--org")
    p = command(
        reg,
        "import-installations",
        _registry_import,
        "mark loggers installed from the receiver's device report",
    )
    p.add_argument("file", metavar="FILE")

    p = command(sub, "remind", _remind, "send expiry reminders")
    p.add_argument("--within", type=int, default=183, metavar="DAYS")
    p.add_argument("--smtp", metavar="HOST:PORT")
    p.add_argument("--from", dest="sender", metavar="ADDR")
    p.add_argument("--to", metavar="ADDR", help="instead of the organizations' contacts")
    p.add_argument("--webhook", metavar="URL")
    p.add_argument("--dry-run", action="store_true", help="send nothing, record nothing")

    try:
        import provisioning.updates as updates
    except ImportError:
        pass
    else:
        updates.register(sub)
    return parser


def _exit_code(exc: BaseException) -> int | None:
    """Our exception classes -> exit codes (module docstring)."""
    from logger.tpm.errors import DeviceKeyError, StateDirError
    from provisioning.enroll import EnrolmentError
    from provisioning.pki import PkiError
    from provisioning.profile import ProfileError
    from provisioning.registry import RegistryError

    if isinstance(exc, DeviceKeyError):
        return TRANSIENT if exc.transient else PERMANENT
    if isinstance(exc, ProfileError | StateDirError):
        return USAGE
    if isinstance(exc, PkiError | RegistryError | EnrolmentError):
        return PERMANENT
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TSS2_LOG", "all+NONE")  # our messages say it better
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return USAGE
    if not args.pki and handler.__module__ == __name__:
        print("mbus-provision: --pki DIR is required (or set MBUS_PKI_DIR)", file=sys.stderr)
        return USAGE
    return run_handler(handler, args, "mbus-provision", _exit_code)


__all__ = ["CHECK_FAILED", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())

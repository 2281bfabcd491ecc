"""``mbus-receiver``: the organization's OPC UA server and the operator commands on its data.

Commands (CLI.md conventions; exit codes from :mod:`logger.cli.common`)::

    serve    --dir DIR [--listen URL] [--db URL] [--passphrase-file F]
    devices  --db URL [--format text|json]
    export   --db URL [--device URI] [--meter M] [--since T] [--format csv|jsonl]
    config   set  --db URL --device URI FILE
    config   show --db URL --device URI [--format text|json]
    audit    verify --db URL [--anchor HASH] [--format text|json]
    audit    list   --db URL [--device URI] [--after-id N] [--limit N] [--format text|json]

``--db`` defaults to ``$MBUS_RECEIVER_DB``. The operator commands are thin: they open the
storage, call one method of :class:`receiver.storage.Storage`, and print. ``serve`` hands over
to :func:`receiver.server.serve_main` (imported only then, with asyncua).

Exit codes: 0 ok; 1 check failed (``audit verify`` found tampering, ``config show`` found
nothing); 2 usage or configuration error (bad URL, missing database, invalid configuration
document); 3 transient (database unreachable or busy); 4 permanent (credentials refused,
database error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logger.cli.common import (
    CHECK_FAILED,
    OK,
    PERMANENT,
    TRANSIENT,
    USAGE,
    CliError,
    add_format,
    print_json,
    print_table,
    run_handler,
)

if TYPE_CHECKING:
    from receiver.storage import Device, Storage, StoredReading

PROG = "mbus-receiver"
DB_ENV = "MBUS_RECEIVER_DB"
# A certificate within this many days of expiry is flagged in `devices` (SECURITY.md: warn
# six months ahead).
EXPIRY_WARNING_DAYS = 183
SILENT_AFTER_S = 24 * 3600


# --------------------------------------------------------------------------------------------
# Parser.


def _add_db(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(DB_ENV)
    parser.add_argument(
        "--db",
        metavar="URL",
        default=default,
        required=default is None,
        help=f"storage: sqlite:///path.db, a path, or postgresql://… (default ${DB_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="The organization's OPC UA server for meter data loggers."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging on stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    serve = sub.add_parser("serve", help="run the OPC UA server")
    serve.add_argument(
        "--dir",
        required=True,
        type=Path,
        help="receiver directory from 'mbus-provision server issue' (certificate, key, CAs, CRLs)",
    )
    serve.add_argument("--listen", metavar="URL", help="endpoint URL, e.g. opc.tcp://0.0.0.0:4840")
    serve.add_argument(
        "--db", metavar="URL", default=os.environ.get(DB_ENV), help=f"storage (${DB_ENV})"
    )
    serve.add_argument(
        "--passphrase-file",
        type=Path,
        help="file holding the passphrase of the receiver's key (else $MBUS_RECEIVER_PASSPHRASE)",
    )
    serve.set_defaults(handler=_serve)

    devices = sub.add_parser("devices", help="list the loggers this receiver knows")
    _add_db(devices)
    add_format(devices)
    devices.set_defaults(handler=_devices)

    export = sub.add_parser("export", help="stream stored readings (exact values)")
    _add_db(export)
    export.add_argument("--device", metavar="URI", help="only this logger (ApplicationUri)")
    export.add_argument("--meter", metavar="M", help="only this meter id")
    export.add_argument(
        "--since",
        metavar="T",
        help="only readings taken at or after T (ISO 8601; UTC unless it has an offset)",
    )
    add_format(export, choices=("csv", "jsonl"), default="csv")
    export.set_defaults(handler=_export)

    config = sub.add_parser("config", help="the cloud layer of a logger's configuration")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION")
    config_sub.required = True
    config_set = config_sub.add_parser("set", help="store a new configuration version")
    _add_db(config_set)
    config_set.add_argument("--device", metavar="URI", required=True)
    config_set.add_argument("file", metavar="FILE", help="JSON document ('-' for stdin)")
    add_format(config_set)
    config_set.set_defaults(handler=_config_set)
    config_show = config_sub.add_parser("show", help="print the current configuration")
    _add_db(config_show)
    config_show.add_argument("--device", metavar="URI", required=True)
    add_format(config_show)
    config_show.set_defaults(handler=_config_show)

    audit = sub.add_parser("audit", help="the hash-chained security audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    audit_sub.required = True
    verify = audit_sub.add_parser("verify", help="check the chain (exit 1 when tampered with)")
    _add_db(verify)
    verify.add_argument(
        "--anchor",
        metavar="HASH",
        help="a head hash printed by an earlier 'audit verify' and kept elsewhere: it must "
        "still be in the log",
    )
    add_format(verify)
    verify.set_defaults(handler=_audit_verify)
    listing = audit_sub.add_parser("list", help="print audit entries, oldest first")
    _add_db(listing)
    listing.add_argument("--device", metavar="URI", help="only entries about this logger")
    listing.add_argument("--after-id", type=int, default=0, metavar="N", help="entries after id N")
    listing.add_argument("--limit", type=int, metavar="N", help="at most N entries")
    add_format(listing)
    listing.set_defaults(handler=_audit_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_handler(args.handler, args, PROG)


# --------------------------------------------------------------------------------------------
# Running storage work with our errors mapped to exit codes.


def _with_storage(
    url: str, work: Callable[[Storage], Awaitable[int]], *, create: bool = False
) -> int:
    from receiver.storage import (
        InvalidConfiguration,
        StorageAuthError,
        StorageConfigError,
        StorageError,
        StorageUnavailable,
        open_storage,
    )

    async def run() -> int:
        storage = await open_storage(url, create=create, pool_size=1)
        try:
            return await work(storage)
        finally:
            await storage.close()

    try:
        return asyncio.run(run())
    except (StorageConfigError, InvalidConfiguration) as exc:
        raise CliError(str(exc), USAGE) from exc
    except StorageUnavailable as exc:
        raise CliError(str(exc), TRANSIENT) from exc
    except StorageAuthError as exc:
        raise CliError(str(exc), PERMANENT) from exc
    except StorageError as exc:
        raise CliError(str(exc), PERMANENT) from exc


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text for a terminal table: control characters escaped.

    Audit details and what loggers report (location, errors) come from outside; a newline or
    an escape sequence in them must not forge table lines or rewrite the operator's screen.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _printable_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: printable(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows]


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


# --------------------------------------------------------------------------------------------
# serve


def _serve(args: argparse.Namespace) -> int:
    try:
        from receiver.server import serve_main
    except ModuleNotFoundError as exc:
        if exc.name in ("receiver.server", "receiver"):
            raise CliError(
                "this installation has no OPC UA server (module receiver.server is missing)",
                USAGE,
            ) from exc
        raise CliError(
            f"the receiver server needs the Python package {exc.name!r}: install "
            "mbus-ua-logger[receiver]",
            USAGE,
        ) from exc
    return int(serve_main(args))


# --------------------------------------------------------------------------------------------
# devices


def device_status(device: Device, now: datetime) -> str:
    """One line an operator can act on: 'ok' or the problems, worst first."""
    if device.last_contact is None:
        return "never seen"
    problems = []
    if device.cert_not_after is not None:
        days = (device.cert_not_after - now).total_seconds() / 86400
        if days < 0:
            problems.append("certificate expired")
        elif days < EXPIRY_WARNING_DAYS:
            problems.append(f"certificate expires in {int(days)} days")
    silent = (now - device.last_contact).total_seconds()
    if silent > SILENT_AFTER_S:
        problems.append(f"silent for {int(silent // 3600)} h")
    status = device.status
    if status is not None:
        failing = [m.meter for m in status.meters if not m.ok]
        if failing:
            problems.append(f"{len(failing)} of {len(status.meters)} meters failing")
        if status.losses:
            problems.append(f"{status.losses} readings lost")
        if device.config_version and status.config_version != device.config_version:
            problems.append(
                f"runs config {status.config_version}, current is {device.config_version}"
            )
    return "; ".join(problems) if problems else "ok"


def device_document(device: Device, now: datetime) -> dict[str, Any]:
    status = device.status
    return {
        "application_uri": device.application_uri,
        "serial": device.serial,
        "location": device.location,
        "firmware": device.firmware,
        "thumbprint": device.thumbprint,
        "cert_not_after": _iso(device.cert_not_after),
        "first_contact": _iso(device.first_contact),
        "last_contact": _iso(device.last_contact),
        "last_peer": device.last_peer,
        "status_at": _iso(device.status_at),
        "buffer_depth": status.buffer_depth if status else None,
        "oldest_age_s": status.oldest_age_s if status else None,
        "losses": status.losses if status else None,
        "cert_days_left": status.cert_days_left if status else None,
        "config_version": device.config_version,
        "config_version_in_use": status.config_version if status else None,
        "meters": [
            {
                "meter": m.meter,
                "ok": m.ok,
                "failures": m.failures,
                "last_success": _iso(m.last_success),
                "last_error": m.last_error,
            }
            for m in (status.meters if status else ())
        ],
        "status": device_status(device, now),
    }


def _devices(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> int:
        now = datetime.now(UTC)
        docs = [device_document(d, now) for d in await storage.devices()]
        if args.format == "json":
            print_json(docs)
            return OK
        rows = [
            {
                "uri": d["application_uri"],
                "serial": d["serial"],
                "location": d["location"],
                "last_contact": _short_time(d["last_contact"]),
                "thumbprint": d["thumbprint"],
                "expires": (d["cert_not_after"] or "")[:10],
                "buffer": d["buffer_depth"],
                "oldest_s": None if d["oldest_age_s"] is None else round(d["oldest_age_s"]),
                "losses": d["losses"],
                "status": d["status"],
            }
            for d in docs
        ]
        columns = [
            "uri",
            "serial",
            "location",
            "last_contact",
            "thumbprint",
            "expires",
            "buffer",
            "oldest_s",
            "losses",
            "status",
        ]
        print_table(_printable_rows(rows), columns)
        return OK

    return _with_storage(args.db, work)


def _short_time(iso: str | None) -> str | None:
    return None if iso is None else iso[:19].replace("T", " ")


# --------------------------------------------------------------------------------------------
# export

EXPORT_FIELDS = (
    "device",
    "epoch",
    "sequence",
    "meter",
    "record",
    "value",
    "unit",
    "quantity",
    "source_time",
    "logger_time",
    "flags",
    "received_at",
)


def _reading_fields(r: StoredReading) -> tuple[object, ...]:
    return (
        r.device_uri,
        r.epoch,
        r.sequence,
        r.meter,
        r.record,
        r.value,
        r.unit,
        r.quantity,
        _iso(r.source_time),
        _iso(r.logger_time),
        r.flags,
        _iso(r.received_at),
    )


def parse_since(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--since {text!r} is not an ISO 8601 date or time", USAGE) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _export(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    out = sys.stdout

    async def work(storage: Storage) -> int:
        readings = storage.export(device_uri=args.device, meter=args.meter, since=since)
        # aclosing: a reader that goes away (export | head) releases the database cursor.
        async with contextlib.aclosing(readings):
            if args.format == "csv":
                writer = csv.writer(out, lineterminator="\n")
                writer.writerow(EXPORT_FIELDS)
                async for reading in readings:
                    writer.writerow(["" if v is None else v for v in _reading_fields(reading)])
            else:
                async for reading in readings:
                    doc = dict(zip(EXPORT_FIELDS, _reading_fields(reading), strict=True))
                    out.write(json.dumps(doc))
                    out.write("\n")
        out.flush()
        return OK

    return _with_storage(args.db, work)


# --------------------------------------------------------------------------------------------
# config


def _actor() -> str:
    """Who set a configuration, for the audit log: user@host of the operator."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def _config_set(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}", USAGE) from exc
    except UnicodeDecodeError as exc:
        raise CliError(f"{args.file} is not UTF-8 text: {exc}", USAGE) from exc

    async def work(storage: Storage) -> int:
        before = await storage.get_config(args.device)
        version = await storage.set_config(args.device, text, set_by=_actor())
        changed = before is None or before.version != version
        if args.format == "json":
            print_json({"device": args.device, "version": version, "changed": changed})
        elif changed:
            print(f"{args.device}: configuration version {version}")
        else:
            print(
                f"{args.device}: unchanged, configuration version {version} already has "
                "this content"
            )
        return OK

    # The operator may configure a logger before any receiver ever ran: create the database.
    return _with_storage(args.db, work, create=True)


def _config_show(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> int:
        config = await storage.get_config(args.device)
        if config is None:
            raise CliError(f"no configuration set for {args.device}", CHECK_FAILED)
        if args.format == "json":
            print_json(
                {
                    "device": config.device_uri,
                    "version": config.version,
                    "set_at": _iso(config.set_at),
                    "set_by": config.set_by,
                    "configuration": json.loads(config.document),
                }
            )
        else:
            print(
                f"# device {config.device_uri}, version {config.version}, set "
                f"{_iso(config.set_at)} by {config.set_by or '?'}"
            )
            print(config.document.rstrip("\n"))
        return OK

    return _with_storage(args.db, work)


# --------------------------------------------------------------------------------------------
# audit


def _audit_verify(args: argparse.Namespace) -> int:
    async def work(storage: Storage) -> int:
        verdict = await storage.verify_audit(args.anchor)
        if args.format == "json":
            print_json(
                {
                    "ok": verdict.ok,
                    "entries": verdict.entries,
                    "head_hash": verdict.head_hash,
                    "first_bad_id": verdict.first_bad_id,
                    "problem": verdict.problem,
                    "details": list(verdict.details),
                }
            )
        elif verdict.ok:
            print(f"audit log intact: {verdict.entries} entries, head {verdict.head_hash}")
        else:
            print(f"audit log TAMPERED: first bad entry {verdict.first_bad_id}: {verdict.problem}")
            for line in verdict.details[1:]:
                print(f"  also: {line}")
        return OK if verdict.ok else CHECK_FAILED

    return _with_storage(args.db, work)


def _audit_list(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise CliError("--limit must not be negative", USAGE)

    async def work(storage: Storage) -> int:
        entries = await storage.audit_entries(
            since_id=args.after_id, limit=args.limit, device_uri=args.device
        )
        docs = [
            {
                "id": e.id,
                "time": _iso(e.time),
                "event": e.event,
                "device": e.device_uri,
                "thumbprint": e.thumbprint,
                "peer": e.peer,
                "detail": e.detail,
                "hash": e.hash,
            }
            for e in entries
        ]
        if args.format == "json":
            print_json(docs)
        else:
            columns = ["id", "time", "event", "device", "thumbprint", "peer", "detail"]
            print_table(_printable_rows(docs), columns)
        return OK

    return _with_storage(args.db, work)


if __name__ == "__main__":
    sys.exit(main())

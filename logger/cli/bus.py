"""``mbus-logger scan`` and ``mbus-logger read``: field tools on an M-Bus line.

Both open the port given by ``--device`` (a path such as ``/dev/ttyUSB0`` or a pyserial URL:
``socket://gateway:10001``, ``rfc2217://...``) at 8E1. ``read`` reads several meters in one
call, each completely (all telegrams of a multi-telegram read-out); a meter that fails is
reported and the others are still read; the exit code is then 1. These commands import
neither asyncua nor tpm2-pytss: technicians run them in loops.
"""

from __future__ import annotations

import argparse
import sys
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
)

if TYPE_CHECKING:
    from logger.bus import MBusMaster, ReadResult, ScanEntry

BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400)


def register(subparsers: argparse._SubParsersAction) -> None:
    scan = subparsers.add_parser(
        "scan",
        help="find the meters on an M-Bus line",
        description="Find the meters on an M-Bus line by primary address (0-250) or by "
        "secondary address (wildcard search that resolves collisions).",
    )
    _common(scan)
    scan.add_argument(
        "--secondary", action="store_true", help="secondary (wildcard) scan instead of primary"
    )
    scan.add_argument(
        "--mask",
        default="FFFFFFFFFFFFFFFF",
        help="secondary scan: only addresses matching this 16-digit mask (F = any digit)",
    )
    scan.add_argument(
        "--hex-ids",
        action="store_true",
        help="secondary scan: also try hex digits A-E in identification numbers (slower)",
    )
    scan.add_argument(
        "--addresses",
        default="0-250",
        help="primary scan: addresses to try, e.g. 0-250 or 1,5,10-20 (default 0-250)",
    )
    add_format(scan)
    scan.set_defaults(handler=run_scan)

    read = subparsers.add_parser(
        "read",
        help="read meters on an M-Bus line",
        description="Read meters completely (all telegrams) by primary and/or secondary "
        "address. Exit code 1 if any meter failed; the others are still read.",
    )
    _common(read)
    read.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="A[,A...]",
        help="primary address(es): 5 or 1,2,7 or 1-20 (repeatable)",
    )
    read.add_argument(
        "--secondary",
        action="append",
        default=[],
        metavar="ID[,ID...]",
        help="secondary address(es), 16 hex digits each (repeatable)",
    )
    read.add_argument(
        "--quirk",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="per-meter quirk for these meters, e.g. echo, pause_after_nke=20, max_telegrams=8 "
        "(repeatable; see the README)",
    )
    add_format(read, ("text", "json", "xml"))
    read.add_argument(
        "--normalized",
        action="store_true",
        help="with --format xml: libmbus's normalised (.norm.xml) layout",
    )
    read.set_defaults(handler=run_read)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", required=True, help="serial port or URL (socket://host:port, rfc2217://...)"
    )
    parser.add_argument("--baudrate", type=int, default=2400, help="baud rate (default 2400)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="answer timeout in seconds (default: from the baud rate + 0.1 s converter margin)",
    )
    parser.add_argument(
        "--retries", type=int, default=3, help="retries per request (default 3, as libmbus)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every frame (hex)")


def parse_addresses(items: list[str]) -> list[int]:
    """``["1,2", "5-7"]`` -> ``[1, 2, 5, 6, 7]`` (order kept, duplicates dropped)."""
    out: list[int] = []
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    lo_text, hi_text = part.split("-", 1)
                    lo, hi = int(lo_text), int(hi_text)
                    if lo > hi:
                        raise ValueError(part)
                    values = list(range(lo, hi + 1))
                else:
                    values = [int(part)]
            except ValueError:
                raise CliError(f"address {part!r} is not a number or range", USAGE) from None
            for value in values:
                if not 0 <= value <= 250 and value != 254:
                    raise CliError(f"primary address {value} out of range 0-250", USAGE)
                if value not in out:
                    out.append(value)
    return out


def _check_secondary(text: str, what: str) -> str:
    """``text`` (upper case) when it is a secondary address or mask: 16 hex digits."""
    if len(text) != 16 or any(ch not in "0123456789ABCDEF" for ch in text):
        raise CliError(f"{what} must be 16 hex digits", USAGE)
    return text


def parse_secondaries(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        for part in item.split(","):
            part = part.strip().upper()
            if not part:
                continue
            _check_secondary(part, f"secondary address {part!r}")
            if part not in out:
                out.append(part)
    return out


def _master(args: argparse.Namespace, quirks: Any = None) -> MBusMaster:
    from logger.bus import BusError, MBusMaster

    if args.baudrate not in BAUD_RATES:
        raise CliError(f"--baudrate {args.baudrate}: not one of {BAUD_RATES}", USAGE)
    if not 0 <= args.retries <= 10:
        raise CliError("--retries must be 0-10", USAGE)
    try:
        return MBusMaster(
            args.device, args.baudrate, timeout=args.timeout, retries=args.retries, quirks=quirks
        )
    except BusError as exc:
        raise CliError(str(exc), USAGE) from None


def _port_error(exc: Exception) -> CliError:
    transient = bool(getattr(exc, "transient", False))
    return CliError(str(exc), TRANSIENT if transient else PERMANENT)


# -- scan ------------------------------------------------------------------------------------


def _manufacturer(code: int) -> str:
    return "".join(chr(((code >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def scan_row(entry: ScanEntry) -> dict[str, Any]:
    row: dict[str, Any] = {
        "address": entry.address,
        "secondary": entry.secondary,
        "id": None,
        "manufacturer": None,
        "version": None,
        "medium": None,
        "error": entry.error,
    }
    sec = entry.secondary
    if sec:
        row["id"] = sec[:8]
        row["manufacturer"] = _manufacturer(int(sec[8:12], 16))
        row["version"] = int(sec[12:14], 16)
        row["medium"] = int(sec[14:16], 16)
    if entry.frame is None and entry.error is None and sec:
        row["error"] = "deduced: shares every digit but an F nibble with another meter"
    return row


def run_scan(args: argparse.Namespace) -> int:
    from logger.bus import BusError, PortError

    master = _master(args)
    try:
        with master:
            if args.secondary:
                mask = _check_secondary(args.mask.upper(), f"--mask {args.mask!r}")
                entries, procedure = master.scan_secondary(mask, hex_ids=args.hex_ids)
                selects: int | None = procedure.selects
            else:
                entries = master.scan_primary(parse_addresses([args.addresses]))
                selects = None
    except PortError as exc:
        raise _port_error(exc) from None
    except BusError as exc:
        raise CliError(str(exc), TRANSIENT) from None
    rows = [scan_row(e) for e in entries]
    if args.format == "json":
        doc: dict[str, Any] = {
            "device": args.device,
            "baudrate": args.baudrate,
            "mode": "secondary" if args.secondary else "primary",
            "meters": rows,
        }
        if selects is not None:
            doc["selects"] = selects
        print_json(doc)
    else:
        if rows:
            print_table(
                rows, ["address", "secondary", "id", "manufacturer", "version", "medium", "error"]
            )
        print(
            f"{len(rows)} meter(s) found on {args.device}"
            + (f" with {selects} selects" if selects is not None else ""),
            file=sys.stderr,
        )
    return CHECK_FAILED if any(r["error"] for r in rows if r["secondary"]) else OK


# -- read ------------------------------------------------------------------------------------


def _decoded(frame: bytes) -> dict[str, Any]:
    from logger.mbus import decode
    from logger.mbus.errors import MBusError

    try:
        return {"hex": frame.hex(), "decoded": decode(frame)}
    except MBusError as exc:
        return {"hex": frame.hex(), "decoded": None, "decode_error": str(exc)}


def result_doc(result: ReadResult) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "target": result.target,
        "address": result.address,
        "secondary": result.secondary,
        "ok": result.ok,
        "error": result.error,
        "complete": result.complete,
        "elapsed_s": round(result.elapsed, 3),
        "telegrams": [_decoded(t) for t in result.telegrams],
    }
    if result.baudrate is not None:
        doc["answered_at_baudrate"] = result.baudrate
    return doc


def run_read(args: argparse.Namespace) -> int:
    from logger.bus import BusError, PortError, QuirkError, Quirks

    if args.normalized and args.format != "xml":
        raise CliError("--normalized applies to --format xml only", USAGE)
    addresses = parse_addresses(args.address)
    secondaries = parse_secondaries(args.secondary)
    if not addresses and not secondaries:
        raise CliError("give --address and/or --secondary", USAGE)
    try:
        quirks = Quirks.parse(args.quirk)
    except QuirkError as exc:
        raise CliError(str(exc), USAGE) from None
    master = _master(args, quirks)
    try:
        with master:
            results = master.read_many(addresses, secondaries)
    except PortError as exc:
        raise _port_error(exc) from None
    except BusError as exc:
        raise CliError(str(exc), TRANSIENT) from None
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"mbus-logger: meter {r.target}: {r.error}", file=sys.stderr)
    if args.format == "json":
        print_json([result_doc(r) for r in results])
    elif args.format == "xml":
        _print_xml(results, args.normalized)
    else:
        _print_text(results)
    return CHECK_FAILED if failed else OK


def _print_xml(results: list[ReadResult], normalized: bool) -> None:
    from logger.mbus.errors import MBusError
    from logger.mbus.xml import readout_xml

    parts: list[str] = []
    for r in results:
        if not r.telegrams:
            continue
        try:
            parts.append(readout_xml(r.telegrams, normalized))
        except MBusError as exc:
            print(f"mbus-logger: meter {r.target}: {exc}", file=sys.stderr)
    sys.stdout.write("".join(parts))


def _print_text(results: list[ReadResult]) -> None:
    from logger.cli.decode import print_telegram

    for i, r in enumerate(results):
        if i:
            print()
        state = "ok" if r.ok else f"FAILED: {r.error}"
        print(f"== meter {r.target}: {len(r.telegrams)} telegram(s), {state}")
        for t in r.telegrams:
            doc = _decoded(t)
            if doc["decoded"] is None:
                print(f"undecodable telegram {doc['hex']}: {doc['decode_error']}")
            else:
                print_telegram(doc["decoded"])

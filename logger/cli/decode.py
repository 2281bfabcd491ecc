"""``mbus-logger decode``: decode M-Bus telegrams from files or stdin.

Input is hex text (any whitespace, as in libmbus's ``.hex`` files; ``0x`` prefixes and commas
are tolerated) or raw binary; each input holds one frame, or several frames back to back (a
multi-telegram read-out). The default ``text`` format prints a table per telegram;
``--format json`` prints one JSON document, a list with one decoded telegram per frame;
``--format xml`` prints what libmbus prints (``.xml`` layout: one document per input, a
multi-telegram read-out numbered across its frames; ``--normalized``: the ``.norm.xml`` layout,
one document per frame, as libmbus has no normalised read-out). A malformed frame stops the
command with exit code 1 and a one-line reason on stderr; an application error frame (CI 0x70)
is output, not an error.
"""

from __future__ import annotations

import argparse
import string
import sys
from typing import Any

from logger.cli.common import CHECK_FAILED, OK, USAGE, CliError, print_json, print_table

_HEX_TEXT = set(string.hexdigits + string.whitespace + ",")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decode",
        help="decode M-Bus telegrams (hex text or binary)",
        description="Decode M-Bus long frames from hex text or binary files ('-' for stdin).",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="input file, or - for stdin")
    parser.add_argument(
        "--format",
        choices=("text", "json", "xml"),
        default="text",
        help="text (default: a table per telegram), json (one document, EN 13757-3 "
        "semantics) or xml (libmbus layout)",
    )
    parser.add_argument(
        "--normalized",
        action="store_true",
        help="with --format xml: libmbus's normalised (.norm.xml) layout",
    )
    parser.set_defaults(handler=run)


def frame_bytes(raw: bytes, name: str) -> bytes:
    """Hex text when every byte is a hex digit, whitespace or separator; binary otherwise."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return raw
    cleaned = text.replace("0x", " ").replace("0X", " ")
    if raw and set(cleaned) <= _HEX_TEXT:
        digits = "".join(ch for ch in cleaned if ch in string.hexdigits)
        if len(digits) % 2:
            raise CliError(f"{name}: odd number of hex digits ({len(digits)})", CHECK_FAILED)
        return bytes.fromhex(digits)
    return raw


def split_frames(data: bytes, name: str) -> list[bytes]:
    """Cut back-to-back long frames apart by their length fields (strict: no noise allowed)."""
    from logger.mbus import frames
    from logger.mbus.errors import MBusError

    out = []
    pos = 0
    while pos < len(data):
        try:
            frame = frames.parse_frame(data[pos:], strict_end=False)
        except MBusError as exc:
            if exc.offset is not None:
                exc.offset += pos
            raise CliError(f"{name}: {exc}", CHECK_FAILED) from None
        out.append(data[pos : pos + frame.length])
        pos += frame.length
    if not out:
        raise CliError(f"{name}: no frame in input", CHECK_FAILED)
    return out


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", USAGE) from None


def run(args: argparse.Namespace) -> int:
    from logger.mbus import decode
    from logger.mbus.errors import MBusError
    from logger.mbus.xml import readout_xml

    if args.normalized and args.format != "xml":
        raise CliError("--normalized applies to --format xml only", USAGE)
    results: list[dict[str, Any]] = []
    xml_parts = []
    for path in args.files:
        name = "stdin" if path == "-" else path
        frames = split_frames(frame_bytes(_read(path), name), name)
        try:
            if args.format == "xml":
                # A read-out of several telegrams is one document, as libmbus prints it.
                xml_parts.append(readout_xml(frames, args.normalized))
            else:
                results.extend(decode(frame) for frame in frames)
        except MBusError as exc:
            raise CliError(f"{name}: {exc}", CHECK_FAILED) from None
    if args.format == "xml":
        sys.stdout.write("".join(xml_parts))
    elif args.format == "json":
        print_json(results)
    else:
        for i, telegram in enumerate(results):
            if i:
                print()
            print_telegram(telegram)
    return OK


def print_telegram(telegram: dict[str, Any]) -> None:
    """The human form: one summary line, then the records as a table."""
    frame = telegram["frame"]
    header = telegram["header"] or {}
    summary = [f"address {frame['a']}", f"CI 0x{frame['ci']:02X}"]
    for key, label in (
        ("id", "id"),
        ("manufacturer", "manufacturer"),
        ("version", "version"),
        ("medium_text", "medium"),
        ("access_number", "access"),
        ("status", "status"),
    ):
        if header.get(key) is not None:
            summary.append(f"{label} {header[key]}")
    if header.get("status_flags"):
        summary.append("(" + ", ".join(header["status_flags"]) + ")")
    print("  ".join(summary))
    if telegram["error"] is not None:
        print(f"application error {telegram['error']['code']}: {telegram['error']['text']}")
        return
    rows = []
    for rec in telegram["records"]:
        rows.append(
            {
                "id": rec["id"],
                "function": rec["function"],
                "storage": rec["storage"],
                "tariff": rec["tariff"],
                "subunit": rec["subunit"],
                "quantity": rec["quantity"] + "".join(f", {m}" for m in rec["modifiers"]),
                "value": rec["value"] if rec["value"] is not None else "-",
                "unit": rec["unit"],
                "flags": ", ".join(rec["flags"]),
            }
        )
    print_table(
        rows,
        ["id", "function", "storage", "tariff", "subunit", "quantity", "value", "unit", "flags"],
    )
    if telegram["manufacturer_data"] is not None:
        print(f"manufacturer data: {telegram['manufacturer_data'] or '(none)'}")
    if telegram["more_records_follow"]:
        print("more records follow in the next telegram")

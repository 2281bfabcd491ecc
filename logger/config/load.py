"""Read, validate and merge the configuration; every problem reported with where it is.

Validation runs over the whole document and collects *all* problems before failing (an
installer fixes them in one go), each naming its file and line (file) or its JSON pointer
(cloud layer). Unknown keys are errors with a suggestion, since a misspelt key silently
ignored is a meter silently not read.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from logger.config.lines import key_lines, line_of
from logger.config.model import (
    CLOUD_FIELDS,
    BusConfig,
    BusKind,
    Config,
    Installation,
    MeterConfig,
    MeterKind,
    Paths,
    Quirks,
    RegisterFunction,
    RegisterSpec,
    RegisterType,
    UplinkConfig,
    WordOrder,
)
from logger.config.profiles import PROFILES
from logger.config.schedule import DAY_S, valid_interval
from logger.store.api import BufferLimits, BufferPolicy

KeyPath = tuple[str | int, ...]
T = TypeVar("T")

# Named workarounds, per protocol: name -> (type, meaning). Values are checked by type;
# durations are given as "20s" / seconds and stored in seconds.
QUIRKS: dict[str, dict[str, tuple[str, str]]] = {
    # The names logger.bus.quirks.Quirks takes (Quirks.from_mapping(meter.quirks.values)).
    "mbus": {
        "echo": ("bool", "the level converter echoes the master's own bytes; skip them"),
        "pause_after_nke": ("duration", "wait this long between SND_NKE and REQ_UD2"),
        "no_reset": ("bool", "do not send SND_NKE before a read-out"),
        "max_telegrams": ("int", "stop a multi-telegram read-out after this many telegrams"),
        "retries": ("count", "retries of a request without a valid answer"),
        "timeout": ("duration", "answer timeout (default: derived from the baud rate)"),
        "fallback_baudrate": ("baud", "the meter falls back to this rate after idling"),
        "any_address": ("bool", "accept an answer whose address is not the meter's own"),
    },
    "modbus": {
        "echo": ("bool", "the RS-485 adapter echoes what is sent; skip it (RTU)"),
        "pause_after_connect": ("duration", "wait after connecting before the first request"),
        "pause_between_requests": ("duration", "wait between two requests to the device"),
        "one_request_per_field": ("bool", "never merge neighbouring registers in one request"),
        "close_after_read": ("bool", "disconnect after each read-out (gateways with 1 slot)"),
    },
}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?\s*$")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_METER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
CLOCK_MODES = ("auto", "synchronised", "unsynchronised")
"""``installation.clock``: how the daemon decides whether readings get ``clock_unsynced``."""
_SECONDARY = re.compile(r"^([0-9]{8})([0-9A-Fa-f]{8})?$")


@dataclass(frozen=True, slots=True)
class Problem:
    where: str  # "FILE:LINE" or "cloud layer vN"
    key: str  # dotted key path, e.g. meters[2].registers[0].type
    message: str

    def __str__(self) -> str:
        return (
            f"{self.where}: {self.key}: {self.message}"
            if self.key
            else f"{self.where}: {self.message}"
        )


class ConfigError(Exception):
    """The configuration (file or cloud layer) is invalid; ``problems`` lists every reason."""

    def __init__(self, problems: list[Problem], source: str = "configuration") -> None:
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def parse_duration(value: object) -> float:
    """``15`` (seconds), ``"15m"``, ``"1h30m"``, ``"500ms"``, ``"400d"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 30s, 15m, 1h, 400d")
    text = value.strip().replace(" ", "")
    pos = 0
    total = 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"{value!r} is not a duration (e.g. 30s, 15m, 1h30m, 400d)")
    return total


def parse_size(value: object) -> int:
    """``1048576``, ``"256 MiB"``, ``"64MB"``, ``"512k"`` -> bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("expected a size such as 256 MiB or 64MB")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size (e.g. 256 MiB, 64MB, 512k)")
    unit = (m.group(2) or "").lower()
    return int(Decimal(m.group(1)) * _SIZE_UNITS[unit])


def exact_decimal(value: object) -> Decimal:
    """A scale factor as an exact decimal. TOML floats arrive as binary floats; their shortest
    repr is the text the installer wrote (``0.1`` -> ``Decimal("0.1")``), strings stay exact."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    try:
        if isinstance(value, int | float):
            number = Decimal(repr(value))
        elif isinstance(value, str):
            number = Decimal(value.strip())
        else:
            raise ValueError("expected a number")
    except InvalidOperation as exc:
        raise ValueError(f"{value!r} is not a number") from exc
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a finite number")
    return number


def _fmt(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Checker:
    """Collects problems while reading one document (the file, or a cloud layer)."""

    def __init__(self, where: Callable[[KeyPath], str]) -> None:
        self.where = where
        self.problems: list[Problem] = []

    def fail(self, path: KeyPath, message: str) -> None:
        self.problems.append(Problem(self.where(path), _fmt(path), message))

    def table(self, doc: Mapping[str, Any], path: KeyPath, allowed: Iterable[str]) -> None:
        allowed = list(allowed)
        for key in doc:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f"; did you mean {near[0]!r}?"
                    if near
                    else f" (known: {', '.join(sorted(allowed))})"
                )
                self.fail((*path, key), f"unknown key{hint}")

    def get(
        self,
        doc: Mapping[str, Any],
        path: KeyPath,
        key: str,
        conv: Callable[[Any], T],
        default: T | None = None,
        required: bool = False,
    ) -> T | None:
        if key not in doc:
            if required:
                self.fail((*path, key), "is required")
            return default
        try:
            return conv(doc[key])
        except (ValueError, TypeError, KeyError) as exc:
            self.fail((*path, key), str(exc))
            return default

    def sub(self, doc: Mapping[str, Any], path: KeyPath, key: str) -> dict[str, Any]:
        value = doc.get(key, {})
        if not isinstance(value, dict):
            self.fail((*path, key), "must be a table")
            return {}
        return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _nonempty(value: object) -> str:
    text = _str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _int_in(lo: int, hi: int) -> Callable[[object], int]:
    def conv(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer {lo}..{hi}")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo}..{hi}")
        return value

    return conv


def _choice(options: Iterable[str]) -> Callable[[object], str]:
    opts = list(options)

    def conv(value: object) -> str:
        if value not in opts:
            raise ValueError(f"{value!r} is not one of {', '.join(opts)}")
        return str(value)

    return conv


def _duration_in(lo: float, hi: float) -> Callable[[object], float]:
    def conv(value: object) -> float:
        seconds = parse_duration(value)
        if not lo <= seconds <= hi:
            raise ValueError(f"{seconds:g} s is out of range {lo:g}..{hi:g} s")
        return seconds

    return conv


def _interval(value: object) -> int:
    seconds = parse_duration(value)
    if seconds != int(seconds) or not valid_interval(int(seconds)):
        raise ValueError(
            f"{seconds:g} s must be whole seconds that divide a day (e.g. 1m, 5m, 15m, 1h, 1d)"
        )
    return int(seconds)


def _quirks(ck: _Checker, doc: Mapping[str, Any], path: KeyPath, protocol: str) -> Quirks:
    raw = doc.get("quirks")
    if raw is None:
        return Quirks()
    known = QUIRKS[protocol]
    if isinstance(raw, list):  # a list of names switches boolean quirks on
        raw = {name: True for name in raw if isinstance(name, str)}
    if not isinstance(raw, dict):
        ck.fail((*path, "quirks"), "must be a table of named quirks or a list of names")
        return Quirks()
    ck.table(raw, (*path, "quirks"), known)
    values: list[tuple[str, bool | int | float]] = []
    for name, (kind, _meaning) in known.items():
        if name not in raw:
            continue
        conv: Callable[[Any], bool | int | float]
        if kind == "bool":
            conv = _bool
        elif kind == "int":
            conv = _int_in(1, 255)
        elif kind == "count":
            conv = _int_in(0, 10)
        elif kind == "baud":
            conv = _choice_int((300, 600, 1200, 2400, 4800, 9600, 19200, 38400))
        else:
            conv = _duration_in(0, 120)
        got = ck.get(raw, (*path, "quirks"), name, conv)
        if got is not None:
            values.append((name, got))
    return Quirks(tuple(sorted(values)))


def _buses(ck: _Checker, doc: Mapping[str, Any]) -> tuple[BusConfig, ...]:
    raw = ck.sub(doc, (), "buses")
    out = []
    devices: dict[str, str] = {}
    for name, table in raw.items():
        path: KeyPath = ("buses", name)
        if not isinstance(table, dict):
            ck.fail(path, "must be a table")
            continue
        ck.table(
            table,
            path,
            (
                "kind",
                "device",
                "baud_rate",
                "parity",
                "stop_bits",
                "timeout",
                "idle_gap",
                "retries",
                "quirks",
            ),
        )
        kind = BusKind(ck.get(table, path, "kind", _choice(BusKind), "mbus") or "mbus")
        device = ck.get(table, path, "device", _nonempty, required=True) or ""
        if device and device in devices:
            ck.fail((*path, "device"), f"{device} is already bus {devices[device]!r}")
        devices.setdefault(device, name)
        default_baud = 2400 if kind is BusKind.MBUS else 9600
        baud = (
            ck.get(
                table,
                path,
                "baud_rate",
                _choice_int((300, 600, 1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
                default_baud,
            )
            or default_baud
        )
        parity = (
            ck.get(table, path, "parity", _choice(("E", "N", "O")), "E") or "E"
        )  # 8E1: M-Bus always, Modbus RTU by default
        stop_bits = ck.get(table, path, "stop_bits", _int_in(1, 2), 1) or 1
        timeout = ck.get(table, path, "timeout", _duration_in(0.01, 5.0))
        idle_gap = ck.get(table, path, "idle_gap", _duration_in(0.0, 1.0))
        retries = ck.get(table, path, "retries", _int_in(0, 10), 3)
        protocol = "mbus" if kind is BusKind.MBUS else "modbus"
        out.append(
            BusConfig(
                name,
                kind,
                device,
                baud,
                parity,
                stop_bits,
                timeout,
                idle_gap,
                3 if retries is None else retries,
                _quirks(ck, table, path, protocol),
            )
        )
    return tuple(out)


def _choice_int(options: Iterable[int]) -> Callable[[object], int]:
    opts = list(options)

    def conv(value: object) -> int:
        if isinstance(value, bool) or value not in opts:
            raise ValueError(f"{value!r} is not one of {', '.join(map(str, opts))}")
        return int(str(value))

    return conv


_REGISTER_KEYS = ("name", "address", "function", "type", "word_order", "scale", "unit", "quantity")


def _register(ck: _Checker, table: Any, path: KeyPath) -> RegisterSpec | None:
    if not isinstance(table, dict):
        ck.fail(path, "must be a table")
        return None
    before = len(ck.problems)
    ck.table(table, path, _REGISTER_KEYS)
    name = ck.get(table, path, "name", _nonempty, required=True)
    address = ck.get(table, path, "address", _int_in(0, 65535), required=True)
    function = ck.get(table, path, "function", _choice(RegisterFunction), "holding")
    rtype = ck.get(table, path, "type", _choice(RegisterType), required=True)
    order = ck.get(table, path, "word_order", _choice(WordOrder), "big")
    scale = ck.get(table, path, "scale", exact_decimal, Decimal(1))
    if scale is not None and scale == 0:
        ck.fail((*path, "scale"), "must not be zero")
    unit = ck.get(table, path, "unit", _str, "")
    quantity = ck.get(table, path, "quantity", _str, "")
    if len(ck.problems) != before:
        return None
    assert name and address is not None and rtype and function and order and scale is not None
    spec = RegisterSpec(
        name,
        address,
        RegisterFunction(function),
        RegisterType(rtype),
        WordOrder(order),
        scale,
        unit or "",
        quantity or "",
    )
    if address + spec.count > 65536:
        ck.fail((*path, "address"), f"{spec.type} at {address} runs past register 65535")
        return None
    return spec


def _meter(
    ck: _Checker,
    table: Any,
    path: KeyPath,
    default_interval: int,
    buses: Mapping[str, BusConfig],
    check_buses: bool,
) -> MeterConfig | None:
    if not isinstance(table, dict):
        ck.fail(path, "must be a table")
        return None
    before = len(ck.problems)
    ck.table(
        table,
        path,
        (
            "id",
            "kind",
            "interval",
            "offset",
            "enabled",
            "bus",
            "primary_address",
            "secondary_address",
            "unit_id",
            "host",
            "port",
            "profile",
            "registers",
            "timeout",
            "quirks",
        ),
    )
    meter_id = ck.get(table, path, "id", _meter_id, required=True)
    kind_s = ck.get(table, path, "kind", _choice(MeterKind), "mbus") or "mbus"
    kind = MeterKind(kind_s)
    interval = ck.get(table, path, "interval", _interval, default_interval) or default_interval
    offset = ck.get(table, path, "offset", _duration_in(0, DAY_S), 0.0) or 0.0
    if offset >= interval or offset != int(offset):
        ck.fail((*path, "offset"), f"must be whole seconds below the interval ({interval} s)")
    enabled = ck.get(table, path, "enabled", _bool, True)
    timeout = ck.get(table, path, "timeout", _duration_in(0.01, 10.0))
    bus = ck.get(table, path, "bus", _nonempty)
    primary = ck.get(table, path, "primary_address", _int_in(0, 250))
    secondary = ck.get(table, path, "secondary_address", _secondary)
    unit_id = ck.get(table, path, "unit_id", _int_in(0, 255))
    host = ck.get(table, path, "host", _nonempty)
    port = ck.get(table, path, "port", _int_in(1, 65535))
    profile = ck.get(table, path, "profile", _choice(PROFILES))
    registers: list[RegisterSpec] = []
    protocol = "mbus" if kind is MeterKind.MBUS else "modbus"

    def forbid(*keys: str) -> None:
        for key in keys:
            if key in table:
                ck.fail((*path, key), f"does not apply to a {kind.value} meter")

    if kind is MeterKind.MBUS:
        forbid("unit_id", "host", "port", "profile", "registers")
        if (
            (primary is None) == (secondary is None)
            and "primary_address" not in table
            and "secondary_address" not in table
        ):
            ck.fail(path, "an M-Bus meter needs primary_address or secondary_address")
        elif "primary_address" in table and "secondary_address" in table:
            ck.fail(
                (*path, "secondary_address"),
                "give either primary_address or secondary_address, not both",
            )
    else:
        forbid("primary_address", "secondary_address")
        if kind is MeterKind.MODBUS_TCP:
            forbid("bus")
            if host is not None:
                host, port = _host_port(ck, (*path, "host"), host, port)
            if host is None and "host" not in table:
                ck.fail((*path, "host"), "is required for a modbus_tcp meter")
            port = port or 502
            unit_id = 1 if unit_id is None else unit_id
        else:
            forbid("host", "port")
            if unit_id is None and "unit_id" not in table:
                ck.fail((*path, "unit_id"), "is required for a modbus_rtu meter (1..247)")
            elif unit_id is not None and not 1 <= unit_id <= 247:
                ck.fail((*path, "unit_id"), f"{unit_id} is out of range 1..247 on a serial line")
        by_name: dict[str, RegisterSpec] = {r.name: r for r in PROFILES.get(profile or "", ())}
        raw_regs = table.get("registers", [])
        if not isinstance(raw_regs, list):
            ck.fail((*path, "registers"), "must be an array of tables")
            raw_regs = []
        seen: set[str] = set()
        for i, raw in enumerate(raw_regs):
            spec = _register(ck, raw, (*path, "registers", i))
            if spec is None:
                continue
            if spec.name in seen:
                ck.fail((*path, "registers", i, "name"), f"{spec.name!r} appears twice")
            seen.add(spec.name)
            by_name[spec.name] = spec
        registers = list(by_name.values())
        if not registers and "registers" not in table and profile is None:
            ck.fail(path, "a Modbus meter needs a profile or registers")
    if kind is not MeterKind.MODBUS_TCP:
        if bus is None:
            if "bus" not in table:
                ck.fail((*path, "bus"), f"is required for a {kind.value} meter")
        elif check_buses:
            want = BusKind.MBUS if kind is MeterKind.MBUS else BusKind.MODBUS_RTU
            if bus not in buses:
                known = ", ".join(sorted(buses)) or "none configured"
                ck.fail((*path, "bus"), f"no bus named {bus!r} (buses: {known})")
            elif buses[bus].kind is not want:
                ck.fail(
                    (*path, "bus"),
                    f"bus {bus!r} is {buses[bus].kind.value}, "
                    f"a {kind.value} meter needs a {want.value} bus",
                )
    quirks = _quirks(ck, table, path, protocol)
    if len(ck.problems) != before:
        return None
    assert meter_id is not None
    return MeterConfig(
        id=meter_id,
        kind=kind,
        interval_s=interval,
        offset_s=int(offset),
        enabled=True if enabled is None else enabled,
        bus=bus,
        primary_address=primary,
        secondary_address=_full_secondary(secondary) if secondary else None,
        unit_id=unit_id,
        host=host,
        port=port,
        profile=profile,
        registers=tuple(registers),
        timeout_s=timeout,
        quirks=quirks,
    )


def _full_secondary(text: str) -> str:
    """The 16 hex digits the master selects with (``IIIIIIIIMMMMVVDD``, libmbus's layout);
    an identification number alone gets wildcards (``F``) for manufacturer, version, medium."""
    return (text + "FFFFFFFF")[:16].upper()


def _host_port(
    ck: _Checker,
    path: KeyPath,
    host: str,
    port: int | None,
) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a port given twice is an error."""
    text = host
    given: str | None = None
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            ck.fail(path, f"{host!r}: unclosed [ of an IPv6 address")
            return host, port
        rest = text[close + 1 :]
        text = text[1:close]
        if rest:
            if not rest.startswith(":"):
                ck.fail(path, f"{host!r}: expected [address]:port")
                return text, port
            given = rest[1:]
    elif text.count(":") == 1:
        text, _, given = text.partition(":")
    if given is not None:
        if port is not None:
            ck.fail(path, "the port is given twice (in host and in port)")
        elif not (given.isdigit() and 0 < int(given) < 65536):
            ck.fail(path, f"{host!r}: host:port with a port 1..65535 expected")
        else:
            port = int(given)
    if not text:
        ck.fail(path, "no host name or address")
    return text, port


def _meter_id(value: object) -> str:
    text = _str(value)
    if not _METER_ID.match(text):
        raise ValueError(
            f"{text!r}: 1-64 of letters, digits and _ . : - (starting with a letter or digit)"
        )
    return text


def _secondary(value: object) -> str:
    text = _str(value).replace("-", "").replace(" ", "")
    if not _SECONDARY.match(text):
        raise ValueError(
            f"{value!r}: 8 BCD digits (identification number), optionally "
            "followed by 8 hex digits (manufacturer, version, medium)"
        )
    return text


def _meters(
    ck: _Checker,
    raw: Any,
    path: KeyPath,
    default_interval: int,
    buses: Mapping[str, BusConfig],
    check_buses: bool = True,
) -> tuple[MeterConfig, ...]:
    if not isinstance(raw, list):
        ck.fail(path, "must be an array of tables ([[meters]])")
        return ()
    out: list[MeterConfig] = []
    ids: set[str] = set()
    for i, table in enumerate(raw):
        raw_id = table.get("id") if isinstance(table, dict) else None
        if isinstance(raw_id, str):
            if raw_id in ids:
                ck.fail((*path, i, "id"), f"meter id {raw_id!r} is used twice")
                continue
            ids.add(raw_id)
        meter = _meter(ck, table, (*path, i), default_interval, buses, check_buses)
        if meter is not None:
            out.append(meter)
    addresses: dict[tuple[str | None, object], str] = {}
    for i, meter in enumerate(out):
        key: tuple[str | None, object]
        if meter.kind is MeterKind.MBUS:
            key = (
                meter.bus,
                meter.primary_address
                if meter.primary_address is not None
                else meter.secondary_address,
            )
        elif meter.kind is MeterKind.MODBUS_RTU:
            key = (meter.bus, meter.unit_id)
        else:
            key = (f"{meter.host}:{meter.port}", meter.unit_id)
        if key in addresses:
            ck.fail((*path, i), f"same address as meter {addresses[key]!r}")
        addresses[key] = meter.id
    return tuple(out)


def _installation(ck: _Checker, doc: Mapping[str, Any]) -> Installation:
    path: KeyPath = ("installation",)
    table = ck.sub(doc, (), "installation")
    ck.table(table, path, ("site", "description", "latitude", "longitude", "timezone", "clock"))
    lat = ck.get(table, path, "latitude", _float_in(-90, 90))
    lon = ck.get(table, path, "longitude", _float_in(-180, 180))
    tz = ck.get(table, path, "timezone", _timezone, "UTC") or "UTC"
    clock = ck.get(table, path, "clock", _choice(CLOCK_MODES), "auto") or "auto"
    return Installation(
        ck.get(table, path, "site", _str, "") or "",
        ck.get(table, path, "description", _str, "") or "",
        lat,
        lon,
        tz,
        clock,
    )


def _float_in(lo: float, hi: float) -> Callable[[object], float]:
    def conv(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number")
        if not lo <= value <= hi:
            raise ValueError(f"{value} is out of range {lo:g}..{hi:g}")
        return float(value)

    return conv


def _timezone(value: object) -> str:
    name = _str(value)
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{name!r} is not an IANA time zone (e.g. Europe/Berlin)") from exc
    return name


def _paths(ck: _Checker, doc: Mapping[str, Any], base: Path) -> Paths:
    path: KeyPath = ("paths",)
    table = ck.sub(doc, (), "paths")
    ck.table(table, path, ("state_dir", "database", "cloud_layer", "status_file"))
    state = Path(
        ck.get(table, path, "state_dir", _nonempty, "/var/lib/mbus-logger")
        or "/var/lib/mbus-logger"
    )
    if not state.is_absolute():
        state = base / state

    def under(key: str, default: str) -> Path:
        p = Path(ck.get(table, path, key, _nonempty, default) or default)
        return p if p.is_absolute() else state / p

    return Paths(
        state,
        under("database", "buffer.db"),
        under("cloud_layer", "cloud-layer.json"),
        under("status_file", "status.json"),
    )


def _buffer(ck: _Checker, doc: Mapping[str, Any]) -> BufferLimits:
    path: KeyPath = ("buffer",)
    table = ck.sub(doc, (), "buffer")
    ck.table(table, path, ("max_bytes", "max_age", "min_free_disk", "policy"))
    defaults = BufferLimits()
    max_bytes = ck.get(table, path, "max_bytes", parse_size, defaults.max_bytes)
    if max_bytes is not None and max_bytes < 64 * 1024:
        ck.fail((*path, "max_bytes"), "must be at least 64 KiB")
    max_age = ck.get(
        table, path, "max_age", _duration_in(3600, 20 * 365 * DAY_S), defaults.max_age_s
    )
    min_free = ck.get(table, path, "min_free_disk", parse_size, defaults.min_free_bytes)
    if min_free is not None and min_free < 4 * 1024 * 1024:
        # The WAL (1 MiB) and the reserve (2 MiB) must fit in the margin.
        ck.fail(
            (*path, "min_free_disk"),
            "must be at least 4 MiB (the WAL and the reserve need room beyond it)",
        )
    policy = ck.get(table, path, "policy", _choice(BufferPolicy), "drop_oldest")
    return BufferLimits(
        max_bytes,
        max_age,
        min_free if min_free is not None else defaults.min_free_bytes,
        BufferPolicy(policy or "drop_oldest"),
    )


def _uplink(ck: _Checker, doc: Mapping[str, Any], base: Path) -> UplinkConfig | None:
    if "uplink" not in doc:
        return None
    path: KeyPath = ("uplink",)
    table = ck.sub(doc, (), "uplink")
    ck.table(
        table,
        path,
        (
            "endpoint",
            "server_application_uri",
            "tcti",
            "key",
            "key_handle",
            "certificate",
            "trust_dir",
            "push_interval",
            "batch_size",
            "config_poll_interval",
            "status_interval",
            "connect_timeout",
        ),
    )
    endpoint = ck.get(table, path, "endpoint", _endpoint, required=True) or ""
    uri = ck.get(table, path, "server_application_uri", _uri, required=True) or ""
    tcti = ck.get(table, path, "tcti", _tcti, "device:/dev/tpmrm0") or "device:/dev/tpmrm0"
    key = ck.get(table, path, "key", _nonempty, "tpm") or "tpm"
    if key != "tpm" and not Path(key).is_absolute():
        key = str(base / key)
    handle = ck.get(table, path, "key_handle", _int_in(0x81000000, 0x81FFFFFF), 0x81000001)

    def opt_path(name: str) -> Path | None:
        raw = ck.get(table, path, name, _nonempty)
        if raw is None:
            return None
        p = Path(raw)
        return p if p.is_absolute() else base / p

    d = UplinkConfig("", "")
    return UplinkConfig(
        endpoint=endpoint,
        server_application_uri=uri,
        tcti=tcti,
        key=key,
        key_handle=handle or 0x81000001,
        certificate=opt_path("certificate"),
        trust_dir=opt_path("trust_dir"),
        push_interval_s=ck.get(
            table, path, "push_interval", _duration_in(1, 3600), d.push_interval_s
        )
        or d.push_interval_s,
        batch_size=ck.get(table, path, "batch_size", _int_in(1, 100_000), d.batch_size)
        or d.batch_size,
        config_poll_interval_s=ck.get(
            table, path, "config_poll_interval", _duration_in(10, DAY_S), d.config_poll_interval_s
        )
        or d.config_poll_interval_s,
        status_interval_s=ck.get(
            table, path, "status_interval", _duration_in(10, DAY_S), d.status_interval_s
        )
        or d.status_interval_s,
        connect_timeout_s=ck.get(
            table, path, "connect_timeout", _duration_in(1, 300), d.connect_timeout_s
        )
        or d.connect_timeout_s,
    )


def _endpoint(value: object) -> str:
    text = _nonempty(value)
    if not re.match(r"^opc\.tcp://[^/:\s]+(:\d{1,5})?(/.*)?$", text):
        raise ValueError(f"{text!r} is not an opc.tcp://host[:port][/path] URL")
    return text


def _uri(value: object) -> str:
    text = _nonempty(value)
    if not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$", text):
        raise ValueError(f"{text!r} is not a URI (e.g. urn:example:receiver)")
    return text


def _tcti(value: object) -> str:
    text = _nonempty(value)
    if not re.match(r"^(device|swtpm|mssim|tabrmd)(:.*)?$", text):
        raise ValueError(
            f"{text!r} is not a TCTI (device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321, tabrmd)"
        )
    return text


_TOP = ("installation", "paths", "buffer", "uplink", "buses", "meters", "default_interval")


def parse(
    doc: Mapping[str, Any],
    *,
    lines: Mapping[KeyPath, int] | None = None,
    source: str = "<config>",
    base: Path | None = None,
) -> Config:
    """Validate a parsed TOML document into a :class:`Config`; raise :class:`ConfigError`
    listing every problem with its line."""
    lines = dict(lines or {})

    def where(path: KeyPath) -> str:
        line = line_of(lines, path)
        return f"{source}:{line}" if line else source

    ck = _Checker(where)
    base = base or Path.cwd()
    ck.table(doc, (), _TOP)
    default_interval = ck.get(doc, (), "default_interval", _interval, 900) or 900
    installation = _installation(ck, doc)
    paths = _paths(ck, doc, base)
    buffer = _buffer(ck, doc)
    uplink = _uplink(ck, doc, base)
    buses = _buses(ck, doc)
    by_name = {b.name: b for b in buses}
    meters = _meters(ck, doc.get("meters", []), ("meters",), default_interval, by_name)
    if ck.problems:
        raise ConfigError(sorted(ck.problems, key=_line_key), source)
    return Config(
        installation,
        paths,
        buffer,
        uplink,
        buses,
        meters,
        default_interval,
        source=Path(source) if source != "<config>" else None,
    )


def _line_key(problem: Problem) -> int:
    _, _, line = problem.where.rpartition(":")
    return int(line) if line.isdigit() else 0


def load(path: str | Path) -> Config:
    """Read and validate the local TOML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [Problem(str(path), "", f"cannot read: {exc.strerror}")], str(path)
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(str(path), "", f"not UTF-8 text: {exc}")], str(path)) from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line N, column M)": keep it as the location.
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{path}:{m.group(1)}" if m else str(path)
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError([Problem(where, "", f"not valid TOML: {message}")], str(path)) from exc
    return parse(doc, lines=key_lines(text), source=str(path), base=path.parent)


# --- the cloud layer -------------------------------------------------------------------------


def _pointer(path: KeyPath) -> str:
    return "/" + "/".join(str(p) for p in path)


def apply_cloud_layer(base: Config, layer: Mapping[str, Any]) -> Config:
    """The file's configuration with a cloud layer applied, validated as a whole.

    The layer is ``{"version": ..., "meters": [...], "default_interval": "15m"}``: meters
    replace the file's meters entirely (same schema as ``[[meters]]``) and must use the
    file's buses. Any other key — buses, paths, uplink, buffer, installation, keys, trust —
    is refused: the cloud never changes what belongs to the device.
    """
    version_raw = layer.get("version") if isinstance(layer, Mapping) else None
    label = f"cloud layer v{version_raw}" if version_raw is not None else "cloud layer"
    ck = _Checker(lambda path: f"{label} {_pointer(path)}" if path else label)
    if not isinstance(layer, Mapping):
        raise ConfigError([Problem(label, "", "must be a JSON object")], label)
    for key in layer:
        if key == "version":
            continue
        if key not in CLOUD_FIELDS:
            ck.fail(
                (key,),
                "the cloud layer may set only "
                f"{', '.join(CLOUD_FIELDS)}; {key!r} belongs to the local file",
            )
    version = ck.get(layer, (), "version", _version, required=True)
    default_interval = (
        ck.get(layer, (), "default_interval", _interval, base.default_interval_s)
        or base.default_interval_s
    )
    meters = base.meters
    if "meters" in layer:
        meters = _meters(
            ck, layer["meters"], ("meters",), default_interval, {b.name: b for b in base.buses}
        )
    if ck.problems:
        raise ConfigError(ck.problems, label)
    return replace(base, meters=meters, default_interval_s=default_interval, cloud_version=version)


def _version(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected an integer or a text version")
    text = str(value).strip()
    if not text or len(text) > 64:
        raise ValueError("must be 1-64 characters")
    return text


def parse_cloud_layer(data: bytes | str) -> dict[str, Any]:
    """Decode a cloud layer document (JSON object)."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            [Problem("cloud layer", "", f"not valid JSON: {exc}")], "cloud layer"
        ) from exc
    if not isinstance(doc, dict):
        raise ConfigError([Problem("cloud layer", "", "must be a JSON object")], "cloud layer")
    return doc

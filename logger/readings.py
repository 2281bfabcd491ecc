"""One reading: what the poller hands to the store and the store hands to the uplink.

A reading is one record of one meter at one poll, with its value kept *exact*
(ARCHITECTURE.md, "Exact values"): numbers travel as a canonical decimal string (which is
also an integer mantissa and decimal exponent, see :meth:`Reading.mantissa_exponent`), never
only as a binary float. Each reading carries two clocks: the meter's own timestamp where the
meter sends one (M-Bus "time point" record; the meter's local time, no zone) and the logger's
(UTC). A logger without a real-time clock may poll before NTP has set its clock; those readings
carry the flag :data:`FLAG_CLOCK_UNSYNCED` so the cloud can tell their logger time is not to be
trusted.

This module is pure (standard library only) so the store, the Modbus reader, the poller and the
uplink can all share it without pulling each other's dependencies.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

FLAG_CLOCK_UNSYNCED = "clock_unsynced"
"""The logger's clock was not synchronised when the reading was taken."""

_DECIMAL_RE = re.compile(r"^-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?$")


class ValueKind(enum.StrEnum):
    """What the exact value string holds."""

    NUMBER = "number"  # canonical decimal: -?digits[.digits], no exponent, no trailing zeros
    TEXT = "text"  # free text (plain-text VIF, manufacturer data as hex, Modbus strings)
    DATE = "date"  # ISO 8601 date or date-time as the meter sent it (meter's local time)


class ReadingError(ValueError):
    """A reading (or a decoded record) that cannot be represented exactly."""


def canonical_decimal(value: Decimal | int | str) -> str:
    """The one canonical text of a decimal number: no exponent, no trailing zeros, no ``-0``.

    Two readings of the same value therefore compare equal as text, in SQLite as in the
    receiver's storage. Raises :class:`ReadingError` for NaN, infinities and non-numbers.
    """
    try:
        number = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ReadingError(f"not a decimal number: {value!r}") from exc
    if not number.is_finite():
        raise ReadingError(f"not a finite decimal number: {value!r}")
    if number == 0:
        return "0"
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def decimal_from_mantissa(mantissa: int, exponent: int) -> str:
    """``mantissa * 10**exponent`` as a canonical decimal string, computed exactly."""
    return canonical_decimal(Decimal(mantissa).scaleb(exponent))


@dataclass(frozen=True, slots=True)
class Reading:
    """One value of one meter at one poll.

    ``key`` identifies the record within the meter across polls (e.g. an M-Bus record key
    built from DIF/VIF, storage, tariff and subunit, or a Modbus register map entry's name);
    ``(meter_id, key)`` is the time series a value belongs to.
    """

    meter_id: str
    key: str
    quantity: str
    unit: str
    value: str
    kind: ValueKind
    logger_time: datetime
    meter_time: datetime | None = None
    flags: frozenset[str] = field(default_factory=frozenset)
    storage: int = 0
    tariff: int = 0
    subunit: int = 0
    function: str = "instantaneous"

    def __post_init__(self) -> None:
        if not self.meter_id:
            raise ReadingError("a reading needs a meter id")
        if not self.key:
            raise ReadingError(f"meter {self.meter_id}: a reading needs a record key")
        if self.logger_time.tzinfo is None:
            raise ReadingError(f"meter {self.meter_id} {self.key}: logger time must carry UTC")
        if self.kind is ValueKind.NUMBER and not _DECIMAL_RE.match(self.value):
            raise ReadingError(
                f"meter {self.meter_id} {self.key}: {self.value!r} is not a canonical decimal "
                "(use canonical_decimal())"
            )
        if not isinstance(self.flags, frozenset):
            object.__setattr__(self, "flags", frozenset(self.flags))

    @property
    def clock_unsynced(self) -> bool:
        return FLAG_CLOCK_UNSYNCED in self.flags

    def decimal(self) -> Decimal:
        """The value as a :class:`~decimal.Decimal` (numbers only)."""
        if self.kind is not ValueKind.NUMBER:
            raise ReadingError(f"meter {self.meter_id} {self.key}: value is {self.kind}")
        return Decimal(self.value)

    def mantissa_exponent(self) -> tuple[int, int]:
        """The value as an integer mantissa and a decimal exponent (numbers only)."""
        sign, digits, exponent = self.decimal().as_tuple()
        mantissa = int("".join(map(str, digits)) or "0")
        assert isinstance(exponent, int)  # finite by construction
        return (-mantissa if sign else mantissa), exponent

    def with_flags(self, *extra: str) -> Reading:
        """A copy with more flags set."""
        from dataclasses import replace

        return replace(self, flags=self.flags | frozenset(extra))


def utc_now() -> datetime:
    return datetime.now(UTC)


# --- M-Bus decoder records -> readings ------------------------------------------------------

_DATE_QUANTITIES = ("time point", "time_point", "date", "datetime", "date and time")


FLAG_NO_VALUE = "no_value"
"""The record carries no usable value (e.g. an invalid date): kept as empty text with the
decoder's flags, so the information that the meter sent it is not lost."""

_DATE_TYPES = ("date", "datetime", "time", "date_time")
_NUMBER_TYPES = ("int", "bcd", "real", "number", "float")


def _record_kind(record: Mapping[str, Any]) -> ValueKind:
    declared = record.get("kind") or record.get("value_kind")
    if declared in ("number", "text", "date"):
        return ValueKind(declared)
    if record.get("value") is None:
        return ValueKind.TEXT
    rtype = str(record.get("type", "")).lower()
    if rtype in _DATE_TYPES:
        return ValueKind.DATE
    if rtype and rtype not in _NUMBER_TYPES:
        return ValueKind.TEXT
    if "mantissa" in record and isinstance(record.get("mantissa"), int):
        return ValueKind.NUMBER
    quantity = str(record.get("quantity", "")).lower()
    if any(q in quantity for q in _DATE_QUANTITIES):
        return ValueKind.DATE
    value = record.get("value")
    if isinstance(value, int) and not isinstance(value, bool):
        return ValueKind.NUMBER
    if isinstance(value, str) and _DECIMAL_RE.match(value):
        return ValueKind.NUMBER
    return ValueKind.TEXT


def _exact_value(record: Mapping[str, Any], kind: ValueKind, where: str) -> str:
    if kind is not ValueKind.NUMBER:
        value = record.get("value")
        return "" if value is None else str(value)
    mantissa = record.get("mantissa")
    exponent = record.get("exponent")
    if isinstance(mantissa, int) and isinstance(exponent, int):
        exact = decimal_from_mantissa(mantissa, exponent)
        if "value" in record and record["value"] is not None:
            stated = canonical_decimal(str(record["value"]))
            if stated != exact:
                raise ReadingError(
                    f"{where}: value {record['value']!r} disagrees with mantissa {mantissa} "
                    f"* 10**{exponent}"
                )
        return exact
    value = record.get("value")
    if isinstance(value, float):
        # A float has already lost exactness; refusing it keeps the contract honest.
        raise ReadingError(f"{where}: value {value!r} is a binary float, not an exact decimal")
    if value is None:
        raise ReadingError(f"{where}: record has no value")
    return canonical_decimal(str(value))


def parse_meter_time(value: Any) -> datetime | None:
    """A meter's date or date-time record as a naive datetime (the meter's local time)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=None)


def readings_from_mbus(
    meter_id: str,
    decoded: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    logger_time: datetime,
    *,
    clock_synced: bool = True,
) -> list[Reading]:
    """Convert ``logger.mbus.decode()`` output (or its list of records) into readings.

    Each record supplies ``key``, ``quantity``, ``unit``, ``value`` (exact decimal string),
    ``mantissa``/``exponent``, ``flags``, ``storage``, ``tariff``, ``subunit`` and
    ``function``; the telegram's status flags (``header.status_flags``) become
    ``status:<flag>`` on every reading. The date-time record of storage 0 is the meter's
    current time and becomes every reading's ``meter_time``; date records are also kept as
    readings of kind ``date`` (due dates of storage > 0 are billing data). A record without a
    value (an invalid date) is kept as empty text flagged ``no_value``. A record whose value
    cannot be kept exactly raises :class:`ReadingError` naming the meter and the record: the
    caller counts it as a failed poll instead of storing a rounded value.
    """
    records = list(decoded.get("records", []) if isinstance(decoded, Mapping) else decoded)
    kinds = [_record_kind(record) for record in records]
    # The meter's clock: its current date-time record (storage 0); a date alone if that is
    # all it sends.
    candidates = [
        r
        for r, k in zip(records, kinds, strict=True)
        if k is ValueKind.DATE and int(r.get("storage", 0)) == 0
    ]
    candidates.sort(key=lambda r: "T" not in str(r.get("value", "")))
    meter_time: datetime | None = None
    for record in candidates:
        meter_time = parse_meter_time(record.get("value"))
        if meter_time is not None:
            break
    base_flags = frozenset() if clock_synced else frozenset({FLAG_CLOCK_UNSYNCED})
    if isinstance(decoded, Mapping):
        # The telegram's status byte (power low, permanent error, …) concerns every value.
        header = decoded.get("header") or {}
        base_flags |= {f"status:{f}" for f in header.get("status_flags") or ()}
    out: list[Reading] = []
    for index, (record, kind) in enumerate(zip(records, kinds, strict=True)):
        key = str(record.get("key") or f"record{index}")
        where = f"meter {meter_id} record {key}"
        raw_flags = record.get("flags") or ()
        if isinstance(raw_flags, Mapping):
            flags = frozenset(str(k) for k, v in raw_flags.items() if v)
        else:
            flags = frozenset(str(f) for f in raw_flags)
        if record.get("value") is None:
            flags |= {FLAG_NO_VALUE}
        out.append(
            Reading(
                meter_id=meter_id,
                key=key,
                quantity=str(record.get("quantity", "")),
                unit=str(record.get("unit", "")),
                value=_exact_value(record, kind, where),
                kind=kind,
                logger_time=logger_time,
                meter_time=meter_time,
                flags=flags | base_flags,
                storage=int(record.get("storage", 0)),
                tariff=int(record.get("tariff", 0)),
                subunit=int(record.get("subunit", 0)),
                function=str(record.get("function", "instantaneous")),
            )
        )
    return out

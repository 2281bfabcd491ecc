"""Pure helpers both backends share: batch checks, exact values, config shape, the audit chain.

Kept free of any database module so that the SQLite and PostgreSQL backends cannot drift in
what they accept, how they compare a resent reading, or how they hash an audit entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from logger.contract import MAX_BATCH, MAX_CONFIG_BYTES, MAX_STRING, check_push_columns

from .api import (
    AuditEntry,
    AuditVerification,
    BadBatch,
    Columns,
    Device,
    Installation,
    InvalidConfiguration,
    LatestValue,
    MeterHealth,
    SequenceConflict,
    StatusReport,
    StoredReading,
)

# Sequence numbers are UInt64 in the contract but both databases store signed 64-bit integers.
MAX_SEQUENCE = 2**63 - 1

# A reading as both backends compare it:
# (sequence, meter, record, value, unit, quantity, source_time, logger_time, flags)
Row = tuple[int, str, str, str, str, str, datetime | None, datetime | None, str]
CONTENT_FIELDS = (
    "meter",
    "record",
    "value",
    "unit",
    "quantity",
    "source_time",
    "logger_time",
    "flags",
)

# OPC UA's null DateTime decodes as 1601-01-01; anything at or before it means "no time".
_OPCUA_EPOCH = datetime(1601, 1, 2, tzinfo=UTC)

_DECIMAL_RE = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,4})?$")

GENESIS_HASH = "0" * 64


def utc(value: object, where: str = "time") -> datetime | None:
    """A timestamp as an aware UTC datetime; None for null (OPC UA's 1601-01-01 included).

    Naive datetimes are taken as UTC: that is how asyncua hands DateTime values over, and
    meter clocks without a zone are stored as they came.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise BadBatch(f"{where} is not a DateTime ({type(value).__name__})")
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if aware < _OPCUA_EPOCH:
        return None
    return aware


def normalize_batch(epoch: str, columns: Columns) -> list[Row]:
    """Check a PushReadings batch against the contract and return it as rows.

    Raises :class:`BadBatch` naming the first problem; nothing else escapes.
    """
    if not isinstance(epoch, str) or not epoch or len(epoch) > MAX_STRING:
        raise BadBatch(f"Epoch must be a non-empty string of at most {MAX_STRING} chars")
    size = len(columns.get("Sequence", ()))
    if size > MAX_BATCH:
        raise BadBatch(f"batch of {size} readings exceeds {MAX_BATCH}", too_large=True)
    try:
        n = check_push_columns({k: list(v) for k, v in columns.items()})
    except ValueError as exc:
        raise BadBatch(str(exc)) from None
    # check_push_columns proved these are strictly increasing non-negative ints.
    seqs = cast("Sequence[int]", columns["Sequence"])
    if seqs[n - 1] > MAX_SEQUENCE:
        raise BadBatch(f"Sequence[{n - 1}] exceeds {MAX_SEQUENCE}")
    src = columns["SourceTime"]
    lgt = columns["LoggerTime"]
    return [
        (
            int(seqs[i]),
            str(columns["Meter"][i]),
            str(columns["Record"][i]),
            str(columns["Value"][i]),
            str(columns["Unit"][i]),
            str(columns["Quantity"][i]),
            utc(src[i], f"SourceTime[{i}]"),
            utc(lgt[i], f"LoggerTime[{i}]"),
            str(columns["Flags"][i]),
        )
        for i in range(n)
    ]


def numeric_text(value: str) -> str | None:
    """The value when it is a finite decimal number a NUMERIC column takes, else None.

    The pattern bounds the exponent to four digits and the contract bounds the text to
    MAX_VALUE_STRING characters, so every match fits NUMERIC (131072 digits before the point,
    16383 after) without parsing it here.
    """
    return value if _DECIMAL_RE.match(value) else None


def value_double(value: str) -> float | None:
    """A float beside the exact value, for convenience only (None for text and overflow)."""
    if not _DECIMAL_RE.match(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def differences(stored: Row, sent: Row) -> str:
    """Name the fields in which a resent reading differs from the stored one."""
    parts = []
    for name, old, new in zip(CONTENT_FIELDS, stored[1:], sent[1:], strict=True):
        if old != new:
            parts.append(f"{name}: stored {_show(old)}, sent {_show(new)}")
    return "; ".join(parts)


def _show(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return repr(value)


def latest_per_record(rows: Sequence[Row]) -> list[Row]:
    """The last row of the batch for each (meter, record): what the address space shows."""
    last: dict[tuple[str, str], Row] = {}
    for row in rows:
        last[(row[1], row[2])] = row
    return list(last.values())


# What a backend reads back, as the same values whichever database holds them. ``when`` turns a
# stored timestamp into an aware UTC datetime (or None): microseconds since 1970 in SQLite,
# timestamptz in PostgreSQL.
When = Callable[[Any], datetime | None]

# The columns :func:`check_resent` expects, in this order.
RESENT_COLUMNS = "seq, meter, record, value, unit, quantity, source_time, logger_time, flags"


def check_resent(
    device_uri: str, epoch: str, rows: Sequence[Row], stored: Iterable[Sequence[Any]], when: When
) -> None:
    """Every row of a batch that was partly stored already must equal its stored version.

    ``stored`` are the records (:data:`RESENT_COLUMNS`) of the batch's sequence range. A
    difference refuses the whole batch with :class:`SequenceConflict` naming the fields: a
    logger that resends a sequence number with another value has lost its buffer's history.
    """
    by_seq: dict[int, Row] = {
        rec[0]: (rec[0], rec[1], rec[2], rec[3], rec[4], rec[5], when(rec[6]), when(rec[7]), rec[8])
        for rec in stored
    }
    for row in rows:
        old = by_seq[row[0]]
        if old != row:
            raise SequenceConflict(device_uri, epoch, row[0], differences(old, row))


def stored_reading(r: Sequence[Any], when: When) -> StoredReading:
    """An exported reading from ``application_uri, epoch, seq, meter, record, value, unit,
    quantity, source_time, logger_time, flags, received_at``."""
    received = when(r[11])
    assert received is not None  # NOT NULL in both schemas
    return StoredReading(
        device_uri=r[0],
        epoch=r[1],
        sequence=r[2],
        meter=r[3],
        record=r[4],
        value=r[5],
        unit=r[6],
        quantity=r[7],
        source_time=when(r[8]),
        logger_time=when(r[9]),
        flags=r[10],
        received_at=received,
    )


def latest_value(r: Sequence[Any], when: When) -> LatestValue:
    """A latest value from ``application_uri, meter, record, value, value_double, unit,
    quantity, source_time, logger_time, epoch, seq``."""
    return LatestValue(
        r[0], r[1], r[2], r[3], r[4], r[5], r[6], when(r[7]), when(r[8]), r[9], r[10]
    )


def installation(r: Sequence[Any], when: When) -> Installation:
    """A recorded installation report from ``application_uri, reported_at, serial, location,
    firmware, thumbprint``."""
    reported = when(r[1])
    assert reported is not None  # NOT NULL in both schemas
    return Installation(r[0], reported, r[2], r[3], r[4], r[5])


def device(r: Sequence[Any], when: When) -> Device:
    """A device from the backends' device query (``_DEVICE_SQL``: the devices columns, then the
    newest configuration version); no status before the first status report."""
    status = None
    if r[9] is not None:
        status = StatusReport(
            buffer_depth=r[10],
            oldest_age_s=r[11],
            losses=r[12],
            cert_days_left=r[13],
            config_version=r[14],
            meters=decode_meters(r[15]),
        )
    return Device(
        application_uri=r[0],
        serial=r[1],
        thumbprint=r[2],
        cert_not_after=when(r[3]),
        location=r[4],
        firmware=r[5],
        first_contact=when(r[6]),
        last_contact=when(r[7]),
        last_peer=r[8],
        status_at=when(r[9]),
        status=status,
        config_version=int(r[16] or 0),
    )


# --------------------------------------------------------------------------------------------
# Cloud configuration.

# The top-level keys a cloud layer may set (the logger's ``logger.config.model.CLOUD_FIELDS``;
# a test keeps the two equal). Everything else belongs to the device's local file — buses,
# paths, uplink, keys, trust, buffer, installation — and is refused here already, so an
# operator's mistake is caught at the source (ARCHITECTURE.md, "Configuration in two layers").
# The logger validates the full schema against its local file before use.
CLOUD_SECTIONS = ("meters", "default_interval")
VERSION_KEY = "version"
"""Set by the receiver to the version number it assigned; a version in the input is replaced."""


def validate_config(json_text: str) -> dict[str, Any]:
    """Parse a cloud configuration document and check its top-level shape.

    Shape: a JSON object with only :data:`CLOUD_SECTIONS` (and ``version``, which the receiver
    replaces); ``meters``, when present, an array of objects; ``default_interval`` a string or
    a number of seconds; no number out of range. Returns the document without ``version``.
    """
    if not isinstance(json_text, str):
        raise InvalidConfiguration("configuration must be JSON text")
    size = len(json_text.encode("utf-8"))
    if size > MAX_CONFIG_BYTES:
        raise InvalidConfiguration(
            f"configuration is {size} bytes, more than the {MAX_CONFIG_BYTES} allowed"
        )
    try:
        document = json.loads(json_text, parse_constant=_no_constant, parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise InvalidConfiguration(f"configuration is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidConfiguration(
            f"configuration must be a JSON object at the top level, not {_json_type(document)}"
        )
    for key in document:
        if key != VERSION_KEY and key not in CLOUD_SECTIONS:
            raise InvalidConfiguration(
                f"configuration section {key!r} cannot be set from the cloud (only "
                f"{', '.join(CLOUD_SECTIONS)}): it belongs to the device's local file"
            )
    meters = document.get("meters", [])
    if not (isinstance(meters, list) and all(isinstance(m, dict) for m in meters)):
        raise InvalidConfiguration("configuration section 'meters' must be an array of objects")
    interval = document.get("default_interval", "")
    if isinstance(interval, bool) or not isinstance(interval, str | int | float):
        raise InvalidConfiguration(
            "configuration section 'default_interval' must be a duration text or seconds"
        )
    document.pop(VERSION_KEY, None)
    return document


def served_config(version: int, content: dict[str, Any]) -> str:
    """The document a logger receives: the content with the receiver's version number."""
    return json.dumps({VERSION_KEY: version, **content}, indent=2, ensure_ascii=False) + "\n"


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_type(value: object) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def canonical_config(document: Any) -> str:
    """One text per JSON value, to tell whether a new version changes anything."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


def stored_content(served: str) -> str:
    """The canonical content of a stored (served) document, its version left out."""
    document = json.loads(served)
    if isinstance(document, dict):
        document.pop(VERSION_KEY, None)
    return canonical_config(document)


# --------------------------------------------------------------------------------------------
# Meter health (stored as JSON text in both backends).


def encode_meters(meters: Iterable[MeterHealth]) -> str:
    return json.dumps(
        [
            {
                "meter": m.meter,
                "ok": m.ok,
                "failures": m.failures,
                "last_success": m.last_success.isoformat() if m.last_success else None,
                "last_error": m.last_error,
            }
            for m in meters
        ]
    )


def decode_meters(text: str | None) -> tuple[MeterHealth, ...]:
    if not text:
        return ()
    return tuple(
        MeterHealth(
            meter=m["meter"],
            ok=bool(m["ok"]),
            failures=int(m["failures"]),
            last_success=datetime.fromisoformat(m["last_success"]) if m["last_success"] else None,
            last_error=m["last_error"],
        )
        for m in json.loads(text)
    )


# --------------------------------------------------------------------------------------------
# The audit chain.

MAX_AUDIT_FIELD = 4096


def audit_time(value: datetime) -> str:
    """The canonical text of an audit entry's time (UTC, microseconds, 'Z')."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_audit_fields(**fields: str) -> None:
    for name, value in fields.items():
        if not isinstance(value, str):
            raise ValueError(f"audit {name} must be a string")
        if len(value) > MAX_AUDIT_FIELD:
            raise ValueError(f"audit {name} is longer than {MAX_AUDIT_FIELD} chars")
    if not fields.get("event"):
        raise ValueError("audit event must not be empty")


def audit_hash(
    prev_hash: str,
    entry_id: int,
    time: datetime,
    event: str,
    device_uri: str,
    thumbprint: str,
    peer: str,
    detail: str,
) -> str:
    """sha256(prev_hash || canonical entry), hex.

    The canonical entry is compact JSON with sorted keys, UTF-8; it includes the entry's id so
    that moving an entry to another position breaks its hash.
    """
    canonical = json.dumps(
        {
            "id": entry_id,
            "time": audit_time(time),
            "event": event,
            "device": device_uri,
            "thumbprint": thumbprint,
            "peer": peer,
            "detail": detail,
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


def entry_hash(entry: AuditEntry) -> str:
    return audit_hash(
        entry.prev_hash,
        entry.id,
        entry.time,
        entry.event,
        entry.device_uri,
        entry.thumbprint,
        entry.peer,
        entry.detail,
    )


class ChainVerifier:
    """Walks audit entries in id order and remembers the first break.

    Feed every entry with :meth:`feed`, then call :meth:`finish` with the head the database
    recorded (last id and hash, updated in the same transaction as each append), which catches
    entries deleted from the end of the log. An ``anchor`` — a head hash recorded outside the
    database earlier — must appear in the chain: that catches a rewrite of the whole chain
    from some entry on, which no check inside the database can.
    """

    def __init__(self, anchor: str | None = None) -> None:
        self._anchor = anchor.lower() if anchor else None
        self._anchor_seen = False
        self._expected_id = 1
        self._prev = GENESIS_HASH
        self._count = 0
        self._first_bad: int | None = None
        self._problems: list[str] = []

    def _bad(self, entry_id: int, problem: str) -> None:
        if self._first_bad is None:
            self._first_bad = entry_id
        self._problems.append(problem)

    def feed(self, entry: AuditEntry) -> None:
        self._count += 1
        if entry.hash == self._anchor:
            self._anchor_seen = True
        if entry.id != self._expected_id:
            if entry.id > self._expected_id:
                missing = (
                    f"entry {self._expected_id}"
                    if entry.id == self._expected_id + 1
                    else f"entries {self._expected_id}..{entry.id - 1}"
                )
                self._bad(self._expected_id, f"{missing} missing before entry {entry.id} (deleted)")
            else:
                self._bad(
                    entry.id, f"entry {entry.id} out of order (expected id {self._expected_id})"
                )
        if entry_hash(entry) != entry.hash:
            self._bad(
                entry.id,
                f"entry {entry.id} ({entry.event}, {audit_time(entry.time)}) "
                "does not match its hash (edited or moved)",
            )
        elif entry.prev_hash != self._prev:
            self._bad(
                entry.id,
                f"entry {entry.id} does not follow the entry before it "
                "(an entry was deleted, inserted or reordered before it)",
            )
        self._expected_id = entry.id + 1
        self._prev = entry.hash

    def unreadable(self, entry_id: int, reason: str) -> None:
        """An entry whose stored fields cannot even be parsed (edited by hand)."""
        self._count += 1
        self._bad(entry_id, f"entry {entry_id} is unreadable ({reason}): edited")
        self._expected_id = entry_id + 1
        self._prev = ""

    def finish(self, head: tuple[int, str] | None) -> AuditVerification:
        """Compare the end of the chain with the head (last id, last hash) the log recorded."""
        last_id = self._expected_id - 1
        if head is None:
            self._bad(last_id + 1, "the audit head record is missing (deleted)")
            head = (last_id, self._prev)
        head_id, head_hash = head
        if head_id > last_id:
            self._bad(
                last_id + 1,
                f"the log ends at entry {last_id} but entries up to "
                f"{head_id} were written (deleted at the end)",
            )
        elif head_id < last_id:
            self._bad(
                head_id + 1,
                f"entries after {head_id} were not written through the log (inserted at the end)",
            )
        elif head_hash != self._prev:
            self._bad(last_id, f"entry {last_id} is not the entry last written (replaced)")
        if self._anchor is not None and not self._anchor_seen:
            self._bad(
                last_id + 1 if self._first_bad is None else self._first_bad,
                f"the recorded head {self._anchor} is not in the log (history rewritten or "
                "truncated since it was recorded)",
            )
        ok = self._first_bad is None
        return AuditVerification(
            ok=ok,
            entries=self._count,
            head_hash=self._prev,
            first_bad_id=self._first_bad,
            problem=None if ok else self._problems[0],
            details=tuple(self._problems),
        )

"""The contract between logger and receiver: namespace, nodes, methods, payload layout.

One pure module (standard library only) imported by both sides, so they cannot drift. Any OPC UA
client can use it too: every method takes and returns OPC UA built-in types (arrays of them,
column by column), never an opaque blob, and every value crosses exactly (decimal strings).

Address space of a receiver (namespace :data:`NAMESPACE_URI`)::

    Objects/
      MeterDataReceiver                      object, holds the methods below
        PushReadings(...)                    loggers only
        GetConfiguration(...)                loggers only
        ReportInstallation(...)              loggers only
        ReportStatus(...)                    loggers only
        GetTrustList(...)                    loggers and operators
        Loggers/                             folder: one object per logger (by ApplicationUri)
          <ApplicationUri>/                  NodeId ns=<ns>;s=Loggers/<ApplicationUri>
            ApplicationUri, Serial, Location, FirmwareVersion, CertificateThumbprint,
            CertificateNotAfter, LastContact, BufferDepth, OldestAgeSeconds, Losses,
            ConfigVersion                    properties
            Meters/
              <meter>/
                <record key>                 variable: exact value (String), its
                                             SourceTimestamp the logger's time of the
                                             reading; properties Unit, Quantity,
                                             MeterTime, ValueDouble, Sequence

The device a call comes from is always the certificate that opened the secure channel, never
an argument: a logger cannot write as another logger.
"""

from __future__ import annotations

from dataclasses import dataclass

NAMESPACE_URI = "urn:mbus-ua-logger:receiver:v1"
RECEIVER_OBJECT = "MeterDataReceiver"
LOGGERS_FOLDER = "Loggers"
METERS_FOLDER = "Meters"

# Method names (browse names in NAMESPACE_URI).
PUSH_READINGS = "PushReadings"
GET_CONFIGURATION = "GetConfiguration"
REPORT_INSTALLATION = "ReportInstallation"
REPORT_STATUS = "ReportStatus"
GET_TRUST_LIST = "GetTrustList"

# Bounds: a request outside them is refused with BadRequestTooLarge / BadInvalidArgument.
MAX_BATCH = 10_000
MAX_STRING = 256  # meter ids, record keys, units, quantities, flags
MAX_VALUE_STRING = 1024  # text values and long decimal strings
MAX_CONFIG_BYTES = 1_000_000


@dataclass(frozen=True)
class Argument:
    """One method argument: OPC UA built-in type name, array or scalar, and its meaning."""

    name: str
    type: (
        str  # "String", "UInt64", "UInt32", "Int32", "Double", "Boolean", "DateTime", "ByteString"
    )
    array: bool
    description: str


# PushReadings: a batch in columns. All arrays have the same length (1..MAX_BATCH); sequence
# numbers strictly increase within the batch. The batch is stored whole or not at all.
PUSH_READINGS_INPUT = (
    Argument("Epoch", "String", False, "store epoch of the logger's buffer (random id)"),
    Argument("Sequence", "UInt64", True, "sequence number within the epoch"),
    Argument("Meter", "String", True, "meter id as configured on the logger"),
    Argument("Record", "String", True, "record key within the meter"),
    Argument("Value", "String", True, "exact value: decimal string, ISO date or text"),
    Argument("Unit", "String", True, "SI unit of the value (empty when none)"),
    Argument("Quantity", "String", True, "physical quantity, e.g. energy, volume"),
    Argument("SourceTime", "DateTime", True, "meter's own timestamp (null when none)"),
    Argument("LoggerTime", "DateTime", True, "logger's clock when the reading was taken"),
    Argument("Flags", "String", True, "comma-separated flags, e.g. clock_unsynced"),
)
PUSH_READINGS_OUTPUT = (
    Argument(
        "AcknowledgedUpTo",
        "UInt64",
        False,
        "every reading of this epoch with a sequence number up to this one is stored",
    ),
    Argument("Inserted", "UInt32", False, "readings newly stored by this call"),
    Argument("Duplicates", "UInt32", False, "readings already stored with the same content"),
)

# GetConfiguration: the cloud layer of the logger's configuration (JSON text, versioned).
GET_CONFIGURATION_INPUT = (
    Argument("RunningVersion", "UInt32", False, "version the logger runs (0: none)"),
)
GET_CONFIGURATION_OUTPUT = (
    Argument("Version", "UInt32", False, "current version for this logger (0: none set)"),
    Argument(
        "Configuration",
        "String",
        False,
        "JSON document of the cloud layer; empty when Version equals RunningVersion",
    ),
)

REPORT_INSTALLATION_INPUT = (
    Argument("Serial", "String", False, "manufacturing serial number"),
    Argument("Location", "String", False, "installation location from the local config"),
    Argument("FirmwareVersion", "String", False, "software version of the logger"),
)
REPORT_INSTALLATION_OUTPUT: tuple[Argument, ...] = ()

REPORT_STATUS_INPUT = (
    Argument("BufferDepth", "UInt64", False, "readings waiting in the buffer"),
    Argument("OldestAgeSeconds", "Double", False, "age of the oldest buffered reading"),
    Argument("Losses", "UInt64", False, "readings dropped by the buffer policy, ever"),
    Argument("CertificateDaysLeft", "Int32", False, "days until the logger certificate expires"),
    Argument("ConfigVersion", "UInt32", False, "cloud configuration version in use"),
    Argument("MeterIds", "String", True, "meters, one entry per meter"),
    Argument("MeterOk", "Boolean", True, "last poll of the meter succeeded"),
    Argument("MeterFailures", "UInt32", True, "consecutive failed polls"),
    Argument("MeterLastSuccess", "DateTime", True, "last successful poll (null: never)"),
    Argument("MeterLastError", "String", True, "last error text (empty: none)"),
    Argument(
        "ConfigProblem",
        "String",
        False,
        "why the current cloud configuration was refused (empty: none refused)",
    ),
)
REPORT_STATUS_OUTPUT: tuple[Argument, ...] = ()

# GetTrustList (modelled on OPC UA Part 12): DER certificates of the CAs and their current CRLs.
GET_TRUST_LIST_INPUT: tuple[Argument, ...] = ()
GET_TRUST_LIST_OUTPUT = (
    Argument("Certificates", "ByteString", True, "DER CA certificates (organization, root)"),
    Argument("Crls", "ByteString", True, "DER CRLs, one per CA"),
)

METHODS: dict[str, tuple[tuple[Argument, ...], tuple[Argument, ...]]] = {
    PUSH_READINGS: (PUSH_READINGS_INPUT, PUSH_READINGS_OUTPUT),
    GET_CONFIGURATION: (GET_CONFIGURATION_INPUT, GET_CONFIGURATION_OUTPUT),
    REPORT_INSTALLATION: (REPORT_INSTALLATION_INPUT, REPORT_INSTALLATION_OUTPUT),
    REPORT_STATUS: (REPORT_STATUS_INPUT, REPORT_STATUS_OUTPUT),
    GET_TRUST_LIST: (GET_TRUST_LIST_INPUT, GET_TRUST_LIST_OUTPUT),
}

# Methods an operator (read-only role) may call; the rest are for loggers only.
OPERATOR_METHODS = frozenset({GET_TRUST_LIST})


_TEXT_BOUNDS = (
    ("Meter", MAX_STRING),
    ("Record", MAX_STRING),
    ("Unit", MAX_STRING),
    ("Quantity", MAX_STRING),
    ("Flags", MAX_STRING),
    ("Value", MAX_VALUE_STRING),
)


def check_push_columns(columns: dict[str, list[object]]) -> int:
    """Validate the shape of a PushReadings batch; return its length.

    Raises ``ValueError`` naming the first problem: missing or unequal columns, size bounds,
    sequence numbers that do not strictly increase, strings over their bound.
    """
    names = [a.name for a in PUSH_READINGS_INPUT if a.array]
    lengths = {}
    for name in names:
        if name not in columns:
            raise ValueError(f"missing column {name}")
        lengths[name] = len(columns[name])
    n = lengths["Sequence"]
    if n == 0:
        raise ValueError("empty batch")
    if n > MAX_BATCH:
        raise ValueError(f"batch of {n} readings exceeds {MAX_BATCH}")
    unequal = {k: v for k, v in lengths.items() if v != n}
    if unequal:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(unequal.items()))
        raise ValueError(f"columns of unequal length: Sequence={n}, {detail}")
    # Fast checks at C speed over whole columns; the loops below run only to name the
    # first offending element (a receiver checks tens of thousands of values per call).
    seqs = columns["Sequence"]
    if not (
        set(map(type, seqs)) == {int}
        and seqs[0] >= 0  # type: ignore[operator]
        and all(map(int.__lt__, seqs, seqs[1:]))  # type: ignore[arg-type]
    ):
        previous = -1
        for i, seq in enumerate(seqs):
            if type(seq) is not int or seq < 0:
                raise ValueError(f"Sequence[{i}] is not a non-negative integer")
            if seq <= previous:
                raise ValueError(f"Sequence[{i}]={seq} does not increase (previous {previous})")
            previous = seq
    for name, bound in _TEXT_BOUNDS:
        column = columns[name]
        if set(map(type, column)) == {str} and max(map(len, column)) <= bound:  # type: ignore[arg-type]
            continue
        for i, text in enumerate(column):
            if not isinstance(text, str) or len(text) > bound:
                raise ValueError(f"{name}[{i}] is not a string of at most {bound} chars")
    for name in ("Meter", "Record"):
        column = columns[name]
        if min(map(len, column)) > 0:  # type: ignore[arg-type]
            continue
        for i, text in enumerate(column):
            if not text:
                raise ValueError(f"{name}[{i}] is empty")
    return n


def push_readings_max_bytes() -> int:
    """Worst-case encoded size of one PushReadings request within the bounds above.

    :data:`MAX_BATCH` readings whose strings all have their maximum length in characters, every
    character taking 4 bytes in UTF-8 (the contract bounds characters, OPC UA encodes bytes).
    Per reading: the UInt64 sequence, two DateTimes, six strings each with its Int32 length
    prefix. On top: the request header, the method and object ids, the epoch, and each
    argument's Variant header and array length - bounded by a flat 64 KiB. Both ends size their
    transport limit from it, so a batch the contract allows always fits on the wire.
    """
    utf8 = 4
    strings = {a.name for a in PUSH_READINGS_INPUT if a.array and a.type == "String"}
    bounds = {name: MAX_STRING for name in strings}
    bounds["Value"] = MAX_VALUE_STRING
    per_reading = 8 + 2 * 8 + sum(4 + utf8 * n for n in bounds.values())
    return MAX_BATCH * per_reading + 64 * 1024


MAX_MESSAGE_BYTES = -(-push_readings_max_bytes() // (1024 * 1024)) * 1024 * 1024
"""Transport message limit of both ends: :func:`push_readings_max_bytes` rounded up to whole
MiB (89 MiB with the bounds above)."""
MAX_CHUNK_COUNT = -(-MAX_MESSAGE_BYTES // 65536)
"""Chunks of 64 KiB a message of :data:`MAX_MESSAGE_BYTES` needs at most."""

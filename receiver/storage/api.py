"""The receiver's storage interface: what the OPC UA server and the operator commands rely on.

One :class:`Storage` protocol, two backends (SQLite embedded, PostgreSQL for fleets), one
contract test suite run against both (``tests/receiver/test_storage_contract.py``). Everything
is ``async`` because the server is asyncio; each backend keeps its blocking work off the loop.

Semantics every backend guarantees (ARCHITECTURE.md, "Exactly once" and "Exact values"):

* A reading is identified by (device, epoch, sequence) and stored once.
* :meth:`Storage.push` stores a batch whole or not at all, in one transaction, and returns only
  after that transaction committed durably: the :class:`PushResult` is the acknowledgement.
* A resent reading with the same content is a duplicate: counted, acknowledged, nothing changes.
  A resent sequence number with different content raises :class:`SequenceConflict` and nothing
  of the batch is stored. That holds across several receiver instances on one PostgreSQL.
* Values stay exact: the decimal string as the logger sent it is what is stored and exported;
  a float beside it is only for convenience (and a NUMERIC on PostgreSQL).
* The audit log is hash-chained: :meth:`Storage.verify_audit` finds a deleted, edited, inserted
  or reordered entry and names the first one.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

# --------------------------------------------------------------------------------------------
# Errors. The server maps them to OPC UA status codes; the CLI to exit codes.


class StorageError(Exception):
    """Base class: something about the receiver's storage went wrong."""


class StorageUnavailable(StorageError):
    """The database cannot be reached right now (transient: retry later)."""


class StorageAuthError(StorageError):
    """The database refused our credentials (permanent until the configuration changes)."""


class StorageConfigError(StorageError):
    """The storage URL or the database itself is not usable (missing, wrong schema version)."""


class BadBatch(StorageError, ValueError):
    """A PushReadings batch with the wrong shape (unequal columns, bounds, order).

    Nothing was stored. Suggested OPC UA status: ``BadInvalidArgument`` (``BadRequestTooLarge``
    when :attr:`too_large`).
    """

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


class SequenceConflict(StorageError):
    """A resent sequence number whose content differs from what is stored.

    Nothing of the batch was stored. Suggested OPC UA status: ``BadInvalidArgument``; the
    server should audit it (a logger whose buffer was tampered with or reset without a new
    epoch).
    """

    def __init__(self, device_uri: str, epoch: str, sequence: int, differences: str) -> None:
        super().__init__(
            f"reading {sequence} of epoch {epoch!r} from {device_uri} is already stored with "
            f"different content ({differences})"
        )
        self.device_uri = device_uri
        self.epoch = epoch
        self.sequence = sequence
        self.differences = differences


class InvalidConfiguration(StorageError, ValueError):
    """A cloud configuration document that is not JSON of the expected top-level shape."""


def status_name(exc: BaseException) -> str:
    """The OPC UA status code (name in ``asyncua.ua.StatusCodes``) for a storage error.

    Kept here as names so the storage stays free of asyncua; the server looks the code up.
    """
    if isinstance(exc, BadBatch):
        return "BadRequestTooLarge" if exc.too_large else "BadInvalidArgument"
    if isinstance(exc, SequenceConflict | InvalidConfiguration):
        return "BadInvalidArgument"
    if isinstance(exc, StorageUnavailable):
        return "BadResourceUnavailable"
    return "BadInternalError"


# --------------------------------------------------------------------------------------------
# Values exchanged with the storage.


@dataclass(frozen=True)
class PushResult:
    """The acknowledgement of one committed batch.

    ``acknowledged_up_to`` is the highest sequence number of the batch: every reading of the
    batch is durably stored. (Readings of earlier batches were acknowledged by their own calls;
    the receiver cannot tell a gap left by the logger's buffer policy from a batch never sent.)
    """

    acknowledged_up_to: int
    inserted: int
    duplicates: int


@dataclass(frozen=True)
class MeterHealth:
    """One meter's health as the logger last reported it (ReportStatus)."""

    meter: str
    ok: bool
    failures: int
    last_success: datetime | None
    last_error: str


@dataclass(frozen=True)
class StatusReport:
    """A logger's periodic ReportStatus."""

    buffer_depth: int
    oldest_age_s: float
    losses: int
    cert_days_left: int
    config_version: int
    meters: tuple[MeterHealth, ...] = ()


@dataclass(frozen=True)
class Installation:
    """One ReportInstallation as recorded in the history."""

    device_uri: str
    reported_at: datetime
    serial: str
    location: str
    firmware: str
    thumbprint: str


@dataclass(frozen=True)
class Device:
    """What the receiver knows about one logger (keyed by its ApplicationUri)."""

    application_uri: str
    serial: str | None = None
    thumbprint: str | None = None
    cert_not_after: datetime | None = None
    location: str | None = None
    firmware: str | None = None
    first_contact: datetime | None = None
    last_contact: datetime | None = None
    last_peer: str | None = None
    status_at: datetime | None = None
    status: StatusReport | None = None
    config_version: int = 0
    """Latest cloud configuration version set for the device (0: none)."""


@dataclass(frozen=True)
class ConfigVersion:
    """One version of a device's cloud configuration."""

    device_uri: str
    version: int
    document: str
    set_at: datetime
    set_by: str


@dataclass(frozen=True)
class LatestValue:
    """The newest value of one (device, meter, record), for the address space."""

    device_uri: str
    meter: str
    record: str
    value: str
    value_double: float | None
    unit: str
    quantity: str
    source_time: datetime | None
    logger_time: datetime | None
    epoch: str
    sequence: int


@dataclass(frozen=True)
class StoredReading:
    """One reading as exported: exactly what the logger sent, plus where and when it landed."""

    device_uri: str
    epoch: str
    sequence: int
    meter: str
    record: str
    value: str
    unit: str
    quantity: str
    source_time: datetime | None
    logger_time: datetime | None
    flags: str
    received_at: datetime


@dataclass(frozen=True)
class AuditEntry:
    """One entry of the security audit log.

    ``hash`` is sha256(prev_hash || canonical entry) in hex, see
    :func:`receiver.storage._rows.audit_hash`.
    """

    id: int
    time: datetime
    event: str
    device_uri: str
    thumbprint: str
    peer: str
    detail: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class AuditVerification:
    """The verdict of :meth:`Storage.verify_audit`."""

    ok: bool
    entries: int
    head_hash: str
    first_bad_id: int | None = None
    problem: str | None = None
    details: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------------------
# The interface.

Columns = Mapping[str, Sequence[object]]
"""A PushReadings batch as the server decoded it: column name (contract) -> values."""


@runtime_checkable
class Storage(Protocol):
    """The receiver's persistence. Open one with :func:`receiver.storage.open_storage`."""

    url: str
    """The storage's URL for messages and logs (without any password)."""

    async def close(self) -> None:
        """Release connections and threads. The storage is unusable afterwards."""

    # -- readings -------------------------------------------------------------------------
    async def push(
        self, device_uri: str, thumbprint: str, epoch: str, columns: Columns
    ) -> PushResult:
        """Store a batch whole or not at all; return only after it committed durably.

        ``device_uri`` and ``thumbprint`` come from the secure channel's certificate, never
        from the request. Raises :class:`BadBatch`, :class:`SequenceConflict`,
        :class:`StorageUnavailable`.
        """

    async def acknowledged(self, device_uri: str, epoch: str) -> int | None:
        """The highest sequence number stored for (device, epoch), or None."""

    def export(
        self,
        device_uri: str | None = None,
        meter: str | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[StoredReading, None]:
        """Stream stored readings in arrival order, optionally filtered (``since``: logger
        time at or after)."""

    async def latest_values(self, device_uri: str | None = None) -> list[LatestValue]:
        """The newest value per (device, meter, record)."""

    # -- devices --------------------------------------------------------------------------
    async def record_contact(
        self,
        device_uri: str,
        thumbprint: str,
        cert_not_after: datetime | None,
        peer: str = "",
    ) -> None:
        """Note that a logger opened a session (certificate identity, expiry, peer address)."""

    async def report_installation(
        self, device_uri: str, thumbprint: str, serial: str, location: str, firmware: str
    ) -> bool:
        """Record a ReportInstallation; True when it differs from the last one (history)."""

    async def installations(self, device_uri: str | None = None) -> list[Installation]:
        """The installation history, oldest first."""

    async def report_status(self, device_uri: str, thumbprint: str, status: StatusReport) -> None:
        """Record a logger's ReportStatus (keeps the latest)."""

    async def devices(self) -> list[Device]:
        """All known loggers, ordered by ApplicationUri."""

    async def device(self, device_uri: str) -> Device | None:
        """One logger, or None when the receiver never heard of it."""

    # -- cloud configuration --------------------------------------------------------------
    async def set_config(self, device_uri: str, json_text: str, set_by: str = "") -> int:
        """Validate and store a new configuration version; return the version in force.

        Setting a document equal (as JSON) to the current one keeps its version. Raises
        :class:`InvalidConfiguration`. Audited as ``config.set``.
        """

    async def get_config(self, device_uri: str) -> ConfigVersion | None:
        """The current configuration of a device, or None when none was ever set."""

    # -- audit log ------------------------------------------------------------------------
    async def audit(
        self,
        event: str,
        *,
        device_uri: str = "",
        thumbprint: str = "",
        peer: str = "",
        detail: str = "",
    ) -> AuditEntry:
        """Append a security event to the hash-chained audit log (committed on return)."""

    async def audit_entries(
        self, since_id: int = 0, limit: int | None = None, device_uri: str | None = None
    ) -> list[AuditEntry]:
        """Audit entries with id > ``since_id``, oldest first."""

    async def verify_audit(self, anchor: str | None = None) -> AuditVerification:
        """Walk the whole chain; report the first entry that breaks it.

        ``anchor``: a head hash recorded earlier outside the database; it must be in the chain.
        """

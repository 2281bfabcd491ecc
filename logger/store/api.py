"""The durable buffer's contract: what the poller writes and what the uplink drains.

Every implementation (:class:`~logger.store.sqlite.SqliteStore` on disk,
:class:`~logger.store.memory.MemoryStore` as the model) satisfies :class:`ReadingStore`, and one
contract test suite runs against each (as Telegraf's buffer suite does for its memory and disk
buffers).

Semantics both implementations share (ARCHITECTURE.md, "Exactly once"):

* A store has an *epoch*: a random identifier created with it. Sequence numbers are assigned
  when a tick commits, strictly increasing within the epoch, never reused. Gaps appear only
  where the buffer policy dropped readings, and each such drop is a :class:`Loss` record.
* ``commit_tick`` writes all readings of one schedule tick in one transaction (flash wear:
  one fsync group per tick, not one per value) and returns the sequence range it assigned.
* ``pending_batch`` hands the oldest pending readings to the uplink; ``acknowledge`` removes
  exactly what the receiver confirmed, for the epoch it confirmed it in.
* Limits (bytes, age, minimum free disk) apply with a policy: ``drop_oldest`` deletes the
  oldest pending readings and records the loss; ``stop_polling`` keeps everything and refuses
  the new tick (:class:`BufferFull`), also recording the readings it could not take.

All methods block; the daemon calls them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from logger.readings import Reading


class BufferPolicy(enum.StrEnum):
    """What happens when a limit is reached."""

    DROP_OLDEST = "drop_oldest"
    STOP_POLLING = "stop_polling"


@dataclass(frozen=True, slots=True)
class BufferLimits:
    """Bounds of the buffer; ``None`` means unbounded (only sensible in tests)."""

    max_bytes: int | None = 256 * 1024 * 1024
    max_age_s: float | None = 400 * 24 * 3600.0
    min_free_bytes: int = 64 * 1024 * 1024
    policy: BufferPolicy = BufferPolicy.DROP_OLDEST


class LossReason(enum.StrEnum):
    MAX_BYTES = "max_bytes"
    MAX_AGE = "max_age"
    MIN_FREE_DISK = "min_free_disk"
    DISK_FULL = "disk_full"
    REFUSED = "refused"  # stop_polling: a tick that was not stored
    DATABASE_CORRUPT = "database_corrupt"


@dataclass(frozen=True, slots=True)
class Loss:
    """Readings the buffer lost, and why. Sequence bounds are ``None`` for readings that never
    got one (a refused tick) or that could not be counted (a corrupt database moved aside)."""

    id: int
    at: datetime
    reason: LossReason
    count: int
    first_seq: int | None = None
    last_seq: int | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StoredReading:
    seq: int
    reading: Reading


@dataclass(frozen=True, slots=True)
class Batch:
    """Pending readings, oldest first, all of one epoch."""

    epoch: str
    items: tuple[StoredReading, ...]

    @property
    def first_seq(self) -> int | None:
        return self.items[0].seq if self.items else None

    @property
    def last_seq(self) -> int | None:
        return self.items[-1].seq if self.items else None

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What one tick's commit assigned: sequence numbers ``first_seq..last_seq`` inclusive
    (``None`` for an empty tick), and the losses the policy recorded on the way."""

    epoch: str
    first_seq: int | None
    last_seq: int | None
    count: int
    losses: tuple[Loss, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreStats:
    epoch: str
    depth: int
    bytes: int
    oldest_seq: int | None
    newest_seq: int | None
    oldest_time: datetime | None
    oldest_age_s: float | None
    next_seq: int
    lost_total: int
    loss_records: int
    limits: BufferLimits = field(default_factory=BufferLimits)


class StoreError(Exception):
    """The buffer could not do what was asked; the message says what and where."""


class BufferFull(StoreError):
    """``stop_polling``: a limit is reached and the tick was refused (and counted as lost)."""

    def __init__(self, message: str, loss: Loss | None) -> None:
        super().__init__(message)
        self.loss = loss


class SchemaTooNew(StoreError):
    """The database was written by a newer version of the logger; it is left untouched."""


@runtime_checkable
class ReadingStore(Protocol):
    """The durable buffer between the poller and the uplink."""

    @property
    def epoch(self) -> str: ...

    @property
    def limits(self) -> BufferLimits: ...

    def set_limits(self, limits: BufferLimits) -> None:
        """New limits (a configuration reload); they apply from the next tick on."""
        ...

    def commit_tick(
        self, readings: Sequence[Reading], now: datetime | None = None
    ) -> CommitResult: ...

    def pending_batch(self, max_n: int) -> Batch: ...

    def acknowledge(
        self, epoch: str, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int: ...

    def read(self, since_seq: int = 0, max_n: int = 1000) -> list[StoredReading]: ...

    def losses(self, since_id: int = 0) -> list[Loss]: ...

    def stats(self, now: datetime | None = None) -> StoreStats: ...

    def enforce_limits(self, now: datetime | None = None) -> tuple[Loss, ...]: ...

    def close(self) -> None: ...


def reading_size(reading: Reading) -> int:
    """The bytes one reading is accounted for against ``max_bytes``.

    Both implementations use this same figure so the model and the disk store agree exactly;
    it approximates what SQLite stores for the row and its share of the b-tree (the bench
    ``tests.bench.bench_store`` prints the ratio of file size to this figure).
    """
    text = (
        len(reading.meter_id)
        + len(reading.key)
        + len(reading.quantity)
        + len(reading.unit)
        + len(reading.value)
        + len(reading.function)
        + sum(len(f) + 1 for f in reading.flags)
    )
    return ROW_OVERHEAD + text + (19 if reading.meter_time is not None else 0)


ROW_OVERHEAD = 48
"""Fixed bytes per row: record header, integer columns, b-tree cell and page slack."""

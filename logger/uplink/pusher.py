"""The pusher: drains the durable buffer into the receiver, exactly once, oldest first.

The store hands out readings with sequence numbers it assigned at commit (ARCHITECTURE.md,
"Exactly once"); the pusher sends them in bounded batches as ``PushReadings`` (columns of
built-in types, :mod:`logger.contract`) and deletes from the buffer only what the receiver
answered as durably stored (``AcknowledgedUpTo``), for the epoch it was sent in. A crash on
either side at any point leaves readings in the buffer that are then sent again; the receiver
recognises them by (device, epoch, sequence) and acknowledges them without storing twice.

Threads: the pusher itself is a coroutine on the daemon's event loop and only decides.
Every store call runs on the store's thread (``run_store``), every OPC UA call on the
uplink's thread and loop (:class:`UplinkThreadCaller`), so SQLite and asyncua never share a
loop and a slow TPM operation never holds the store. The two overlap: while batch *n* is on
the wire, batch *n + 1* is read from SQLite and batch *n - 1* is deleted, which is what lets a
month of backlog drain in seconds (PERFORMANCE.md: encoding dominates, so the pipeline hides
the store). Two calls are in flight by default, so the receiver decodes and commits one batch
while the logger encodes the next; they travel in sequence order on the one connection, and
the receiver handles a connection's requests one after the other.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from logger import contract
from logger.store.api import Batch, ReadingStore, StoredReading

if TYPE_CHECKING:
    from logger.uplink.connection import Connection, UplinkThread

_LOGGER = logging.getLogger(__name__)

StoreRunner = Callable[..., Awaitable[Any]]
"""Runs ``fn(*args)`` on the store's thread and returns its result (the daemon's
``DaemonContext.in_store_thread``)."""


class ReceiverCaller(Protocol):
    """Call a contract method on the receiver with plain Python values; the result is the
    method's output (one value, or a list of them). Raises
    :class:`logger.uplink.errors.UplinkError` (not connected, refused, bad status...)."""

    async def call(self, method: str, *args: Any) -> Any: ...


class UplinkThreadCaller:
    """:class:`ReceiverCaller` through the uplink's own thread (the daemon's wiring)."""

    def __init__(self, uplink: UplinkThread, timeout_s: float = 60.0) -> None:
        self._uplink = uplink
        self._timeout_s = timeout_s

    async def call(self, method: str, *args: Any) -> Any:
        async def work(connection: Connection) -> Any:
            return await connection.call(method, *args)

        future = self._uplink.submit(work)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self._timeout_s)
        except TimeoutError:
            future.cancel()
            from logger.uplink.errors import UplinkTimeout

            raise UplinkTimeout(f"{method}: no answer within {self._timeout_s:.0f} s") from None


class ConnectionCaller:
    """:class:`ReceiverCaller` on a connection that lives on the caller's own loop (tools and
    tests; the daemon uses :class:`UplinkThreadCaller`)."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def call(self, method: str, *args: Any) -> Any:
        return await self._connection.call(method, *args)


def _meter_time(t: datetime | None) -> datetime | None:
    """The meter's own clock travels unchanged: its local wall-clock time, carried in a
    DateTime (which OPC UA defines as UTC) without conversion - the logger does not know the
    meter's zone, and converting would alter what the meter said."""
    if t is None:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def push_arguments(epoch: str, items: Sequence[StoredReading]) -> tuple[Any, ...]:
    """A store batch as the ``PushReadings`` input arguments, in contract order (columns).

    Flag sets become sorted comma-separated text, so a resent reading always has the same
    content; exact values stay the store's canonical strings.
    """
    flag_text: dict[frozenset[str], str] = {}
    flags: list[str] = []
    for item in items:
        f = item.reading.flags
        text = flag_text.get(f)
        if text is None:
            text = flag_text[f] = ",".join(sorted(f))
        flags.append(text)
    readings = [item.reading for item in items]
    return (
        epoch,
        [item.seq for item in items],
        [r.meter_id for r in readings],
        [r.key for r in readings],
        [r.value for r in readings],
        [r.unit for r in readings],
        [r.quantity for r in readings],
        [_meter_time(r.meter_time) for r in readings],
        [r.logger_time for r in readings],
        flags,
    )


@dataclass(frozen=True)
class PushAck:
    """The receiver's answer to one batch."""

    epoch: str
    first_seq: int
    last_seq: int
    acknowledged_up_to: int
    inserted: int
    duplicates: int


class AcknowledgementMismatch(Exception):
    """The receiver acknowledged less than the batch it was sent (or something outside it)."""


@dataclass
class PusherStats:
    """Counters for the status file and ReportStatus (plain data, JSON-ready)."""

    batches: int = 0
    sent: int = 0
    inserted: int = 0
    duplicates: int = 0
    deleted: int = 0
    last_ack_seq: int | None = None
    last_push: datetime | None = None
    last_error: str | None = None
    last_error_kind: str | None = None
    blocked: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "sent": self.sent,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "deleted": self.deleted,
            "last_ack_seq": self.last_ack_seq,
            "last_push": self.last_push.isoformat() if self.last_push else None,
            "last_error": self.last_error,
            "last_error_kind": self.last_error_kind,
            "blocked": self.blocked,
        }


class Pusher:
    """Drains ``store`` into the receiver through ``caller`` (see the module doc).

    :meth:`drain` sends until the buffer is empty (readings committed meanwhile are picked up:
    the next read starts after the last sequence sent), so new readings flow behind a backlog
    instead of waiting for it. Errors propagate after the readings acknowledged so far have been
    deleted; nothing unacknowledged is ever deleted.
    """

    def __init__(
        self,
        store: ReadingStore,
        run_store: StoreRunner,
        caller: ReceiverCaller,
        batch_size: int = contract.MAX_BATCH,
        in_flight: int = 2,
    ) -> None:
        if not 1 <= batch_size <= contract.MAX_BATCH:
            raise ValueError(f"batch size {batch_size} is outside 1..{contract.MAX_BATCH}")
        self.store = store
        self.run_store = run_store
        self.caller = caller
        self.batch_size = batch_size
        self.in_flight = max(1, in_flight)
        self.stats = PusherStats()

    # -- store side (runs on the store's thread) ---------------------------------------------
    def _fetch(self, after_seq: int | None) -> Batch:
        if after_seq is None:
            return self.store.pending_batch(self.batch_size)
        epoch = self.store.epoch
        return Batch(epoch, tuple(self.store.read(after_seq, self.batch_size)))

    # -- one batch on the wire ---------------------------------------------------------------
    async def send(self, batch: Batch) -> PushAck:
        """Push one batch; return what the receiver acknowledged (checked against the batch)."""
        assert batch.first_seq is not None and batch.last_seq is not None
        result = await self.caller.call(
            contract.PUSH_READINGS, *push_arguments(batch.epoch, batch.items)
        )
        if not isinstance(result, list | tuple) or len(result) != 3:
            raise AcknowledgementMismatch(
                f"PushReadings answered {result!r}; expected (AcknowledgedUpTo, Inserted, "
                "Duplicates)"
            )
        up_to, inserted, duplicates = (int(v) for v in result)
        ack = PushAck(batch.epoch, batch.first_seq, batch.last_seq, up_to, inserted, duplicates)
        if up_to != batch.last_seq or inserted + duplicates != len(batch):
            raise AcknowledgementMismatch(
                f"the receiver acknowledged up to {up_to} ({inserted} new, {duplicates} "
                f"duplicates) for readings {batch.first_seq}..{batch.last_seq} "
                f"({len(batch)}) of epoch {batch.epoch}; nothing of it is deleted"
            )
        return ack

    async def _acknowledge(self, ack: PushAck) -> int:
        deleted: int = await self.run_store(
            self.store.acknowledge, ack.epoch, ack.acknowledged_up_to
        )
        self.stats.deleted += deleted
        self.stats.last_ack_seq = ack.acknowledged_up_to
        return deleted

    def _account(self, ack: PushAck, n: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.sent += n
        stats.inserted += ack.inserted
        stats.duplicates += ack.duplicates
        stats.last_push = datetime.now(UTC)
        if ack.duplicates:
            _LOGGER.info(
                "receiver already had %d of readings %d..%d (resent after an interruption)",
                ack.duplicates,
                ack.first_seq,
                ack.last_seq,
            )

    # -- the drain loop ----------------------------------------------------------------------
    async def drain(self, max_batches: int | None = None) -> int:
        """Send everything pending (or ``max_batches``); return the readings acknowledged.

        Pipeline: up to ``in_flight`` batches are on the wire at once (in sequence order on
        the one connection, which the receiver processes in order), the next one is read and
        the last acknowledged one deleted on the store thread meanwhile. Answers are taken in
        order; only a contiguous run of acknowledged batches is ever deleted, so a failure of
        batch n keeps n and everything after it (batches after n the receiver did store come
        back as duplicates). On any error the pending deletion is completed first (it was
        acknowledged), the calls still in flight are cancelled, then the error propagates;
        the next drain starts again from the oldest reading still in the buffer.
        """
        acknowledged = 0
        started = time.perf_counter()
        upcoming: Batch = await self.run_store(self._fetch, None)
        epoch = upcoming.epoch
        window: collections.deque[tuple[Batch, asyncio.Future[PushAck]]] = collections.deque()
        deleting: asyncio.Future[int] | None = None
        issued = 0
        try:
            while True:
                while (
                    upcoming.items
                    and len(window) < self.in_flight
                    and (max_batches is None or issued < max_batches)
                ):
                    window.append((upcoming, asyncio.ensure_future(self.send(upcoming))))
                    issued += 1
                    last = upcoming.last_seq
                    if max_batches is not None and issued >= max_batches:
                        upcoming = Batch(epoch, ())
                        break
                    upcoming = await self.run_store(self._fetch, last)
                    if upcoming.epoch != epoch:
                        # The store was recreated under us: finish what is in flight and
                        # start over from the new store's oldest reading at the next drain.
                        upcoming = Batch(epoch, ())
                if not window:
                    break
                batch, call = window[0]
                ack = await call
                window.popleft()
                self._account(ack, len(batch))
                acknowledged += len(batch)
                if deleting is not None:
                    await deleting
                deleting = asyncio.ensure_future(self._acknowledge(ack))
        finally:
            for _batch, call in window:
                call.cancel()
            await asyncio.gather(*(call for _b, call in window), return_exceptions=True)
            if deleting is not None:
                await deleting
        if acknowledged:
            seconds = time.perf_counter() - started
            self.stats.last_error = self.stats.last_error_kind = self.stats.blocked = None
            _LOGGER.debug(
                "pushed %d readings in %d batches, %.0f/s",
                acknowledged,
                issued,
                acknowledged / seconds if seconds > 0 else 0.0,
            )
        return acknowledged


__all__ = [
    "AcknowledgementMismatch",
    "ConnectionCaller",
    "PushAck",
    "Pusher",
    "PusherStats",
    "ReceiverCaller",
    "StoreRunner",
    "UplinkThreadCaller",
    "push_arguments",
]

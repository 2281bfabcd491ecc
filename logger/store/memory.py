"""The buffer kept in memory: the model the SQLite store is tested against, and a real store
for tests of the poller and the uplink that need no disk.

It implements the same contract (:class:`logger.store.api.ReadingStore`) with the same policy
function, so a stateful property test can drive both with one sequence of operations and
compare every answer. It is not durable: a process that dies loses it.
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from datetime import datetime

from logger.readings import Reading, utc_now
from logger.store._policy import PendingRow, plan_tick
from logger.store.api import (
    Batch,
    BufferFull,
    BufferLimits,
    CommitResult,
    Loss,
    LossReason,
    StoredReading,
    StoreStats,
    reading_size,
)


class MemoryStore:
    """In-memory :class:`~logger.store.api.ReadingStore`."""

    def __init__(
        self,
        limits: BufferLimits | None = None,
        *,
        epoch: str | None = None,
        free_bytes: Callable[[], int | None] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._limits = limits or BufferLimits(min_free_bytes=0)
        self._epoch = epoch or secrets.token_hex(16)
        self._free_bytes = free_bytes or (lambda: None)
        self._clock = clock
        self._rows: OrderedDict[int, tuple[Reading, int]] = OrderedDict()
        self._next_seq = 1
        self._bytes = 0
        self._losses: list[Loss] = []
        self._lost_total = 0
        self._lock = threading.RLock()

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def limits(self) -> BufferLimits:
        return self._limits

    def set_limits(self, limits: BufferLimits) -> None:
        with self._lock:
            self._limits = limits

    def _record(self, loss: Loss) -> Loss:
        stored = Loss(
            len(self._losses) + 1,
            loss.at,
            loss.reason,
            loss.count,
            loss.first_seq,
            loss.last_seq,
            loss.detail,
        )
        self._losses.append(stored)
        self._lost_total += loss.count
        return stored

    def _free(self) -> int | None:
        return self._free_bytes() if self._limits.min_free_bytes > 0 else None

    def _pending(self) -> list[PendingRow]:
        return [PendingRow(seq, r.logger_time, size) for seq, (r, size) in self._rows.items()]

    def _apply(self, need: int, now: datetime) -> tuple[list[Loss], LossReason | None, str]:
        plan = plan_tick(self._pending(), self._bytes, need, self._limits, now, self._free())
        if plan.refuse is not None:
            return [], plan.refuse, plan.detail
        losses = []
        for reason, rows in plan.drops.items():
            for row in rows:
                del self._rows[row.seq]
                self._bytes -= row.size
            losses.append(
                self._record(
                    Loss(
                        0,
                        now,
                        reason,
                        len(rows),
                        rows[0].seq,
                        rows[-1].seq,
                        "dropped by policy drop_oldest",
                    )
                )
            )
        return losses, None, ""

    def commit_tick(self, readings: Sequence[Reading], now: datetime | None = None) -> CommitResult:
        now = now or self._clock()
        with self._lock:
            sizes = [reading_size(r) for r in readings]
            losses, refuse, detail = self._apply(sum(sizes), now)
            if refuse is not None:
                loss = self._record(
                    Loss(
                        0,
                        now,
                        LossReason.REFUSED,
                        len(readings),
                        None,
                        None,
                        f"{refuse.value}: {detail} (policy stop_polling)",
                    )
                )
                raise BufferFull(f"buffer full: {detail}", loss)
            first = self._next_seq
            for r, size in zip(readings, sizes, strict=True):
                self._rows[self._next_seq] = (r, size)
                self._next_seq += 1
                self._bytes += size
            if not readings:
                return CommitResult(self._epoch, None, None, 0, tuple(losses))
            return CommitResult(
                self._epoch, first, self._next_seq - 1, len(readings), tuple(losses)
            )

    def pending_batch(self, max_n: int) -> Batch:
        if max_n <= 0:
            raise ValueError("max_n must be positive")
        with self._lock:
            items: list[StoredReading] = []
            for seq, (r, _size) in self._rows.items():
                if len(items) >= max_n:
                    break
                items.append(StoredReading(seq, r))
            return Batch(self._epoch, tuple(items))

    def acknowledge(
        self, epoch: str, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int:
        if epoch != self._epoch:
            return 0
        with self._lock:
            doomed = set(seqs)
            if up_to_seq is not None:
                doomed.update(s for s in self._rows if s <= up_to_seq)
            deleted = 0
            for seq in doomed:
                entry = self._rows.pop(seq, None)
                if entry is not None:
                    self._bytes -= entry[1]
                    deleted += 1
            return deleted

    def read(self, since_seq: int = 0, max_n: int = 1000) -> list[StoredReading]:
        with self._lock:
            out: list[StoredReading] = []
            for seq, (r, _size) in self._rows.items():
                if seq > since_seq:
                    out.append(StoredReading(seq, r))
                    if len(out) >= max_n:
                        break
            return out

    def losses(self, since_id: int = 0) -> list[Loss]:
        return [x for x in self._losses if x.id > since_id]

    def stats(self, now: datetime | None = None) -> StoreStats:
        now = now or self._clock()
        with self._lock:
            oldest = next(iter(self._rows.items()), None)
            newest = next(reversed(self._rows.keys()), None) if self._rows else None
            oldest_time = oldest[1][0].logger_time if oldest else None
            return StoreStats(
                epoch=self._epoch,
                depth=len(self._rows),
                bytes=self._bytes,
                oldest_seq=oldest[0] if oldest else None,
                newest_seq=newest,
                oldest_time=oldest_time,
                oldest_age_s=(now - oldest_time).total_seconds() if oldest_time else None,
                next_seq=self._next_seq,
                lost_total=self._lost_total,
                loss_records=len(self._losses),
                limits=self._limits,
            )

    def enforce_limits(self, now: datetime | None = None) -> tuple[Loss, ...]:
        now = now or self._clock()
        with self._lock:
            losses, _refuse, _detail = self._apply(0, now)
            return tuple(losses)

    def close(self) -> None:
        pass

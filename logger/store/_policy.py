"""The buffer policy as one pure function, shared by the SQLite store and its in-memory model.

Keeping the decision in one place means the stateful property test compares two stores that
decide identically and differ only in how they keep rows — exactly what it should test.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from logger.store.api import BufferLimits, BufferPolicy, LossReason


@dataclass(frozen=True, slots=True)
class PendingRow:
    seq: int
    logger_time: datetime
    size: int


@dataclass(slots=True)
class Plan:
    """Rows to drop per reason (oldest first), or the reason the tick must be refused."""

    drops: dict[LossReason, list[PendingRow]] = field(default_factory=dict)
    refuse: LossReason | None = None
    detail: str = ""

    @property
    def dropped_count(self) -> int:
        return sum(len(rows) for rows in self.drops.values())

    @property
    def dropped_bytes(self) -> int:
        return sum(r.size for rows in self.drops.values() for r in rows)


def plan_tick(
    pending: Iterable[PendingRow],
    total_bytes: int,
    need: int,
    limits: BufferLimits,
    now: datetime,
    free_bytes: int | None,
) -> Plan:
    """Decide what a tick of ``need`` bytes costs under ``limits``.

    ``pending`` is iterated lazily, oldest first, and only as far as the decision needs, so the
    SQLite store can feed it from a cursor. ``free_bytes`` is the filesystem's free space
    (``None`` when unknown or not applicable).
    """
    plan = Plan()
    rows = iter(pending)
    head: list[PendingRow] = []  # rows read from the iterator but not (yet) dropped

    def peek() -> PendingRow | None:
        if not head:
            nxt = next(rows, None)
            if nxt is None:
                return None
            head.append(nxt)
        return head[0]

    cutoff = now - timedelta(seconds=limits.max_age_s) if limits.max_age_s is not None else None
    low_disk = free_bytes is not None and free_bytes < limits.min_free_bytes

    if limits.max_bytes is not None and need > limits.max_bytes:
        plan.refuse = LossReason.MAX_BYTES
        plan.detail = f"one tick needs {need} bytes, more than max_bytes={limits.max_bytes}"
        return plan

    if limits.policy is BufferPolicy.STOP_POLLING:
        oldest = peek()
        if cutoff is not None and oldest is not None and oldest.logger_time < cutoff:
            plan.refuse = LossReason.MAX_AGE
            plan.detail = f"oldest pending reading (seq {oldest.seq}) is older than max_age"
        elif limits.max_bytes is not None and total_bytes + need > limits.max_bytes:
            plan.refuse = LossReason.MAX_BYTES
            plan.detail = f"{total_bytes} + {need} bytes would exceed max_bytes"
        elif low_disk:
            plan.refuse = LossReason.MIN_FREE_DISK
            plan.detail = f"free disk {free_bytes} < min_free_bytes={limits.min_free_bytes}"
        return plan

    def take(reason: LossReason) -> PendingRow:
        row = head.pop(0)
        plan.drops.setdefault(reason, []).append(row)
        return row

    remaining = total_bytes
    if cutoff is not None:
        while (row := peek()) is not None and row.logger_time < cutoff:
            remaining -= take(LossReason.MAX_AGE).size
    if limits.max_bytes is not None:
        while remaining + need > limits.max_bytes and peek() is not None:
            remaining -= take(LossReason.MAX_BYTES).size
    if low_disk:
        # Freed pages are reused by the new rows, so the file stops growing.
        freed = 0
        while freed < need and peek() is not None:
            freed += take(LossReason.MIN_FREE_DISK).size
    return plan

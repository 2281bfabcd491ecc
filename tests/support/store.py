"""Store test helpers: reading factories and an in-memory fake of the uplink's consumer.

``FakeUplink`` behaves like the receiver contract (ARCHITECTURE.md, "Exactly once"): it keeps
(epoch, seq) unique, answers a push with what it stored, and may be told to lose the answer
(the receiver stored the batch but the acknowledgement never reached the logger), so the
pusher's resend path is exercised without a network.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from logger.readings import Reading, ValueKind
from logger.store.api import Batch, ReadingStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_reading(
    meter: str = "m1",
    key: str = "energy",
    value: str = "1",
    *,
    at: datetime = T0,
    flags: Iterable[str] = (),
    kind: ValueKind = ValueKind.NUMBER,
    meter_time: datetime | None = None,
) -> Reading:
    return Reading(
        meter_id=meter,
        key=key,
        quantity="Energy",
        unit="Wh",
        value=value,
        kind=kind,
        logger_time=at,
        meter_time=meter_time,
        flags=frozenset(flags),
    )


def make_tick(n: int, at: datetime = T0, start: int = 0) -> list[Reading]:
    """A tick of ``n`` meters, one energy value each; values encode meter and time."""
    return [
        make_reading(f"m{start + i}", "energy", f"{int(at.timestamp())}.{start + i}1", at=at)
        for i in range(n)
    ]


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)


@dataclass
class FakeUplink:
    """An in-memory receiver: what it has durably "stored", keyed by (epoch, seq)."""

    received: dict[tuple[str, int], Reading] = field(default_factory=dict)
    pushes: int = 0
    lose_next_ack: bool = False

    def push(self, batch: Batch) -> int | None:
        """Store a batch whole; return the highest seq stored (the acknowledgement), or
        ``None`` when the answer is lost on the way back."""
        self.pushes += 1
        for item in batch.items:
            key = (batch.epoch, item.seq)
            if key in self.received and self.received[key] != item.reading:
                raise AssertionError(f"resent seq {item.seq} with different content")
            self.received[key] = item.reading
        if self.lose_next_ack:
            self.lose_next_ack = False
            return None
        return batch.last_seq

    def sync_once(self, store: ReadingStore, max_n: int = 1000) -> int:
        """One push cycle; returns the number of readings the store deleted."""
        batch = store.pending_batch(max_n)
        if not batch.items:
            return 0
        acked = self.push(batch)
        if acked is None:
            return 0
        return store.acknowledge(batch.epoch, up_to_seq=acked)

    def drain(self, store: ReadingStore, max_n: int = 1000) -> int:
        total = 0
        while store.pending_batch(1).items:
            total += self.sync_once(store, max_n)
        return total

    def seqs(self, epoch: str) -> list[int]:
        return sorted(s for e, s in self.received if e == epoch)

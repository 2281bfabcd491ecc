"""The buffer contract, run against the in-memory model and the SQLite store alike."""

from __future__ import annotations

from datetime import datetime

import pytest

from logger.readings import FLAG_CLOCK_UNSYNCED, ValueKind
from logger.store.api import (
    BufferFull,
    BufferLimits,
    BufferPolicy,
    LossReason,
    ReadingStore,
    reading_size,
)
from tests.store.conftest import StoreFactory
from tests.support.store import T0, FakeUplink, make_reading, make_tick, minutes


def test_is_a_reading_store(make_store: StoreFactory) -> None:
    assert isinstance(make_store(), ReadingStore)


def test_sequence_numbers_are_consecutive_and_strictly_increasing(make_store: StoreFactory):
    store = make_store()
    a = store.commit_tick(make_tick(3), now=T0)
    b = store.commit_tick(make_tick(2, T0 + minutes(15)), now=T0 + minutes(15))
    assert (a.first_seq, a.last_seq, a.count) == (1, 3, 3)
    assert (b.first_seq, b.last_seq, b.count) == (4, 5, 2)
    assert a.epoch == b.epoch == store.epoch
    empty = store.commit_tick([], now=T0)
    assert (empty.first_seq, empty.last_seq, empty.count) == (None, None, 0)
    assert store.stats(T0).next_seq == 6


def test_each_store_has_its_own_epoch(make_store: StoreFactory) -> None:
    assert make_store().epoch != make_store().epoch


def test_values_and_metadata_round_trip_exactly(make_store: StoreFactory) -> None:
    store = make_store()
    meter_time = datetime(2026, 1, 1, 0, 59, 58)
    readings = [
        make_reading(
            "heat-7",
            "energy",
            "12345678901234567890.000000000123",
            at=T0,
            meter_time=meter_time,
            flags={FLAG_CLOCK_UNSYNCED, "bcd_error"},
        ),
        make_reading("heat-7", "fabrication", "A1B2 C3", kind=ValueKind.TEXT, at=T0),
        make_reading("heat-7", "due_date", "2026-12-31", kind=ValueKind.DATE, at=T0),
        make_reading("heat-7", "flow", "-0.5", at=T0),
    ]
    store.commit_tick(readings, now=T0)
    batch = store.pending_batch(10)
    assert [i.reading for i in batch.items] == readings
    assert batch.items[0].reading.clock_unsynced
    assert batch.items[0].reading.mantissa_exponent() == (12345678901234567890000000000123, -12)


def test_pending_batch_is_oldest_first_and_bounded(make_store: StoreFactory) -> None:
    store = make_store()
    for t in range(5):
        store.commit_tick(make_tick(4, T0 + minutes(15 * t)), now=T0 + minutes(15 * t))
    batch = store.pending_batch(6)
    assert [i.seq for i in batch.items] == [1, 2, 3, 4, 5, 6]
    assert (batch.first_seq, batch.last_seq, len(batch)) == (1, 6, 6)
    with pytest.raises(ValueError):
        store.pending_batch(0)


def test_acknowledge_deletes_only_what_was_acknowledged(make_store: StoreFactory) -> None:
    store = make_store()
    store.commit_tick(make_tick(10), now=T0)
    assert store.acknowledge(store.epoch, up_to_seq=3) == 3
    assert store.acknowledge(store.epoch, seqs=[5, 7, 7, 99]) == 2
    assert [i.seq for i in store.pending_batch(100).items] == [4, 6, 8, 9, 10]
    assert store.acknowledge(store.epoch, up_to_seq=3) == 0  # idempotent
    assert store.acknowledge("another-epoch", up_to_seq=100) == 0
    assert store.stats(T0).depth == 5


def test_sequence_numbers_are_never_reused(make_store: StoreFactory) -> None:
    store = make_store()
    store.commit_tick(make_tick(3), now=T0)
    store.acknowledge(store.epoch, up_to_seq=3)
    assert store.commit_tick(make_tick(1), now=T0).first_seq == 4


def test_read_since_for_export(make_store: StoreFactory) -> None:
    store = make_store()
    store.commit_tick(make_tick(5), now=T0)
    assert [i.seq for i in store.read(since_seq=2, max_n=2)] == [3, 4]


def test_stats(make_store: StoreFactory) -> None:
    store = make_store()
    tick = make_tick(3)
    store.commit_tick(tick, now=T0)
    store.commit_tick(make_tick(3, T0 + minutes(15)), now=T0 + minutes(15))
    stats = store.stats(T0 + minutes(20))
    assert stats.depth == 6
    assert (stats.oldest_seq, stats.newest_seq) == (1, 6)
    assert stats.oldest_time == T0
    assert stats.oldest_age_s == 20 * 60
    assert stats.bytes == sum(reading_size(r) for r in tick) * 2
    assert stats.lost_total == 0


def test_drop_oldest_by_bytes_records_the_loss(make_store: StoreFactory) -> None:
    per = reading_size(make_tick(1)[0])
    store = make_store(BufferLimits(max_bytes=per * 10, max_age_s=None, min_free_bytes=0))
    for t in range(3):
        store.commit_tick(make_tick(4, T0 + minutes(t)), now=T0 + minutes(t))
    # 12 readings into room for 10: the oldest two go.
    assert [i.seq for i in store.pending_batch(100).items] == list(range(3, 13))
    (loss,) = store.losses()
    assert (loss.reason, loss.count, loss.first_seq, loss.last_seq) == (
        LossReason.MAX_BYTES,
        2,
        1,
        2,
    )
    stats = store.stats(T0)
    assert stats.lost_total == 2 and stats.loss_records == 1
    assert stats.bytes <= per * 10


def test_drop_oldest_by_age(make_store: StoreFactory) -> None:
    store = make_store(BufferLimits(max_bytes=None, max_age_s=3600, min_free_bytes=0))
    store.commit_tick(make_tick(2, T0), now=T0)
    store.commit_tick(make_tick(2, T0 + minutes(30)), now=T0 + minutes(30))
    result = store.commit_tick(make_tick(2, T0 + minutes(70)), now=T0 + minutes(70))
    assert [(x.reason, x.first_seq, x.last_seq) for x in result.losses] == [
        (LossReason.MAX_AGE, 1, 2)
    ]
    assert store.enforce_limits(T0 + minutes(89)) == ()
    (loss,) = store.enforce_limits(T0 + minutes(91))  # the 30-minute tick is now too old
    assert (loss.first_seq, loss.last_seq) == (3, 4)
    assert store.stats(T0).lost_total == 4


def test_stop_polling_refuses_and_keeps_everything(make_store: StoreFactory) -> None:
    per = reading_size(make_tick(1)[0])
    store = make_store(
        BufferLimits(
            max_bytes=per * 5, max_age_s=None, min_free_bytes=0, policy=BufferPolicy.STOP_POLLING
        )
    )
    store.commit_tick(make_tick(4), now=T0)
    with pytest.raises(BufferFull) as info:
        store.commit_tick(make_tick(2, T0 + minutes(1)), now=T0 + minutes(1))
    assert info.value.loss is not None and info.value.loss.count == 2
    assert info.value.loss.reason is LossReason.REFUSED
    assert [i.seq for i in store.pending_batch(10).items] == [1, 2, 3, 4]
    assert store.stats(T0).lost_total == 2
    # Once the uplink drains, polling resumes with the next sequence number.
    store.acknowledge(store.epoch, up_to_seq=4)
    assert store.commit_tick(make_tick(2), now=T0).first_seq == 5


def test_min_free_disk_makes_new_rows_replace_old_ones(make_store: StoreFactory) -> None:
    free = {"bytes": 10**9}
    store = make_store(
        BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=10**6),
        free_bytes=lambda: free["bytes"],
    )
    store.commit_tick(make_tick(4), now=T0)
    free["bytes"] = 10**5
    result = store.commit_tick(make_tick(2, T0 + minutes(1)), now=T0 + minutes(1))
    assert [(x.reason, x.count) for x in result.losses] == [(LossReason.MIN_FREE_DISK, 2)]
    assert store.stats(T0).depth == 4


def test_tick_larger_than_the_whole_buffer_is_refused(make_store: StoreFactory) -> None:
    per = reading_size(make_tick(1)[0])
    store = make_store(BufferLimits(max_bytes=per * 3, max_age_s=None, min_free_bytes=0))
    store.commit_tick(make_tick(2), now=T0)
    with pytest.raises(BufferFull):
        store.commit_tick(make_tick(4), now=T0)
    assert store.stats(T0).depth == 2  # nothing was dropped for a tick that could never fit


def test_fake_uplink_gets_everything_exactly_once(make_store: StoreFactory) -> None:
    store = make_store()
    uplink = FakeUplink()
    committed = []
    for t in range(6):
        committed.append(store.commit_tick(make_tick(7, T0 + minutes(t)), now=T0 + minutes(t)))
        if t == 2:
            uplink.lose_next_ack = True
        uplink.sync_once(store, max_n=5)
    uplink.drain(store, max_n=5)
    assert uplink.seqs(store.epoch) == list(range(1, 43))
    assert store.stats(T0).depth == 0


def test_new_limits_apply_from_the_next_tick(make_store: StoreFactory) -> None:
    store = make_store()
    store.commit_tick(make_tick(6), now=T0)
    per = reading_size(make_tick(1)[0])
    store.set_limits(BufferLimits(max_bytes=per * 4, max_age_s=None, min_free_bytes=0))
    assert store.stats(T0).depth == 6  # nothing happens until the next tick
    result = store.commit_tick(make_tick(1), now=T0)
    assert sum(x.count for x in result.losses) == 3
    assert store.limits.max_bytes == per * 4

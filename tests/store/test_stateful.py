"""A stateful property test: the SQLite store against the in-memory model.

Hypothesis drives both with the same operations (ticks of varying size and time, partial and
listed acknowledgements, limit enforcement, reopening the database as after a restart) and
compares every answer. Small limits make the drop-oldest and stop-polling paths common.
"""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from logger.store.api import BufferFull, BufferLimits, BufferPolicy, reading_size
from logger.store.memory import MemoryStore
from logger.store.sqlite import SqliteStore
from tests.support.store import T0, make_tick

PER = reading_size(make_tick(1)[0])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "buffer.db"
        self.now = T0
        self.limits = BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0)
        self.sql: SqliteStore | None = None
        self.model: MemoryStore | None = None
        self.free = 10**9  # what both stores are told the filesystem has free

    @rule(
        policy=st.sampled_from(list(BufferPolicy)),
        max_rows=st.one_of(st.none(), st.integers(3, 40)),
        max_age_min=st.one_of(st.none(), st.integers(10, 120)),
        min_free=st.sampled_from([0, 10**6]),
    )
    @precondition(lambda self: self.sql is None)
    def start(
        self, policy: BufferPolicy, max_rows: int | None, max_age_min: int | None, min_free: int
    ) -> None:
        self.limits = BufferLimits(
            max_bytes=None if max_rows is None else max_rows * PER,
            max_age_s=None if max_age_min is None else max_age_min * 60.0,
            min_free_bytes=min_free,
            policy=policy,
        )
        self.sql = SqliteStore(self.path, self.limits, free_bytes=self._free)
        self.model = MemoryStore(self.limits, epoch=self.sql.epoch, free_bytes=self._free)

    def _free(self) -> int:
        return self.free

    @rule(free=st.sampled_from([10**9, 10**5]))
    def disk(self, free: int) -> None:
        self.free = free

    @rule(n=st.integers(0, 12), advance=st.integers(0, 40))
    @precondition(lambda self: self.sql is not None)
    def tick(self, n: int, advance: int) -> None:
        assert self.sql is not None and self.model is not None
        self.now += timedelta(minutes=advance)
        readings = make_tick(n, self.now)
        outcomes: list[object] = []
        for store in (self.model, self.sql):
            try:
                outcomes.append(store.commit_tick(readings, now=self.now))
            except BufferFull as exc:
                assert exc.loss is not None
                outcomes.append(("full", exc.loss.count, exc.loss.reason))
        assert outcomes[0] == outcomes[1]

    @rule(data=st.data())
    @precondition(lambda self: self.sql is not None)
    def ack_up_to(self, data: st.DataObject) -> None:
        assert self.sql is not None and self.model is not None
        pending = [i.seq for i in self.model.pending_batch(1000).items]
        if not pending:
            return
        upto = data.draw(st.sampled_from(pending))
        assert self.model.acknowledge(self.model.epoch, up_to_seq=upto) == self.sql.acknowledge(
            self.sql.epoch, up_to_seq=upto
        )

    @rule(data=st.data())
    @precondition(lambda self: self.sql is not None)
    def ack_list(self, data: st.DataObject) -> None:
        assert self.sql is not None and self.model is not None
        next_seq = self.model.stats(self.now).next_seq
        seqs = data.draw(st.lists(st.integers(1, next_seq + 2), max_size=8))
        assert self.model.acknowledge(self.model.epoch, seqs=seqs) == self.sql.acknowledge(
            self.sql.epoch, seqs=seqs
        )

    @rule()
    @precondition(lambda self: self.sql is not None)
    def ack_wrong_epoch(self) -> None:
        assert self.sql is not None
        assert self.sql.acknowledge("0" * 32, up_to_seq=10**9) == 0

    @rule(advance=st.integers(0, 200))
    @precondition(lambda self: self.sql is not None)
    def enforce(self, advance: int) -> None:
        assert self.sql is not None and self.model is not None
        self.now += timedelta(minutes=advance)
        assert self.model.enforce_limits(self.now) == self.sql.enforce_limits(self.now)

    @rule()
    @precondition(lambda self: self.sql is not None)
    def restart(self) -> None:
        assert self.sql is not None
        self.sql.close()
        self.sql = SqliteStore(self.path, self.limits, free_bytes=self._free)
        assert self.sql.recovery is None

    @invariant()
    def same_state(self) -> None:
        if self.sql is None or self.model is None:
            return
        assert self.sql.epoch == self.model.epoch
        assert self.sql.stats(self.now) == self.model.stats(self.now)
        assert self.sql.pending_batch(1000) == self.model.pending_batch(1000)
        assert self.sql.losses() == self.model.losses()
        seqs = [i.seq for i in self.sql.pending_batch(1000).items]
        assert seqs == sorted(set(seqs))

    def teardown(self) -> None:
        if self.sql is not None:
            self.sql.close()
        self.dir.cleanup()


StoreMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreAgainstModel = StoreMachine.TestCase

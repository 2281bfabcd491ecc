"""Stateful property test: the storage behaves like a dictionary keyed by (device, epoch, seq).

Hypothesis drives random pushes — overlapping ranges, gaps, resends, resends with changed
content, several devices and epochs — and reopenings of the storage, and after every step
compares what is stored with a plain in-memory model of the "Exactly once" rules.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from receiver.storage import SequenceConflict, Storage, open_storage
from tests.support.postgres import PostgresServer
from tests.support.receiver_storage import BACKENDS, T0

Key = tuple[str, str, int]


def columns(start: int, n: int, variant: int) -> dict[str, list[object]]:
    seqs = range(start, start + n)
    return {
        "Sequence": list(seqs),
        "Meter": ["m"] * n,
        "Record": [f"r{s % 3}" for s in seqs],
        "Value": [f"{s}.{variant}" for s in seqs],
        "Unit": ["Wh"] * n,
        "Quantity": ["energy"] * n,
        "SourceTime": [None] * n,
        "LoggerTime": [T0] * n,
        "Flags": [""] * n,
    }


class StorageModel(RuleBasedStateMachine):
    new_url: Callable[[asyncio.AbstractEventLoop], str]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.url = self.new_url(self.loop)
        self.storage: Storage = self.loop.run_until_complete(open_storage(self.url))
        self.model: dict[Key, str] = {}

    def teardown(self) -> None:
        self.loop.run_until_complete(self.storage.close())
        self.loop.close()

    @rule(
        device=st.sampled_from(["urn:a", "urn:b"]),
        epoch=st.sampled_from(["e1", "e2"]),
        start=st.integers(0, 40),
        n=st.integers(1, 12),
        variant=st.integers(0, 6).map(lambda v: 0 if v < 5 else v - 4),  # mostly honest
    )
    def push(self, device: str, epoch: str, start: int, n: int, variant: int) -> None:
        batch = columns(start, n, variant)
        values = {(device, epoch, s): f"{s}.{variant}" for s in range(start, start + n)}
        conflict = any(k in self.model and self.model[k] != v for k, v in values.items())
        if conflict:
            with pytest.raises(SequenceConflict):
                self.loop.run_until_complete(self.storage.push(device, "t", epoch, batch))
            return
        result = self.loop.run_until_complete(self.storage.push(device, "t", epoch, batch))
        new = [k for k in values if k not in self.model]
        assert result.acknowledged_up_to == start + n - 1
        assert (result.inserted, result.duplicates) == (len(new), n - len(new))
        self.model.update(values)

    @rule()
    def reopen(self) -> None:
        self.loop.run_until_complete(self.storage.close())
        self.storage = self.loop.run_until_complete(open_storage(self.url))

    @invariant()
    def stored_equals_model(self) -> None:
        async def stored() -> dict[Key, str]:
            return {
                (r.device_uri, r.epoch, r.sequence): r.value async for r in self.storage.export()
            }

        assert self.loop.run_until_complete(stored()) == self.model
        for device in ("urn:a", "urn:b"):
            for epoch in ("e1", "e2"):
                mine = [s for (d, e, s) in self.model if (d, e) == (device, epoch)]
                acknowledged = self.loop.run_until_complete(
                    self.storage.acknowledged(device, epoch)
                )
                assert acknowledged == (max(mine) if mine else None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_storage_matches_the_exactly_once_model(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if backend == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")

        def new_url(loop: asyncio.AbstractEventLoop) -> str:
            return loop.run_until_complete(server.create_schema("model"))

        examples = 15
    else:

        def new_url(loop: asyncio.AbstractEventLoop) -> str:
            directory = Path(tempfile.mkdtemp(dir=tmp_path))
            request.addfinalizer(lambda: shutil.rmtree(directory, ignore_errors=True))
            return f"sqlite://{directory / 'r.db'}"

        examples = 40

    machine = type("Machine", (StorageModel,), {"new_url": staticmethod(new_url)})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        ),
    )

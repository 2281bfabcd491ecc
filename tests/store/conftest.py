from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logger.store.api import BufferLimits, ReadingStore
from logger.store.memory import MemoryStore
from logger.store.sqlite import SqliteStore

StoreFactory = Callable[..., ReadingStore]


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Builds stores of one kind; the contract tests run once per kind."""
    made: list[ReadingStore] = []

    def factory(limits: BufferLimits | None = None, **kw: object) -> ReadingStore:
        limits = limits or BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0)
        store: ReadingStore
        if request.param == "memory":
            store = MemoryStore(limits, **kw)  # type: ignore[arg-type]
        else:
            store = SqliteStore(tmp_path / f"buffer{len(made)}.db", limits, **kw)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield factory
    for store in made:
        store.close()

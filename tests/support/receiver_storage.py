"""Helpers for tests that need a receiver storage: batches, backends, raw SQL for tampering.

The ``storage_url`` fixture yields a fresh, empty storage URL for each backend: a SQLite file in
the test's temporary directory, or a new database on the session's real PostgreSQL server
(:mod:`tests.support.postgres`). Import both fixtures into the test module::

    from tests.support.postgres import postgres  # noqa: F401
    from tests.support.receiver_storage import storage_url  # noqa: F401
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

if TYPE_CHECKING:
    from receiver.storage import Storage

T = TypeVar("T")

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one async scenario to completion (the suite does not use an asyncio plugin)."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def run_with_storage(
    url: str, scenario: Callable[[Storage], Awaitable[None]], timeout: float = 60.0
) -> None:
    """Open the storage at ``url``, run ``scenario`` on it and close it again, all bounded."""

    async def opened() -> None:
        from receiver.storage import open_storage

        storage = await open_storage(url)
        try:
            await scenario(storage)
        finally:
            await storage.close()

    run(opened(), timeout)


def batch(
    start: int,
    n: int,
    *,
    meter: str = "m1",
    records: int = 4,
    value: str | None = None,
    t0: datetime = T0,
    step: timedelta = timedelta(seconds=60),
) -> dict[str, list[object]]:
    """A PushReadings batch in contract columns: sequences start..start+n-1.

    Values are exact decimal strings derived from the sequence number (so a resent batch built
    with the same arguments has the same content); logger times advance by ``step`` per
    reading.
    """
    seqs: list[object] = list(range(start, start + n))
    return {
        "Sequence": seqs,
        "Meter": [meter] * n,
        "Record": [f"r{s % records}" for s in range(start, start + n)],
        "Value": [
            value if value is not None else f"{s}.{s % 1000:03d}" for s in range(start, start + n)
        ],
        "Unit": ["Wh"] * n,
        "Quantity": ["energy"] * n,
        "SourceTime": [None] * n,
        "LoggerTime": [t0 + step * s for s in range(start, start + n)],
        "Flags": [""] * n,
    }


async def execute_raw(url: str, *statements: str) -> None:
    """Run SQL directly against a storage's database, bypassing the storage (tamper tests)."""
    if url.startswith("postgresql://"):
        import asyncpg

        conn = await asyncpg.connect(url)
        try:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
        finally:
            await conn.close()
        return
    path = url.removeprefix("sqlite://")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("BEGIN")
        for statement in statements:
            db.execute(statement)
        db.execute("COMMIT")
    finally:
        db.close()


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh storage URL per test, for each backend."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'receiver.db'}"
        return
    server = request.getfixturevalue("postgres")
    yield run(server.create_schema("storage"))

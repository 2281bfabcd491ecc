"""What only the disk store has: durability settings, reopening, corruption, schema versions,
read-only inspection and use from several threads."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from logger.store.api import BufferLimits, LossReason, SchemaTooNew, StoreError
from logger.store.schema import SCHEMA_VERSION
from logger.store.sqlite import SqliteStore
from tests.support.store import T0, make_tick, minutes

UNBOUNDED = BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0)


def test_wal_and_synchronous_full(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db", UNBOUNDED)
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = SqliteStore(path, BufferLimits(max_bytes=None, max_age_s=600, min_free_bytes=0))
    store.commit_tick(make_tick(3), now=T0)
    store.commit_tick(make_tick(3, T0 + minutes(15)), now=T0 + minutes(15))
    store.acknowledge(store.epoch, up_to_seq=6)
    epoch, stats = store.epoch, store.stats(T0)
    store.close()
    again = SqliteStore(path, UNBOUNDED)
    assert again.recovery is None
    assert again.epoch == epoch
    assert again.stats(T0) == replace(stats, limits=UNBOUNDED)
    assert again.stats(T0).lost_total == 3 and again.stats(T0).next_seq == 7
    assert again.commit_tick(make_tick(1), now=T0).first_seq == 7
    again.close()


def test_a_file_that_is_not_a_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not SQLite" * 512)
    store = SqliteStore(path, UNBOUNDED)
    assert store.recovery is not None
    moved = store.recovery.moved_to
    assert moved.name.startswith("b.db.corrupt-") and moved.read_bytes().startswith(b"this is")
    (loss,) = store.losses()
    assert loss.reason is LossReason.DATABASE_CORRUPT and moved.name in loss.detail
    assert store.commit_tick(make_tick(2), now=T0).first_seq == 1
    store.close()


def test_a_damaged_page_is_found_and_the_store_restarts_with_a_new_epoch(tmp_path: Path):
    path = tmp_path / "b.db"
    store = SqliteStore(path, UNBOUNDED)
    for t in range(40):
        store.commit_tick(make_tick(50, T0 + minutes(t)), now=T0 + minutes(t))
    old_epoch = store.epoch
    store.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for offset in range(10 * page + 100, 10 * page + 300):  # scribble inside a b-tree page
        data[offset] = 0xFF
    path.write_bytes(bytes(data))
    store = SqliteStore(path, UNBOUNDED)
    assert store.recovery is not None, "corruption went unnoticed"
    assert store.recovery.old_epoch == old_epoch
    assert store.epoch != old_epoch
    assert store.stats(T0).depth == 0
    assert store.integrity_check() == "ok"
    assert store.recovery.moved_to.exists()
    store.close()


def test_a_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    SqliteStore(path, UNBOUNDED).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(SchemaTooNew, match="newer"):
        SqliteStore(path, UNBOUNDED)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.corrupt-*"))


def test_readonly_inspection_while_the_writer_runs(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    writer = SqliteStore(path, UNBOUNDED)
    writer.commit_tick(make_tick(4), now=T0)
    reader = SqliteStore(path, UNBOUNDED, readonly=True)
    assert reader.stats(T0).depth == 4
    writer.commit_tick(make_tick(2), now=T0)
    assert reader.stats(T0).depth == 6
    assert [i.seq for i in reader.read(4)] == [5, 6]
    with pytest.raises(StoreError, match="read-only"):
        reader.commit_tick(make_tick(1), now=T0)
    reader.close()
    writer.close()
    with pytest.raises(StoreError, match="no buffer database"):
        SqliteStore(tmp_path / "missing.db", readonly=True)


def test_poller_and_uplink_threads_share_one_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db", UNBOUNDED)
    acked: list[int] = []
    done = threading.Event()

    def uplink() -> None:
        while not done.is_set() or store.pending_batch(1).items:
            batch = store.pending_batch(37)
            if batch.items:
                assert batch.last_seq is not None
                store.acknowledge(batch.epoch, up_to_seq=batch.last_seq)
                acked.extend(i.seq for i in batch.items)

    thread = threading.Thread(target=uplink)
    thread.start()
    for t in range(100):
        store.commit_tick(make_tick(10, T0 + minutes(t)), now=T0 + minutes(t))
    done.set()
    thread.join(30)
    assert not thread.is_alive()
    assert acked == list(range(1, 1001))
    store.close()


def test_a_locked_database_is_an_error_not_corruption(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA journal_mode=DELETE")
    other.execute("CREATE TABLE t (x)")
    other.execute("BEGIN EXCLUSIVE")  # another program holds the file
    try:
        with pytest.raises(StoreError, match="locked"):
            SqliteStore(path, UNBOUNDED, busy_timeout_s=0.05)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert path.exists() and not list(tmp_path.glob("*.corrupt-*"))


def test_an_empty_tick_writes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db", UNBOUNDED)
    store.commit_tick(make_tick(3), now=T0)
    wal = tmp_path / "b.db-wal"
    before = wal.stat().st_size, wal.stat().st_mtime_ns
    assert store.commit_tick([], now=T0).count == 0
    assert (wal.stat().st_size, wal.stat().st_mtime_ns) == before
    store.close()


def test_an_older_schema_migrates_once_and_keeps_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later release appends a migration: opening a buffer written by the previous release
    # applies it exactly once and keeps the epoch, the pending readings, the losses and the
    # sequence numbering (the server deduplicates by (epoch, seq), so a renumbering would
    # silently drop or duplicate readings).
    from logger.store import sqlite as sqlite_backend

    path = tmp_path / "b.db"
    old = SqliteStore(path, UNBOUNDED)
    old.commit_tick(make_tick(5), now=T0)
    old.acknowledge(old.epoch, up_to_seq=2)
    epoch, pending, losses = old.epoch, old.read(0, 100), old.losses()
    old.close()
    assert [r.seq for r in pending] == [3, 4, 5]

    step = (
        "CREATE TABLE IF NOT EXISTS migration_runs (n INTEGER);"
        "INSERT INTO migration_runs VALUES (1);"
        "ALTER TABLE readings ADD COLUMN note TEXT NOT NULL DEFAULT '';"
    )
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", (*sqlite_backend.MIGRATIONS, step))
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION + 1)

    # The read-only inspector never migrates: it names the mismatch and leaves the file alone.
    before = path.read_bytes()
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION}, this logger reads"):
        SqliteStore(path, UNBOUNDED, readonly=True)
    assert path.read_bytes() == before

    for _ in range(2):
        store = SqliteStore(path, UNBOUNDED)
        assert store.recovery is None
        assert store.epoch == epoch
        assert store.read(0, 100) == pending
        assert store.losses() == losses
        store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert db.execute("SELECT count(*) FROM migration_runs").fetchone()[0] == 1
    db.close()

    store = SqliteStore(path, UNBOUNDED)
    assert store.commit_tick(make_tick(2), now=T0).first_seq == 6
    assert [r.seq for r in store.read(0, 100)] == [3, 4, 5, 6, 7]
    store.close()


def test_a_failing_migration_leaves_the_old_schema_and_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The migration and the version bump share one transaction: a step that fails half-way
    # (here: its second statement) must leave neither its first statement nor a new version.
    from logger.store import sqlite as sqlite_backend

    path = tmp_path / "b.db"
    old = SqliteStore(path, UNBOUNDED)
    old.commit_tick(make_tick(3), now=T0)
    epoch = old.epoch
    old.close()

    step = "ALTER TABLE readings ADD COLUMN note TEXT; INSERT INTO no_such_table VALUES (1);"
    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", (*sqlite_backend.MIGRATIONS, step))
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match="no_such_table"):
        SqliteStore(path, UNBOUNDED)
    assert not list(tmp_path.glob("*.corrupt-*"))

    monkeypatch.setattr(sqlite_backend, "MIGRATIONS", sqlite_backend.MIGRATIONS[:-1])
    monkeypatch.setattr(sqlite_backend, "SCHEMA_VERSION", SCHEMA_VERSION)
    store = SqliteStore(path, UNBOUNDED)
    assert store.recovery is None and store.epoch == epoch
    assert [r.seq for r in store.read(0, 100)] == [1, 2, 3]
    columns = [row[1] for row in store._db.execute("PRAGMA table_info(readings)")]
    assert "note" not in columns
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()

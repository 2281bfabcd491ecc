"""The embedded backend: one SQLite file in WAL mode with synchronous=FULL.

Why it looks like this:

* **One writer thread.** sqlite3 blocks; the server is asyncio. Every statement runs on one
  dedicated thread that owns the connection, so the event loop never waits on an fsync and
  writes are serialized without locks of our own. Other processes (the operator commands while
  ``serve`` runs) read concurrently thanks to WAL and wait on ``busy_timeout`` to write.
* **Durable on return.** ``synchronous=FULL`` makes COMMIT fsync the WAL, so a
  :class:`~receiver.storage.api.PushResult` is never handed back before the batch is on disk.
* **Exact values.** The decimal string as sent is the value (TEXT); ``value_double`` is a
  convenience. Timestamps are integer microseconds since 1970 UTC (exact, sortable, compact).
* **Whole batches.** ``BEGIN IMMEDIATE`` … ``COMMIT``; a conflict rolls everything back.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from . import _rows
from .api import (
    AuditEntry,
    AuditVerification,
    Columns,
    ConfigVersion,
    Device,
    Installation,
    LatestValue,
    PushResult,
    StatusReport,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
    StoredReading,
)

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EXPORT_CHUNK = 5000
_BUSY_TIMEOUT_MS = 10_000

# Schema migrations, applied in order inside one transaction each. Never edit a released step:
# append a new one.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
    CREATE TABLE devices (
        id              INTEGER PRIMARY KEY,
        application_uri TEXT NOT NULL UNIQUE,
        serial          TEXT,
        thumbprint      TEXT,
        cert_not_after  INTEGER,
        location        TEXT,
        firmware        TEXT,
        first_contact   INTEGER,
        last_contact    INTEGER,
        last_peer       TEXT,
        status_at       INTEGER,
        buffer_depth    INTEGER,
        oldest_age_s    REAL,
        losses          INTEGER,
        cert_days_left  INTEGER,
        config_in_use   INTEGER,
        meter_health    TEXT
    );
    CREATE TABLE readings (
        id           INTEGER PRIMARY KEY,
        device_id    INTEGER NOT NULL REFERENCES devices(id),
        epoch        TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        meter        TEXT NOT NULL,
        record       TEXT NOT NULL,
        value        TEXT NOT NULL,
        value_double REAL,
        unit         TEXT NOT NULL,
        quantity     TEXT NOT NULL,
        source_time  INTEGER,
        logger_time  INTEGER,
        flags        TEXT NOT NULL,
        received_at  INTEGER NOT NULL,
        UNIQUE (device_id, epoch, seq)
    );
    CREATE TABLE latest (
        device_id    INTEGER NOT NULL REFERENCES devices(id),
        meter        TEXT NOT NULL,
        record       TEXT NOT NULL,
        epoch        TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        value        TEXT NOT NULL,
        value_double REAL,
        unit         TEXT NOT NULL,
        quantity     TEXT NOT NULL,
        source_time  INTEGER,
        logger_time  INTEGER,
        PRIMARY KEY (device_id, meter, record)
    );
    CREATE TABLE installations (
        id          INTEGER PRIMARY KEY,
        device_id   INTEGER NOT NULL REFERENCES devices(id),
        reported_at INTEGER NOT NULL,
        serial      TEXT NOT NULL,
        location    TEXT NOT NULL,
        firmware    TEXT NOT NULL,
        thumbprint  TEXT NOT NULL
    );
    CREATE TABLE configs (
        device_id INTEGER NOT NULL REFERENCES devices(id),
        version   INTEGER NOT NULL,
        document  TEXT NOT NULL,
        set_at    INTEGER NOT NULL,
        set_by    TEXT NOT NULL,
        PRIMARY KEY (device_id, version)
    );
    CREATE TABLE audit (
        id         INTEGER PRIMARY KEY,
        time       TEXT NOT NULL,
        event      TEXT NOT NULL,
        device_uri TEXT NOT NULL,
        thumbprint TEXT NOT NULL,
        peer       TEXT NOT NULL,
        detail     TEXT NOT NULL,
        prev_hash  TEXT NOT NULL,
        hash       TEXT NOT NULL
    );
    CREATE TABLE audit_head (
        singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
        last_id   INTEGER NOT NULL,
        last_hash TEXT NOT NULL
    );
    INSERT INTO audit_head VALUES (1, 0, printf('%.64c', '0'));
    """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


def _us(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value - _EPOCH) // timedelta(microseconds=1)


def _dt(value: int | None) -> datetime | None:
    if value is None:
        return None
    return _EPOCH + timedelta(microseconds=value)


def _now() -> datetime:
    return datetime.now(UTC)


def path_from_url(url: str) -> Path:
    """``sqlite:///abs/path.db`` (absolute), ``sqlite://rel.db`` (relative) or a plain path."""
    if url.startswith("sqlite:"):
        rest = url[len("sqlite:") :]
        rest = rest[2:] if rest.startswith("//") else rest
        if not rest:
            raise StorageConfigError(f"storage URL {url!r} names no file")
        return Path(rest)
    return Path(url)


class SqliteStorage:
    """The SQLite backend. Create with :meth:`open`."""

    def __init__(self, url: str, path: Path) -> None:
        self.url = url
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receiver-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, create: bool = True) -> SqliteStorage:
        path = path_from_url(url)
        if not create and not path.exists():
            raise StorageConfigError(f"no receiver database at {path}")
        storage = cls(url, path)
        try:
            await storage._run(storage._connect)
        except BaseException:
            await storage.close()
            raise
        return storage

    # -- plumbing ---------------------------------------------------------------------------
    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise StorageError(f"storage {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._guard, fn, args)

    def _guard(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(*args)
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StorageUnavailable(f"database {self.path} is busy: {text}") from exc
            raise StorageError(f"database {self.path}: {text}") from exc
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"database {self.path}: {exc}") from exc

    @property
    def _db(self) -> sqlite3.Connection:
        assert self._conn is not None, "connection is made on the storage thread at open"
        return self._conn

    def _connect(self) -> None:
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, mode=0o700)
        try:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=True,
                timeout=_BUSY_TIMEOUT_MS / 1000,
            )
        except sqlite3.OperationalError as exc:
            raise StorageConfigError(f"cannot open database {self.path}: {exc}") from exc
        self._conn = conn
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise
            raise StorageConfigError(f"{self.path} is not a SQLite database: {exc}") from exc
        if str(mode).lower() != "wal":
            raise StorageConfigError(f"database {self.path} cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        self._migrate()

    def _schema_version(self) -> int:
        db = self._db
        exists = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        ).fetchone()
        if exists is None:
            return 0
        return int(db.execute("SELECT max(version) FROM schema_version").fetchone()[0] or 0)

    def _migrate(self) -> None:
        # Up to date: no write lock at all, so operators' read-only commands work on a file
        # they may only read, and never wait for the receiver's writer.
        if self._schema_version() == SCHEMA_VERSION:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT max(version) FROM schema_version").fetchone()
            current = int(row[0] or 0)
            if current > SCHEMA_VERSION:
                raise StorageConfigError(
                    f"database {self.path} has schema version {current}, newer than this "
                    f"receiver supports ({SCHEMA_VERSION}); upgrade the receiver"
                )
            for version, script in MIGRATIONS:
                if version > current:
                    _LOGGER.info("migrating %s to schema version %d", self.path, version)
                    for statement in _statements(script):
                        db.execute(statement)
                    db.execute("INSERT INTO schema_version VALUES (?)", (version,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        if self._closed:
            return
        if self._conn is not None:
            conn = self._conn
            await asyncio.get_running_loop().run_in_executor(self._executor, conn.close)
            self._conn = None
        self._closed = True
        self._executor.shutdown(wait=True)

    def _transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db)
            db.execute("COMMIT")
        except BaseException:
            # A failed COMMIT (I/O error) leaves the transaction open: close it too.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _device_id(
        db: sqlite3.Connection,
        device_uri: str,
        contact: datetime | None = None,
        thumbprint: str | None = None,
        peer: str | None = None,
    ) -> int:
        """The device's row id; creates the row on first sight; notes a contact when given."""
        now = _us(contact)
        row = db.execute(
            "INSERT INTO devices (application_uri, first_contact, last_contact, thumbprint, "
            "last_peer) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (application_uri) DO UPDATE SET "
            "first_contact = coalesce(first_contact, excluded.first_contact), "
            "last_contact = coalesce(excluded.last_contact, last_contact), "
            "thumbprint = coalesce(excluded.thumbprint, thumbprint), "
            "last_peer = coalesce(excluded.last_peer, last_peer) "
            "RETURNING id",
            (device_uri, now, now, thumbprint, peer),
        ).fetchone()
        return int(row[0])

    # -- readings ---------------------------------------------------------------------------
    async def push(
        self, device_uri: str, thumbprint: str, epoch: str, columns: Columns
    ) -> PushResult:
        rows = _rows.normalize_batch(epoch, columns)
        return await self._run(
            self._transaction, lambda db: self._push(db, device_uri, thumbprint, epoch, rows)
        )

    def _push(
        self,
        db: sqlite3.Connection,
        device_uri: str,
        thumbprint: str,
        epoch: str,
        rows: list[_rows.Row],
    ) -> PushResult:
        now = _now()
        device_id = self._device_id(db, device_uri, now, thumbprint)
        received = _us(now)
        cur = db.executemany(
            "INSERT INTO readings (device_id, epoch, seq, meter, record, value, value_double, "
            "unit, quantity, source_time, logger_time, flags, received_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, epoch, seq) DO NOTHING",
            [
                (
                    device_id,
                    epoch,
                    r[0],
                    r[1],
                    r[2],
                    r[3],
                    _rows.value_double(r[3]),
                    r[4],
                    r[5],
                    _us(r[6]),
                    _us(r[7]),
                    r[8],
                    received,
                )
                for r in rows
            ],
        )
        inserted = cur.rowcount
        if inserted < len(rows):
            self._check_resent(db, device_id, device_uri, epoch, rows)
        db.executemany(
            "INSERT INTO latest (device_id, meter, record, epoch, seq, value, value_double, "
            "unit, quantity, source_time, logger_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (device_id, meter, record) DO UPDATE SET epoch = excluded.epoch, "
            "seq = excluded.seq, value = excluded.value, value_double = excluded.value_double, "
            "unit = excluded.unit, quantity = excluded.quantity, "
            "source_time = excluded.source_time, logger_time = excluded.logger_time "
            "WHERE coalesce(excluded.logger_time, -9223372036854775808) "
            ">= coalesce(latest.logger_time, -9223372036854775808)",
            [
                (
                    device_id,
                    r[1],
                    r[2],
                    epoch,
                    r[0],
                    r[3],
                    _rows.value_double(r[3]),
                    r[4],
                    r[5],
                    _us(r[6]),
                    _us(r[7]),
                )
                for r in _rows.latest_per_record(rows)
            ],
        )
        return PushResult(
            acknowledged_up_to=rows[-1][0], inserted=inserted, duplicates=len(rows) - inserted
        )

    @staticmethod
    def _check_resent(
        db: sqlite3.Connection, device_id: int, device_uri: str, epoch: str, rows: list[_rows.Row]
    ) -> None:
        """Every row of the batch must now equal what is stored; else the batch is refused.

        Sequences increase within a batch, so one index range scan finds every stored row.
        """
        stored = db.execute(
            f"SELECT {_rows.RESENT_COLUMNS} FROM readings "
            "WHERE device_id = ? AND epoch = ? AND seq BETWEEN ? AND ?",
            (device_id, epoch, rows[0][0], rows[-1][0]),
        )
        _rows.check_resent(device_uri, epoch, rows, stored, _dt)

    async def acknowledged(self, device_uri: str, epoch: str) -> int | None:
        def query() -> int | None:
            row = self._db.execute(
                "SELECT max(r.seq) FROM readings r JOIN devices d ON d.id = r.device_id "
                "WHERE d.application_uri = ? AND r.epoch = ?",
                (device_uri, epoch),
            ).fetchone()
            return None if row[0] is None else int(row[0])

        return await self._run(query)

    async def export(
        self,
        device_uri: str | None = None,
        meter: str | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[StoredReading, None]:
        # Keyset pagination on the row id: no statement stays open between chunks, so pushes
        # on the same connection interleave freely while an export streams.
        where = ["r.id > ?"]
        params: list[Any] = []
        if device_uri is not None:
            where.append("d.application_uri = ?")
            params.append(device_uri)
        if meter is not None:
            where.append("r.meter = ?")
            params.append(meter)
        if since is not None:
            where.append("r.logger_time >= ?")
            params.append(_us(_rows.utc(since, "since")))
        sql = (
            "SELECT r.id, d.application_uri, r.epoch, r.seq, r.meter, r.record, r.value, "
            "r.unit, r.quantity, r.source_time, r.logger_time, r.flags, r.received_at "
            "FROM readings r JOIN devices d ON d.id = r.device_id "
            f"WHERE {' AND '.join(where)} ORDER BY r.id LIMIT {_EXPORT_CHUNK}"
        )

        def chunk(after: int) -> list[tuple[Any, ...]]:
            return self._db.execute(sql, (after, *params)).fetchall()

        after = 0
        while True:
            batch = await self._run(chunk, after)
            for rec in batch:
                yield _rows.stored_reading(rec[1:], _dt)
            if len(batch) < _EXPORT_CHUNK:
                return
            after = batch[-1][0]

    async def latest_values(self, device_uri: str | None = None) -> list[LatestValue]:
        def query() -> list[LatestValue]:
            sql = (
                "SELECT d.application_uri, l.meter, l.record, l.value, l.value_double, "
                "l.unit, l.quantity, l.source_time, l.logger_time, l.epoch, l.seq "
                "FROM latest l JOIN devices d ON d.id = l.device_id"
            )
            args: tuple[Any, ...] = ()
            if device_uri is not None:
                sql += " WHERE d.application_uri = ?"
                args = (device_uri,)
            sql += " ORDER BY d.application_uri, l.meter, l.record"
            return [_rows.latest_value(r, _dt) for r in self._db.execute(sql, args)]

        return await self._run(query)

    # -- devices ----------------------------------------------------------------------------
    async def record_contact(
        self, device_uri: str, thumbprint: str, cert_not_after: datetime | None, peer: str = ""
    ) -> None:
        def work(db: sqlite3.Connection) -> None:
            device_id = self._device_id(db, device_uri, _now(), thumbprint, peer)
            db.execute(
                "UPDATE devices SET cert_not_after = ? WHERE id = ?",
                (_us(_rows.utc(cert_not_after, "cert_not_after")), device_id),
            )

        await self._run(self._transaction, work)

    async def report_installation(
        self, device_uri: str, thumbprint: str, serial: str, location: str, firmware: str
    ) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            now = _now()
            device_id = self._device_id(db, device_uri, now, thumbprint)
            last = db.execute(
                "SELECT serial, location, firmware, thumbprint FROM installations "
                "WHERE device_id = ? ORDER BY id DESC LIMIT 1",
                (device_id,),
            ).fetchone()
            db.execute(
                "UPDATE devices SET serial = ?, location = ?, firmware = ? WHERE id = ?",
                (serial, location, firmware, device_id),
            )
            if last is not None and tuple(last) == (serial, location, firmware, thumbprint):
                return False
            db.execute(
                "INSERT INTO installations (device_id, reported_at, serial, location, firmware, "
                "thumbprint) VALUES (?, ?, ?, ?, ?, ?)",
                (device_id, _us(now), serial, location, firmware, thumbprint),
            )
            return True

        return await self._run(self._transaction, work)

    async def installations(self, device_uri: str | None = None) -> list[Installation]:
        def query() -> list[Installation]:
            sql = (
                "SELECT d.application_uri, i.reported_at, i.serial, i.location, i.firmware, "
                "i.thumbprint FROM installations i JOIN devices d ON d.id = i.device_id"
            )
            args: tuple[Any, ...] = ()
            if device_uri is not None:
                sql += " WHERE d.application_uri = ?"
                args = (device_uri,)
            sql += " ORDER BY i.id"
            return [_rows.installation(r, _dt) for r in self._db.execute(sql, args)]

        return await self._run(query)

    async def report_status(self, device_uri: str, thumbprint: str, status: StatusReport) -> None:
        def work(db: sqlite3.Connection) -> None:
            now = _now()
            device_id = self._device_id(db, device_uri, now, thumbprint)
            db.execute(
                "UPDATE devices SET status_at = ?, buffer_depth = ?, oldest_age_s = ?, "
                "losses = ?, cert_days_left = ?, config_in_use = ?, meter_health = ? "
                "WHERE id = ?",
                (
                    _us(now),
                    status.buffer_depth,
                    status.oldest_age_s,
                    status.losses,
                    status.cert_days_left,
                    status.config_version,
                    _rows.encode_meters(status.meters),
                    device_id,
                ),
            )

        await self._run(self._transaction, work)

    _DEVICE_SQL = (
        "SELECT d.application_uri, d.serial, d.thumbprint, d.cert_not_after, d.location, "
        "d.firmware, d.first_contact, d.last_contact, d.last_peer, d.status_at, d.buffer_depth, "
        "d.oldest_age_s, d.losses, d.cert_days_left, d.config_in_use, d.meter_health, "
        "(SELECT max(version) FROM configs c WHERE c.device_id = d.id) FROM devices d"
    )

    async def devices(self) -> list[Device]:
        def query() -> list[Device]:
            return [
                _rows.device(r, _dt)
                for r in self._db.execute(self._DEVICE_SQL + " ORDER BY d.application_uri")
            ]

        return await self._run(query)

    async def device(self, device_uri: str) -> Device | None:
        def query() -> Device | None:
            r = self._db.execute(
                self._DEVICE_SQL + " WHERE d.application_uri = ?", (device_uri,)
            ).fetchone()
            return None if r is None else _rows.device(r, _dt)

        return await self._run(query)

    # -- cloud configuration ----------------------------------------------------------------
    async def set_config(self, device_uri: str, json_text: str, set_by: str = "") -> int:
        document = _rows.validate_config(json_text)
        canonical = _rows.canonical_config(document)

        def work(db: sqlite3.Connection) -> int:
            device_id = self._device_id(db, device_uri)
            current = db.execute(
                "SELECT version, document FROM configs WHERE device_id = ? "
                "ORDER BY version DESC LIMIT 1",
                (device_id,),
            ).fetchone()
            if current is not None and _rows.stored_content(current[1]) == canonical:
                return int(current[0])
            version = 1 if current is None else int(current[0]) + 1
            db.execute(
                "INSERT INTO configs VALUES (?, ?, ?, ?, ?)",
                (device_id, version, _rows.served_config(version, document), _us(_now()), set_by),
            )
            self._append_audit(db, "config.set", device_uri, "", set_by, f"version {version}")
            return version

        return await self._run(self._transaction, work)

    async def get_config(self, device_uri: str) -> ConfigVersion | None:
        def query() -> ConfigVersion | None:
            r = self._db.execute(
                "SELECT c.version, c.document, c.set_at, c.set_by FROM configs c "
                "JOIN devices d ON d.id = c.device_id WHERE d.application_uri = ? "
                "ORDER BY c.version DESC LIMIT 1",
                (device_uri,),
            ).fetchone()
            if r is None:
                return None
            set_at = _dt(r[2])
            assert set_at is not None
            return ConfigVersion(device_uri, int(r[0]), r[1], set_at, r[3])

        return await self._run(query)

    # -- audit log --------------------------------------------------------------------------
    async def audit(
        self,
        event: str,
        *,
        device_uri: str = "",
        thumbprint: str = "",
        peer: str = "",
        detail: str = "",
    ) -> AuditEntry:
        _rows.check_audit_fields(
            event=event, device_uri=device_uri, thumbprint=thumbprint, peer=peer, detail=detail
        )
        return await self._run(
            self._transaction,
            lambda db: self._append_audit(db, event, device_uri, thumbprint, peer, detail),
        )

    @staticmethod
    def _append_audit(
        db: sqlite3.Connection, event: str, device_uri: str, thumbprint: str, peer: str, detail: str
    ) -> AuditEntry:
        last_id, last_hash = db.execute(
            "SELECT last_id, last_hash FROM audit_head WHERE singleton = 1"
        ).fetchone()
        entry_id = int(last_id) + 1
        time = _now()
        digest = _rows.audit_hash(
            last_hash, entry_id, time, event, device_uri, thumbprint, peer, detail
        )
        db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry_id,
                _rows.audit_time(time),
                event,
                device_uri,
                thumbprint,
                peer,
                detail,
                last_hash,
                digest,
            ),
        )
        db.execute(
            "UPDATE audit_head SET last_id = ?, last_hash = ? WHERE singleton = 1",
            (entry_id, digest),
        )
        return AuditEntry(
            entry_id, time, event, device_uri, thumbprint, peer, detail, last_hash, digest
        )

    @staticmethod
    def _audit_entry(r: Sequence[Any]) -> AuditEntry:
        time = datetime.strptime(r[1], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        return AuditEntry(int(r[0]), time, r[2], r[3], r[4], r[5], r[6], r[7], r[8])

    async def audit_entries(
        self, since_id: int = 0, limit: int | None = None, device_uri: str | None = None
    ) -> list[AuditEntry]:
        def query() -> list[AuditEntry]:
            sql = "SELECT * FROM audit WHERE id > ?"
            args: list[Any] = [since_id]
            if device_uri is not None:
                sql += " AND device_uri = ?"
                args.append(device_uri)
            sql += " ORDER BY id"
            if limit is not None:
                sql += " LIMIT ?"
                args.append(limit)
            return [self._audit_entry(r) for r in self._db.execute(sql, args)]

        return await self._run(query)

    async def verify_audit(self, anchor: str | None = None) -> AuditVerification:
        def walk() -> AuditVerification:
            # One read transaction: the head and the entries are seen at the same instant.
            db = self._db
            db.execute("BEGIN")
            try:
                verifier = _rows.ChainVerifier(anchor)
                for r in db.execute("SELECT * FROM audit ORDER BY id"):
                    try:
                        entry = self._audit_entry(r)
                    except (TypeError, ValueError) as exc:
                        verifier.unreadable(int(r[0]), str(exc))
                        continue
                    verifier.feed(entry)
                head = db.execute("SELECT last_id, last_hash FROM audit_head").fetchone()
            finally:
                db.execute("COMMIT")
            return verifier.finish(None if head is None else (int(head[0]), str(head[1])))

        return await self._run(walk)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]

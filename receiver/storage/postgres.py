"""The fleet backend: PostgreSQL through an asyncpg connection pool.

Why it looks like this:

* **Several receivers, one database.** A push first upserts its device row, which locks it for
  the transaction: pushes of one logger through two receiver instances take turns. Readings go
  in with ``INSERT … ON CONFLICT (device_id, epoch, seq) DO NOTHING``; a concurrent insert of
  the same key waits for the other transaction and then counts as a conflict, so exactly one
  copy is stored. Every conflicting row is then compared with what the batch carries — equal is
  a duplicate, different is a :class:`~receiver.storage.api.SequenceConflict` and the whole
  transaction rolls back. Deadlocks and serialization failures are retried.
* **One round trip per batch.** The columns go to the server as arrays and are ``unnest``-ed
  there: 10,000 readings are one statement, not 10,000.
* **Exact values.** The string as sent (TEXT), a NUMERIC beside it for SQL arithmetic that
  stays exact, and a float8 for convenience.
* **Migrations** run under an advisory lock, so instances starting together do not race.
* asyncpg's exceptions end here: callers see :mod:`receiver.storage.api` errors only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg

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
    StorageAuthError,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
    StoredReading,
)

_LOGGER = logging.getLogger(__name__)

T = TypeVar("T")

_CONNECT_TIMEOUT_S = 10.0
_COMMAND_TIMEOUT_S = 120.0
_RETRIES = 5
_MIGRATION_LOCK = 0x6D627573  # "mbus": advisory lock id for schema migrations

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
    CREATE TABLE devices (
        id              bigserial PRIMARY KEY,
        application_uri text NOT NULL UNIQUE,
        serial          text,
        thumbprint      text,
        cert_not_after  timestamptz,
        location        text,
        firmware        text,
        first_contact   timestamptz,
        last_contact    timestamptz,
        last_peer       text,
        status_at       timestamptz,
        buffer_depth    bigint,
        oldest_age_s    double precision,
        losses          bigint,
        cert_days_left  integer,
        config_in_use   bigint,
        meter_health    text
    );
    -- No foreign key on readings.device_id: the row is upserted in the same transaction as
    -- every insert and devices are never deleted, and the per-row RI trigger cost a quarter
    -- of the insert throughput.
    CREATE TABLE readings (
        id           bigserial PRIMARY KEY,
        device_id    bigint NOT NULL,
        epoch        text NOT NULL,
        seq          bigint NOT NULL,
        meter        text NOT NULL,
        record       text NOT NULL,
        value        text NOT NULL,
        value_num    numeric,
        value_double double precision,
        unit         text NOT NULL,
        quantity     text NOT NULL,
        source_time  timestamptz,
        logger_time  timestamptz,
        flags        text NOT NULL,
        received_at  timestamptz NOT NULL,
        UNIQUE (device_id, epoch, seq)
    );
    CREATE TABLE latest (
        device_id    bigint NOT NULL REFERENCES devices(id),
        meter        text NOT NULL,
        record       text NOT NULL,
        epoch        text NOT NULL,
        seq          bigint NOT NULL,
        value        text NOT NULL,
        value_num    numeric,
        value_double double precision,
        unit         text NOT NULL,
        quantity     text NOT NULL,
        source_time  timestamptz,
        logger_time  timestamptz,
        PRIMARY KEY (device_id, meter, record)
    );
    CREATE TABLE installations (
        id          bigserial PRIMARY KEY,
        device_id   bigint NOT NULL REFERENCES devices(id),
        reported_at timestamptz NOT NULL,
        serial      text NOT NULL,
        location    text NOT NULL,
        firmware    text NOT NULL,
        thumbprint  text NOT NULL
    );
    CREATE TABLE configs (
        device_id bigint NOT NULL REFERENCES devices(id),
        version   bigint NOT NULL,
        document  text NOT NULL,
        set_at    timestamptz NOT NULL,
        set_by    text NOT NULL,
        PRIMARY KEY (device_id, version)
    );
    CREATE TABLE audit (
        id         bigint PRIMARY KEY,
        time       timestamptz NOT NULL,
        event      text NOT NULL,
        device_uri text NOT NULL,
        thumbprint text NOT NULL,
        peer       text NOT NULL,
        detail     text NOT NULL,
        prev_hash  text NOT NULL,
        hash       text NOT NULL
    );
    CREATE TABLE audit_head (
        singleton boolean PRIMARY KEY CHECK (singleton),
        last_id   bigint NOT NULL,
        last_hash text NOT NULL
    );
    INSERT INTO audit_head VALUES (true, 0, repeat('0', 64));
    """,
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_INSERT_READINGS = """
INSERT INTO readings (device_id, epoch, seq, meter, record, value, value_num, value_double,
                      unit, quantity, source_time, logger_time, flags, received_at)
SELECT $1, $2, u.seq, u.meter, u.record, u.value, u.num::numeric, u.dbl, u.unit, u.quantity,
       u.st, u.lt, u.flags, $3
FROM unnest($4::bigint[], $5::text[], $6::text[], $7::text[], $8::text[], $9::float8[],
            $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[], $14::text[])
     AS u(seq, meter, record, value, num, dbl, unit, quantity, st, lt, flags)
ON CONFLICT (device_id, epoch, seq) DO NOTHING
"""

_UPSERT_LATEST = """
INSERT INTO latest AS l (device_id, meter, record, epoch, seq, value, value_num, value_double,
                         unit, quantity, source_time, logger_time)
SELECT $1, u.meter, u.record, $2, u.seq, u.value, u.num::numeric, u.dbl, u.unit, u.quantity,
       u.st, u.lt
FROM unnest($3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[],
            $9::text[], $10::text[], $11::timestamptz[], $12::timestamptz[])
     AS u(seq, meter, record, value, num, dbl, unit, quantity, st, lt)
ON CONFLICT (device_id, meter, record) DO UPDATE SET
    epoch = excluded.epoch, seq = excluded.seq, value = excluded.value,
    value_num = excluded.value_num, value_double = excluded.value_double,
    unit = excluded.unit, quantity = excluded.quantity,
    source_time = excluded.source_time, logger_time = excluded.logger_time
WHERE coalesce(excluded.logger_time, '-infinity') >= coalesce(l.logger_time, '-infinity')
"""

_DEVICE_UPSERT = """
INSERT INTO devices (application_uri, first_contact, last_contact, thumbprint, last_peer)
VALUES ($1, $2, $2, $3, $4)
ON CONFLICT (application_uri) DO UPDATE SET
    first_contact = coalesce(devices.first_contact, excluded.first_contact),
    last_contact = coalesce(excluded.last_contact, devices.last_contact),
    thumbprint = coalesce(excluded.thumbprint, devices.thumbprint),
    last_peer = coalesce(excluded.last_peer, devices.last_peer)
RETURNING id
"""

_DEVICE_SQL = """
SELECT d.application_uri, d.serial, d.thumbprint, d.cert_not_after, d.location, d.firmware,
       d.first_contact, d.last_contact, d.last_peer, d.status_at, d.buffer_depth,
       d.oldest_age_s, d.losses, d.cert_days_left, d.config_in_use, d.meter_health,
       (SELECT max(version) FROM configs c WHERE c.device_id = d.id) AS config_version
FROM devices d
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}@{host}" if user else f"{scheme}://{host}"


@contextlib.contextmanager
def _translate(url: str) -> Iterator[None]:
    """asyncpg's and the network's exceptions as ours (this is their owner module)."""
    where = _redact(url)
    try:
        yield
    except StorageError:
        raise
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise StorageAuthError(f"database {where} refused the credentials: {exc}") from exc
    except asyncpg.InvalidCatalogNameError as exc:
        raise StorageConfigError(f"database {where} does not exist: {exc}") from exc
    except (
        asyncpg.CannotConnectNowError,
        asyncpg.TooManyConnectionsError,
        asyncpg.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
        OSError,
        TimeoutError,
    ) as exc:
        raise StorageUnavailable(f"database {where} is unreachable: {exc}") from exc
    except asyncpg.PostgresError as exc:
        raise StorageError(f"database {where}: {exc}") from exc


class PostgresStorage:
    """The PostgreSQL backend. Create with :meth:`open`."""

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = _redact(url)  # for messages: never the password
        self._pool = pool

    @classmethod
    async def open(cls, url: str, pool_size: int = 4) -> PostgresStorage:
        with _translate(url):
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=max(1, pool_size),
                timeout=_CONNECT_TIMEOUT_S,
                command_timeout=_COMMAND_TIMEOUT_S,
            )
        storage = cls(url, pool)
        try:
            await storage._migrate()
        except BaseException:
            await storage.close()
            raise
        return storage

    async def _migrate(self) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)"
            )
            current = int(await conn.fetchval("SELECT max(version) FROM schema_version") or 0)
            if current > SCHEMA_VERSION:
                raise StorageConfigError(
                    f"database {self.url} has schema version {current}, newer than "
                    f"this receiver supports ({SCHEMA_VERSION}); upgrade the receiver"
                )
            for version, script in MIGRATIONS:
                if version > current:
                    _LOGGER.info("migrating %s to schema version %d", self.url, version)
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_version VALUES ($1)", version)

        await self._transaction(work)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pool.close(), timeout=10)
        self._pool.terminate()

    async def _transaction(
        self, work: Callable[[asyncpg.Connection], Awaitable[T]], readonly: bool = False
    ) -> T:
        """Run ``work`` in one transaction; retry it on deadlock or serialization failure."""
        for attempt in range(_RETRIES):
            try:
                with _translate(self.url):
                    async with self._pool.acquire() as conn, conn.transaction(readonly=readonly):
                        return await work(conn)
            except StorageError as exc:
                cause = exc.__cause__
                retry = isinstance(
                    cause, asyncpg.DeadlockDetectedError | asyncpg.SerializationError
                )
                if not retry or attempt == _RETRIES - 1:
                    raise
                _LOGGER.info("retrying a transaction after %s", type(cause).__name__)
        raise AssertionError("unreachable")

    async def _query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        with _translate(self.url):
            return list(await self._pool.fetch(sql, *args))

    @staticmethod
    async def _device_id(
        conn: asyncpg.Connection,
        device_uri: str,
        contact: datetime | None = None,
        thumbprint: str | None = None,
        peer: str | None = None,
    ) -> int:
        return int(await conn.fetchval(_DEVICE_UPSERT, device_uri, contact, thumbprint, peer))

    # -- readings ---------------------------------------------------------------------------
    async def push(
        self, device_uri: str, thumbprint: str, epoch: str, columns: Columns
    ) -> PushResult:
        rows = _rows.normalize_batch(epoch, columns)
        seqs = [r[0] for r in rows]
        values = [r[3] for r in rows]
        nums = [_rows.numeric_text(v) for v in values]
        dbls = [_rows.value_double(v) for v in values]
        cols = (
            seqs,
            [r[1] for r in rows],
            [r[2] for r in rows],
            values,
            nums,
            dbls,
            [r[4] for r in rows],
            [r[5] for r in rows],
            [r[6] for r in rows],
            [r[7] for r in rows],
            [r[8] for r in rows],
        )
        latest = _rows.latest_per_record(rows)
        latest_cols = (
            [r[0] for r in latest],
            [r[1] for r in latest],
            [r[2] for r in latest],
            [r[3] for r in latest],
            [_rows.numeric_text(r[3]) for r in latest],
            [_rows.value_double(r[3]) for r in latest],
            [r[4] for r in latest],
            [r[5] for r in latest],
            [r[6] for r in latest],
            [r[7] for r in latest],
        )

        async def work(conn: asyncpg.Connection) -> PushResult:
            now = _now()
            device_id = await self._device_id(conn, device_uri, now, thumbprint)
            status = await conn.execute(_INSERT_READINGS, device_id, epoch, now, *cols)
            inserted = int(status.rsplit(" ", 1)[1])
            if inserted < len(rows):
                await self._check_resent(conn, device_id, device_uri, epoch, rows)
            await conn.execute(_UPSERT_LATEST, device_id, epoch, *latest_cols)
            return PushResult(
                acknowledged_up_to=rows[-1][0], inserted=inserted, duplicates=len(rows) - inserted
            )

        return await self._transaction(work)

    @staticmethod
    async def _check_resent(
        conn: asyncpg.Connection, device_id: int, device_uri: str, epoch: str, rows: list[_rows.Row]
    ) -> None:
        """Every row of the batch must now equal what is stored; else the batch is refused."""
        # Sequences increase within a batch: one index range scan finds them all (an
        # ``= ANY(array)`` filter degrades to a scan of the whole epoch).
        stored = await conn.fetch(
            f"SELECT {_rows.RESENT_COLUMNS} FROM readings "
            "WHERE device_id = $1 AND epoch = $2 AND seq BETWEEN $3 AND $4",
            device_id,
            epoch,
            rows[0][0],
            rows[-1][0],
        )
        _rows.check_resent(device_uri, epoch, rows, stored, _rows.utc)

    async def acknowledged(self, device_uri: str, epoch: str) -> int | None:
        rows = await self._query(
            "SELECT max(r.seq) FROM readings r JOIN devices d ON d.id = r.device_id "
            "WHERE d.application_uri = $1 AND r.epoch = $2",
            device_uri,
            epoch,
        )
        value = rows[0][0]
        return None if value is None else int(value)

    async def export(
        self,
        device_uri: str | None = None,
        meter: str | None = None,
        since: datetime | None = None,
    ) -> AsyncGenerator[StoredReading, None]:
        where = ["true"]
        args: list[Any] = []
        if device_uri is not None:
            args.append(device_uri)
            where.append(f"d.application_uri = ${len(args)}")
        if meter is not None:
            args.append(meter)
            where.append(f"r.meter = ${len(args)}")
        if since is not None:
            args.append(_rows.utc(since, "since"))
            where.append(f"r.logger_time >= ${len(args)}")
        sql = (
            "SELECT d.application_uri, r.epoch, r.seq, r.meter, r.record, r.value, r.unit, "
            "r.quantity, r.source_time, r.logger_time, r.flags, r.received_at "
            "FROM readings r JOIN devices d ON d.id = r.device_id "
            f"WHERE {' AND '.join(where)} ORDER BY r.id"
        )
        # One snapshot for the whole stream; a server-side cursor keeps memory flat.
        with _translate(self.url):
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for r in conn.cursor(sql, *args, prefetch=2000):
                    yield _rows.stored_reading(r, _rows.utc)

    async def latest_values(self, device_uri: str | None = None) -> list[LatestValue]:
        sql = (
            "SELECT d.application_uri, l.meter, l.record, l.value, l.value_double, l.unit, "
            "l.quantity, l.source_time, l.logger_time, l.epoch, l.seq "
            "FROM latest l JOIN devices d ON d.id = l.device_id"
        )
        args: tuple[Any, ...] = ()
        if device_uri is not None:
            sql += " WHERE d.application_uri = $1"
            args = (device_uri,)
        sql += " ORDER BY d.application_uri, l.meter, l.record"
        return [_rows.latest_value(r, _rows.utc) for r in await self._query(sql, *args)]

    # -- devices ----------------------------------------------------------------------------
    async def record_contact(
        self, device_uri: str, thumbprint: str, cert_not_after: datetime | None, peer: str = ""
    ) -> None:
        not_after = _rows.utc(cert_not_after, "cert_not_after")

        async def work(conn: asyncpg.Connection) -> None:
            device_id = await self._device_id(conn, device_uri, _now(), thumbprint, peer)
            await conn.execute(
                "UPDATE devices SET cert_not_after = $1 WHERE id = $2", not_after, device_id
            )

        await self._transaction(work)

    async def report_installation(
        self, device_uri: str, thumbprint: str, serial: str, location: str, firmware: str
    ) -> bool:
        async def work(conn: asyncpg.Connection) -> bool:
            now = _now()
            device_id = await self._device_id(conn, device_uri, now, thumbprint)
            last = await conn.fetchrow(
                "SELECT serial, location, firmware, thumbprint FROM installations "
                "WHERE device_id = $1 ORDER BY id DESC LIMIT 1",
                device_id,
            )
            await conn.execute(
                "UPDATE devices SET serial = $1, location = $2, firmware = $3 WHERE id = $4",
                serial,
                location,
                firmware,
                device_id,
            )
            if last is not None and tuple(last) == (serial, location, firmware, thumbprint):
                return False
            await conn.execute(
                "INSERT INTO installations (device_id, reported_at, serial, location, firmware, "
                "thumbprint) VALUES ($1, $2, $3, $4, $5, $6)",
                device_id,
                now,
                serial,
                location,
                firmware,
                thumbprint,
            )
            return True

        return await self._transaction(work)

    async def installations(self, device_uri: str | None = None) -> list[Installation]:
        sql = (
            "SELECT d.application_uri, i.reported_at, i.serial, i.location, i.firmware, "
            "i.thumbprint FROM installations i JOIN devices d ON d.id = i.device_id"
        )
        args: tuple[Any, ...] = ()
        if device_uri is not None:
            sql += " WHERE d.application_uri = $1"
            args = (device_uri,)
        sql += " ORDER BY i.id"
        return [_rows.installation(r, _rows.utc) for r in await self._query(sql, *args)]

    async def report_status(self, device_uri: str, thumbprint: str, status: StatusReport) -> None:
        async def work(conn: asyncpg.Connection) -> None:
            now = _now()
            device_id = await self._device_id(conn, device_uri, now, thumbprint)
            await conn.execute(
                "UPDATE devices SET status_at = $1, buffer_depth = $2, oldest_age_s = $3, "
                "losses = $4, cert_days_left = $5, config_in_use = $6, meter_health = $7 "
                "WHERE id = $8",
                now,
                status.buffer_depth,
                status.oldest_age_s,
                status.losses,
                status.cert_days_left,
                status.config_version,
                _rows.encode_meters(status.meters),
                device_id,
            )

        await self._transaction(work)

    async def devices(self) -> list[Device]:
        return [
            _rows.device(r, _rows.utc)
            for r in await self._query(_DEVICE_SQL + " ORDER BY d.application_uri")
        ]

    async def device(self, device_uri: str) -> Device | None:
        rows = await self._query(_DEVICE_SQL + " WHERE d.application_uri = $1", device_uri)
        return _rows.device(rows[0], _rows.utc) if rows else None

    # -- cloud configuration ----------------------------------------------------------------
    async def set_config(self, device_uri: str, json_text: str, set_by: str = "") -> int:
        document = _rows.validate_config(json_text)
        canonical = _rows.canonical_config(document)

        async def work(conn: asyncpg.Connection) -> int:
            device_id = await self._device_id(conn, device_uri)  # locks the device row
            current = await conn.fetchrow(
                "SELECT version, document FROM configs WHERE device_id = $1 "
                "ORDER BY version DESC LIMIT 1",
                device_id,
            )
            if current is not None and _rows.stored_content(current[1]) == canonical:
                return int(current[0])
            version = 1 if current is None else int(current[0]) + 1
            await conn.execute(
                "INSERT INTO configs VALUES ($1, $2, $3, $4, $5)",
                device_id,
                version,
                _rows.served_config(version, document),
                _now(),
                set_by,
            )
            await self._append_audit(
                conn, "config.set", device_uri, "", set_by, f"version {version}"
            )
            return version

        return await self._transaction(work)

    async def get_config(self, device_uri: str) -> ConfigVersion | None:
        rows = await self._query(
            "SELECT c.version, c.document, c.set_at, c.set_by FROM configs c "
            "JOIN devices d ON d.id = c.device_id WHERE d.application_uri = $1 "
            "ORDER BY c.version DESC LIMIT 1",
            device_uri,
        )
        if not rows:
            return None
        r = rows[0]
        return ConfigVersion(device_uri, int(r[0]), r[1], r[2], r[3])

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

        async def work(conn: asyncpg.Connection) -> AuditEntry:
            return await self._append_audit(conn, event, device_uri, thumbprint, peer, detail)

        return await self._transaction(work)

    @staticmethod
    async def _append_audit(
        conn: asyncpg.Connection,
        event: str,
        device_uri: str,
        thumbprint: str,
        peer: str,
        detail: str,
    ) -> AuditEntry:
        # The head row lock orders appends from every receiver instance into one chain.
        head = await conn.fetchrow(
            "SELECT last_id, last_hash FROM audit_head WHERE singleton FOR UPDATE"
        )
        if head is None:
            raise StorageError("the audit head record is missing: run 'audit verify'")
        entry_id = int(head[0]) + 1
        prev = str(head[1])
        time = _now()
        digest = _rows.audit_hash(prev, entry_id, time, event, device_uri, thumbprint, peer, detail)
        await conn.execute(
            "INSERT INTO audit VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            entry_id,
            time,
            event,
            device_uri,
            thumbprint,
            peer,
            detail,
            prev,
            digest,
        )
        await conn.execute(
            "UPDATE audit_head SET last_id = $1, last_hash = $2 WHERE singleton", entry_id, digest
        )
        return AuditEntry(entry_id, time, event, device_uri, thumbprint, peer, detail, prev, digest)

    @staticmethod
    def _audit_entry(r: Sequence[Any]) -> AuditEntry:
        return AuditEntry(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])

    async def audit_entries(
        self, since_id: int = 0, limit: int | None = None, device_uri: str | None = None
    ) -> list[AuditEntry]:
        sql = "SELECT * FROM audit WHERE id > $1"
        args: list[Any] = [since_id]
        if device_uri is not None:
            args.append(device_uri)
            sql += f" AND device_uri = ${len(args)}"
        sql += " ORDER BY id"
        if limit is not None:
            args.append(limit)
            sql += f" LIMIT ${len(args)}"
        return [self._audit_entry(r) for r in await self._query(sql, *args)]

    async def verify_audit(self, anchor: str | None = None) -> AuditVerification:
        verifier = _rows.ChainVerifier(anchor)
        with _translate(self.url):
            async with (
                self._pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                async for r in conn.cursor("SELECT * FROM audit ORDER BY id", prefetch=2000):
                    verifier.feed(self._audit_entry(r))
                head = await conn.fetchrow("SELECT last_id, last_hash FROM audit_head")
        return verifier.finish(None if head is None else (int(head[0]), str(head[1])))

"""The buffer's schema and its migrations (``PRAGMA user_version`` is the schema version).

A migration is one SQL script run inside the same transaction that bumps ``user_version``, so a
power cut during an upgrade leaves the old schema intact. A database whose version is newer than
this code knows is refused untouched (:class:`~logger.store.api.SchemaTooNew`): a downgraded
logger must not guess at a future layout.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: readings with their assigned sequence numbers, the loss records, and store metadata.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE readings (
        seq         INTEGER PRIMARY KEY,      -- assigned at commit, strictly increasing
        meter_id    TEXT    NOT NULL,
        rkey        TEXT    NOT NULL,
        quantity    TEXT    NOT NULL,
        unit        TEXT    NOT NULL,
        value       TEXT    NOT NULL,         -- exact: canonical decimal, text or ISO date
        kind        TEXT    NOT NULL CHECK (kind IN ('number', 'text', 'date')),
        logger_us   INTEGER NOT NULL,         -- logger time, microseconds since 1970 UTC
        meter_time  TEXT,                     -- meter's own clock (local time), ISO 8601
        flags       TEXT    NOT NULL,         -- sorted, comma separated
        storage     INTEGER NOT NULL,
        tariff      INTEGER NOT NULL,
        subunit     INTEGER NOT NULL,
        function    TEXT    NOT NULL,
        size        INTEGER NOT NULL          -- accounted bytes (api.reading_size)
    );
    CREATE TABLE losses (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        at_us       INTEGER NOT NULL,
        reason      TEXT    NOT NULL,
        count       INTEGER NOT NULL,
        first_seq   INTEGER,
        last_seq    INTEGER,
        detail      TEXT    NOT NULL DEFAULT ''
    );
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

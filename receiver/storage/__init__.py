"""The receiver's persistence: readings exactly once, devices, configuration, the audit log.

Open a backend by URL with :func:`open_storage`; use it through the :class:`Storage` protocol::

    storage = await open_storage("sqlite:///var/lib/mbus-receiver/receiver.db")
    result = await storage.push(device_uri, thumbprint, epoch, columns)
    await storage.close()

URLs: ``sqlite:///absolute/path.db``, ``sqlite://relative.db`` or a plain path select the
embedded SQLite backend; ``postgresql://user@host:port/db`` (or ``postgres://``) selects
PostgreSQL through asyncpg (the ``receiver`` extra), imported only when asked for.
"""

from __future__ import annotations

from .api import (
    AuditEntry,
    AuditVerification,
    BadBatch,
    Columns,
    ConfigVersion,
    Device,
    Installation,
    InvalidConfiguration,
    LatestValue,
    MeterHealth,
    PushResult,
    SequenceConflict,
    StatusReport,
    Storage,
    StorageAuthError,
    StorageConfigError,
    StorageError,
    StorageUnavailable,
    StoredReading,
    status_name,
)

__all__ = [
    "AuditEntry",
    "AuditVerification",
    "BadBatch",
    "Columns",
    "ConfigVersion",
    "Device",
    "Installation",
    "InvalidConfiguration",
    "LatestValue",
    "MeterHealth",
    "PushResult",
    "SequenceConflict",
    "StatusReport",
    "Storage",
    "StorageAuthError",
    "StorageConfigError",
    "StorageError",
    "StorageUnavailable",
    "StoredReading",
    "is_postgres_url",
    "open_storage",
    "status_name",
]


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


async def open_storage(url: str, *, create: bool = True, pool_size: int = 4) -> Storage:
    """Open (and migrate) the storage a URL names.

    ``create=False`` refuses to create a new SQLite file (operator commands pointed at a wrong
    path should say so, not show an empty database). ``pool_size`` bounds PostgreSQL
    connections. Raises :class:`StorageConfigError`, :class:`StorageUnavailable` or
    :class:`StorageAuthError`.
    """
    if not url:
        raise StorageConfigError("no storage URL given")
    if is_postgres_url(url):
        from .postgres import PostgresStorage

        return await PostgresStorage.open(url, pool_size=pool_size)
    if "://" in url and not url.startswith("sqlite:"):
        scheme = url.split("://", 1)[0]
        raise StorageConfigError(
            f"unsupported storage URL scheme {scheme!r} (use sqlite:///path or postgresql://…)"
        )
    from .sqlite import SqliteStorage

    return await SqliteStorage.open(url, create=create)

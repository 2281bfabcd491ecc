"""The durable buffer (SQLite, WAL, synchronous=FULL) between the poller and the uplink.

Import the contract from here; the SQLite implementation lives in :mod:`logger.store.sqlite`
and the in-memory model in :mod:`logger.store.memory` (import them where you build them, so
commands that only read the configuration do not load sqlite3).
"""

from logger.store.api import (
    Batch,
    BufferFull,
    BufferLimits,
    BufferPolicy,
    CommitResult,
    Loss,
    LossReason,
    ReadingStore,
    SchemaTooNew,
    StoredReading,
    StoreError,
    StoreStats,
    reading_size,
)

__all__ = [
    "Batch",
    "BufferFull",
    "BufferLimits",
    "BufferPolicy",
    "CommitResult",
    "Loss",
    "LossReason",
    "ReadingStore",
    "SchemaTooNew",
    "StoreError",
    "StoreStats",
    "StoredReading",
    "reading_size",
]

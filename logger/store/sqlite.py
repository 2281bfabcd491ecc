"""The durable buffer on disk: SQLite in WAL mode with ``synchronous=FULL``.

Why these settings: WAL with ``synchronous=FULL`` makes a commit durable when it returns (the
WAL is fsynced at each commit) while readers (``mbus-logger buffer stats``, the uplink) never
block the writer. One transaction per schedule tick keeps the fsyncs per reading at
1/(readings per tick) — the SD card's wear budget (PERFORMANCE.md, "storage").

At open the database gets ``PRAGMA quick_check``; a database that fails it (or is not a
database at all) is renamed aside with a UTC timestamp, reported through :attr:`recovery`, the
log and a loss record, and a new store with a new epoch starts. Nothing is deleted.

Every public method takes the store's lock, so one instance may be shared by the poller's and
the uplink's worker threads (``check_same_thread=False``).
"""

from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from logger.fileio import fsync_dir
from logger.readings import Reading, ValueKind, utc_now
from logger.store._policy import PendingRow, Plan, plan_tick
from logger.store.api import (
    Batch,
    BufferFull,
    BufferLimits,
    CommitResult,
    Loss,
    LossReason,
    SchemaTooNew,
    StoredReading,
    StoreError,
    StoreStats,
    reading_size,
)
from logger.store.schema import MIGRATIONS, SCHEMA_VERSION

_LOGGER = logging.getLogger(__name__)

_COLUMNS = (
    "seq, meter_id, rkey, quantity, unit, value, kind, logger_us, meter_time, flags, "
    "storage, tariff, subunit, function"
)
WAL_PAGES = 256
"""Checkpoint the WAL into the database every this many pages (1 MiB with 4 KiB pages).

SQLite's default (1000 pages, 4 MiB) lets the WAL take more room than a nearly full card may
have; a smaller WAL bounds the space a commit can need beyond ``min_free_bytes``. Pages
appended by new readings are written twice either way (WAL, then database), so checkpointing
more often costs little extra wear."""
RESERVE_BYTES = 2 * WAL_PAGES * 4096
"""Disk kept aside (``<database>.reserve``) and given back when the filesystem is full."""


@dataclass(frozen=True, slots=True)
class Recovery:
    """A corrupt database found at open and moved aside."""

    moved_to: Path
    reason: str
    old_epoch: str | None
    readable_rows: int | None


def _to_us(t: datetime) -> int:
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


_KINDS = {k.value: k for k in ValueKind}


def _rows_to_stored(rows: list[tuple[Any, ...]]) -> list[StoredReading]:
    """Rows of ``_COLUMNS`` to readings. Timestamps and flag sets repeat across a tick's rows,
    so each distinct one is converted once (the uplink drains tens of thousands per second)."""
    times: dict[int, datetime] = {}
    meter_times: dict[str, datetime] = {}
    flag_sets: dict[str, frozenset[str]] = {}
    out: list[StoredReading] = []
    for (
        seq,
        meter_id,
        rkey,
        quantity,
        unit,
        value,
        kind,
        logger_us,
        meter_time,
        flags,
        storage,
        tariff,
        subunit,
        function,
    ) in rows:
        logger_time = times.get(logger_us)
        if logger_time is None:
            logger_time = times[logger_us] = _from_us(logger_us)
        mtime = None
        if meter_time is not None:
            mtime = meter_times.get(meter_time)
            if mtime is None:
                mtime = meter_times[meter_time] = datetime.fromisoformat(meter_time)
        flag_set = flag_sets.get(flags)
        if flag_set is None:
            flag_set = flag_sets[flags] = frozenset(f for f in flags.split(",") if f)
        reading = Reading(
            meter_id,
            rkey,
            quantity,
            unit,
            value,
            _KINDS[kind],
            logger_time,
            mtime,
            flag_set,
            storage,
            tariff,
            subunit,
            function,
        )
        out.append(StoredReading(seq, reading))
    return out


def disk_free_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _is_corruption(exc: sqlite3.Error) -> bool:
    """SQLite says the file is damaged or not a database (not: locked, I/O, full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _is_disk_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (
        code == sqlite3.SQLITE_FULL
        or "disk is full" in str(exc)
        or (isinstance(exc, sqlite3.OperationalError) and "disk I/O error" in str(exc))
    )


class SqliteStore:
    """The durable buffer (see :class:`logger.store.api.ReadingStore` for the contract)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        limits: BufferLimits | None = None,
        *,
        free_bytes: Callable[[], int | None] | None = None,
        readonly: bool = False,
        clock: Callable[[], datetime] = utc_now,
        busy_timeout_s: float = 30.0,
    ) -> None:
        self.path = Path(path)
        self._busy_timeout_s = busy_timeout_s
        self._limits = limits or BufferLimits()
        self._clock = clock
        self._readonly = readonly
        self._lock = threading.RLock()
        self._free_bytes = free_bytes or (lambda: disk_free_bytes(self.path.parent))
        self._unflushed: list[Loss] = []  # losses that could not be written (disk full)
        self.recovery: Recovery | None = None
        if readonly:
            self._db = self._connect_readonly()
        else:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = self._open_checked()
            self._make_reserve()
        self._epoch = self._meta("epoch")
        self._pending, self._bytes = self._count()

    # --- opening -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            self.path,
            isolation_level=None,
            check_same_thread=False,
            timeout=self._busy_timeout_s,
        )

    def _connect_readonly(self) -> sqlite3.Connection:
        if not self.path.exists():
            raise StoreError(f"{self.path}: no buffer database here")
        try:
            db = sqlite3.connect(
                f"file:{self.path}?mode=ro",
                uri=True,
                isolation_level=None,
                check_same_thread=False,
                timeout=self._busy_timeout_s,
            )
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot read the buffer database: {exc}") from exc
        if version != SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"{self.path}: schema version {version}, this logger reads "
                f"{SCHEMA_VERSION} (let the daemon migrate it first)"
            )
        return db

    def _open_checked(self) -> sqlite3.Connection:
        problem: str | None = None
        db: sqlite3.Connection | None = None
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            db = self._connect()
            if existed:
                rows = db.execute("PRAGMA quick_check").fetchall()
                verdict = "; ".join(str(r[0]) for r in rows)
                if verdict != "ok":
                    problem = f"quick_check: {verdict[:500]}"
            if problem is None:
                self._configure(db)
                self._migrate(db)
        except SchemaTooNew:
            if db is not None:
                db.close()
            raise
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            if not _is_corruption(exc):
                # Locked by another process, I/O error, full disk: not the file's fault, and
                # moving a healthy buffer aside would orphan its readings.
                raise StoreError(f"{self.path}: cannot open the buffer: {exc}") from exc
            db = None
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            assert db is not None
            return db
        if db is not None:
            db.close()
        self.recovery = self._move_aside(problem)
        db = self._connect()
        self._configure(db)
        self._migrate(db)
        rec = self.recovery
        detail = f"moved to {rec.moved_to.name}: {rec.reason}"
        if rec.old_epoch:
            detail += f" (epoch {rec.old_epoch})"
        self._insert_loss(
            db,
            Loss(
                0,
                self._clock(),
                LossReason.DATABASE_CORRUPT,
                rec.readable_rows or 0,
                None,
                None,
                detail,
            ),
            commit=True,
        )
        return db

    def _move_aside(self, problem: str) -> Recovery:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        old_epoch: str | None = None
        rows: int | None = None
        try:  # salvage what can be said about the old store, for the report only
            probe = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                old_epoch = probe.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
                rows = int(probe.execute("SELECT count(*) FROM readings").fetchone()[0])
            finally:
                probe.close()
        except (sqlite3.Error, TypeError):
            pass
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(target) + suffix))
        fsync_dir(self.path.parent)
        _LOGGER.error(
            "buffer database %s is corrupt (%s); moved aside to %s, starting a new "
            "store with a new epoch",
            self.path,
            problem,
            target,
        )
        return Recovery(target, problem, old_epoch, rows)

    @staticmethod
    def _configure(db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot switch the buffer to WAL mode (got {mode!r})")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        db.execute(f"PRAGMA journal_size_limit={WAL_PAGES * page * 5 // 4}")

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path}: schema version {version} is newer than this logger's "
                f"{SCHEMA_VERSION}; refusing to touch it"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]
            extra = ""
            if target == 1:
                epoch = secrets.token_hex(16)
                created = _to_us(self._clock())
                extra = (
                    f"INSERT INTO meta VALUES ('epoch', '{epoch}');"
                    f"INSERT INTO meta VALUES ('next_seq', '1');"
                    f"INSERT INTO meta VALUES ('lost_total', '0');"
                    f"INSERT INTO meta VALUES ('created_us', '{created}');"
                )
            db.executescript(
                f"BEGIN IMMEDIATE; {script} {extra} PRAGMA user_version = {target}; COMMIT;"
            )
            _LOGGER.info("buffer %s: schema migrated to version %d", self.path, target)
        if version == 0:
            fsync_dir(self.path.parent)  # a new database: make its directory entry durable

    # --- helpers -------------------------------------------------------------------------

    def _count(self) -> tuple[int, int]:
        """Pending readings and their accounted bytes, counted in the database. The writer
        keeps both up to date in memory afterwards (``count(*)`` scans the whole table)."""
        depth, size = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM readings"
        ).fetchone()
        return int(depth), int(size)

    def _meta(self, key: str) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None:
            raise StoreError(f"{self.path}: metadata {key!r} missing")
        return str(row[0])

    def _insert_loss(self, db: sqlite3.Connection, loss: Loss, commit: bool = False) -> Loss:
        if commit:
            db.execute("BEGIN IMMEDIATE")
        cur = db.execute(
            "INSERT INTO losses (at_us, reason, count, first_seq, last_seq, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                _to_us(loss.at),
                loss.reason.value,
                loss.count,
                loss.first_seq,
                loss.last_seq,
                loss.detail,
            ),
        )
        db.execute(
            "UPDATE meta SET value = CAST(value AS INTEGER) + ? WHERE key='lost_total'",
            (loss.count,),
        )
        if commit:
            db.execute("COMMIT")
        lid = cur.lastrowid
        assert lid is not None
        return Loss(
            lid, loss.at, loss.reason, loss.count, loss.first_seq, loss.last_seq, loss.detail
        )

    def _pending_rows(self) -> Generator[PendingRow, None, None]:
        cur = self._db.execute("SELECT seq, logger_us, size FROM readings ORDER BY seq")
        try:
            while chunk := cur.fetchmany(256):
                for seq, us, size in chunk:
                    yield PendingRow(int(seq), _from_us(int(us)), int(size))
        finally:
            cur.close()

    def _plan(self, need: int, now: datetime) -> Plan:
        rows = self._pending_rows()
        try:
            return plan_tick(rows, self._bytes, need, self._limits, now, self._free())
        finally:
            rows.close()

    def _free(self) -> int | None:
        if self._limits.min_free_bytes <= 0:
            return None
        try:
            return self._free_bytes()
        except OSError as exc:
            _LOGGER.warning("cannot measure free disk for %s: %s", self.path, exc)
            return None

    def _apply_drops(self, plan: Plan, now: datetime) -> list[Loss]:
        losses: list[Loss] = []
        for reason, rows in plan.drops.items():
            seqs = [r.seq for r in rows]
            # The plan drops a prefix of the pending rows (oldest first, reason by reason),
            # so the range holds exactly these rows.
            self._db.execute("DELETE FROM readings WHERE seq BETWEEN ? AND ?", (seqs[0], seqs[-1]))
            losses.append(
                self._insert_loss(
                    self._db,
                    Loss(
                        0,
                        now,
                        reason,
                        len(rows),
                        seqs[0],
                        seqs[-1],
                        "dropped by policy drop_oldest",
                    ),
                )
            )
        return losses

    def _flush_unflushed(self) -> list[Loss]:
        flushed = [self._insert_loss(self._db, loss) for loss in self._unflushed]
        return flushed

    # --- the contract --------------------------------------------------------------------

    @property
    def epoch(self) -> str:
        return self._epoch

    @property
    def limits(self) -> BufferLimits:
        return self._limits

    def set_limits(self, limits: BufferLimits) -> None:
        with self._lock:
            self._limits = limits

    def commit_tick(self, readings: Sequence[Reading], now: datetime | None = None) -> CommitResult:
        """Store one tick's readings in one transaction; return the sequence range assigned."""
        self._writable()
        now = now or self._clock()
        with self._lock:
            try:
                return self._commit(readings, now)
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_disk_full(exc):
                    raise StoreError(
                        f"{self.path}: commit of {len(readings)} readings failed: {exc}"
                    ) from exc
                _LOGGER.error(
                    "buffer %s: disk full while committing %d readings", self.path, len(readings)
                )
            # Disk full: make room inside the file (drop_oldest) and try once more.
            sizes = sum(reading_size(r) for r in readings)
            if self._limits.policy.value == "drop_oldest" and self._pending > 0:
                try:
                    # Release the reserve, move the WAL into the file and restart it, free old
                    # rows and move that in too: the retry then writes into reused pages.
                    self._release_reserve()
                    self._checkpoint()
                    self._make_room(max(sizes, 64 * 1024), now)
                    self._checkpoint()
                    result = self._commit(readings, now)
                    self._make_reserve()
                    return result
                except sqlite3.Error as exc:
                    self._rollback()
                    _LOGGER.error(
                        "buffer %s: still full after dropping old readings: %s", self.path, exc
                    )
            loss = Loss(
                0,
                now,
                LossReason.DISK_FULL,
                len(readings),
                None,
                None,
                "tick not stored: filesystem full",
            )
            self._unflushed.append(loss)
            raise BufferFull(
                f"{self.path}: filesystem full, {len(readings)} readings not stored", loss
            )

    def _commit(self, readings: Sequence[Reading], now: datetime) -> CommitResult:
        sizes = [reading_size(r) for r in readings]
        need = sum(sizes)
        self._db.execute("BEGIN IMMEDIATE")
        plan = self._plan(need, now)
        losses = self._flush_unflushed()
        if plan.refuse is not None:
            loss = self._insert_loss(
                self._db,
                Loss(
                    0,
                    now,
                    LossReason.REFUSED,
                    len(readings),
                    None,
                    None,
                    f"{plan.refuse.value}: {plan.detail} (policy stop_polling)",
                ),
            )
            self._db.execute("COMMIT")
            self._unflushed.clear()
            _LOGGER.warning(
                "buffer %s full (%s): tick of %d readings refused",
                self.path,
                plan.detail,
                len(readings),
            )
            raise BufferFull(f"buffer full: {plan.detail}", loss)
        losses += self._apply_drops(plan, now)
        if not readings and not losses:
            self._db.execute("ROLLBACK")  # nothing to write: no fsync for an empty tick
            return CommitResult(self._epoch, None, None, 0, ())
        first = int(self._meta("next_seq"))
        rows = []
        for i, (r, size) in enumerate(zip(readings, sizes, strict=True)):
            rows.append(
                (
                    first + i,
                    r.meter_id,
                    r.key,
                    r.quantity,
                    r.unit,
                    r.value,
                    r.kind.value,
                    _to_us(r.logger_time),
                    r.meter_time.isoformat() if r.meter_time is not None else None,
                    ",".join(sorted(r.flags)),
                    r.storage,
                    r.tariff,
                    r.subunit,
                    r.function,
                    size,
                )
            )
        self._db.executemany(
            f"INSERT INTO readings ({_COLUMNS}, size) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self._db.execute(
            "UPDATE meta SET value=? WHERE key='next_seq'", (str(first + len(readings)),)
        )
        self._db.execute("COMMIT")
        self._unflushed.clear()
        self._bytes += need - plan.dropped_bytes
        self._pending += len(readings) - plan.dropped_count
        for loss in losses:
            if loss.reason is not LossReason.DISK_FULL:
                _LOGGER.warning(
                    "buffer %s: dropped %d readings (seq %s..%s, %s)",
                    self.path,
                    loss.count,
                    loss.first_seq,
                    loss.last_seq,
                    loss.reason.value,
                )
        if not readings:
            return CommitResult(self._epoch, None, None, 0, tuple(losses))
        return CommitResult(
            self._epoch, first, first + len(readings) - 1, len(readings), tuple(losses)
        )

    def _make_room(self, need: int, now: datetime) -> None:
        """Drop the oldest readings worth ``need`` bytes, so a retry reuses their pages."""
        freed = 0
        drop: list[PendingRow] = []
        rows = self._pending_rows()
        for row in rows:
            if freed >= need:
                break
            drop.append(row)
            freed += row.size
        rows.close()
        self._db.execute("BEGIN IMMEDIATE")
        plan = Plan(drops={LossReason.DISK_FULL: drop})
        self._apply_drops(plan, now)
        self._db.execute("COMMIT")
        self._bytes -= freed
        self._pending -= len(drop)

    @property
    def _reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _make_reserve(self) -> None:
        """Keep :data:`RESERVE_BYTES` of disk aside for the day the filesystem fills.

        On a full disk SQLite cannot even delete: the WAL must be checkpointed into the
        database first, which may need new pages. Giving the reserve back at that moment lets
        the drop-oldest policy run; ``min_free_bytes`` normally keeps it from ever coming to
        this.
        """
        if self._reserve_path.exists():
            return
        try:
            with open(self._reserve_path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError as exc:
            _LOGGER.warning(
                "buffer %s: cannot set %d bytes aside for a full disk: %s",
                self.path,
                RESERVE_BYTES,
                exc,
            )
            self._reserve_path.unlink(missing_ok=True)

    def _release_reserve(self) -> None:
        if self._reserve_path.exists():
            self._reserve_path.unlink()
            _LOGGER.warning(
                "buffer %s: disk full, released the reserve of %d bytes", self.path, RESERVE_BYTES
            )

    def _checkpoint(self) -> None:
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                _LOGGER.error("buffer %s: rollback failed: %s", self.path, exc)

    def _writable(self) -> None:
        if self._readonly:
            raise StoreError(f"{self.path}: opened read-only")

    def pending_batch(self, max_n: int) -> Batch:
        """The ``max_n`` oldest pending readings, oldest first."""
        if max_n <= 0:
            raise ValueError("max_n must be positive")
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM readings ORDER BY seq LIMIT ?", (max_n,)
            ).fetchall()
        return Batch(self._epoch, tuple(_rows_to_stored(rows)))

    def acknowledge(
        self, epoch: str, up_to_seq: int | None = None, seqs: Sequence[int] = ()
    ) -> int:
        """Delete what the receiver confirmed: every seq <= ``up_to_seq`` and/or the listed
        ``seqs``. An acknowledgement for another epoch deletes nothing (it refers to a store
        that no longer exists here). Returns the number of readings deleted."""
        self._writable()
        if epoch != self._epoch:
            _LOGGER.warning(
                "buffer %s: acknowledgement for epoch %s ignored (current %s)",
                self.path,
                epoch,
                self._epoch,
            )
            return 0
        with self._lock:
            try:
                return self._acknowledge(up_to_seq, seqs)
            except sqlite3.Error as exc:
                self._rollback()
                if not _is_disk_full(exc):
                    raise StoreError(f"{self.path}: acknowledgement failed: {exc}") from exc
            # Deleting needs WAL space too: give the reserve back, checkpoint, retry once.
            try:
                self._release_reserve()
                self._checkpoint()
                return self._acknowledge(up_to_seq, seqs)
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"{self.path}: acknowledgement failed: {exc}") from exc

    def _acknowledge(self, up_to_seq: int | None, seqs: Sequence[int]) -> int:
        self._db.execute("BEGIN IMMEDIATE")
        deleted = 0
        freed = 0
        if up_to_seq is not None:
            freed += int(
                self._db.execute(
                    "SELECT coalesce(sum(size), 0) FROM readings WHERE seq <= ?", (up_to_seq,)
                ).fetchone()[0]
            )
            deleted += self._db.execute(
                "DELETE FROM readings WHERE seq <= ?", (up_to_seq,)
            ).rowcount
        listed = sorted(set(seqs))
        for i in range(0, len(listed), 500):
            chunk = listed[i : i + 500]
            marks = ",".join("?" * len(chunk))
            freed += int(
                self._db.execute(
                    f"SELECT coalesce(sum(size), 0) FROM readings WHERE seq IN ({marks})", chunk
                ).fetchone()[0]
            )
            deleted += self._db.execute(
                f"DELETE FROM readings WHERE seq IN ({marks})", chunk
            ).rowcount
        self._db.execute("COMMIT")
        self._bytes -= freed
        self._pending -= deleted
        return deleted

    def read(self, since_seq: int = 0, max_n: int = 1000) -> list[StoredReading]:
        """Pending readings with ``seq > since_seq`` (for export), oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM readings WHERE seq > ? ORDER BY seq LIMIT ?",
                (since_seq, max_n),
            ).fetchall()
        return _rows_to_stored(rows)

    def losses(self, since_id: int = 0) -> list[Loss]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, at_us, reason, count, first_seq, last_seq, detail FROM losses "
                "WHERE id > ? ORDER BY id",
                (since_id,),
            ).fetchall()
        out = [
            Loss(
                int(i), _from_us(int(at)), LossReason(reason), int(count), first, last, str(detail)
            )
            for i, at, reason, count, first, last, detail in rows
        ]
        return out + list(self._unflushed)

    def stats(self, now: datetime | None = None) -> StoreStats:
        now = now or self._clock()
        with self._lock:
            db = self._db
            if self._readonly:  # another process writes: count afresh
                self._pending, self._bytes = self._count()
            oldest = db.execute("SELECT min(seq) FROM readings").fetchone()[0]
            newest = db.execute("SELECT max(seq) FROM readings").fetchone()[0]
            oldest_time = None
            if oldest is not None:
                us = db.execute("SELECT logger_us FROM readings WHERE seq=?", (oldest,))
                oldest_time = _from_us(int(us.fetchone()[0]))
            lost = int(self._meta("lost_total")) + sum(x.count for x in self._unflushed)
            records = int(db.execute("SELECT count(*) FROM losses").fetchone()[0])
            return StoreStats(
                epoch=self._epoch,
                depth=self._pending,
                bytes=self._bytes,
                oldest_seq=oldest,
                newest_seq=newest,
                oldest_time=oldest_time,
                oldest_age_s=(now - oldest_time).total_seconds() if oldest_time else None,
                next_seq=int(self._meta("next_seq")),
                lost_total=lost,
                loss_records=records + len(self._unflushed),
                limits=self._limits,
            )

    def enforce_limits(self, now: datetime | None = None) -> tuple[Loss, ...]:
        """Apply the age limit (and the others) without a new tick, e.g. once an hour while
        the poller is idle. Under ``stop_polling`` nothing is dropped."""
        self._writable()
        now = now or self._clock()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                plan = self._plan(0, now)
                losses = self._flush_unflushed() + self._apply_drops(plan, now)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"{self.path}: applying limits failed: {exc}") from exc
            self._unflushed.clear()
            self._bytes -= plan.dropped_bytes
            self._pending -= plan.dropped_count
            return tuple(losses)

    def integrity_check(self) -> str:
        """``PRAGMA quick_check`` now: ``"ok"`` or SQLite's description of the damage."""
        with self._lock:
            rows = self._db.execute("PRAGMA quick_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)

    def close(self) -> None:
        with self._lock:
            try:
                if not self._readonly:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                _LOGGER.warning("buffer %s: checkpoint at close failed: %s", self.path, exc)
            self._db.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""One contract suite for the receiver's storage, run against SQLite and a real PostgreSQL.

Each test states the property and the failure it guards against (ARCHITECTURE.md "Exactly
once", "Exact values"; SECURITY.md audit log).
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from logger.contract import MAX_BATCH
from receiver.storage import (
    BadBatch,
    InvalidConfiguration,
    MeterHealth,
    SequenceConflict,
    StatusReport,
    Storage,
    StorageConfigError,
    StorageUnavailable,
    open_storage,
)
from receiver.storage._rows import audit_hash
from tests.support.postgres import PostgresServer, free_port
from tests.support.receiver_storage import T0, batch, execute_raw, run, run_with_storage

DEV = "urn:example:logger:0001"
DEV2 = "urn:example:logger:0002"
THUMB = "a" * 40


async def exported(storage: Storage, **filters: object) -> list[tuple[object, ...]]:
    return [
        (r.device_uri, r.epoch, r.sequence, r.meter, r.record, r.value, r.logger_time)
        async for r in storage.export(**filters)  # type: ignore[arg-type]
    ]


# --------------------------------------------------------------------------------------------
# Exactly once.


def test_push_stores_a_batch_and_acknowledges_its_last_sequence(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        result = await storage.push(DEV, THUMB, "e1", batch(0, 100))
        assert (result.acknowledged_up_to, result.inserted, result.duplicates) == (99, 100, 0)
        rows = await exported(storage)
        assert [r[2] for r in rows] == list(range(100))
        assert rows[7][5] == "7.007"
        assert await storage.acknowledged(DEV, "e1") == 99
        assert await storage.acknowledged(DEV, "other") is None

    run_with_storage(storage_url, scenario)


def test_resent_identical_batch_changes_nothing_and_is_acknowledged(storage_url: str) -> None:
    # A logger that crashed after the receiver committed resends the batch: acknowledge it
    # again, store nothing twice.
    async def scenario(storage: Storage) -> None:
        await storage.push(DEV, THUMB, "e1", batch(0, 50))
        again = await storage.push(DEV, THUMB, "e1", batch(0, 50))
        assert (again.acknowledged_up_to, again.inserted, again.duplicates) == (49, 0, 50)
        overlap = await storage.push(DEV, THUMB, "e1", batch(40, 20))
        assert (overlap.acknowledged_up_to, overlap.inserted, overlap.duplicates) == (
            59,
            10,
            10,
        )
        assert [r[2] for r in await exported(storage)] == list(range(60))

    run_with_storage(storage_url, scenario)


def test_resent_sequence_with_other_content_is_refused_and_nothing_stored(
    storage_url: str,
) -> None:
    # A buffer reset without a new epoch (or tampering) would overwrite history: refuse.
    async def scenario(storage: Storage) -> None:
        await storage.push(DEV, THUMB, "e1", batch(0, 10))
        forged = batch(5, 10)  # 5..9 already stored, 10..14 new
        forged["Value"][2] = "999"  # sequence 7
        with pytest.raises(SequenceConflict) as info:
            await storage.push(DEV, THUMB, "e1", forged)
        assert info.value.sequence == 7
        assert "value: stored '7.007', sent '999'" in str(info.value)
        # The whole batch was refused: the new sequences 10..14 are not stored either.
        assert [r[2] for r in await exported(storage)] == list(range(10))
        assert await storage.acknowledged(DEV, "e1") == 9
        # A differing timestamp is different content too.
        moved = batch(3, 1, t0=T0 + timedelta(microseconds=1))
        with pytest.raises(SequenceConflict, match="logger_time"):
            await storage.push(DEV, THUMB, "e1", moved)

    run_with_storage(storage_url, scenario)


def test_the_same_sequence_in_another_epoch_or_device_is_another_reading(
    storage_url: str,
) -> None:
    async def scenario(storage: Storage) -> None:
        await storage.push(DEV, THUMB, "e1", batch(0, 5))
        other_epoch = await storage.push(DEV, THUMB, "e2", batch(0, 5, value="1"))
        other_device = await storage.push(DEV2, "b" * 40, "e1", batch(0, 5, value="2"))
        assert other_epoch.inserted == 5 and other_device.inserted == 5
        assert len(await exported(storage)) == 15
        assert len(await exported(storage, device_uri=DEV2)) == 5

    run_with_storage(storage_url, scenario)


@pytest.mark.parametrize(
    ("mangle", "message", "too_large"),
    [
        (lambda c: c["Meter"].pop(), "unequal length", False),
        (lambda c: c.pop("Flags"), "missing column Flags", False),
        (lambda c: c["Sequence"].__setitem__(3, 2), "does not increase", False),
        (lambda c: c["Sequence"].__setitem__(3, 1), "does not increase", False),
        (lambda c: c["Sequence"].__setitem__(9, 2**63), "exceeds", False),
        (lambda c: c["Record"].__setitem__(0, ""), "Record[0] is empty", False),
        (lambda c: c["Unit"].__setitem__(1, "x" * 300), "Unit[1]", False),
        (lambda c: c["LoggerTime"].__setitem__(1, "yesterday"), "LoggerTime[1]", False),
    ],
)
def test_malformed_batches_are_refused_whole(
    storage_url: str, mangle: object, message: str, too_large: bool
) -> None:
    async def scenario(storage: Storage) -> None:
        columns = batch(0, 10)
        mangle(columns)  # type: ignore[operator]
        with pytest.raises(BadBatch, match=re.escape(message)) as info:
            await storage.push(DEV, THUMB, "e1", columns)
        assert info.value.too_large is too_large
        assert await exported(storage) == []

    run_with_storage(storage_url, scenario)


def test_oversized_empty_and_epochless_batches_are_refused(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        with pytest.raises(BadBatch, match="exceeds") as info:
            await storage.push(DEV, THUMB, "e1", batch(0, MAX_BATCH + 1))
        assert info.value.too_large
        with pytest.raises(BadBatch, match="empty batch"):
            await storage.push(DEV, THUMB, "e1", batch(0, 0))
        with pytest.raises(BadBatch, match="Epoch"):
            await storage.push(DEV, THUMB, "", batch(0, 1))
        assert await exported(storage) == []

    run_with_storage(storage_url, scenario)


def test_values_and_times_cross_exactly(storage_url: str) -> None:
    # Billing data: "12.340" must come back as "12.340", never 12.34 or 12.339999….
    values = [
        "12.340",
        "-0.001",
        "serial ABC",
        "123456789012345678901234567890.123456789",
        "0",
        "2026-03-01T10:15",
        "1E+3",
        "NaN",
        "",
    ]
    naive = datetime(2026, 3, 1, 10, 15, 30, 123456)
    east = datetime(2026, 3, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))

    async def scenario(storage: Storage) -> None:
        n = len(values)
        columns = batch(0, n)
        columns["Value"] = list(values)
        columns["SourceTime"] = [naive, datetime(1601, 1, 1)] + [None] * (n - 2)
        columns["LoggerTime"][0] = east
        columns["Flags"][0] = "clock_unsynced"
        await storage.push(DEV, THUMB, "e1", columns)
        got = [r async for r in storage.export()]
        assert [r.value for r in got] == values
        assert got[0].source_time == naive.replace(tzinfo=UTC)
        assert got[1].source_time is None  # OPC UA null DateTime
        assert got[0].logger_time == east
        assert got[0].logger_time is not None and got[0].logger_time.utcoffset() == (timedelta(0))
        assert got[0].flags == "clock_unsynced"
        # The same batch with the time in another zone is the same content.
        columns["LoggerTime"][0] = east.astimezone(UTC)
        assert (await storage.push(DEV, THUMB, "e1", columns)).duplicates == n
        latest = {v.record: v for v in await storage.latest_values(DEV)}
        # Latest per record (records cycle r0..r3): the float beside the exact text.
        assert latest["r2"].value == "1E+3" and latest["r2"].value_double == 1000.0
        assert latest["r0"].value == "" and latest["r0"].value_double is None
        assert latest["r3"].value == "NaN" and latest["r3"].value_double is None

    run_with_storage(storage_url, scenario)


def test_nothing_is_lost_when_the_storage_is_reopened(storage_url: str) -> None:
    async def scenario() -> None:
        storage = await open_storage(storage_url)
        await storage.push(DEV, THUMB, "e1", batch(0, 1000))
        await storage.audit("certificate.rejected", peer="10.0.0.9:4711", detail="untrusted")
        await storage.close()
        storage = await open_storage(storage_url)
        try:
            assert await storage.acknowledged(DEV, "e1") == 999
            assert (await storage.push(DEV, THUMB, "e1", batch(0, 1000))).duplicates == 1000
            assert (await storage.verify_audit()).entries == 1
        finally:
            await storage.close()

    run(scenario())


def test_export_filters_and_streams_in_arrival_order(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        await storage.push(DEV, THUMB, "e1", batch(0, 6000, meter="heat"))
        await storage.push(DEV2, THUMB, "e1", batch(0, 10, meter="water"))
        await storage.push(DEV, THUMB, "e1", batch(6000, 10, meter="water"))
        everything = await exported(storage)
        assert len(everything) == 6020  # more than one export chunk
        assert [r[2] for r in everything[:6000]] == list(range(6000))
        water = await exported(storage, meter="water")
        assert [(r[0], r[2]) for r in water] == [(DEV2, s) for s in range(10)] + [
            (DEV, s) for s in range(6000, 6010)
        ]
        since = await exported(storage, device_uri=DEV, since=T0 + timedelta(minutes=5990))
        assert [r[2] for r in since] == list(range(5990, 6010))
        assert await exported(storage, device_uri="urn:nobody") == []

    run_with_storage(storage_url, scenario)


def test_latest_value_per_record_never_goes_back_in_time(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        await storage.push(DEV, THUMB, "e1", batch(0, 8))  # r0..r3, twice each
        latest = {(v.meter, v.record): v for v in await storage.latest_values()}
        assert len(latest) == 4
        assert latest[("m1", "r1")].sequence == 5
        assert latest[("m1", "r1")].value == "5.005"
        # A new epoch (logger database recreated) with older logger times must not
        # replace newer values; newer ones do.
        await storage.push(DEV, THUMB, "e2", batch(0, 2, value="0", t0=T0 - timedelta(1)))
        await storage.push(DEV, THUMB, "e2", batch(2, 1, value="42", t0=T0 + timedelta(1)))
        latest = {(v.meter, v.record): v for v in await storage.latest_values(DEV)}
        assert latest[("m1", "r1")].value == "5.005"
        assert latest[("m1", "r2")].value == "42" and latest[("m1", "r2")].epoch == "e2"
        assert await storage.latest_values(DEV2) == []

    run_with_storage(storage_url, scenario)


# --------------------------------------------------------------------------------------------
# Devices, installations, status.


def test_devices_installations_and_status(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        assert await storage.device(DEV) is None
        not_after = datetime(2031, 3, 1, tzinfo=UTC)
        await storage.record_contact(DEV, THUMB, not_after, peer="192.0.2.7:50000")
        assert await storage.report_installation(DEV, THUMB, "SN-1", "Cellar A", "1.0")
        assert not await storage.report_installation(DEV, THUMB, "SN-1", "Cellar A", "1.0")
        assert await storage.report_installation(DEV, THUMB, "SN-1", "Cellar B", "1.0")
        health = (
            MeterHealth("heat", True, 0, T0, ""),
            MeterHealth("water", False, 3, None, "no answer from address 5"),
        )
        await storage.report_status(DEV, THUMB, StatusReport(120, 3600.5, 7, 1800, 2, health))
        device = await storage.device(DEV)
        assert device is not None
        assert (device.serial, device.location, device.firmware) == ("SN-1", "Cellar B", "1.0")
        assert device.thumbprint == THUMB and device.cert_not_after == not_after
        assert device.last_peer == "192.0.2.7:50000"
        assert device.first_contact is not None and device.last_contact is not None
        assert device.first_contact <= device.last_contact
        assert device.status == StatusReport(120, 3600.5, 7, 1800, 2, health)
        history = await storage.installations(DEV)
        assert [i.location for i in history] == ["Cellar A", "Cellar B"]
        await storage.push(DEV2, "b" * 40, "e1", batch(0, 1))
        assert [d.application_uri for d in await storage.devices()] == [DEV, DEV2]
        assert (await storage.device(DEV2)).status is None  # type: ignore[union-attr]

    run_with_storage(storage_url, scenario)


# --------------------------------------------------------------------------------------------
# Cloud configuration.


def test_configuration_is_versioned_and_audited(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        assert await storage.get_config(DEV) is None
        first = (
            '{"version": 41, "meters": [{"id": "heat", "kind": "mbus", "bus": "mbus0", '
            '"primary_address": 5}], "default_interval": "15m"}'
        )
        assert await storage.set_config(DEV, first, set_by="ops@host") == 1
        # The receiver numbers the versions: the document a logger gets carries it.
        served = await storage.get_config(DEV)
        assert served is not None and json.loads(served.document)["version"] == 1
        # The same content, formatted differently (or as `config show` printed it): no new
        # version.
        same = (
            '{"default_interval": "15m",\n "meters": [{"primary_address": 5, '
            '"bus": "mbus0", "kind": "mbus", "id": "heat"}]}'
        )
        assert await storage.set_config(DEV, same) == 1
        assert await storage.set_config(DEV, served.document) == 1
        assert await storage.set_config(DEV, '{"meters": [], "version": 1}') == 2
        current = await storage.get_config(DEV)
        assert current is not None and current.version == 2
        assert json.loads(current.document) == {"version": 2, "meters": []}
        assert current.set_by == ""
        assert await storage.get_config(DEV2) is None
        device = await storage.device(DEV)
        assert device is not None and device.config_version == 2
        entries = await storage.audit_entries()
        assert [(e.event, e.device_uri, e.detail) for e in entries] == [
            ("config.set", DEV, "version 1"),
            ("config.set", DEV, "version 2"),
        ]
        assert entries[0].peer == "ops@host"

    run_with_storage(storage_url, scenario)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["meters"]', "JSON object at the top level, not an array"),
        ('{"uplink": {"security_mode": "None"}}', "'uplink' cannot be set from the cloud"),
        ('{"trust": {}}', "'trust' cannot be set from the cloud"),
        ('{"buses": []}', "belongs to the device's local file"),
        ('{"meters": {"heat": 1}}', "'meters' must be an array of objects"),
        ('{"meters": [1]}', "'meters' must be an array of objects"),
        ('{"default_interval": true}', "'default_interval' must be a duration"),
        ('{"default_interval": 1e999}', "out of range"),
        ('{"x": NaN}', "not valid JSON"),
        ('{"meters": [' + '{"a": 1},' * 200_000 + "{}]}", "more than the"),
    ],
)
def test_invalid_configuration_is_refused(storage_url: str, document: str, message: str) -> None:
    async def scenario(storage: Storage) -> None:
        with pytest.raises(InvalidConfiguration, match=re.escape(message)):
            await storage.set_config(DEV, document)
        assert await storage.get_config(DEV) is None
        assert await storage.audit_entries() == []

    run_with_storage(storage_url, scenario)


# --------------------------------------------------------------------------------------------
# The audit log.


async def _five_entries(storage: Storage) -> None:
    for i in range(1, 6):
        await storage.audit(
            f"event.{i}",
            device_uri=DEV,
            thumbprint=THUMB,
            peer=f"10.0.0.{i}:4840",
            detail=f"détail {i}",
        )


def test_audit_chain_verifies_and_lists(storage_url: str) -> None:
    async def scenario(storage: Storage) -> None:
        empty = await storage.verify_audit()
        assert empty.ok and empty.entries == 0
        await _five_entries(storage)
        await storage.audit("certificate.revoked", peer="10.9.9.9:1")
        verdict = await storage.verify_audit()
        assert verdict.ok and verdict.entries == 6 and verdict.first_bad_id is None
        entries = await storage.audit_entries()
        assert [e.id for e in entries] == [1, 2, 3, 4, 5, 6]
        assert verdict.head_hash == entries[-1].hash
        assert entries[1].prev_hash == entries[0].hash
        assert [e.id for e in await storage.audit_entries(since_id=2, limit=2)] == [3, 4]
        assert len(await storage.audit_entries(device_uri=DEV)) == 5
        with pytest.raises(ValueError, match="event must not be empty"):
            await storage.audit("")

    run_with_storage(storage_url, scenario)


def _forge_hash_sql(entry_id: int, prev: str, time: datetime, detail: str) -> str:
    digest = audit_hash(
        prev, entry_id, time, f"event.{entry_id}", DEV, THUMB, f"10.0.0.{entry_id}:4840", detail
    )
    return f"UPDATE audit SET detail = '{detail}', hash = '{digest}' WHERE id = {entry_id}"


@pytest.mark.parametrize(
    ("tamper", "first_bad", "words"),
    [
        ("edit", 3, "does not match its hash"),
        ("delete", 3, "missing"),
        ("delete_last", 5, "deleted at the end"),
        ("swap", 2, "does not match its hash"),
        ("rehash", 4, "does not follow"),
        ("append", 6, "does not match its hash"),
    ],
)
def test_tampered_audit_log_is_detected_and_named(
    storage_url: str, tamper: str, first_bad: int, words: str
) -> None:
    async def scenario() -> None:
        storage = await open_storage(storage_url)
        try:
            await _five_entries(storage)
            entries = await storage.audit_entries()
        finally:
            await storage.close()
        e3 = entries[2]
        statements = {
            "edit": ["UPDATE audit SET detail = 'nothing happened' WHERE id = 3"],
            "delete": ["DELETE FROM audit WHERE id = 3"],
            "delete_last": ["DELETE FROM audit WHERE id = 5"],
            # Reorder: entries 2 and 3 trade places.
            "swap": [
                "UPDATE audit SET id = -id WHERE id IN (2, 3)",
                "UPDATE audit SET id = 3 WHERE id = -2",
                "UPDATE audit SET id = 2 WHERE id = -3",
            ],
            # Edit entry 3 and recompute its own hash: the next entry no longer follows it.
            "rehash": [_forge_hash_sql(3, e3.prev_hash, e3.time, "forged")],
            # A forged entry added behind the log's back (copy of entry 5 as 6).
            "append": [
                "INSERT INTO audit (id, time, event, device_uri, thumbprint, peer, detail, "
                "prev_hash, hash) SELECT 6, time, event, device_uri, thumbprint, peer, detail, "
                "hash, hash FROM audit WHERE id = 5"
            ],
        }[tamper]
        await execute_raw(storage_url, *statements)
        storage = await open_storage(storage_url)
        try:
            verdict = await storage.verify_audit()
        finally:
            await storage.close()
        assert not verdict.ok
        assert verdict.first_bad_id == first_bad, verdict
        assert verdict.problem is not None and words in verdict.problem, verdict
        if tamper == "append":
            assert "not written through the log" in verdict.details[-1]

    run(scenario())


# --------------------------------------------------------------------------------------------
# Several instances on one database.


def test_two_instances_pushing_the_same_batches_store_each_reading_once(
    storage_url: str,
) -> None:
    # Two receiver instances behind a load balancer get the same resent batches at the same
    # time: exactly one copy of each reading, every push acknowledged.
    async def scenario() -> None:
        first = await open_storage(storage_url)
        second = await open_storage(storage_url)
        try:
            pushes = []
            for k in range(8):
                columns = batch(k * 500, 500)
                pushes += [
                    first.push(DEV, THUMB, "e1", columns),
                    second.push(DEV, THUMB, "e1", columns),
                ]
            results = await asyncio.gather(*pushes)
            assert sum(r.inserted for r in results) == 4000
            assert sum(r.duplicates for r in results) == 4000
            assert all(r.inserted + r.duplicates == 500 for r in results)
            rows = await exported(first)
            assert sorted(int(str(r[2])) for r in rows) == list(range(4000))
            # Audit appends from both instances form one unbroken chain.
            await asyncio.gather(
                *[(first if i % 2 else second).audit(f"e{i}", detail=str(i)) for i in range(40)]
            )
            verdict = await second.verify_audit()
            assert verdict.ok and verdict.entries == 40, verdict
        finally:
            await first.close()
            await second.close()

    run(scenario())


def test_concurrent_conflicting_batches_store_one_and_refuse_the_other(
    storage_url: str,
) -> None:
    async def scenario() -> None:
        first = await open_storage(storage_url)
        second = await open_storage(storage_url)
        try:
            honest = batch(0, 1000)
            forged = batch(0, 1000, value="0")
            results = await asyncio.gather(
                first.push(DEV, THUMB, "e1", honest),
                second.push(DEV, THUMB, "e1", forged),
                return_exceptions=True,
            )
            stored = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, SequenceConflict)]
            assert len(stored) == 1 and len(refused) == 1, results
            values = {r.value async for r in first.export()}
            assert values == ({"0"} if stored[0] is results[1] else set(honest["Value"]))
        finally:
            await first.close()
            await second.close()

    run(scenario())


# --------------------------------------------------------------------------------------------
# Opening: URLs, schema versions, unreachable databases.


def test_newer_schema_is_refused(storage_url: str) -> None:
    async def scenario() -> None:
        storage = await open_storage(storage_url)
        await storage.close()
        await execute_raw(storage_url, "INSERT INTO schema_version VALUES (999)")
        with pytest.raises(StorageConfigError, match="schema version 999"):
            await open_storage(storage_url)

    run(scenario())


def test_storage_urls(tmp_path: object) -> None:
    async def scenario() -> None:
        with pytest.raises(StorageConfigError, match="unsupported storage URL scheme 'mysql'"):
            await open_storage("mysql://db/x")
        with pytest.raises(StorageConfigError, match="no receiver database"):
            await open_storage(f"sqlite://{tmp_path}/missing.db", create=False)
        with pytest.raises(StorageConfigError, match="names no file"):
            await open_storage("sqlite://")
        junk = Path(f"{tmp_path}/junk.db")
        junk.write_bytes(b"this is not a database file, just sixteen+ bytes of text" * 100)
        with pytest.raises(StorageConfigError, match="is not a SQLite database"):
            await open_storage(str(junk))
        plain = await open_storage(f"{tmp_path}/plain.db")
        await plain.close()
        again = await open_storage(f"sqlite://{tmp_path}/plain.db", create=False)
        await again.close()

    run(scenario())


def test_sqlite_is_durable_by_configuration(tmp_path: object) -> None:
    # WAL with synchronous=FULL: COMMIT returns only after the WAL is fsynced.
    import sqlite3

    from receiver.storage.sqlite import SqliteStorage

    async def scenario() -> int:
        storage = await open_storage(f"{tmp_path}/d.db")
        assert isinstance(storage, SqliteStorage)
        try:
            return await storage._run(
                lambda: int(storage._db.execute("PRAGMA synchronous").fetchone()[0])
            )
        finally:
            await storage.close()

    assert run(scenario()) == 2  # FULL
    db = sqlite3.connect(f"{tmp_path}/d.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


@pytest.mark.postgres
def test_unreachable_and_missing_postgres_databases(postgres: PostgresServer) -> None:
    async def scenario() -> None:
        with pytest.raises(StorageUnavailable, match="unreachable"):
            await open_storage(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
        with pytest.raises(StorageConfigError, match="does not exist"):
            await open_storage(postgres.url("no_such_db"))

    run(scenario())


@pytest.mark.postgres
def test_postgres_keeps_a_numeric_beside_the_exact_text(postgres: PostgresServer) -> None:
    async def scenario() -> None:
        import asyncpg

        url = await postgres.create_schema("numeric")
        storage = await open_storage(url)
        try:
            columns = batch(0, 6)
            big = "9" * 1000 + "e9999"  # the largest the contract lets through
            columns["Value"] = ["12.340", "text", "1e99999", "-2.5E-3", big, "-1e-9999"]
            await storage.push(DEV, THUMB, "e1", columns)
        finally:
            await storage.close()
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT value, value_num::text, value_double FROM readings ORDER BY seq"
            )
            big_num = await conn.fetchval(
                "SELECT value_num = ('1e10999'::numeric - '1e9999'::numeric) FROM readings "
                "WHERE seq = 4"
            )
        finally:
            await conn.close()
        assert [tuple(r) for r in rows[:4]] == [
            ("12.340", "12.340", 12.34),
            ("text", None, None),
            ("1e99999", None, None),  # exponent beyond the contract's pattern: text only
            ("-2.5E-3", "-0.0025", -0.0025),
        ]
        assert rows[4][2] is None and big_num is True  # exact, though no float can hold it
        assert rows[5][1] == "-0." + "0" * 9998 + "1" and rows[5][2] == -0.0

    run(scenario())


def test_cloud_sections_are_the_ones_the_logger_accepts() -> None:
    # The receiver refuses early what the logger would refuse: the two lists must not drift.
    from logger.config.model import CLOUD_FIELDS
    from receiver.storage._rows import CLOUD_SECTIONS

    assert tuple(CLOUD_SECTIONS) == tuple(CLOUD_FIELDS)


def test_a_new_schema_version_migrates_once_and_keeps_the_data(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A later release appends a migration: opening an old database applies it exactly once,
    # in a transaction, and the readings stay.
    from receiver.storage import postgres as pg_backend
    from receiver.storage import sqlite as sqlite_backend

    backend = pg_backend if storage_url.startswith("postgresql://") else sqlite_backend
    step = (2, "ALTER TABLE devices ADD COLUMN note TEXT; UPDATE devices SET note = 'migrated'")

    async def scenario() -> None:
        storage = await open_storage(storage_url)
        await storage.push(DEV, THUMB, "e1", batch(0, 10))
        await storage.close()
        monkeypatch.setattr(backend, "MIGRATIONS", (*backend.MIGRATIONS, step))
        monkeypatch.setattr(backend, "SCHEMA_VERSION", 2)
        for _ in range(2):
            storage = await open_storage(storage_url)
            try:
                assert await storage.acknowledged(DEV, "e1") == 9
            finally:
                await storage.close()
        # The step ran once (a second run would fail: the column exists).
        await execute_raw(storage_url, "UPDATE devices SET note = note || '!'")
        monkeypatch.setattr(backend, "SCHEMA_VERSION", 1)
        monkeypatch.setattr(backend, "MIGRATIONS", backend.MIGRATIONS[:1])
        with pytest.raises(StorageConfigError, match="schema version 2, newer"):
            await open_storage(storage_url)

    run(scenario())


def test_storage_errors_name_an_opc_ua_status_that_exists() -> None:
    from asyncua import ua

    from receiver.storage import StorageError, status_name

    cases = {
        BadBatch("x"): "BadInvalidArgument",
        BadBatch("x", too_large=True): "BadRequestTooLarge",
        SequenceConflict(DEV, "e", 1, "value"): "BadInvalidArgument",
        InvalidConfiguration("x"): "BadInvalidArgument",
        StorageUnavailable("x"): "BadResourceUnavailable",
        StorageError("x"): "BadInternalError",
    }
    for exc, name in cases.items():
        assert status_name(exc) == name
        assert isinstance(getattr(ua.StatusCodes, name), int)


def test_a_recorded_head_catches_a_rewritten_tail(storage_url: str) -> None:
    # An intruder with write access deletes the last entries and moves the head back: the chain
    # itself is consistent again; only a head recorded elsewhere reveals it.
    async def scenario() -> None:
        storage = await open_storage(storage_url)
        try:
            await _five_entries(storage)
            recorded = (await storage.verify_audit()).head_hash
            assert (await storage.verify_audit(recorded)).ok
            entries = await storage.audit_entries()
        finally:
            await storage.close()
        e2 = entries[1]
        await execute_raw(
            storage_url,
            "DELETE FROM audit WHERE id > 2",
            f"UPDATE audit_head SET last_id = 2, last_hash = '{e2.hash}'",
        )
        storage = await open_storage(storage_url)
        try:
            assert (await storage.verify_audit()).ok  # the limit of any chain kept in one place
            verdict = await storage.verify_audit(recorded)
        finally:
            await storage.close()
        assert not verdict.ok and verdict.first_bad_id == 3
        assert verdict.problem is not None and "is not in the log" in verdict.problem

    run(scenario())

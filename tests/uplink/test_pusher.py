"""The pusher against a real receiver (SignAndEncrypt, SQLite at both ends): exactly once,
oldest first, bounded batches, only acknowledged readings deleted, live readings behind a
backlog, and the cloud configuration followed."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from logger import contract
from logger.config import CloudLayerStore, Config
from logger.store.api import BufferLimits
from logger.store.sqlite import SqliteStore
from logger.tpm import open_device_key
from logger.uplink.cloudconfig import CloudConfigFollower
from logger.uplink.connection import connect
from logger.uplink.errors import UplinkError
from logger.uplink.pusher import AcknowledgementMismatch, ConnectionCaller, Pusher, push_arguments
from receiver.server import ReceiverServer
from tests.support.daemon import make_config, tcp_meter
from tests.support.datapath import datapath_receiver
from tests.support.receiver_storage import run
from tests.support.secure_channel import SharedPki, uplink_settings
from tests.support.store import T0, make_tick

UNBOUNDED = BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(tmp_path / "buffer.db", UNBOUNDED)
    yield s
    s.close()


def _fill(store: SqliteStore, ticks: int, meters: int, start: int = 0) -> int:
    for t in range(start, start + ticks):
        store.commit_tick(make_tick(meters, T0 + timedelta(minutes=15 * t)))
    return ticks * meters


class _StoreThread:
    """The daemon's store thread: one worker, every SQLite call on it."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="store")

    async def __call__(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


class _Caller(ConnectionCaller):
    """The real connection, with hooks to lose an answer or commit readings mid-call."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls: list[tuple[str, int]] = []
        self.lose_answer_of: set[int] = set()
        self.tamper: Any = None
        self.during: Any = None

    async def call(self, method: str, *args: Any) -> Any:
        n = len(args[1]) if method == contract.PUSH_READINGS else 0
        self.calls.append((method, n))
        number = len(self.calls)
        result = await super().call(method, *args)
        if self.during is not None:
            await self.during()
        if number in self.lose_answer_of:
            raise UplinkError("connection lost before the answer arrived")
        if self.tamper is not None:
            result = self.tamper(result)
        return result


class _Rig:
    def __init__(self, server: ReceiverServer, caller: _Caller, spki: SharedPki) -> None:
        self.server, self.caller, self.spki = server, caller, spki

    async def received(self) -> list[tuple[str, int, str, str, str]]:
        return [
            (r.epoch, r.sequence, r.meter, r.record, r.value)
            async for r in self.server.storage.export(self.spki.device.application_uri)
        ]


@contextlib.asynccontextmanager
async def _rig(spki: SharedPki, tmp_path: Path) -> AsyncIterator[_Rig]:
    async with datapath_receiver(spki.rx, tmp_path) as (server, _dp):
        with open_device_key(spki.device.state_dir) as key:
            conn = await connect(uplink_settings(server.endpoint_url, spki.device, spki.rx), key)
            try:
                yield _Rig(server, _Caller(conn), spki)
            finally:
                await conn.close()


def _expected(store_rows: list[tuple[int, str, str, str]], epoch: str) -> list[Any]:
    return [(epoch, seq, m, k, v) for seq, m, k, v in store_rows]


def _all_rows(store: SqliteStore) -> list[tuple[int, str, str, str]]:
    return [
        (s.seq, s.reading.meter_id, s.reading.key, s.reading.value) for s in store.read(0, 10**9)
    ]


def test_drains_oldest_first_in_bounded_batches_exactly_once(
    spki: SharedPki, tmp_path: Path, store: SqliteStore
) -> None:
    total = _fill(store, ticks=250, meters=10)
    expected = _expected(_all_rows(store), store.epoch)

    async def scenario() -> None:
        async with _rig(spki, tmp_path) as rig:
            pusher = Pusher(store, _StoreThread(), rig.caller, batch_size=600)
            assert await pusher.drain() == total
            assert await rig.received() == expected  # in order, each once
            sizes = [n for m, n in rig.caller.calls if m == contract.PUSH_READINGS]
            assert max(sizes) == 600 and sum(sizes) == total
            assert store.stats().depth == 0
            assert pusher.stats.inserted == total and pusher.stats.duplicates == 0
            assert await pusher.drain() == 0  # nothing left, nothing sent
            assert len(rig.caller.calls) == len(sizes)

    run(scenario())


def test_a_lost_answer_deletes_nothing_and_the_resend_is_not_stored_twice(
    spki: SharedPki, tmp_path: Path, store: SqliteStore
) -> None:
    total = _fill(store, ticks=30, meters=10)
    expected = _expected(_all_rows(store), store.epoch)

    async def scenario() -> None:
        async with _rig(spki, tmp_path) as rig:
            pusher = Pusher(store, _StoreThread(), rig.caller, batch_size=100)
            rig.caller.lose_answer_of = {2}  # the receiver stores batch 2; its answer is lost
            with pytest.raises(UplinkError):
                await pusher.drain()
            # Batch 1 was acknowledged and deleted; batch 2 stays although the receiver has it.
            assert [s.seq for s in store.read(0, 1)] == [expected[100][1]]
            assert store.stats().depth == total - 100
            assert await pusher.drain() == total - 100
            # Batch 2 came back as duplicates; so did batch 3 if it was already in flight.
            assert pusher.stats.duplicates in (100, 200)
            assert await rig.received() == expected
            assert store.stats().depth == 0

    run(scenario())


def test_an_acknowledgement_short_of_the_batch_deletes_nothing(
    spki: SharedPki, tmp_path: Path, store: SqliteStore
) -> None:
    total = _fill(store, ticks=5, meters=10)

    async def scenario() -> None:
        async with _rig(spki, tmp_path) as rig:
            pusher = Pusher(store, _StoreThread(), rig.caller, batch_size=20)
            rig.caller.tamper = lambda r: [r[0] - 1, r[1], r[2]]
            with pytest.raises(AcknowledgementMismatch):
                await pusher.drain()
            assert store.stats().depth == total
            rig.caller.tamper = None
            assert await pusher.drain() == total

    run(scenario())


def test_readings_committed_while_a_backlog_drains_follow_it(
    spki: SharedPki, tmp_path: Path, store: SqliteStore
) -> None:
    backlog = _fill(store, ticks=100, meters=20)

    async def scenario() -> None:
        async with _rig(spki, tmp_path) as rig:
            store_thread = _StoreThread()
            live: list[int] = []

            async def commit_live() -> None:
                # A poll tick lands while a batch is on the wire (on the store's thread, as
                # the daemon's poller does).
                if len(live) < 5:
                    slot = len(live)
                    live.append(0)  # taken before awaiting: two answers may arrive together
                    at = T0 + timedelta(days=30, minutes=slot)
                    result = await store_thread(store.commit_tick, make_tick(3, at, start=500))
                    live[slot] = result.last_seq

            rig.caller.during = commit_live
            pusher = Pusher(store, store_thread, rig.caller, batch_size=500)
            first = await pusher.drain()
            # Ticks committed while batches were on the wire went out in the same drain; one
            # landing after its last read waits for the next round.
            assert first > backlog
            assert first + await pusher.drain() == backlog + 15
            received = await rig.received()
            assert [r[1] for r in received] == sorted(r[1] for r in received)
            assert received[-1][1] == max(live)
            assert store.stats().depth == 0

    run(scenario())


def test_columns_are_exact_and_stable_for_resends(store: SqliteStore) -> None:
    reading = make_tick(1)[0].with_flags("b", "a")
    store.commit_tick([reading])
    batch = store.pending_batch(10)
    args = push_arguments(batch.epoch, batch.items)
    assert [a.name for a in contract.PUSH_READINGS_INPUT] == [
        "Epoch",
        "Sequence",
        "Meter",
        "Record",
        "Value",
        "Unit",
        "Quantity",
        "SourceTime",
        "LoggerTime",
        "Flags",
    ]
    assert args[0] == batch.epoch and args[4] == [reading.value] and args[9] == ["a,b"]
    assert push_arguments(batch.epoch, store.pending_batch(10).items) == args
    assert args[7] == [None] and args[8] == [reading.logger_time]


# -- configuration from the cloud -----------------------------------------------------------


def _layer(version: int, meters: list[dict[str, Any]]) -> str:
    return json.dumps({"version": version, "meters": meters})


def test_configuration_is_applied_and_an_invalid_one_refused_keeping_the_last_good(
    spki: SharedPki, tmp_path: Path
) -> None:
    base = make_config(tmp_path / "state", [tcp_meter("file-meter")])
    layers = CloudLayerStore(tmp_path / "state" / "cloud-layer.json")
    uri = spki.device.application_uri

    async def scenario() -> None:
        async with _rig(spki, tmp_path) as rig:
            running: list[Config] = [base]
            follower = CloudConfigFollower(
                rig.caller, layers, lambda: base, lambda: running[-1], running.append
            )
            storage = rig.server.storage
            assert (await follower.poll()).action == "none"
            good = [tcp_meter("cloud-a", "5m"), tcp_meter("cloud-b", "15m")]
            v1 = await storage.set_config(uri, json.dumps({"meters": good}), "op")
            outcome = await follower.poll()
            assert (outcome.action, outcome.version) == ("applied", v1)
            assert [m.id for m in running[-1].meters] == ["cloud-a", "cloud-b"]
            assert running[-1].cloud_version == str(v1)
            assert (await follower.poll()).action == "unchanged"
            # Invalid against the local file (a bus it does not have): refused, last good kept.
            bad = [{"id": "x", "kind": "mbus", "bus": "nope", "primary_address": 1}]
            v2 = await storage.set_config(uri, json.dumps({"meters": bad}), "op")
            outcome = await follower.poll()
            assert (outcome.action, outcome.version) == ("refused", v2)
            assert "nope" in outcome.problem
            assert len(running) == 2 and follower.running_version == v1
            assert layers.load(base).cloud_version == str(v1)  # what a restart would run
            calls = len(rig.caller.calls)
            assert (await follower.poll()).action == "refused"  # not re-validated, not applied
            assert len(rig.caller.calls) == calls + 1 and len(running) == 2
            # Security settings cannot come from the cloud (the receiver refuses to store
            # them, and the logger would refuse them too).
            with pytest.raises(ValueError):
                await storage.set_config(uri, json.dumps({"uplink": {"endpoint": "x"}}), "op")
            # The operator fixes it: applied at the next poll.
            v3 = await storage.set_config(uri, json.dumps({"meters": good[:1]}), "op")
            assert (await follower.poll()).action == "applied"
            assert follower.running_version == v3 and follower.problem == ""

    run(scenario())

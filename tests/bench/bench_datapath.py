"""Data path throughput: drain a large buffer into the receiver's SQLite over SignAndEncrypt.

Run: ``.venv/bin/python -m tests.bench.bench_datapath [--readings N] [--writes N]``

Measured side by side in one run on 127.0.0.1, each server in its own process (as in the
field: the receiver is another machine; here it is another core):

1. **ours**: N readings (default 1,000,000) committed in the logger's SQLite buffer are drained
   by the daemon's arrangement - :class:`~logger.uplink.pusher.Pusher` on an event loop, store
   calls on a store thread, the :class:`~logger.uplink.connection.UplinkThread` (file key) on
   its own thread - into our receiver (gate, data path, address space, SQLite storage) over
   SignAndEncrypt with the strongest policy both offer (Aes256_Sha256_RsaPss). Durable at both
   ends: the receiver answers after its commit (WAL, synchronous=FULL), the logger deletes
   acknowledged readings in its own FULL-synchronous transaction. Checked afterwards: the
   receiver holds exactly N readings, the logger's buffer is empty.
2. **bare**: the same batches (same columns, same size) sent by a stock asyncua client to a
   stock asyncua server over SecurityMode None whose method stores nothing - the floor of what
   OPC UA encoding in Python costs; the ratio is the price of security and durability. That
   harness lives in this benchmark only.
3. **one Write per reading**: what typical gateways do - a stock client writes each value to a
   variable of a stock server over SignAndEncrypt Basic256Sha256, one request per reading, on a
   sample (default 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from logger import contract
from logger.readings import Reading, ValueKind
from logger.store.api import BufferLimits
from logger.store.sqlite import SqliteStore

PASSPHRASE_ENV = "MBUS_RECEIVER_PASSPHRASE"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
METERS = 100
RECORDS = 10


# -- the servers (child processes) ------------------------------------------------------------


async def _serve_receiver(rx_dir: str, db: str) -> None:
    from receiver.datapath import install_datapath
    from receiver.security import ReceiverDir
    from receiver.server import ReceiverServer
    from receiver.storage import open_storage

    storage = await open_storage(f"sqlite:///{db}")
    rdir = ReceiverDir.load(Path(rx_dir), os.environ[PASSPHRASE_ENV].encode())
    server = ReceiverServer(rdir, storage, "opc.tcp://127.0.0.1:0")
    datapath = install_datapath(server)
    await server.start()
    await datapath.start()
    print(server.endpoint_url, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()
    await storage.close()


async def _serve_bare(rx_dir: str | None) -> None:
    """A stock asyncua server: SecurityMode None with a Push method that stores nothing, or
    (``rx_dir``) SignAndEncrypt Basic256Sha256 with one writable String variable."""
    from asyncua import Server, ua

    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0")
    idx = await server.register_namespace("urn:bench")
    obj = await server.nodes.objects.add_object(idx, "Bench")
    if rx_dir is None:
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])

        async def push(parent: Any, epoch: Any, seqs: Any, *columns: Any) -> list[Any]:
            values = seqs.Value
            return [
                ua.Variant(values[-1], ua.VariantType.UInt64),
                ua.Variant(len(values), ua.VariantType.UInt32),
                ua.Variant(0, ua.VariantType.UInt32),
            ]

        await obj.add_method(idx, "Push", push)
    else:
        from receiver.security import ReceiverDir

        rdir = ReceiverDir.load(Path(rx_dir), os.environ[PASSPHRASE_ENV].encode())
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        server.iserver.certificate = rdir.cert
        server.iserver.private_key = rdir.key
        var = await obj.add_variable(idx, "Value", "", ua.VariantType.String)
        await var.set_writable()
    await server.start()
    assert server.bserver is not None
    print(f"opc.tcp://127.0.0.1:{server.bserver.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


class Child:
    """A server in its own process; its first stdout line is its endpoint URL."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.bench_datapath", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("opc.tcp://"):
            raise RuntimeError(f"server {args[0]} did not start")

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


# -- the logger's buffer ------------------------------------------------------------------------


def fill(store: SqliteStore, n: int) -> None:
    """``n`` readings in ticks of METERS x RECORDS at a 15-minute cadence (untimed)."""
    per_tick = METERS * RECORDS
    for tick in range(n // per_tick):
        at = T0 + dt.timedelta(minutes=15 * tick)
        readings = [
            Reading(
                meter_id=f"meter-{m:03d}",
                key=f"{r}:inst:energy",
                quantity="energy",
                unit="Wh",
                value=f"{tick * 10 + m}.{r}5",
                kind=ValueKind.NUMBER,
                logger_time=at,
                meter_time=at.replace(tzinfo=None, second=0),
            )
            for m in range(METERS)
            for r in range(RECORDS)
        ]
        store.commit_tick(readings, now=at)


# -- 1. ours ------------------------------------------------------------------------------------


def run_ours(store: SqliteStore, device: Any, rx: Any, url: str, in_flight: int = 2) -> float:
    from logger.uplink.connection import UplinkSettings, UplinkThread
    from logger.uplink.pusher import Pusher, UplinkThreadCaller

    settings = UplinkSettings(
        endpoint=url, state_dir=device.state_dir, tcti=None, server_uri=rx.application_uri
    )
    thread = UplinkThread(settings)
    thread.start()
    executor = ThreadPoolExecutor(1, thread_name_prefix="store")
    try:
        connection = thread.wait_connected(30)
        print(f"  channel: {connection.info.policy} SignAndEncrypt")

        async def drain() -> tuple[int, float]:
            loop = asyncio.get_running_loop()

            async def in_store(fn: Any, *args: Any) -> Any:
                return await loop.run_in_executor(executor, fn, *args)

            pusher = Pusher(
                store, in_store, UplinkThreadCaller(thread), contract.MAX_BATCH, in_flight
            )
            started = time.perf_counter()
            n = await pusher.drain()
            return n, time.perf_counter() - started

        n, seconds = asyncio.run(drain())
    finally:
        thread.stop()
        executor.shutdown()
    print(f"  drained {n:,} readings in {seconds:.2f} s")
    return n / seconds


# -- 2. bare, SecurityMode None, no storage ----------------------------------------------------


def run_bare(store: SqliteStore, url: str) -> float:
    from asyncua import Client, ua

    from logger.uplink.pusher import push_arguments

    types = [(getattr(ua.VariantType, a.type), a.array) for a in contract.PUSH_READINGS_INPUT]
    null = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)

    async def send() -> tuple[int, float]:
        client = Client(url, timeout=60)
        await client.connect()
        try:
            idx = await client.get_namespace_index("urn:bench")
            obj = await client.nodes.objects.get_child(f"{idx}:Bench")
            method = await obj.get_child(f"{idx}:Push")
            after, total, seconds = 0, 0, 0.0
            while True:
                items = store.read(after, contract.MAX_BATCH)
                if not items:
                    break
                args = push_arguments(store.epoch, items)
                started = time.perf_counter()
                variants = [
                    ua.Variant(
                        [null if v is None else v for v in value]
                        if vt is ua.VariantType.DateTime
                        else value,
                        vt,
                        is_array=arr,
                    )
                    for value, (vt, arr) in zip(args, types, strict=True)
                ]
                result = await obj.call_method(method.nodeid, *variants)
                seconds += time.perf_counter() - started
                assert result[0] == items[-1].seq
                after = items[-1].seq
                total += len(items)
            return total, seconds
        finally:
            await client.disconnect()

    n, seconds = asyncio.run(send())
    print(f"  sent {n:,} readings in {seconds:.2f} s (call time only)")
    return n / seconds


# -- 3. one Write per reading ---------------------------------------------------------------


def run_writes(store: SqliteStore, device: Any, rx: Any, url: str, n: int) -> float:
    from asyncua import Client, ua
    from asyncua.crypto import security_policies as sp

    from logger.tpm import open_device_key

    values = [s.reading.value for s in store.read(0, n)]

    async def write() -> float:
        with open_device_key(device.state_dir) as key:
            client = Client(url, timeout=30)
            client.application_uri = device.application_uri
            policy = sp.SecurityPolicyBasic256Sha256(
                rx.cert, device.cert, key.private_key, ua.MessageSecurityMode.SignAndEncrypt
            )
            client.security_policy = policy  # type: ignore[assignment]
            client.uaclient.set_security(policy)
            await client.connect()
            try:
                idx = await client.get_namespace_index("urn:bench")
                node = await client.nodes.objects.get_child([f"{idx}:Bench", f"{idx}:Value"])
                started = time.perf_counter()
                for value in values:
                    await node.write_value(ua.Variant(value, ua.VariantType.String))
                return time.perf_counter() - started
            finally:
                await client.disconnect()

    seconds = asyncio.run(write())
    print(f"  wrote {len(values):,} readings one by one in {seconds:.2f} s")
    return len(values) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--writes", type=int, default=10_000)
    parser.add_argument("--in-flight", type=int, default=2, help="pusher calls in flight")
    parser.add_argument("--serve-receiver", nargs=2, metavar=("DIR", "DB"), help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare", nargs="?", const="", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_receiver:
        profile = os.environ.get("BENCH_DATAPATH_PROFILE")
        if profile:  # where the receiver's time goes: python -m pstats FILE
            import cProfile

            cProfile.runctx(
                "asyncio.run(_serve_receiver(*args.serve_receiver))", globals(), locals(), profile
            )
            return
        asyncio.run(_serve_receiver(*args.serve_receiver))
        return
    if args.serve_bare is not None:
        asyncio.run(_serve_bare(args.serve_bare or None))
        return

    from tests.support.pki import TestPki

    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        base = Path(tmp)
        pki = TestPki.create(base / "pki", orgs=("acme",))
        rx = pki.receiver("acme")
        device = pki.device("acme")
        env = {PASSPHRASE_ENV: rx.passphrase.decode()}
        store = SqliteStore(
            base / "buffer.db", BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0)
        )
        print(f"filling the logger's buffer with {args.readings:,} readings ...", flush=True)
        fill(store, args.readings)
        total = store.stats().depth

        print("bare asyncua client -> bare asyncua server, SecurityMode None, no storage:")
        bare = Child("--serve-bare", env=env)
        try:
            bare_rate = run_bare(store, bare.url)
        finally:
            bare.stop()

        print("one Write per reading, stock client and server, Basic256Sha256 SignAndEncrypt:")
        writes = Child("--serve-bare", str(rx.dir), env=env)
        try:
            write_rate = run_writes(store, device, rx, writes.url, args.writes)
        finally:
            writes.stop()

        print("ours: buffer -> pusher -> uplink thread -> receiver -> SQLite, durable both ends:")
        db = base / "receiver.db"
        receiver = Child("--serve-receiver", str(rx.dir), str(db), env=env)
        try:
            ours = run_ours(store, device, rx, receiver.url, args.in_flight)
        finally:
            receiver.stop()
        left = store.stats().depth
        store.close()
        with sqlite3.connect(db) as check:
            stored = check.execute("SELECT count(*) FROM readings").fetchone()[0]
        pki.close()
        print()
        print(f"{'':44} {'readings/s':>12} {'ours / this':>12}")
        print(f"{'ours (SignAndEncrypt, durable both ends)':44} {ours:12,.0f} {1.0:12.2f}")
        print(f"{'bare asyncua, None, no storage':44} {bare_rate:12,.0f} {ours / bare_rate:12.2f}")
        print(
            f"{'one Write per reading (Basic256Sha256)':44} {write_rate:12,.0f} "
            f"{ours / write_rate:12.1f}"
        )
        print(f"receiver holds {stored:,} of {total:,} readings; logger buffer left: {left}")
        target = "met" if ours >= 50_000 else "NOT met"
        print(f"target >= 50,000 readings/s durable end to end: {target}")
        if stored != total or left != 0:
            raise SystemExit("exactly-once check FAILED")


if __name__ == "__main__":
    main()

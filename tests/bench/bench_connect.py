"""Secure-channel connection cost and reconnect behaviour under a flapping network.

Run: ``.venv/bin/python -m tests.bench.bench_connect [--connects N] [--flap-seconds S]``

Measured side by side in one run against our receiver on 127.0.0.1 (a throw-away PKI):

* connect time (GetEndpoints, server-certificate validation, OpenSecureChannel, CreateSession,
  ActivateSession) with the device key in a software TPM (swtpm) and with an encrypted file
  key: medians, and the ratio TPM / file;
* private-key operations per connection (the target is at most 4);
* reconnects under a flapping network: a TCP proxy we start between logger and receiver that
  cuts every connection after a while and refuses new ones for a while, in turns. The uplink
  supervisor (exponential backoff with jitter) runs through it; we count connection attempts,
  successful connections and TPM operations per minute - against what a client reconnecting
  once a second (no backoff) would spend on the TPM in the same minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import tempfile
import time
from pathlib import Path

from logger.tpm import open_device_key
from logger.uplink.connection import Uplink, UplinkSettings, connect
from logger.uplink.errors import UplinkError
from tests.support.pki import DeviceDir, TestPki
from tests.support.secure_channel import running_receiver
from tests.support.swtpm import swtpm

CUT_AFTER_S = 2.0


async def _connect_times(
    url: str, device: DeviceDir, uri: str, n: int
) -> tuple[list[float], list[int]]:
    times: list[float] = []
    ops: list[int] = []
    settings = UplinkSettings(
        endpoint=url, state_dir=device.state_dir, tcti=device.tcti, server_uri=uri
    )
    with open_device_key(device.state_dir, device.tcti) as key:
        for _ in range(n):
            started = time.perf_counter()
            conn = await connect(settings, key)
            times.append(time.perf_counter() - started)
            ops.append(conn.key_operations)
            await conn.close()
    return times, ops


class FlappingProxy:
    """TCP proxy: up for ``up_s`` (connections cut when it goes down), down for ``down_s``;
    while up, every connection is also cut ``cut_after_s`` after it was accepted."""

    def __init__(
        self, target_port: int, up_s: float, down_s: float, cut_after_s: float = 1e9
    ) -> None:
        self.cut_after_s = cut_after_s
        self.target_port = target_port
        self.up_s = up_s
        self.down_s = down_s
        self.up = True
        self.accepted = 0
        self.refused = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._task = asyncio.create_task(self._flap())
        return int(self._server.sockets[0].getsockname()[1])

    async def _flap(self) -> None:
        while True:
            await asyncio.sleep(self.up_s)
            self.up = False
            for writer in list(self._writers):
                writer.transport.abort()
            await asyncio.sleep(self.down_s)
            self.up = True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.up:
            self.refused += 1
            writer.transport.abort()
            return
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        loop = asyncio.get_running_loop()
        loop.call_later(self.cut_after_s, writer.transport.abort)
        loop.call_later(self.cut_after_s, up_writer.transport.abort)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()


async def _flapping(url_port: int, device: DeviceDir, uri: str, seconds: float) -> dict[str, float]:
    proxy = FlappingProxy(url_port, up_s=3.0, down_s=4.0, cut_after_s=CUT_AFTER_S)
    port = await proxy.start()
    settings = UplinkSettings(
        endpoint=f"opc.tcp://127.0.0.1:{port}",
        state_dir=device.state_dir,
        tcti=device.tcti,
        server_uri=uri,
        connect_timeout_s=5.0,
        request_timeout_s=2.0,
        backoff_initial_s=1.0,
        backoff_max_s=30.0,
    )
    key = open_device_key(device.state_dir, device.tcti)
    uplink = Uplink(settings, key_opener=lambda: key, rng=random.Random(1))
    task = asyncio.create_task(uplink.run())
    await asyncio.sleep(seconds)
    uplink.stop()
    await task
    ops = sum(uplink.key_operations_per_connection)
    await proxy.stop()
    minutes = seconds / 60.0
    return {
        "attempts_per_min": uplink.attempts / minutes,
        "connections_per_min": uplink.connections / minutes,
        "tpm_ops_per_min": ops / minutes,
        "proxy_refused": proxy.refused,
        "proxy_accepted": proxy.accepted,
    }


async def _naive_flapping(
    url_port: int, device: DeviceDir, uri: str, seconds: float
) -> dict[str, float]:
    """The comparison: reconnect one second after any failure or loss, no backoff."""
    proxy = FlappingProxy(url_port, up_s=3.0, down_s=4.0, cut_after_s=CUT_AFTER_S)
    port = await proxy.start()
    settings = UplinkSettings(
        endpoint=f"opc.tcp://127.0.0.1:{port}",
        state_dir=device.state_dir,
        tcti=device.tcti,
        server_uri=uri,
        connect_timeout_s=5.0,
        request_timeout_s=2.0,
    )
    attempts = connections = 0
    deadline = time.monotonic() + seconds
    with open_device_key(device.state_dir, device.tcti) as key:
        while time.monotonic() < deadline:
            attempts += 1
            try:
                conn = await connect(settings, key)
            except UplinkError:
                await asyncio.sleep(1.0)
                continue
            connections += 1
            while conn.is_connected() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await conn.close()
            await asyncio.sleep(1.0)
        ops = key.operations
    await proxy.stop()
    minutes = seconds / 60.0
    return {
        "attempts_per_min": attempts / minutes,
        "connections_per_min": connections / minutes,
        "tpm_ops_per_min": ops / minutes,
    }


async def _bench(base: Path, n: int, flap_s: float) -> None:
    pki = TestPki.create(base)
    try:
        rx = pki.receiver("acme")
        file_device = pki.device("acme")
        with swtpm() as tcti:
            tpm_device = pki.device("acme", tcti=tcti)
            async with running_receiver(rx, base) as srv:
                url = srv.endpoint_url
                port = int(url.rsplit(":", 1)[1])
                # Interleave the two kinds so load on the shared machine hits both alike.
                file_t: list[float] = []
                tpm_t: list[float] = []
                file_ops: list[int] = []
                tpm_ops: list[int] = []
                for _ in range(max(1, n // 5)):
                    t, o = await _connect_times(url, file_device, rx.application_uri, 5)
                    file_t += t
                    file_ops += o
                    t, o = await _connect_times(url, tpm_device, rx.application_uri, 5)
                    tpm_t += t
                    tpm_ops += o
                f_med = statistics.median(file_t) * 1000
                t_med = statistics.median(tpm_t) * 1000
                print(
                    f"connect, file key : median {f_med:7.1f} ms over {len(file_t)} "
                    f"(p90 {statistics.quantiles(file_t, n=10)[-1] * 1000:.1f} ms), "
                    f"key operations {max(file_ops)} per connection"
                )
                print(
                    f"connect, swtpm key: median {t_med:7.1f} ms over {len(tpm_t)} "
                    f"(p90 {statistics.quantiles(tpm_t, n=10)[-1] * 1000:.1f} ms), "
                    f"TPM operations {max(tpm_ops)} per connection (target <= 4)"
                )
                print(f"ratio swtpm / file: {t_med / f_med:.2f}x")
                flap = await _flapping(port, tpm_device, rx.application_uri, flap_s)
                naive = await _naive_flapping(port, tpm_device, rx.application_uri, flap_s)
                print(
                    f"flapping network ({flap_s:.0f} s, up 3 s / down 4 s, sessions cut after "
                    f"{CUT_AFTER_S:.0f} s): "
                    f"{flap['attempts_per_min']:.1f} attempts/min, "
                    f"{flap['connections_per_min']:.1f} connections/min, "
                    f"{flap['tpm_ops_per_min']:.1f} TPM ops/min "
                    f"(proxy accepted {flap['proxy_accepted']}, refused {flap['proxy_refused']})"
                )
                print(
                    "same network, reconnecting 1 s after any failure (no backoff): "
                    f"{naive['attempts_per_min']:.1f} attempts/min, "
                    f"{naive['connections_per_min']:.1f} connections/min, "
                    f"{naive['tpm_ops_per_min']:.1f} TPM ops/min"
                )
                ratio = flap["tpm_ops_per_min"] / max(naive["tpm_ops_per_min"], 1e-9)
                attempts = flap["attempts_per_min"] / max(naive["attempts_per_min"], 1e-9)
                print(
                    f"uplink with backoff / no backoff: TPM ops {ratio:.2f}x, "
                    f"attempts {attempts:.2f}x"
                )
    finally:
        pki.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connects", type=int, default=30, help="connections per key kind")
    parser.add_argument("--flap-seconds", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="bench-connect-") as tmp:
        asyncio.run(_bench(Path(tmp), args.connects, args.flap_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

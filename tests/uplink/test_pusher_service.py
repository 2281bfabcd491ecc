"""The daemon's uplink service end to end in one process: the real daemon (fake meters), the
uplink thread with a file key, and our receiver with the data path over SignAndEncrypt."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

from logger.app import Daemon, SdNotify, load_config
from logger.uplink.service import UplinkService
from tests.support.daemon import FakeMeters, config_toml, tcp_meter
from tests.support.datapath import datapath_receiver
from tests.support.receiver_storage import run
from tests.support.secure_channel import SharedPki


async def _until(predicate: Any, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


def test_the_daemon_pushes_reports_and_follows_its_cloud_configuration(
    spki: SharedPki, tmp_path: Path
) -> None:
    device = spki.pki.device("acme")
    uri = device.application_uri

    async def scenario() -> None:
        async with datapath_receiver(spki.rx, tmp_path) as (srv, dp):
            storage = srv.storage
            layer = {"meters": [tcp_meter("cloud-a", "1s"), tcp_meter("cloud-b", "1s")]}
            await storage.set_config(uri, json.dumps(layer), "op@test")
            uplink = (
                "[uplink]\n"
                f'endpoint = "{srv.endpoint_url}"\n'
                f'server_application_uri = "{spki.rx.application_uri}"\n'
                'push_interval = "1s"\n'
                "batch_size = 7\n"
            )
            path = tmp_path / "logger.toml"
            path.write_text(
                config_toml(device.state_dir, [tcp_meter("file-meter", "1s")], extra=uplink)
            )
            daemon = Daemon(
                path, load_config(path), reader_factory=FakeMeters(), notify=SdNotify("")
            )
            task = asyncio.create_task(daemon.run())
            try:

                async def running_cloud_layer() -> bool:
                    poller = daemon.poller
                    return poller is not None and poller.config.cloud_version == "1"

                await _until(running_cloud_layer)

                async def pushed_cloud_meters() -> bool:
                    got = {v.meter for v in await storage.latest_values(uri)}
                    return {"cloud-a", "cloud-b"} <= got

                await _until(pushed_cloud_meters)

                async def reported() -> bool:
                    d = await storage.device(uri)
                    return d is not None and d.status is not None and bool(d.location)

                await _until(reported)
            finally:
                daemon.stop()
                await asyncio.wait_for(task, 30)
            service = daemon.services[0]
            assert isinstance(service, UplinkService)
            assert service.pusher is not None and service.pusher.stats.inserted > 0
            # Every reading the logger committed is at the receiver or still in its buffer,
            # exactly once (the daemon stopped, so the view is stable).
            from logger.store.sqlite import SqliteStore

            store = SqliteStore(device.state_dir / "buffer.db")
            try:
                stats = store.stats()
                buffered = [s.seq for s in store.read(0, 10**6)]
            finally:
                store.close()
            received = [r.sequence async for r in storage.export(uri) if r.epoch == stats.epoch]
            assert not [s for s, n in Counter(received + buffered).items() if n > 1]
            assert sorted(received + buffered) == list(range(1, stats.next_seq))
            assert received == sorted(received)
            d = await storage.device(uri)
            assert d is not None and d.status is not None
            assert d.serial == device.serial and d.location == "test bench"
            assert d.status.config_version == 1 and d.status.cert_days_left > 300
            assert {m.meter for m in d.status.meters} <= {"cloud-a", "cloud-b"}
            status = json.loads((device.state_dir / "status.json").read_text())
            assert status["services"]["uplink"]["config"]["running"] == 1
            await dp.stop()

    run(scenario(), timeout=90)

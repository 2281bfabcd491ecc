"""Helpers for data-path tests: our receiver with the data path installed, pushes as columns.

async with datapath_receiver(rx, tmp_path) as (server, datapath):
    ...  # server.endpoint_url, server.storage, datapath.address_space
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from logger import contract
from receiver.datapath import DataPath, install_datapath
from receiver.security import ReceiverDir
from receiver.server import ReceiverServer
from receiver.storage import Storage, open_storage
from tests.support.pki import ReceiverDir as ReceiverFiles


@contextlib.asynccontextmanager
async def datapath_receiver(
    rx: ReceiverFiles,
    db_dir: Path,
    storage: Storage | None = None,
    listen: str = "opc.tcp://127.0.0.1:0",
) -> AsyncIterator[tuple[ReceiverServer, DataPath]]:
    """Our hardened receiver on 127.0.0.1 with the data path and a SQLite storage."""
    own = storage is None
    if storage is None:
        storage = await open_storage(f"sqlite:///{db_dir / 'receiver.db'}")
    server = ReceiverServer(ReceiverDir.load(rx.dir, rx.passphrase), storage, listen)
    datapath = install_datapath(server)
    await server.start()
    try:
        await datapath.start()
        yield server, datapath
    finally:
        await datapath.stop()
        await server.stop()
        if own:
            await storage.close()


def push_args(columns: dict[str, list[object]], epoch: str = "epoch-1") -> list[object]:
    """A column batch (``tests.support.receiver_storage.batch``) as PushReadings arguments."""
    return [epoch] + [columns[a.name] for a in contract.PUSH_READINGS_INPUT if a.array]

"""The receiver's transport limits: big enough for the largest request the contract allows,
and a message over them refused before it is decoded, its connection alone closed."""

from __future__ import annotations

import asyncio
import datetime as dt
import struct
from pathlib import Path
from urllib.parse import urlparse

import pytest
from asyncua import ua
from asyncua.ua.ua_binary import struct_to_binary

from logger import contract
from logger.tpm import open_device_key
from logger.uplink.connection import connect
from logger.uplink.errors import UplinkError
from receiver.security import ReceiverDir
from receiver.server import MAX_MESSAGE_SIZE, ReceiverServer, push_readings_max_bytes
from receiver.storage import open_storage
from tests.support.pki import TestPki
from tests.support.receiver_storage import batch, run
from tests.support.secure_channel import uplink_settings

SMALL_LIMIT = 256 * 1024


def _push_args(columns: dict[str, list[object]], epoch: str) -> list[object]:
    return [epoch] + [columns[a.name] for a in contract.PUSH_READINGS_INPUT if a.array]


def test_the_limit_holds_the_largest_push_the_contract_allows() -> None:
    """Encode a real CallRequest of MAX_BATCH readings, every string at its bound in
    4-byte characters: it fits (with the request header), and the bound is not loose."""
    n = contract.MAX_BATCH
    wide = "\U0001f525"  # 4 bytes in UTF-8
    short, long_ = wide * contract.MAX_STRING, wide * contract.MAX_VALUE_STRING
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    columns: dict[str, list[object]] = {
        "Sequence": list(range(1, n + 1)),
        "Meter": [short] * n,
        "Record": [short] * n,
        "Value": [long_] * n,
        "Unit": [short] * n,
        "Quantity": [short] * n,
        "SourceTime": [when] * n,
        "LoggerTime": [when] * n,
        "Flags": [short] * n,
    }
    assert contract.check_push_columns(columns) == n
    variants = [ua.Variant("e" * contract.MAX_STRING, ua.VariantType.String)] + [
        ua.Variant(columns[a.name], getattr(ua.VariantType, a.type), is_array=True)
        for a in contract.PUSH_READINGS_INPUT
        if a.array
    ]
    method = ua.CallMethodRequest()
    method.ObjectId = ua.NodeId(ua.String(contract.RECEIVER_OBJECT), ua.Int16(2))
    method.MethodId = ua.NodeId(
        ua.String(f"{contract.RECEIVER_OBJECT}.{contract.PUSH_READINGS}"), ua.Int16(2)
    )
    method.InputArguments = variants
    request = ua.CallRequest()
    request.Parameters.MethodsToCall = [method]
    size = len(struct_to_binary(request))
    assert size <= push_readings_max_bytes() <= MAX_MESSAGE_SIZE
    assert push_readings_max_bytes() - size < 128 * 1024, "the bound is looser than it says"


def test_an_oversized_message_closes_its_connection_only(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    try:
        rx = pki.receiver("acme")
        big, other = pki.device("acme"), pki.device("acme")

        async def scenario() -> None:
            storage = await open_storage(f"sqlite:///{tmp_path / 'receiver.db'}")
            srv = ReceiverServer(
                ReceiverDir.load(rx.dir, rx.passphrase),
                storage,
                "opc.tcp://127.0.0.1:0",
                max_message_size=SMALL_LIMIT,
            )
            await srv.start()
            try:
                with (
                    open_device_key(big.state_dir) as big_key,
                    open_device_key(other.state_dir) as other_key,
                ):
                    big_conn = await connect(uplink_settings(srv.endpoint_url, big, rx), big_key)
                    other_conn = await connect(
                        uplink_settings(srv.endpoint_url, other, rx), other_key
                    )
                    try:
                        # Valid for the contract (1000-character values), too large for the
                        # transport: ~300 KiB in one request.
                        oversized = batch(1, 300, value="9" * 1000)
                        with pytest.raises(UplinkError):
                            await big_conn.call(
                                contract.PUSH_READINGS, *_push_args(oversized, "big")
                            )
                        assert not big_conn.is_connected()
                        # The other logger's session is untouched, and a request just under
                        # the limit goes through on it.
                        assert other_conn.is_connected()
                        under = batch(1, 200, value="9" * 1000)
                        ack = await other_conn.call(
                            contract.PUSH_READINGS, *_push_args(under, "other")
                        )
                        assert ack == [200, 200, 0]
                    finally:
                        await big_conn.close()
                        await other_conn.close()
                    # Nothing of the refused message was stored; the logger comes back and
                    # pushes within the limit.
                    assert await storage.acknowledged(big.application_uri, "big") is None
                    again = await connect(uplink_settings(srv.endpoint_url, big, rx), big_key)
                    try:
                        ack = await again.call(
                            contract.PUSH_READINGS, *_push_args(batch(1, 10), "big")
                        )
                        assert ack == [10, 10, 0]
                    finally:
                        await again.close()
            finally:
                await srv.stop()
                await storage.close()

        run(scenario())
    finally:
        pki.close()


def test_a_chunk_announcing_more_than_the_buffer_is_refused_before_it_is_buffered(
    tmp_path: Path,
) -> None:
    """asyncua alone would keep reading a chunk that announces 2 GiB until all of it came (or
    memory ran out), before any Hello. The receiver answers as soon as the header is in."""
    pki = TestPki.create(tmp_path / "pki")
    try:
        rx = pki.receiver("acme")
        device = pki.device("acme")

        async def scenario() -> None:
            storage = await open_storage(f"sqlite:///{tmp_path / 'receiver.db'}")
            srv = ReceiverServer(
                ReceiverDir.load(rx.dir, rx.passphrase), storage, "opc.tcp://127.0.0.1:0"
            )
            await srv.start()
            try:
                with open_device_key(device.state_dir) as key:
                    conn = await connect(uplink_settings(srv.endpoint_url, device, rx), key)
                    try:
                        url = urlparse(srv.endpoint_url)
                        reader, writer = await asyncio.open_connection(url.hostname, url.port)
                        writer.write(b"HELF" + struct.pack("<I", 2**31) + bytes(1024))
                        await writer.drain()
                        answer = await asyncio.wait_for(reader.read(), 10.0)  # until EOF
                        writer.close()
                        assert answer[:4] == b"ERRF", answer[:16]
                        (code,) = struct.unpack_from("<I", answer, 8)
                        assert code == ua.StatusCodes.BadTcpMessageTooLarge
                        # The logger's session is untouched.
                        ack = await conn.call(
                            contract.PUSH_READINGS, *_push_args(batch(1, 10), "e")
                        )
                        assert ack == [10, 10, 0]
                    finally:
                        await conn.close()
            finally:
                await srv.stop()
                await storage.close()

        run(scenario())
    finally:
        pki.close()

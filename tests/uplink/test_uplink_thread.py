"""The connection supervisor: its own thread, work submitted from others, reconnect, backoff."""

from __future__ import annotations

import logging
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from logger.tpm.state import ski_name
from logger.uplink.connection import Connection, UplinkThread, backoff_delay
from logger.uplink.errors import NetworkDown, TrustStale
from tests.support.pki import DeviceDir
from tests.support.secure_channel import ReceiverThread, SharedPki, stale_crl, uplink_settings


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    delays = [[backoff_delay(n, 1.0, 60.0, rng) for _ in range(200)] for n in range(10)]
    for n, sample in enumerate(delays):
        ceiling = min(60.0, 2.0**n)
        assert all(0.5 <= d <= max(ceiling, 0.5) for d in sample)
    # Jitter: attempts of a fleet do not line up.
    assert len({round(d, 3) for d in delays[5]}) > 150
    assert max(delays[9]) <= 60.0


def _wait(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_work_is_submitted_from_another_thread_and_reconnects(
    spki: SharedPki, tmp_path: Path
) -> None:
    port = _free_port()
    rx_thread = ReceiverThread(spki.rx, tmp_path)
    rx_thread.listen = f"opc.tcp://127.0.0.1:{port}"
    url = rx_thread.start()
    settings = uplink_settings(url, spki.device, spki.rx, backoff_initial_s=0.05, backoff_max_s=0.5)
    uplink = UplinkThread(settings)
    uplink.start()
    try:
        uplink.wait_connected(20)
        assert uplink.uplink.thread_ident != threading.get_ident()

        async def trust(conn: Connection) -> tuple[list[bytes], list[bytes]]:
            return await conn.get_trust_list()

        certs, crls = uplink.submit(trust).result(10)
        assert len(certs) == 2 and len(crls) == 2
        # The receiver goes away: work fails fast with a classified error, then comes back.
        rx_thread.stop()
        _wait(lambda: uplink.status()["state"] != "connected (Aes256_Sha256_RsaPss)")
        with pytest.raises(NetworkDown):
            uplink.submit(trust).result(10)
        rx_thread = ReceiverThread(spki.rx, tmp_path)
        rx_thread.listen = f"opc.tcp://127.0.0.1:{port}"
        rx_thread.start()
        uplink.wait_connected(20)
        assert uplink.submit(trust).result(10)[0] == certs
        status = uplink.status()
        assert status["connections"] == 2
        assert all(ops <= 4 for ops in status["key_operations_per_connection"])
    finally:
        uplink.stop()
        rx_thread.stop()


def test_failures_are_logged_once_per_state_change(
    spki: SharedPki, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    settings = uplink_settings(
        f"opc.tcp://127.0.0.1:{port}",
        spki.device,
        spki.rx,
        backoff_initial_s=0.02,
        backoff_max_s=0.05,
    )
    uplink = UplinkThread(settings, rng=random.Random(1))
    with caplog.at_level(logging.INFO, logger="logger.uplink.connection"):
        uplink.start()
        try:
            _wait(lambda: uplink.status()["attempts"] >= 6)
        finally:
            uplink.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "network_down" in errors[0].getMessage() or "refused" in errors[0].getMessage()


def test_stale_trust_refuses_data_work_until_refreshed(spki: SharedPki, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(spki.device.state_dir, state)
    d = spki.device
    device = DeviceDir(state, d.org, d.serial, d.application_uri, d.cert, d.tcti)
    crl_path = state / "crl" / f"{ski_name(spki.pki.ca_cert('acme'))}.pem"
    crl_path.write_bytes(stale_crl(spki.pki, "acme").public_bytes(serialization.Encoding.PEM))
    with ReceiverThread(spki.rx, tmp_path) as rx_thread:
        assert rx_thread.server is not None
        settings = uplink_settings(
            rx_thread.server.endpoint_url, device, spki.rx, backoff_initial_s=0.05
        )
        uplink = UplinkThread(settings)

        async def config(conn: Connection) -> object:
            return await conn.call("GetConfiguration", 0)

        uplink.start()
        try:
            # Before the refresh: data work is refused (TrustStale) or not yet connected.
            try:
                uplink.submit(config).result(10)
            except TrustStale:
                pass
            except Exception as exc:
                assert "connected" in str(exc) or isinstance(exc, TrustStale)
            uplink.wait_connected(20)  # only after fresh CRLs came in through GetTrustList
            assert uplink.submit(config).result(10) == [0, ""]
            assert uplink.uplink.last_trust_update is not None
            assert uplink.uplink.last_trust_update.new_crls
        finally:
            uplink.stop()


def test_clock_jumps_are_detected(spki: SharedPki, caplog: pytest.LogCaptureFixture) -> None:
    import datetime as dt

    from logger.uplink.connection import Uplink

    uplink = Uplink(uplink_settings("opc.tcp://127.0.0.1:1", spki.device, spki.rx))
    now = dt.datetime.now(dt.UTC)
    mono = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="logger.uplink.connection"):
        uplink._check_clock(now - dt.timedelta(seconds=1), mono - 1.0, now)
        assert uplink.clock_jumps == 0
        uplink._check_clock(now - dt.timedelta(hours=2), mono - 60.0, now)
    assert uplink.clock_jumps == 1
    assert "jumped" in caplog.text


def test_crls_going_stale_while_connected_stop_data_work(spki: SharedPki, tmp_path: Path) -> None:
    state = tmp_path / "state"
    shutil.copytree(spki.device.state_dir, state)
    d = spki.device
    device = DeviceDir(state, d.org, d.serial, d.application_uri, d.cert, d.tcti)
    with ReceiverThread(spki.rx, tmp_path) as rx_thread:
        assert rx_thread.server is not None
        uplink = UplinkThread(uplink_settings(rx_thread.server.endpoint_url, device, spki.rx))
        uplink.start()
        try:
            uplink.wait_connected(20)

            async def config(conn: Connection) -> object:
                return await conn.call("GetConfiguration", 0)

            assert uplink.submit(config).result(10) == [0, ""]
            crl_path = state / "crl" / f"{ski_name(spki.pki.ca_cert('acme'))}.pem"
            crl_path.write_bytes(
                stale_crl(spki.pki, "acme").public_bytes(serialization.Encoding.PEM)
            )

            async def recheck(conn: Connection) -> None:
                uplink.uplink._note_trust_validity()

            uplink.submit(recheck).result(10)
            with pytest.raises(TrustStale):
                uplink.submit(config).result(10)
        finally:
            uplink.stop()

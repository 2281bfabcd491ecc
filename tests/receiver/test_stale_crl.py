"""The receiver's own CRL going stale: every logger is refused (fail closed), and audited,
until the organization publishes a fresh CRL; then the same logger gets in again.

The logger side has its counterpart (``tests/uplink/test_validation.py``); here the CRL in
force at the *receiver* ages past its nextUpdate while installed - no file changes, exactly
what happens when the CA operator misses the refresh - rather than a stale file being written.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from logger.tpm import open_device_key
from logger.uplink.connection import connect
from logger.uplink.errors import CertificateRejected
from provisioning import profile
from tests.support.pki import TestPki
from tests.support.receiver_storage import run
from tests.support.secure_channel import running_receiver, uplink_settings

FRESH_FOR_S = 6
"""How long the short-lived CRL stays fresh: enough for one logger connection before it
lapses, on a slow machine too."""


def test_a_stale_crl_refuses_loggers_until_a_fresh_one_is_published(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path / "pki")
    try:
        rx = pki.receiver("acme")
        device = pki.device("acme")
        thumbprint = profile.thumbprint(device.cert)

        async def scenario() -> None:
            async with running_receiver(rx, tmp_path, reload_interval_s=0.1) as srv:
                # The organization's CRL, signed properly, lapses a few seconds from now
                # (issued 30 days ago for 30 days). Published to the receiver directory.
                issued = profile.utcnow() - dt.timedelta(days=30, seconds=-FRESH_FOR_S)
                short = pki.pki.resign_crl("acme", now=issued, days=30)
                lapses = short.next_update_utc
                assert lapses is not None
                await _reloaded(srv)
                settings = uplink_settings(srv.endpoint_url, device, rx)
                with open_device_key(device.state_dir) as key:
                    conn = await connect(settings, key)  # still fresh: accepted
                    await conn.close()
                    assert profile.utcnow() < lapses, "the connection took too long to tell"
                    # Wait for the CRL to lapse; nothing on disk changes.
                    await asyncio.sleep((lapses - profile.utcnow()).total_seconds() + 1.0)
                    assert not srv.gate.changed()
                    with pytest.raises(CertificateRejected):
                        await connect(settings, key)
                    await srv.drain()
                    refusals = [
                        e
                        for e in await srv.storage.audit_entries()
                        if e.event == "cert.rejected" and e.thumbprint == thumbprint
                    ]
                    assert refusals, "the refusal of the stale-CRL logger was not audited"
                    assert "stale" in refusals[-1].detail, refusals[-1].detail
                    assert "nextUpdate" in refusals[-1].detail, refusals[-1].detail
                    # The provider re-signs: the receiver picks it up, the logger gets in.
                    pki.pki.resign_crl("acme")
                    await _reloaded(srv)
                    conn = await connect(settings, key)
                    try:
                        assert conn.is_connected()
                    finally:
                        await conn.close()

        run(scenario())
    finally:
        pki.close()


async def _reloaded(srv: object, timeout: float = 20.0) -> None:
    """Wait until the receiver's trust watcher has read the files as they are now."""
    from receiver.server import ReceiverServer

    assert isinstance(srv, ReceiverServer)
    deadline = asyncio.get_running_loop().time() + timeout
    while srv.gate.changed():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the receiver did not reload its CRLs in time")
        await asyncio.sleep(0.05)

"""The device key in a (software) TPM on the secure channel: every policy, at most 4 TPM
operations per connection, and the TPM never used for a server that fails validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from asyncua import ua

from logger.tpm import open_device_key
from logger.uplink.connection import connect
from logger.uplink.errors import ServerUntrusted
from tests.support.pki import DeviceDir
from tests.support.receiver_storage import run
from tests.support.secure_channel import SharedPki, rogue_server, running_receiver, uplink_settings
from tests.support.swtpm import swtpm


@pytest.fixture(scope="module")
def tpm_device(spki: SharedPki) -> Iterator[DeviceDir]:
    with swtpm() as tcti:
        yield spki.pki.device("acme", tcti=tcti)


def test_tpm_key_connects_under_each_policy(
    spki: SharedPki, tpm_device: DeviceDir, tmp_path: Path
) -> None:
    async def scenario() -> None:
        with open_device_key(tpm_device.state_dir, tpm_device.tcti) as key:
            assert key.kind == "tpm"
            async with running_receiver(spki.rx, tmp_path) as srv:
                conn = await connect(uplink_settings(srv.endpoint_url, tpm_device, spki.rx), key)
                assert conn.info.policy == "Aes256_Sha256_RsaPss"
                assert 1 <= conn.key_operations <= 4
                await conn.close()
            for policy, name in (
                (ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt, "Aes128_Sha256_RsaOaep"),
                (ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt, "Basic256Sha256"),
            ):
                async with rogue_server(spki.rx.cert, spki.rx.key, (policy,)) as url:
                    conn = await connect(uplink_settings(url, tpm_device, spki.rx), key)
                    assert conn.info.policy == name
                    assert 1 <= conn.key_operations <= 4
                    await conn.close()

    run(scenario(), timeout=120)


def test_tpm_is_not_used_for_an_untrusted_server(spki: SharedPki, tpm_device: DeviceDir) -> None:
    cert, key_ = spki.pki.leaf("globex", "receiver", spki.rx.application_uri, ("127.0.0.1",))

    async def scenario() -> None:
        with open_device_key(tpm_device.state_dir, tpm_device.tcti) as key:
            async with rogue_server(cert, key_) as url:
                with pytest.raises(ServerUntrusted):
                    await connect(uplink_settings(url, tpm_device, spki.rx), key)
            assert key.operations == 0

    run(scenario())

"""The TPM device key against a real software TPM (swtpm), checked with tpm2-tools."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from logger.tpm import (
    DeviceState,
    Identity,
    KeyRef,
    PcrPolicyNotSatisfied,
    TpmAuthRequired,
    TpmKeyNotFound,
    TpmUnreachable,
    open_device_key,
)
from logger.tpm.tpm import SRK_HANDLE, PcrSelection, Tpm, parse_handle
from tests.support.swtpm import swtpm, tpm2_tools

HANDLE = 0x81000002


@pytest.fixture
def tcti() -> Iterator[str]:
    with swtpm() as value:
        yield value


def state_for(tmp_path: Path, ref: KeyRef) -> Path:
    state = DeviceState.create(tmp_path / "state")
    state.save_identity(Identity("SN-1", "urn:test:logger:SN-1", ref, "acme"))
    return state.root


def readpublic(tcti: str, handle: int) -> dict[str, str]:
    """tpm2_readpublic's YAML, flattened: {"attributes.value": ..., "bits": ...}."""
    out: dict[str, str] = {}
    parent = ""
    for line in tpm2_tools(tcti, "tpm2_readpublic", "-c", hex(handle)).splitlines():
        key, _, value = line.partition(":")
        if line.startswith("  "):
            out[f"{parent}.{key.strip()}"] = value.strip()
        else:
            parent = key.strip()
            out[parent] = value.strip()
    return out


def test_key_attributes_read_back_with_tpm2_readpublic(tcti: str) -> None:
    with Tpm(tcti) as tpm:
        info = tpm.create_key(HANDLE)
    pub = readpublic(tcti, HANDLE)
    assert set(pub["attributes.value"].split("|")) == {
        "fixedtpm",
        "fixedparent",
        "sensitivedataorigin",
        "userwithauth",
        "noda",
        "decrypt",
        "sign",
    }
    assert pub["type.value"] == "rsa" and pub["bits"] == "2048"
    assert pub["scheme.value"] == "null" and pub["sym-alg.value"] == "null"
    assert pub["name-alg.value"] == "sha256"
    persistent = tpm2_tools(tcti, "tpm2_getcap", "handles-persistent")
    assert hex(SRK_HANDLE) in persistent and hex(HANDLE) in persistent
    assert info.attributes_value == int(pub["attributes.raw"], 16)
    srk = readpublic(tcti, SRK_HANDLE)
    assert {"restricted", "decrypt", "fixedtpm", "noda"} <= set(srk["attributes.value"].split("|"))
    assert srk["sym-alg.value"] == "aes" and srk["bits"] == "2048"


def test_sign_and_decrypt_as_opc_ua_uses_them(tmp_path: Path, tcti: str) -> None:
    with Tpm(tcti) as tpm:
        tpm.create_key(HANDLE)
    state_dir = state_for(tmp_path, KeyRef("tpm", handle=HANDLE))
    with open_device_key(state_dir, tcti) as key:
        private = key.private_key
        public = key.public_key()
        data = b"OpenSecureChannel"
        sig = private.sign(data, padding.PKCS1v15(), hashes.SHA256())
        public.verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        sig = private.sign(data, pss, hashes.SHA256())
        public.verify(sig, data, pss, hashes.SHA256())
        for algorithm in (hashes.SHA1(), hashes.SHA256()):
            oaep = padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)
            assert private.decrypt(public.encrypt(b"nonce", oaep), oaep) == b"nonce"
        assert key.operations == 4
        assert key.kind == "tpm" and private.key_size == 2048
    # Nothing transient left behind in a TPM without a resource manager.
    assert "0x80" not in tpm2_tools(tcti, "tpm2_getcap", "handles-transient")
    assert "0x0" not in tpm2_tools(tcti, "tpm2_getcap", "handles-loaded-session")


def test_sign_from_many_threads_is_serialised(tmp_path: Path, tcti: str) -> None:
    with Tpm(tcti) as tpm:
        tpm.create_key(HANDLE)
    state_dir = state_for(tmp_path, KeyRef("tpm", handle=HANDLE))
    errors: list[BaseException] = []
    with open_device_key(state_dir, tcti) as key:

        def work(n: int) -> None:
            try:
                for i in range(5):
                    data = f"{n}-{i}".encode()
                    sig = key.private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())
                    key.public_key().verify(sig, data, padding.PKCS1v15(), hashes.SHA256())
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert key.operations == 20


def test_pcr_policy_key_refuses_after_extend(tmp_path: Path, tcti: str) -> None:
    pcrs = PcrSelection.parse("sha256:16")
    with Tpm(tcti) as tpm:
        info = tpm.create_key(HANDLE, pcrs=pcrs)
    assert "userwithauth" not in info.attributes and len(info.auth_policy) == 64
    state_dir = state_for(tmp_path, KeyRef("tpm", handle=HANDLE, pcrs=str(pcrs)))
    with open_device_key(state_dir, tcti) as key:
        key.private_key.sign(b"ok", padding.PKCS1v15(), hashes.SHA256())
        tpm2_tools(tcti, "tpm2_pcrextend", "16:sha256=" + "11" * 32)
        with pytest.raises(PcrPolicyNotSatisfied, match="PCR policy not satisfied"):
            key.private_key.sign(b"no", padding.PKCS1v15(), hashes.SHA256())
    assert "0x0" not in tpm2_tools(tcti, "tpm2_getcap", "handles-loaded-session")


def test_auth_value_required_and_checked(tmp_path: Path, tcti: str) -> None:
    with Tpm(tcti) as tpm:
        tpm.create_key(HANDLE, auth=b"right")
    ref = KeyRef("tpm", handle=HANDLE, auth=True)
    state_dir = state_for(tmp_path, ref)
    with pytest.raises(Exception, match="needs auth"):
        open_device_key(state_dir, tcti)
    secret = tmp_path / "secret"
    secret.write_bytes(b"wrong\n")
    secret.chmod(0o600)
    with (
        open_device_key(state_dir, tcti, secret_file=secret) as key,
        pytest.raises(TpmAuthRequired, match="key at handle 0x81000002 needs auth"),
    ):
        key.private_key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    secret.write_bytes(b"right\n")
    with open_device_key(state_dir, tcti, secret_file=secret) as key:
        key.private_key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())


def test_missing_key_and_unreachable_tpm(tmp_path: Path, tcti: str) -> None:
    state_dir = state_for(tmp_path, KeyRef("tpm", handle=HANDLE))
    with pytest.raises(TpmKeyNotFound, match="no key at handle 0x81000002"):
        open_device_key(state_dir, tcti)
    dead = "swtpm:host=127.0.0.1,port=1"
    with pytest.raises(TpmUnreachable, match=re.escape(f"no TPM reachable at {dead}")):
        open_device_key(state_dir, dead)


def test_occupied_handle_is_not_overwritten(tcti: str) -> None:
    with Tpm(tcti) as tpm:
        first = tpm.create_key(HANDLE)
        with pytest.raises(Exception, match="already holds a key"):
            tpm.create_key(HANDLE)
        assert tpm.key_info(HANDLE).public_key_pem == first.public_key_pem


def test_replacing_a_key_in_its_slot_reads_the_new_key_back(tcti: str) -> None:
    # Renewal reuses a slot from the third generation on: the evicted key must not linger in
    # the TPM connection's cache under that handle.
    with Tpm(tcti) as tpm:
        first = tpm.create_key(HANDLE)
        second = tpm.create_key(HANDLE, replace=True)
        assert second.public_key_pem != first.public_key_pem
        assert tpm.key_info(HANDLE).public_key_pem == second.public_key_pem


def test_handle_and_pcr_parsing() -> None:
    assert parse_handle("0x81000010") == 0x81000010
    for bad in ("0x01000000", "0x81000001", "nope"):
        with pytest.raises(ValueError):
            parse_handle(bad)
    assert str(PcrSelection.parse("sha256: 7,0 ,2")) == "sha256:0,2,7"
    for bad in ("sha256", "md5:1", "sha256:24", "sha256:a"):
        with pytest.raises(ValueError):
            PcrSelection.parse(bad)


def test_key_operations_off_the_event_loop(tmp_path: Path, tcti: str) -> None:
    """DeviceKey.run moves the blocking TPM call to a worker thread."""
    import asyncio

    with Tpm(tcti) as tpm:
        tpm.create_key(HANDLE)
    state_dir = state_for(tmp_path, KeyRef("tpm", handle=HANDLE))

    async def main() -> tuple[bytes, int]:
        loop_thread = threading.get_ident()
        seen: list[int] = []
        with open_device_key(state_dir, tcti) as key:

            def sign() -> bytes:
                seen.append(threading.get_ident())
                return key.private_key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())

            sig = await key.run(sign)
        return sig, int(seen[0] != loop_thread)

    sig, off_loop = asyncio.run(main())
    assert off_loop == 1 and len(sig) == 256


def test_owner_password_is_reported_as_such(tcti: str) -> None:
    tpm2_tools(tcti, "tpm2_changeauth", "-c", "owner", "ownerpass")
    with Tpm(tcti) as tpm, pytest.raises(TpmAuthRequired, match="owner authorization"):
        tpm.create_key(HANDLE)

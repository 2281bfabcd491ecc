"""The no-TPM key file, its secrets, and the state directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from logger.tpm import DeviceState, Identity, KeyFileError, KeyRef, StateDirError, open_device_key
from logger.tpm.filekey import find_secret, load_key_file, write_key_file, write_private_bytes
from logger.tpm.state import atomic_write, ensure_private_dir

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def file_state(tmp_path: Path, passphrase: bytes = b"pw") -> Path:
    state = DeviceState.create(tmp_path / "state")
    write_key_file(state.root / "device-key.pem", KEY, passphrase)
    state.save_identity(Identity("SN-1", "urn:t:SN-1", KeyRef("file", path="device-key.pem")))
    return state.root


def test_key_file_is_encrypted_pkcs8_0600_that_openssl_opens(tmp_path: Path) -> None:
    state_dir = file_state(tmp_path)
    path = state_dir / "device-key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    out = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:pw", "-noout", "-text_pub"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "2048 bit" in out
    bad = subprocess.run(
        ["openssl", "pkey", "-in", str(path), "-passin", "pass:no", "-noout"],
        capture_output=True,
        check=False,
    )
    assert bad.returncode != 0


def test_open_file_key_with_secret_file_and_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state_dir = file_state(tmp_path)
    with pytest.raises(KeyFileError, match="needs a passphrase"):
        open_device_key(state_dir)
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mbus-device-key").write_bytes(b"pw\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with open_device_key(state_dir) as key:
        sig = key.private_key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
        KEY.public_key().verify(sig, b"x", padding.PKCS1v15(), hashes.SHA256())
        assert key.kind == "file" and key.operations == 1
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    write_private_bytes(state_dir / "device-key.secret", b"pw\n")
    assert find_secret(state_dir) == b"pw"
    with open_device_key(state_dir) as key:
        assert key.private_key.key_size == 2048


def test_readable_key_file_or_secret_is_refused(tmp_path: Path) -> None:
    state_dir = file_state(tmp_path)
    secret = tmp_path / "secret"
    write_private_bytes(secret, b"pw")
    os.chmod(state_dir / "device-key.pem", 0o640)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        open_device_key(state_dir, secret_file=secret)
    os.chmod(state_dir / "device-key.pem", 0o600)
    os.chmod(secret, 0o644)
    with pytest.raises(KeyFileError, match="readable by group or others"):
        open_device_key(state_dir, secret_file=secret)


def test_wrong_passphrase_and_unencrypted_key(tmp_path: Path) -> None:
    state_dir = file_state(tmp_path)
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        load_key_file(state_dir / "device-key.pem", b"nope")
    from cryptography.hazmat.primitives import serialization

    plain = KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_bytes(tmp_path / "plain.pem", plain)
    with pytest.raises(KeyFileError, match="not encrypted"):
        load_key_file(tmp_path / "plain.pem", b"pw")


def test_state_dir_modes_and_atomic_writes(tmp_path: Path) -> None:
    root = ensure_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    atomic_write(root / "f", b"one")
    atomic_write(root / "f", b"two")
    assert (root / "f").read_bytes() == b"two"
    assert [p.name for p in root.iterdir()] == ["f"]  # no temporary file left
    os.chmod(root, 0o777)
    with pytest.raises(StateDirError, match="writable by group or others"):
        ensure_private_dir(root)


def test_identity_round_trip_and_malformed(tmp_path: Path) -> None:
    state = DeviceState.create(tmp_path / "s")
    identity = Identity(
        "SN-1",
        "urn:t:SN-1",
        KeyRef("tpm", handle=0x81000002, pcrs="sha256:7"),
        "acme",
        previous_key=KeyRef("tpm", handle=0x81000003),
    )
    state.save_identity(identity)
    assert DeviceState.open(state.root).identity() == identity
    assert stat.S_IMODE(state.identity_path.stat().st_mode) == 0o600
    doc = json.loads(state.identity_path.read_text())
    assert doc["key"] == {"type": "tpm", "handle": "0x81000002", "pcrs": "sha256:7", "auth": False}
    state.identity_path.write_text('{"version": 1, "serial": "x"}')
    with pytest.raises(StateDirError, match="missing application_uri"):
        DeviceState.open(state.root).identity()
    with pytest.raises(StateDirError, match="does not exist"):
        DeviceState.open(tmp_path / "nowhere")

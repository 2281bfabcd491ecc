"""The receiver directory: no CA key may be there; the receiver's own key needs its secret."""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from receiver.security import ReceiverDir, ReceiverSetupError, read_passphrase
from tests.support.pki import RECEIVER_PASSPHRASE
from tests.support.secure_channel import SharedPki


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("dir-pki"))
    yield shared
    shared.close()


def _copy(spki: SharedPki, tmp_path: Path) -> Path:
    target = tmp_path / "rx"
    shutil.copytree(spki.rx.dir, target)
    return target


def test_a_clean_receiver_dir_loads(spki: SharedPki, tmp_path: Path) -> None:
    rdir = ReceiverDir.load(_copy(spki, tmp_path), RECEIVER_PASSPHRASE)
    assert rdir.org == "acme"
    assert rdir.org_ca == spki.pki.ca_cert("acme")


@pytest.mark.parametrize(
    "where",
    ["ca-key.pem", "trust/org-ca-key.pem", "crl/.hidden", "backup/ca.der", "old/ca.p12"],
)
def test_ca_key_anywhere_in_the_dir_is_refused(spki: SharedPki, tmp_path: Path, where: str) -> None:
    # Attack surface: a CA key left on the internet-facing receiver lets an intruder mint loggers.
    rx = _copy(spki, tmp_path)
    path = rx / where
    path.parent.mkdir(parents=True, exist_ok=True)
    ca_key_file = spki.pki.dir / "orgs" / "acme" / "ca-key.pem"
    if where.endswith(".der"):
        key = spki.pki.ca_key("acme")
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"x"),
            )
        )
    else:
        shutil.copy(ca_key_file, path)  # encrypted: we cannot even tell whose key it is
    with pytest.raises(ReceiverSetupError) as info:
        ReceiverDir.load(rx, RECEIVER_PASSPHRASE)
    assert str(path) in str(info.value)
    assert "CA key" in str(info.value)


def test_the_ca_key_in_place_of_the_receiver_key_is_refused(
    spki: SharedPki, tmp_path: Path
) -> None:
    from logger.tpm.filekey import write_key_file

    rx = _copy(spki, tmp_path)
    write_key_file(rx / "server-key.pem", spki.pki.ca_key("acme"), RECEIVER_PASSPHRASE)
    shutil.copy(spki.pki.dir / "orgs" / "acme" / "ca-cert.pem", rx / "server-cert.pem")
    with pytest.raises(ReceiverSetupError) as info:
        ReceiverDir.load(rx, RECEIVER_PASSPHRASE)
    assert "CA" in str(info.value)


def test_wrong_or_missing_passphrase(
    spki: SharedPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rx = _copy(spki, tmp_path)
    with pytest.raises(ReceiverSetupError):
        ReceiverDir.load(rx, b"wrong passphrase")
    monkeypatch.delenv("MBUS_RECEIVER_PASSPHRASE", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ReceiverSetupError) as info:
        read_passphrase(None)
    assert "MBUS_RECEIVER_PASSPHRASE" in str(info.value)
    secret = tmp_path / "pass"
    secret.write_bytes(RECEIVER_PASSPHRASE + b"\n")
    os.chmod(secret, 0o644)
    with pytest.raises(ReceiverSetupError):  # readable by others: refused
        read_passphrase(secret)
    os.chmod(secret, 0o600)
    assert read_passphrase(secret) == RECEIVER_PASSPHRASE
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mbus-receiver-key").write_bytes(RECEIVER_PASSPHRASE)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_passphrase(None) == RECEIVER_PASSPHRASE


def test_serve_refuses_to_start_with_a_ca_key(spki: SharedPki, tmp_path: Path) -> None:
    from logger.cli.common import PERMANENT, CliError
    from receiver.server import serve_main

    rx = _copy(spki, tmp_path)
    shutil.copy(spki.pki.dir / "root" / "ca-key.pem", rx / "root-ca-key.pem")
    secret = tmp_path / "pass"
    secret.write_bytes(RECEIVER_PASSPHRASE)
    os.chmod(secret, 0o600)
    args = argparse.Namespace(
        dir=rx,
        listen="opc.tcp://127.0.0.1:0",
        db=f"sqlite:///{tmp_path}/r.db",
        passphrase_file=secret,
    )
    with pytest.raises(CliError) as info:
        serve_main(args)
    assert info.value.code == PERMANENT
    assert "root-ca-key.pem" in str(info.value)
    assert not (tmp_path / "r.db").exists()  # refused before touching anything

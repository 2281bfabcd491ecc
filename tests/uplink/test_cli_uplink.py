"""``mbus-logger uplink check``: what it prints and its exit codes (CLI.md: 0 / 4 / 3 / 2)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logger.cli import main
from provisioning import profile
from tests.support.secure_channel import ReceiverThread, SharedPki


@pytest.fixture(scope="module")
def rx_thread(
    spki: SharedPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ReceiverThread]:
    with ReceiverThread(spki.rx, tmp_path_factory.mktemp("cli-rx")) as thread:
        yield thread


@pytest.fixture
def receiver(rx_thread: ReceiverThread) -> str:
    assert rx_thread.server is not None
    return rx_thread.server.endpoint_url


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["uplink", "check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_connects_and_prints_the_server(
    spki: SharedPki, receiver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--state-dir", str(spki.device.state_dir), "--endpoint", receiver]
    code, out, _ = _check(capsys, *base, "--server-uri", spki.rx.application_uri)
    assert code == 0
    assert "Aes256_Sha256_RsaPss" in out
    assert profile.thumbprint(spki.rx.cert) in out
    code, out, _ = _check(capsys, *base, "--format", "json")
    assert code == 0
    doc = json.loads(out)
    assert doc["connected"] is True
    assert doc["policy"] == "Aes256_Sha256_RsaPss"
    assert doc["subject"] == spki.rx.cert.subject.rfc4514_string()
    assert doc["key_operations"] <= 4
    assert doc["not_after"].startswith(str(spki.rx.cert.not_valid_after_utc.year))


def test_check_with_a_config_file(
    spki: SharedPki, receiver: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "logger.toml"
    config.write_text(
        f'[paths]\nstate_dir = "{spki.device.state_dir}"\n\n'
        f'[uplink]\nendpoint = "{receiver}"\n'
        f'server_application_uri = "{spki.rx.application_uri}"\n'
        'key = "tpm"\n'
    )
    code, out, err = _check(capsys, "--config", str(config), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["application_uri"] == spki.rx.application_uri


def test_refusal_by_us_exits_4(
    spki: SharedPki, receiver: str, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, out, err = _check(
        capsys,
        "--state-dir",
        str(spki.device.state_dir),
        "--endpoint",
        receiver,
        "--server-uri",
        "urn:acme:receiver:somebody-else",
        "--format",
        "json",
    )
    assert code == 4
    assert json.loads(out)["error"] == "server_untrusted"
    assert "somebody-else" in err
    assert time.monotonic() - started < 40


def test_refusal_by_the_server_exits_4(
    spki: SharedPki, rx_thread: ReceiverThread, capsys: pytest.CaptureFixture[str]
) -> None:
    device = spki.pki.device("acme")
    spki.pki.revoke(device.cert)  # published to the receiver's dir; the logger's copy is older
    assert rx_thread.server is not None
    rx_thread.run(rx_thread.server.reload_trust())
    code, out, err = _check(
        capsys,
        "--state-dir",
        str(device.state_dir),
        "--endpoint",
        rx_thread.server.endpoint_url,
        "--format",
        "json",
    )
    assert code == 4
    assert json.loads(out)["error"] == "certificate_rejected"
    assert "BadSecurityChecksFailed" in err


def test_network_down_exits_3(spki: SharedPki, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = _check(
        capsys,
        "--state-dir",
        str(spki.device.state_dir),
        "--endpoint",
        f"opc.tcp://127.0.0.1:{port}",
    )
    assert code == 3
    assert "network_down" in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = _check(capsys, "--endpoint", "opc.tcp://127.0.0.1:1")
    assert code == 2
    code, _, err = _check(
        capsys, "--state-dir", str(tmp_path / "missing"), "--endpoint", "opc.tcp://127.0.0.1:1"
    )
    assert code == 2
    assert "does not exist" in err

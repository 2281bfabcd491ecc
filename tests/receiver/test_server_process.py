"""``mbus-receiver serve`` as a real process: starts, serves a logger, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from logger.cli import main as logger_main
from tests.support.pki import RECEIVER_PASSPHRASE
from tests.support.secure_channel import SharedPki

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedPki]:
    shared = SharedPki(tmp_path_factory.mktemp("process-pki"))
    yield shared
    shared.close()


def test_serve_process_accepts_a_logger_and_stops_cleanly(
    spki: SharedPki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "passphrase"
    secret.write_bytes(RECEIVER_PASSPHRASE)
    os.chmod(secret, 0o600)
    env = {k: v for k, v in os.environ.items() if k != "MBUS_RECEIVER_PASSPHRASE"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver.cli",
            "serve",
            "--dir",
            str(spki.rx.dir),
            "--listen",
            "opc.tcp://127.0.0.1:0",
            "--db",
            f"sqlite:///{tmp_path / 'receiver.db'}",
            "--passphrase-file",
            str(secret),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening on URL" once the endpoints are up
        assert line.startswith("listening on "), line + (proc.stderr.read() if proc.stderr else "")
        url = line.split()[-1]
        code = logger_main(
            ["uplink", "check", "--state-dir", str(spki.device.state_dir), "--endpoint", url]
        )
        assert code == 0, capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

"""The console scripts as operators run them: separate processes, real environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.pki import PASSPHRASE, TestPki

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=60,
    )


def test_mbus_provision_process_and_secret_only_from_env(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    r = run(
        "-m",
        "provisioning.cli",
        "--pki",
        str(pki),
        "root",
        "init",
        "--name",
        "R",
        env={"MBUS_PKI_PASSPHRASE": ""},
    )
    assert r.returncode == 4 and "MBUS_PKI_PASSPHRASE" in r.stderr
    assert not (pki / "root").exists()
    r = run(
        "-m",
        "provisioning.cli",
        "--pki",
        str(pki),
        "root",
        "init",
        "--name",
        "R",
        env={"MBUS_PKI_PASSPHRASE": "s3cret"},
    )
    assert r.returncode == 0, r.stderr
    key = (pki / "root" / "ca-key.pem").read_bytes()
    assert key.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    opened = subprocess.run(
        [
            "openssl",
            "pkey",
            "-in",
            str(pki / "root" / "ca-key.pem"),
            "-passin",
            "pass:s3cret",
            "-noout",
        ],
        capture_output=True,
        check=False,
    )
    assert opened.returncode == 0


def test_cert_show_does_not_load_the_tpm_stack(tmp_path: Path) -> None:
    pki = TestPki.create(tmp_path)
    device = pki.device()
    pki.close()
    code = (
        "import sys; from logger.cli import main; "
        f"rc = main(['cert', 'show', '--state-dir', {str(device.state_dir)!r}]); "
        "assert 'tpm2_pytss' not in sys.modules, 'tpm2_pytss imported'; sys.exit(rc)"
    )
    r = run("-c", code, env={"MBUS_PKI_PASSPHRASE": PASSPHRASE.decode()})
    assert r.returncode == 0, r.stderr
    assert f"application_uri: {device.application_uri}" in r.stdout

"""Fixtures: a CLI runner (in-process, real files), a clean swtpm, a throw-away PKI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.pki import PASSPHRASE, TestPki
from tests.support.swtpm import swtpm


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``mbus-provision`` and ``mbus-logger`` in-process against one PKI directory."""

    def __init__(self, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = base
        self.pki = base / "pki"
        self._capsys = capsys

    def provision(self, *args: str) -> Result:
        from provisioning.cli import main

        self._capsys.readouterr()
        code = main(["--pki", str(self.pki), *args])
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def logger(self, *args: str) -> Result:
        from logger.cli import main

        self._capsys.readouterr()
        code = main(list(args))
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.setenv("MBUS_PKI_PASSPHRASE", PASSPHRASE.decode())
    monkeypatch.setenv("MBUS_RECEIVER_PASSPHRASE", "receiver secret")
    monkeypatch.setenv("MBUS_DEVICE_KEY_PASSPHRASE", "device secret")
    monkeypatch.setenv("MBUS_BATCH_PASSPHRASE", "batch secret")
    monkeypatch.setenv("MBUS_CLIENT_PASSPHRASE", "client secret")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("TSS2_LOG", "all+NONE")
    return Cli(tmp_path, capsys)


@pytest.fixture
def org_cli(cli: Cli) -> Cli:
    """A CLI whose PKI has a root and the organization ``acme`` (made with the CLI)."""
    assert cli.provision("root", "init", "--name", "Test Root").code == 0
    assert cli.provision("org", "create", "acme", "--contact", "ops@acme.example").code == 0
    return cli


@pytest.fixture
def tcti() -> Iterator[str]:
    with swtpm() as value:
        yield value


@pytest.fixture
def test_pki(tmp_path: Path) -> Iterator[TestPki]:
    made = TestPki.create(tmp_path / "lib")
    yield made
    made.close()

"""A real PostgreSQL 15 server for tests, in a temporary directory on a free port.

:func:`postgres_server` runs ``initdb`` and ``pg_ctl start -w`` (which returns only once the
server accepts connections), yields a :class:`PostgresServer`, and stops the server and removes
its directory afterwards. PostgreSQL refuses to run as root, so when the tests run as root (CI)
the binaries run as the ``postgres`` user through ``runuser`` and the temporary directory is
handed to that user. The unix socket lives inside the directory, so nothing outside it is
touched; clients connect over TCP on 127.0.0.1 with trust authentication.

Use the session-scoped pytest fixture :func:`postgres` (import it into a ``conftest.py``) and
:meth:`PostgresServer.create_schema` (or ``create_database``) for fresh, empty storage per
test.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("MBUS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_RUN_AS = "postgres"
_START_TIMEOUT_S = 60


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    directory: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    async def create_schema(self, prefix: str = "test") -> str:
        """A new empty schema in the default database; returns a URL that selects it.

        Much cheaper than a database (no copy of the template, no checkpoint): one per test.
        asyncpg passes the URL's ``search_path`` parameter to the server as a setting.
        """
        name = await self._create("SCHEMA", prefix)
        return f"{self.url()}?search_path={name}"

    async def create_database(self, prefix: str = "test") -> str:
        """A new empty database; returns its URL."""
        return self.url(await self._create("DATABASE", prefix))

    async def _create(self, kind: str, prefix: str) -> str:
        """``CREATE <kind>`` with a fresh name; returns the name."""
        import asyncpg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.url())
        try:
            await conn.execute(f'CREATE {kind} "{name}"')
        finally:
            await conn.close()
        return name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_owner(argv: list[str]) -> list[str]:
    """Run as the unprivileged owner when we are root (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", _RUN_AS, "--", *argv]


@contextlib.contextmanager
def postgres_server(fsync: bool = True) -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL server; stop it and delete its files on exit.

    ``fsync`` stays on by default: benchmarks and durability tests measure the real thing.
    """
    initdb = PG_BIN / "initdb"
    pg_ctl = PG_BIN / "pg_ctl"
    if not initdb.exists():
        raise RuntimeError(
            f"PostgreSQL 15 is not installed ({initdb} missing; Debian package "
            "postgresql, installed by 'make setup')"
        )
    base = Path(tempfile.mkdtemp(prefix="mbus-pg-"))
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(_RUN_AS)
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            raise RuntimeError(
                f"running as root needs the '{_RUN_AS}' user to run "
                "PostgreSQL (Debian package postgresql creates it)"
            ) from None
        shutil.chown(base, _RUN_AS, _RUN_AS)
    base.chmod(0o700)
    data = base / "data"
    log = base / "server.log"
    started = False
    try:
        init = subprocess.run(
            _as_owner(
                [
                    str(initdb),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            capture_output=True,
            text=True,
            timeout=120,
            cwd=base,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()}")
        last_error = ""
        for _attempt in range(5):
            port = free_port()
            options = (
                f"-p {port} -k {base} -c listen_addresses=127.0.0.1 "
                f"-c fsync={'on' if fsync else 'off'} -c max_connections=100"
            )
            proc = subprocess.run(
                _as_owner(
                    [
                        str(pg_ctl),
                        "-D",
                        str(data),
                        "-l",
                        str(log),
                        "-o",
                        options,
                        "-w",
                        "-t",
                        str(_START_TIMEOUT_S),
                        "start",
                    ]
                ),
                capture_output=True,
                text=True,
                timeout=_START_TIMEOUT_S + 10,
                cwd=base,
            )
            if proc.returncode == 0:
                started = True
                yield PostgresServer("127.0.0.1", port, "postgres", base)
                return
            # Most likely another process took the port between probe and bind: try again.
            last_error = proc.stderr.strip() + "\n" + (log.read_text() if log.exists() else "")
        raise RuntimeError(f"PostgreSQL did not start: {last_error}")
    finally:
        if started:
            subprocess.run(
                _as_owner([str(pg_ctl), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                capture_output=True,
                timeout=60,
                cwd=base,
            )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session (tests marked ``postgres`` use it).

    fsync is off here: tests check logic and create a database each, which with fsync on
    costs a checkpoint apiece. Durability figures come from the benchmark, which keeps it on.
    """
    with postgres_server(fsync=False) as server:
        yield server

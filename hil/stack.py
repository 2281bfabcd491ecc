"""A whole system in one directory, as real processes: the HIL scenarios' and the demo's bench.

    with Stack(tmp_path) as stack:            # nothing started yet; everything stopped on exit
        stack.start()                         # swtpm, PKI, receiver, meters, enrolled logger
        stack.logger.wait_readings(20)        # buffered by the daemon
        stack.receiver.kill9(); stack.receiver.start()
        snap = stack.receiver.snapshot()      # what the receiver stored (its own storage API)

What runs where:

* **processes** (each in its own session, so a Ctrl-C at the terminal reaches only the harness,
  which then stops them in order): ``swtpm``, ``mbus-receiver serve`` (one per organization
  when asked), ``mbus-logger run`` (one per logger). The PKI is made by the product's own
  ``mbus-provision`` commands, run as processes too. Every process's output goes to
  ``DIR/logs/<name>.log``; readiness is awaited on what a process prints (``listening on``),
  on the port answering (swtpm) or on the file it writes (the logger's status file) - never a
  fixed sleep.
* **meters** stay in the harness process, as the hardware they stand for is outside the
  system under test: an M-Bus line on a pty (:class:`hil.sim.SimLine`: two synthetic meters
  whose values move, one synthetic meter answering in three telegrams, the ABB A41 read-out
  from the jMBus corpus in five) and a Modbus TCP meter (:class:`hil.modbus_sim.ModbusSim`,
  Eastron SDM630 map). Tests set meter faults on them directly.

Real hardware instead of simulators (see ``hil/README.md``): ``MBUS_HIL_DEVICE`` (serial port
of an M-Bus level converter, with ``MBUS_HIL_METERS`` and ``MBUS_HIL_BAUD``), ``MBUS_HIL_TCTI``
(a real TPM), ``MBUS_HIL_ENDPOINT`` (a receiver run elsewhere, with ``MBUS_HIL_SERVER_URI``,
``MBUS_HIL_PKI``, ``MBUS_HIL_ORG`` and ``MBUS_HIL_DB``). :class:`Bench` reads them.

Nothing is left running: :meth:`Stack.close` stops every process group it started (SIGTERM,
then SIGKILL), and an ``atexit`` hook does the same if the harness itself dies of an exception.
``DIR/demo.json`` describes the endpoints and paths of the running stack.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_LOGGER = logging.getLogger(__name__)

PKI_PASSPHRASE = "hil pki passphrase (test bench only)"
RECEIVER_PASSPHRASE = "hil receiver passphrase (test bench only)"
FIRST_KEY_HANDLE = 0x81000100
"""Persistent TPM handles used by the bench's loggers: one per logger, and the renewal slot
next to it. Kept away from the product's default (0x81000002) so a bench run on a real TPM
never overwrites a production key."""

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """A part of the stack did not start or answer; the message names it and its log file."""


# --- processes -----------------------------------------------------------------------------------


_LIVE: weakref.WeakSet[Proc] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5.0)


atexit.register(_stop_all_at_exit)


def program(name: str) -> list[str]:
    """The command line of one of the product's programs, from this interpreter's environment.

    The console script next to ``sys.executable`` (the virtualenv's), else the one on PATH
    (an installed package), else the module run by this interpreter.
    """
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    module = {
        "mbus-logger": "logger.cli",
        "mbus-provision": "provisioning.cli",
        "mbus-receiver": "receiver.cli",
    }[name]
    return [sys.executable, "-c", f"import sys, {module} as m; sys.exit(m.main())"]


class Proc:
    """One child process in its own session, its output teed into a log file and kept for
    :meth:`wait_for`.

    ``start_new_session`` matters twice: a terminal's Ctrl-C reaches the harness only (which
    stops the children in order), and :meth:`kill9` can kill the whole process group, so a
    program's own children die with it as they would on a power cut.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._pump: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> Proc:
        if self.alive:
            raise StackError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        log.write(f"--- {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
        log.flush()
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with self._cond:
            self._lines = []
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            log.close()
            raise StackError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        self.starts += 1
        _LIVE.add(self)
        assert self.popen.stdout is not None
        self._pump = threading.Thread(
            target=self._tee, args=(self.popen.stdout, log), name=f"log {self.name}", daemon=True
        )
        self._pump.start()
        return self

    def _tee(self, stream: IO[bytes], log: IO[bytes]) -> None:
        with log, stream:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                with self._cond:
                    self._lines.append(raw.decode(errors="replace").rstrip("\n"))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll() if self.popen is not None else None

    def output(self) -> str:
        """What the current run printed so far."""
        with self._cond:
            return "\n".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        """The first output line of this run matching ``pattern``; StackError if the process
        exits or the time runs out first (with the tail of its log)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    found = regex.search(line)
                    if found:
                        return found
                seen = len(self._lines)
                pump_done = self._pump is None or not self._pump.is_alive()
                if pump_done and not self.alive:
                    raise StackError(
                        f"{self.name} exited with code {self.returncode} before printing "
                        f"/{pattern}/; log {self.log_path}:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StackError(
                        f"{self.name} did not print /{pattern}/ within {timeout:.0f} s; "
                        f"log {self.log_path}:\n{self.tail()}"
                    )
                self._cond.wait(min(left, 0.5))

    def tail(self, lines: int = 15) -> str:
        with self._cond:
            return "\n".join(self._lines[-lines:])

    def signal(self, signum: int) -> None:
        if self.alive and self.popen is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM to the process group, wait; SIGKILL if it does not go. Returns the exit code
        (None when it was not running)."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                _LOGGER.warning("%s did not stop within %.0f s: killing it", self.name, timeout)
                self.signal(signal.SIGKILL)
                self.popen.wait()
        self._reap_group()
        self._join()
        return self.popen.returncode

    def kill9(self) -> None:
        """SIGKILL to the whole process group, as a power cut would, and reap it."""
        if self.popen is None:
            return
        self.signal(signal.SIGKILL)
        self.popen.wait()
        self._reap_group()
        self._join()

    def _reap_group(self) -> None:
        # Anything the program left in its group (a helper it spawned) goes with it.
        if self.popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)

    def _join(self) -> None:
        if self._pump is not None:
            self._pump.join(timeout=5.0)
            self._pump = None
        _LIVE.discard(self)

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself (subprocess.TimeoutExpired if it does not)."""
        assert self.popen is not None
        code = self.popen.wait(timeout)
        self._join()
        return code


def run(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 120.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion; its stdout and stderr are appended to ``log_path``.

    ``check``: a non-zero exit raises :class:`StackError` with stderr (the product's commands
    say there what was wrong).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{name} did not finish within {timeout:.0f} s") from exc
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(argv)} -> {done.returncode}\n")
        log.write(done.stdout)
        log.write(done.stderr)
    if check and done.returncode != 0:
        raise StackError(
            f"{name} failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
        )
    return done


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for programs that must be told their port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(what: str, probe: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Poll ``probe`` until it returns something truthy; StackError naming ``what`` if not.

    For state another process writes to disk or a database (no event to await across process
    boundaries); the interval is the polling period, not a guess at how long things take.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
        except (OSError, ValueError) as exc:
            last_error = exc
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


# --- the bench: simulators or real hardware --------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """Which parts are real hardware, from ``MBUS_HIL_*`` (empty: all simulated)."""

    device: str | None = None
    baudrate: int = 9600
    meters: tuple[str, ...] = ()
    tcti: str | None = None
    endpoint: str | None = None
    server_uri: str | None = None
    pki: Path | None = None
    org: str | None = None
    db: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Bench:
        env = dict(os.environ if env is None else env)
        device = env.get("MBUS_HIL_DEVICE") or None
        meters = tuple(m.strip() for m in env.get("MBUS_HIL_METERS", "").split(",") if m.strip())
        if device and not meters:
            raise StackError("MBUS_HIL_DEVICE needs MBUS_HIL_METERS (addresses, e.g. 1,5,12345678)")
        endpoint = env.get("MBUS_HIL_ENDPOINT") or None
        if endpoint:
            missing = [
                k
                for k in ("MBUS_HIL_SERVER_URI", "MBUS_HIL_PKI", "MBUS_HIL_ORG", "MBUS_HIL_DB")
                if not env.get(k)
            ]
            if missing:
                raise StackError(f"MBUS_HIL_ENDPOINT needs {', '.join(missing)} as well")
        default_baud = 2400 if device else 9600
        return cls(
            device=device,
            baudrate=int(env.get("MBUS_HIL_BAUD", default_baud)),
            meters=meters,
            tcti=env.get("MBUS_HIL_TCTI") or None,
            endpoint=endpoint,
            server_uri=env.get("MBUS_HIL_SERVER_URI") or None,
            pki=Path(env["MBUS_HIL_PKI"]) if env.get("MBUS_HIL_PKI") else None,
            org=env.get("MBUS_HIL_ORG") or None,
            db=env.get("MBUS_HIL_DB") or None,
        )

    @property
    def simulated_meters(self) -> bool:
        return self.device is None

    @property
    def own_receiver(self) -> bool:
        return self.endpoint is None


# --- swtpm ---------------------------------------------------------------------------------------


def _tpm_answers(port: int) -> bool:
    """True when the TPM answers TPM2_GetRandom on its server port (startup done)."""
    command = bytes.fromhex("80010000000c0000017b0008")  # GetRandom(8), no sessions
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(command)
            answer = conn.recv(64)
    except OSError:
        return False
    return len(answer) >= 10 and answer[6:10] == b"\x00\x00\x00\x00"


def _answers_or_exited(port: int, proc: Proc) -> bool:
    return _tpm_answers(port) or not proc.alive


class Swtpm:
    """A software TPM on free ports with its state in ``state_dir`` (kept across restarts)."""

    def __init__(self, state_dir: Path, log_path: Path) -> None:
        self.state_dir = state_dir
        self.log_path = log_path
        self.port = 0
        self.proc: Proc | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self) -> str:
        if shutil.which("swtpm") is None:
            raise StackError("swtpm is not installed (Debian package swtpm; `make setup`)")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            port = free_port()
            if not _port_free(port + 1):
                continue
            proc = Proc(
                "swtpm",
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={self.state_dir}",
                    "--server",
                    f"type=tcp,port={port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                self.log_path,
            ).start()
            try:
                wait_until(
                    "swtpm to answer",
                    functools.partial(_answers_or_exited, port, proc),
                    10.0,
                    0.01,
                )
            except StackError:
                proc.stop()
                raise
            if proc.alive:
                self.port, self.proc = port, proc
                return self.tcti
            proc.stop()  # lost a port race: try another pair
        raise StackError(f"swtpm did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is None or not self.proc.alive:
            return
        # CMD_SHUTDOWN on the control channel saves the TPM state; SIGTERM as a fallback.
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port + 1), timeout=2.0) as conn,
        ):
            conn.sendall(b"\x00\x00\x00\x03")
            conn.recv(4)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5.0)
        self.proc.stop()


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# --- PKI through mbus-provision --------------------------------------------------------------


class Provisioning:
    """The cloud provider's PKI directory, driven through ``mbus-provision``."""

    def __init__(self, pki_dir: Path, log_path: Path, passphrase: str = PKI_PASSPHRASE) -> None:
        self.dir = pki_dir
        self.log_path = log_path
        self.env = dict(os.environ)
        self.env.update(
            MBUS_PKI_DIR=str(pki_dir),
            MBUS_PKI_PASSPHRASE=passphrase,
            MBUS_RECEIVER_PASSPHRASE=RECEIVER_PASSPHRASE,
        )

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "mbus-provision " + " ".join(args[:2]),
            [*program("mbus-provision"), *args],
            self.log_path,
            env=self.env,
            check=check,
        )

    def json(self, *args: str) -> Any:
        done = self.run(*args, "--format", "json")
        return json.loads(done.stdout) if done.stdout.strip() else None

    def init_root(self) -> None:
        self.json("root", "init", "--name", "HIL Root CA", "--years", "20")

    def create_org(self, org: str) -> None:
        self.json("org", "create", org, "--contact", f"pki@{org}.example")

    def issue_receiver(self, org: str, out: Path, application_uri: str) -> Any:
        return self.json(
            "server",
            "issue",
            org,
            "--dns",
            "127.0.0.1",
            "--dns",
            "localhost",
            "--application-uri",
            application_uri,
            "--out",
            str(out),
        )

    def registry(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.json("registry", "list")
        return result


# --- receiver ------------------------------------------------------------------------------------


@dataclass
class ReceiverSnapshot:
    """What a receiver's storage holds at one moment (read through its storage API)."""

    readings: list[Any] = field(default_factory=list)  # receiver.storage.StoredReading
    latest: list[Any] = field(default_factory=list)  # receiver.storage.LatestValue
    devices: list[Any] = field(default_factory=list)  # receiver.storage.Device

    def for_device(self, uri: str) -> list[Any]:
        return [r for r in self.readings if r.device_uri == uri]


class ReceiverNode:
    """``mbus-receiver serve`` for one organization (or a receiver run elsewhere)."""

    def __init__(
        self,
        root: Path,
        org: str,
        logs: Path,
        *,
        external: Bench | None = None,
    ) -> None:
        self.org = org
        self.root = root
        self.dir = root / "dir"
        self.db_url = f"sqlite:///{root / 'receiver.db'}"
        self.application_uri = f"urn:hil:{org}:receiver"
        self.port = 0
        self.external = external is not None
        self.endpoint = ""
        if external is not None:
            assert external.endpoint and external.server_uri and external.db
            self.endpoint = external.endpoint
            self.application_uri = external.server_uri
            self.db_url = external.db
        self.proc = Proc(f"receiver-{org}", [], logs / f"receiver-{org}.log")
        self.log_path = self.proc.log_path

    def start(self, timeout: float = START_TIMEOUT_S) -> str:
        """Start serving; the first start picks a free port, restarts keep it (loggers are
        configured with it)."""
        if self.external:
            return self.endpoint
        env = dict(os.environ, MBUS_RECEIVER_PASSPHRASE=RECEIVER_PASSPHRASE)
        for _attempt in range(3 if self.port == 0 else 20):
            port = self.port or free_port()
            self.proc.argv = [
                *program("mbus-receiver"),
                "serve",
                "--dir",
                str(self.dir),
                "--listen",
                f"opc.tcp://127.0.0.1:{port}",
                "--db",
                self.db_url,
            ]
            self.proc.env = env
            self.proc.start()
            try:
                found = self.proc.wait_for(r"listening on (opc\.tcp://\S+)", timeout)
            except StackError:
                self.proc.stop()
                if "address already in use" in self.proc.output().lower():
                    if self.port == 0:
                        continue  # lost a race for a fresh port: take another
                    # A restart right after a kill: the old socket is still being torn down.
                    wait_until("the port to free up", functools.partial(_port_free, port), 10.0)
                    continue
                raise
            self.port = port
            self.endpoint = found.group(1)
            return self.endpoint
        raise StackError(f"receiver of {self.org} could not bind a port; log {self.log_path}")

    def stop(self) -> int | None:
        return None if self.external else self.proc.stop()

    def kill9(self) -> None:
        if self.external:
            raise StackError("the receiver runs elsewhere (MBUS_HIL_ENDPOINT): cannot kill it")
        self.proc.kill9()

    @property
    def alive(self) -> bool:
        return self.external or self.proc.alive

    def snapshot(self, readings: bool = True) -> ReceiverSnapshot:
        """Readings, latest values and devices as the receiver's storage holds them now."""
        if not self.external and not (self.root / "receiver.db").exists():
            return ReceiverSnapshot()
        return asyncio.run(self._snapshot(readings))

    async def _snapshot(self, readings: bool) -> ReceiverSnapshot:
        from receiver.storage import open_storage

        storage = await open_storage(self.db_url, create=False, pool_size=1)
        try:
            snap = ReceiverSnapshot(
                latest=await storage.latest_values(), devices=await storage.devices()
            )
            if readings:
                snap.readings = [r async for r in storage.export()]
            return snap
        finally:
            await storage.close()

    def audit_events(self) -> list[Any]:
        async def entries() -> list[Any]:
            from receiver.storage import open_storage

            storage = await open_storage(self.db_url, create=False, pool_size=1)
            try:
                return await storage.audit_entries(limit=10_000)
            finally:
                await storage.close()

        return asyncio.run(entries())

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """An operator command against this receiver's storage (``config set``, ``devices``…)."""
        return run(
            "mbus-receiver " + " ".join(args[:2]),
            [*program("mbus-receiver"), *args, "--db", self.db_url],
            self.log_path.with_name(f"receiver-{self.org}-cli.log"),
            check=check,
        )


# --- meters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterSpec:
    """One meter as the logger's configuration names it."""

    id: str
    kind: str  # mbus | modbus_tcp
    address: str = ""  # primary (digits up to 250) or secondary address, M-Bus
    host: str = ""  # modbus_tcp host:port
    unit_id: int = 1
    profile: str = ""
    telegrams: int = 1  # telegrams per read-out (simulated M-Bus)

    def as_config(self) -> dict[str, Any]:
        """The meter as a ``[[meters]]`` entry (and a cloud layer's ``meters`` item)."""
        entry: dict[str, Any] = {"id": self.id, "kind": self.kind}
        if self.kind == "mbus":
            entry["bus"] = "mbus0"
            if self.address.isdigit() and int(self.address) <= 250:
                entry["primary_address"] = int(self.address)
            else:
                entry["secondary_address"] = self.address
        else:
            entry.update(host=self.host, unit_id=self.unit_id)
            if self.profile:
                entry["profile"] = self.profile
        return entry

    def toml(self) -> str:
        lines = ["[[meters]]"]
        for key, value in self.as_config().items():
            lines.append(f"{key} = {json.dumps(value)}")  # JSON strings and ints are TOML
        return "\n".join(lines) + "\n"


class Meters:
    """The meters of the bench: simulated in this process, or the real line's addresses."""

    def __init__(self, bench: Bench, baudrate: int, log_dir: Path) -> None:
        self.bench = bench
        self.baudrate = baudrate
        self.log_dir = log_dir
        self.line: Any = None  # hil.sim.SimLine
        self.modbus: Any = None  # hil.modbus_sim.ModbusSim
        self.device = bench.device or ""
        self.specs: list[MeterSpec] = []
        self._stepper: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> list[MeterSpec]:
        if not self.bench.simulated_meters:
            self.specs = [
                MeterSpec(f"mbus-{a.lower()}", "mbus", address=a) for a in self.bench.meters
            ]
        else:
            self._start_mbus()
        self._start_modbus()
        return self.specs

    def _start_mbus(self) -> None:
        from hil import scenarios
        from hil.sim import SimLine, SimMeter
        from hil.telegrams import Quantity, SyntheticMeter, default_quantities

        heat = SyntheticMeter(21000001, "SIM", 1, 0x04)  # heat: Wh, l, W, flow temperature
        water = SyntheticMeter(
            21000002,
            "SIM",
            1,
            0x07,
            quantities=[Quantity("volume_l", 0x13, 812_000, rate=0.5, encoding="bcd")],
        )
        # Three telegrams per read-out (two records each, DIF 0x1F between them).
        multi = SyntheticMeter(
            21000003,
            "SIM",
            1,
            0x02,
            quantities=[*default_quantities(), Quantity("energy_kwh", 0x06, 5_000, rate=0.01)],
            per_telegram=2,
        )
        abb = scenarios.jmbus_cases()["test_ABB_A41_messages"]
        meters = [
            SimMeter(1, synthetic=heat, name="heat"),
            SimMeter(2, synthetic=water, name="water"),
            SimMeter(3, synthetic=multi, name="multi"),
            SimMeter(9, abb, name="ABB A41"),
        ]
        self.line = SimLine(meters, self.baudrate, 0.010, log=self.log_dir / "mbus-served.jsonl")
        self.device = self.line.start()
        self.specs = [
            MeterSpec("heat", "mbus", address="1"),
            MeterSpec("water", "mbus", address="2"),
            MeterSpec("multi", "mbus", address="3", telegrams=3),
            MeterSpec("abb-a41", "mbus", address="9", telegrams=len(abb)),
        ]

    def _start_modbus(self) -> None:
        from hil.modbus_sim import PROFILES, ModbusSim

        self.modbus = ModbusSim(PROFILES["eastron_sdm630"], unit_id=1).start()
        self.specs.append(
            MeterSpec(
                "main-supply",
                "modbus_tcp",
                host=f"{self.modbus.host}:{self.modbus.port}",
                unit_id=1,
                profile="eastron_sdm630",
            )
        )
        self._stepper = threading.Thread(target=self._step, name="modbus values", daemon=True)
        self._stepper.start()

    def _step(self) -> None:
        while not self._stop.wait(1.0):
            if self.modbus is not None:
                self.modbus.advance()

    def set_fault(self, meter_id: str, **faults: Any) -> None:
        """Make a simulated M-Bus meter misbehave (``silence=True``, ``garbage=True``…);
        no arguments clears its faults."""
        from hil.sim import Faults

        if self.line is None:
            raise StackError("meter faults need the simulated line (MBUS_HIL_DEVICE is set)")
        spec = self.spec(meter_id)
        self.line.set_faults(int(spec.address), Faults(**faults))

    def spec(self, meter_id: str) -> MeterSpec:
        for spec in self.specs:
            if spec.id == meter_id:
                return spec
        raise KeyError(f"no meter {meter_id!r} on the bench")

    def stop(self) -> None:
        self._stop.set()
        if self._stepper is not None:
            self._stepper.join(timeout=5.0)
            self._stepper = None
        if self.modbus is not None:
            self.modbus.stop()
            self.modbus = None
        if self.line is not None:
            self.line.stop()
            self.line = None


# --- logger --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoggerSettings:
    """What the bench puts into a logger's local configuration file."""

    interval: str = "5s"
    push_interval: str = "1s"
    config_poll_interval: str = "10s"
    status_interval: str = "10s"
    batch_size: int = 5000
    connect_timeout: str = "10s"


class LoggerNode:
    """One logger: enrolled with a TPM key through ``mbus-provision device enroll``, its
    configuration file, and ``mbus-logger run``."""

    def __init__(
        self,
        root: Path,
        serial: str,
        org: str,
        logs: Path,
        *,
        handle: int,
        settings: LoggerSettings,
    ) -> None:
        self.root = root
        self.serial = serial
        self.org = org
        self.handle = handle
        self.settings = settings
        self.state_dir = root / "state"
        self.config_path = root / "logger.toml"
        self.application_uri = f"urn:hil:{org}:logger:{serial}"
        self.tcti = ""
        self.enrolment: Any = None
        self.proc = Proc(f"logger-{serial}", [], logs / f"logger-{serial}.log")
        self.log_path = self.proc.log_path

    # -- provisioning ----------------------------------------------------------------------
    def enroll(self, provisioning: Provisioning, tcti: str, days: int | None = None) -> Any:
        self.tcti = tcti
        args = [
            "device",
            "enroll",
            self.org,
            "--serial",
            self.serial,
            "--application-uri",
            self.application_uri,
            "--state-dir",
            str(self.state_dir),
            "--tpm",
            tcti,
            "--handle",
            hex(self.handle),
            "--replace-key",
        ]
        if days is not None:
            args += ["--days", str(days)]
        self.enrolment = provisioning.json(*args)
        return self.enrolment

    def renew(self, provisioning: Provisioning, days: int | None = None) -> Any:
        args = [
            "device",
            "renew",
            "--serial",
            self.serial,
            "--state-dir",
            str(self.state_dir),
            "--tpm",
            self.tcti,
            "--handle",
            hex(self.handle + 1),
            "--replace-key",
        ]
        if days is not None:
            args += ["--days", str(days)]
        return provisioning.json(*args)

    def write_config(
        self,
        meters: Sequence[MeterSpec],
        device: str,
        baudrate: int,
        endpoint: str | None,
        server_uri: str,
    ) -> Path:
        s = self.settings
        text = [
            "# Written by hil.stack for a bench run.",
            f'default_interval = "{s.interval}"',
            "",
            "[installation]",
            f'site = "HIL bench, logger {self.serial}"',
            'description = "simulated meters on a pty and Modbus TCP"',
            'clock = "synchronised"',
            "",
            "[paths]",
            f'state_dir = "{self.state_dir}"',
            "",
        ]
        if endpoint:
            text += [
                "[uplink]",
                f'endpoint = "{endpoint}"',
                f'server_application_uri = "{server_uri}"',
                f'tcti = "{self.tcti}"',
                'key = "tpm"',
                f"key_handle = {hex(self.handle)}",
                f'certificate = "{self.state_dir / "device-cert.pem"}"',
                f'trust_dir = "{self.state_dir / "trust"}"',
                f'push_interval = "{s.push_interval}"',
                f"batch_size = {s.batch_size}",
                f'config_poll_interval = "{s.config_poll_interval}"',
                f'status_interval = "{s.status_interval}"',
                f'connect_timeout = "{s.connect_timeout}"',
                "",
            ]
        if any(m.kind == "mbus" for m in meters):
            text += [
                "[buses.mbus0]",
                'kind = "mbus"',
                f'device = "{device}"',
                f"baud_rate = {baudrate}",
                "retries = 1",
                "",
            ]
        text += [m.toml() for m in meters]
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text("\n".join(text), encoding="utf-8")
        return self.config_path

    # -- the daemon ------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start ``mbus-logger run`` and wait until it has written its status file."""
        status = self.state_dir / "status.json"
        before = status.stat().st_mtime_ns if status.exists() else None
        self.proc.argv = [*program("mbus-logger"), "run", "--config", str(self.config_path)]
        self.proc.start()
        pid = self.proc.pid

        def running() -> bool:
            if not self.proc.alive:
                raise StackError(
                    f"logger {self.serial} exited with code {self.proc.returncode}; "
                    f"log {self.log_path}:\n{self.proc.tail()}"
                )
            doc = self.status()
            fresh = before is None or status.stat().st_mtime_ns != before
            return bool(fresh and doc and doc.get("pid") == pid and doc.get("state") == "running")

        try:
            wait_until(f"logger {self.serial} to start", running, timeout)
        except StackError:
            self.proc.stop()
            raise

    def stop(self) -> int | None:
        return self.proc.stop()

    def kill9(self) -> None:
        self.proc.kill9()

    @property
    def alive(self) -> bool:
        return self.proc.alive

    def status(self) -> dict[str, Any] | None:
        """The daemon's status file (``mbus-logger status`` reads the same), or None."""
        path = self.state_dir / "status.json"
        try:
            doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return doc

    def buffer_stats(self) -> dict[str, Any]:
        """``mbus-logger buffer stats --format json`` (read-only, safe while the daemon runs)."""
        done = self.cli("buffer", "stats", "--config", str(self.config_path), "--format", "json")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def buffered(self) -> list[dict[str, Any]]:
        """The pending readings, oldest first (``mbus-logger buffer export --format jsonl``)."""
        return self.buffered_since(0)

    def buffered_since(self, seq: int, check: bool = True) -> list[dict[str, Any]]:
        """Pending readings after sequence number ``seq``, as ``buffer export`` prints them
        (``meter_id``), with ``meter`` beside it so rows read like the receiver's."""
        done = self.cli(
            "buffer",
            "export",
            "--config",
            str(self.config_path),
            "--format",
            "jsonl",
            "--since",
            str(seq),
            check=check,
        )
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        for row in rows:
            row.setdefault("meter", row.get("meter_id"))
        return rows

    def committed(self) -> int:
        """Readings committed in the current epoch so far (the buffer's next sequence - 1)."""
        stats = self.buffer_stats()
        return int(stats["next_seq"]) - 1

    def wait_readings(self, count: int, timeout: float = 60.0) -> int:
        """Wait until the buffer has committed at least ``count`` readings."""
        return int(
            wait_until(
                f"logger {self.serial} to commit {count} readings",
                lambda: (n := self.committed()) >= count and n,
                timeout,
                0.25,
            )
        )

    def uplink_check(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``mbus-logger uplink check --config FILE --format json`` (exit 0 / 3 / 4)."""
        return run(
            f"logger {self.serial} uplink check",
            [
                *program("mbus-logger"),
                "uplink",
                "check",
                "--config",
                str(self.config_path),
                "--format",
                "json",
            ],
            self.log_path.with_name(f"logger-{self.serial}-cli.log"),
            timeout=timeout,
            check=False,
        )

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "mbus-logger " + " ".join(args[:2]),
            [*program("mbus-logger"), *args],
            self.log_path.with_name(f"logger-{self.serial}-cli.log"),
            check=check,
        )


# --- the stack ----------------------------------------------------------------------------------


class Stack:
    """A whole system in ``root``. See the module docstring.

    ``orgs``: organizations created in the PKI; a receiver is started for the first one (the
    one loggers belong to unless told otherwise). ``loggers``: serials enrolled at start.
    """

    def __init__(
        self,
        root: Path,
        *,
        orgs: Sequence[str] = ("acme",),
        loggers: Sequence[str] = ("SN-0001",),
        settings: LoggerSettings | None = None,
        bench: Bench | None = None,
        cert_days: int | None = None,
    ) -> None:
        self.root = root.resolve()
        self.bench = bench or Bench.from_env()
        self.orgs = list(orgs) if self.bench.org is None else [self.bench.org, *orgs[1:]]
        self.serials = list(loggers)
        self.settings = settings or LoggerSettings()
        self.cert_days = cert_days
        self.logs = self.root / "logs"
        self.swtpm: Swtpm | None = None
        self.tcti = self.bench.tcti or ""
        # An outside PKI (MBUS_HIL_PKI) is opened with the operator's own passphrase.
        passphrase = os.environ.get("MBUS_PKI_PASSPHRASE", "") if self.bench.pki else PKI_PASSPHRASE
        self.provisioning = Provisioning(
            self.bench.pki or self.root / "pki", self.logs / "provision.log", passphrase
        )
        self.receivers: dict[str, ReceiverNode] = {}
        self.loggers: dict[str, LoggerNode] = {}
        self.meters = Meters(self.bench, self.bench.baudrate, self.logs)
        self._handles = iter(range(FIRST_KEY_HANDLE, FIRST_KEY_HANDLE + 0x100, 2))
        self._closed = False

    # -- convenience -----------------------------------------------------------------------
    @property
    def receiver(self) -> ReceiverNode:
        return self.receivers[self.orgs[0]]

    @property
    def logger(self) -> LoggerNode:
        return self.loggers[self.serials[0]]

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bring-up --------------------------------------------------------------------------
    def start(self, *, start_loggers: bool = True) -> Stack:
        """Everything, in dependency order; on failure, what was started is stopped again."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self.logs.mkdir(parents=True, exist_ok=True)
            self.start_tpm()
            self.start_pki()
            for org in self.orgs[:1]:
                self.add_receiver(org)
            self.meters.start()
            for serial in self.serials:
                self.add_logger(serial, start=start_loggers, days=self.cert_days)
            self.write_description()
        except BaseException:
            self.close()
            raise
        return self

    def start_tpm(self) -> str:
        if not self.tcti:
            self.swtpm = Swtpm(self.root / "tpm", self.logs / "swtpm.log")
            self.tcti = self.swtpm.start()
        else:
            # A TPM that outlives the stack (MBUS_HIL_TCTI): clear the bench's handle range
            # of what an interrupted run left, so each run enrols into free handles.
            self.evict_bench_keys()
        return self.tcti

    def evict_bench_keys(self) -> list[int]:
        """Remove the bench's persistent keys (handles from :data:`FIRST_KEY_HANDLE`) from a
        TPM the stack does not own, with tpm2-tools; returns the handles removed."""
        env = dict(os.environ, TPM2TOOLS_TCTI=self.tcti)
        log = self.logs / "tpm-cleanup.log"
        done = run("tpm2_getcap", ["tpm2_getcap", "handles-persistent"], log, env=env, check=False)
        if done.returncode != 0:
            raise StackError(
                f"cannot list the keys of the TPM at {self.tcti} (tpm2-tools): "
                f"{done.stderr.strip()}"
            )
        bench = range(FIRST_KEY_HANDLE, FIRST_KEY_HANDLE + 0x100)
        found = [int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]{8}", done.stdout)]
        removed = []
        for handle in (h for h in found if h in bench):
            run(
                "tpm2_evictcontrol",
                ["tpm2_evictcontrol", "-C", "o", "-c", hex(handle)],
                log,
                env=env,
            )
            removed.append(handle)
        return removed

    def start_pki(self) -> None:
        if self.bench.pki is not None:
            return  # the provider's PKI of an external receiver: used as it is
        self.provisioning.init_root()
        for org in self.orgs:
            self.provisioning.create_org(org)

    def add_org(self, org: str) -> None:
        if org not in self.orgs:
            self.provisioning.create_org(org)
            self.orgs.append(org)

    def add_receiver(self, org: str) -> ReceiverNode:
        node = ReceiverNode(
            self.root / "receivers" / org,
            org,
            self.logs,
            external=self.bench if not self.bench.own_receiver else None,
        )
        if not node.external:
            self.provisioning.issue_receiver(org, node.dir, node.application_uri)
        self.receivers[org] = node
        node.start()
        return node

    def add_logger(
        self,
        serial: str,
        *,
        org: str | None = None,
        receiver: ReceiverNode | None = None,
        start: bool = True,
        days: int | None = None,
    ) -> LoggerNode:
        """Enrol a logger (TPM key in the bench's TPM), configure it and start its daemon.

        ``org``: the organization whose CA signs it (default: the first); ``receiver``: the
        receiver it talks to (default: the first organization's, which makes a logger of
        another organization a stranger there).
        """
        org = org or self.orgs[0]
        receiver = receiver or self.receiver
        node = LoggerNode(
            self.root / "loggers" / serial,
            serial,
            org,
            self.logs,
            handle=next(self._handles),
            settings=self.settings,
        )
        node.enroll(self.provisioning, self.tcti, days=days)
        node.write_config(
            self.meters.specs,
            self.meters.device,
            self.meters.baudrate,
            receiver.endpoint,
            receiver.application_uri,
        )
        self.loggers[serial] = node
        if serial not in self.serials:
            self.serials.append(serial)
        if start:
            node.start()
        return node

    # -- description -----------------------------------------------------------------------
    def description(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "logs": str(self.logs),
            "tpm": {"tcti": self.tcti, "state": str(self.root / "tpm") if self.swtpm else None},
            "pki": str(self.provisioning.dir),
            "organizations": self.orgs,
            "receivers": {
                org: {
                    "endpoint": r.endpoint,
                    "application_uri": r.application_uri,
                    "dir": str(r.dir),
                    "db": r.db_url,
                    "log": str(r.log_path),
                    "pid": r.proc.pid if r.alive and not r.external else None,
                }
                for org, r in self.receivers.items()
            },
            "loggers": {
                serial: {
                    "org": n.org,
                    "application_uri": n.application_uri,
                    "config": str(n.config_path),
                    "state_dir": str(n.state_dir),
                    "buffer": str(n.state_dir / "buffer.db"),
                    "status_file": str(n.state_dir / "status.json"),
                    "tpm_handle": hex(n.handle),
                    "log": str(n.log_path),
                    "pid": n.proc.pid if n.alive else None,
                }
                for serial, n in self.loggers.items()
            },
            "meters": {
                "mbus_device": self.meters.device,
                "baudrate": self.meters.baudrate,
                "simulated": self.bench.simulated_meters,
                "list": [
                    {
                        "id": m.id,
                        "kind": m.kind,
                        "address": m.address or None,
                        "host": m.host or None,
                        "telegrams": m.telegrams,
                    }
                    for m in self.meters.specs
                ],
            },
            "environment": {
                "MBUS_PKI_DIR": str(self.provisioning.dir),
                "MBUS_PKI_PASSPHRASE": "(bench passphrase, see hil/stack.py)",
                "MBUS_RECEIVER_DB": self.receiver.db_url if self.receivers else None,
            },
        }

    def write_description(self) -> Path:
        path = self.root / "demo.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.description(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def processes(self) -> list[Proc]:
        """Every process this stack runs or ran (for checks that nothing is left running)."""
        procs = [self.swtpm.proc] if self.swtpm is not None and self.swtpm.proc else []
        procs += [r.proc for r in self.receivers.values() if not r.external]
        procs += [n.proc for n in self.loggers.values()]
        return [p for p in procs if p.popen is not None]

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything this stack started (loggers first, so they commit their last tick;
        then receivers, meters, the TPM). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []
        for node in self.loggers.values():
            with _collect(errors, f"logger {node.serial}"):
                node.stop()
        for receiver in self.receivers.values():
            with _collect(errors, f"receiver {receiver.org}"):
                receiver.stop()
        with _collect(errors, "meters"):
            self.meters.stop()
        if self.swtpm is not None:
            with _collect(errors, "swtpm"):
                self.swtpm.stop()
        elif self.tcti:
            with _collect(errors, "removing the bench's TPM keys"):
                self.evict_bench_keys()
        if errors:
            _LOGGER.warning("stopping the stack: %s", "; ".join(errors))


@contextlib.contextmanager
def _collect(errors: list[str], what: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        errors.append(f"{what}: {exc}")


__all__ = [
    "Bench",
    "LoggerNode",
    "LoggerSettings",
    "MeterSpec",
    "Meters",
    "Proc",
    "Provisioning",
    "ReceiverNode",
    "ReceiverSnapshot",
    "Stack",
    "StackError",
    "Swtpm",
    "free_port",
    "program",
    "run",
    "wait_until",
]

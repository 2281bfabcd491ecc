"""An RFC 2217 M-Bus gateway (``rfc2217://host:port``): Telnet COM-port control to the line.

The gateway is pyserial's own server side (:class:`serial.rfc2217.PortManager`) on 127.0.0.1
(port chosen by the OS) bridging to the simulated line's pty, so the client negotiates real
RFC 2217: Telnet options, SET-BAUDRATE/DATASIZE/PARITY/STOPSIZE, control lines and purges.

Two pty limits shape the gateway's port (:class:`PtyPort`), not the logger: a pty has no modem
lines (TIOCMGET/TIOCMBIS fail with ENOTTY), and once the pty has dropped the parity flag a
second ``tcsetattr`` that changes nothing fails with EINVAL (MBUS.md). An RFC 2217 client sends
every setting again right after connecting, so the gateway applies only settings that differ
from those already in force, as the firmware of a hardware gateway does for its UART.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import serial
import serial.rfc2217

from logger.bus import MBusMaster, PortError
from tests.support.mbus_sim import corpus_line

pytestmark = pytest.mark.hil

BAUD = 19200
MBUS_LOGGER = str(Path(sys.executable).with_name("mbus-logger"))


class PtyPort(serial.Serial):
    """The gateway's UART, on a pty: fixed modem lines, settings applied only when changed."""

    _applied: tuple[object, ...] | None = None
    reconfigured = 0  # how many settings changes reached the pty (tcsetattr calls)

    def _reconfigure_port(self, force_update: bool = False) -> None:
        wanted = (
            self._baudrate,
            self._bytesize,
            self._parity,
            self._stopbits,
            self._xonxoff,
            self._rtscts,
        )
        if wanted == self._applied:
            return
        super()._reconfigure_port(force_update)
        self._applied = wanted
        self.reconfigured += 1

    def _update_rts_state(self) -> None:
        pass  # no modem lines on a pty; an M-Bus level converter ignores them anyway

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False


class _Connection:
    """What :class:`~serial.rfc2217.PortManager` writes its Telnet answers to."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._sock.sendall(data)


class Gateway:
    def __init__(self, port: int, line: PtyPort) -> None:
        self.port = port
        self.line = line
        self.connections = 0
        self.settings: list[tuple[int, str]] = []  # (baud rate, parity) after each connection


@contextmanager
def rfc2217_gateway(device: str, baudrate: int) -> Iterator[Gateway]:
    """Serve RFC 2217 for ``device``, one TCP connection at a time; yields the gateway."""
    server = socket.create_server(("127.0.0.1", 0))
    line = PtyPort(device, baudrate, parity=serial.PARITY_EVEN, timeout=0)
    gateway = Gateway(server.getsockname()[1], line)
    stop = threading.Event()
    failures: list[BaseException] = []

    def serve(conn: socket.socket) -> None:
        out = _Connection(conn)
        manager = serial.rfc2217.PortManager(line, out)
        while not stop.is_set():
            ready, _, _ = select.select([conn, line.fileno()], [], [], 0.05)
            if conn in ready:
                data = conn.recv(4096)
                if not data:
                    return
                line.write(b"".join(manager.filter(data)))
            if line.fileno() in ready:
                data = line.read(4096)
                if data:
                    out.write(b"".join(manager.escape(data)))

    def accept() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([server], [], [], 0.05)
            if not ready:
                continue
            conn, _ = server.accept()
            gateway.connections += 1
            with conn:
                try:
                    serve(conn)
                except (OSError, serial.SerialException) as exc:
                    failures.append(exc)
                    return
            gateway.settings.append((line.baudrate, line.parity))

    thread = threading.Thread(target=accept, name="rfc2217-gateway")
    thread.start()
    try:
        yield gateway
    finally:
        stop.set()
        thread.join()
        server.close()
        line.close()
    assert not failures, f"gateway failed: {failures}"


def test_read_through_an_rfc2217_gateway() -> None:
    with (
        corpus_line(3, BAUD) as sim,
        rfc2217_gateway(sim.path, BAUD) as gateway,
    ):
        with MBusMaster(f"rfc2217://127.0.0.1:{gateway.port}", BAUD) as bus:
            results = bus.read_many([1, 2, 3])
        # A second session on the same gateway: the settings arrive again and are accepted.
        with MBusMaster(f"rfc2217://127.0.0.1:{gateway.port}", BAUD) as bus:
            again = bus.read_many([2])
    assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
    for address, result in zip([1, 2, 3], results, strict=True):
        assert result.telegrams == sim.meter(address).expected_frames()
    assert again[0].ok and again[0].telegrams == sim.meter(2).expected_frames()
    # The client asked for 8E1 at 19200 Bd over RFC 2217 (the pty was opened that way already).
    assert gateway.connections == 2
    assert gateway.settings == [(BAUD, serial.PARITY_EVEN)] * 2
    assert gateway.line.reconfigured == 1


def test_the_cli_reads_through_an_rfc2217_gateway() -> None:
    with (
        corpus_line(2, BAUD) as sim,
        rfc2217_gateway(sim.path, BAUD) as gateway,
    ):
        proc = subprocess.run(
            [
                MBUS_LOGGER,
                "read",
                "--device",
                f"rfc2217://127.0.0.1:{gateway.port}",
                "--baudrate",
                str(BAUD),
                "--address",
                "1-2",
                "--format",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        expected = [sim.meter(a).expected_frames() for a in (1, 2)]
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [[bytes.fromhex(t["hex"]) for t in entry["telegrams"]] for entry in doc] == expected
    assert gateway.connections == 1


def test_an_unreachable_rfc2217_gateway_is_a_port_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]
    bus = MBusMaster(f"rfc2217://127.0.0.1:{free}", BAUD)
    with pytest.raises(PortError, match=f"cannot open rfc2217://127.0.0.1:{free}"):
        bus.open()

"""An Ethernet M-Bus gateway (``socket://host:port``): TCP to the serial line.

The gateway is a small relay on 127.0.0.1 (port chosen by the OS) in front of a simulated line;
the master opens it by URL exactly as it would a real transparent gateway.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import serial

from logger.bus import MBusMaster, PortError
from tests.support.mbus_sim import corpus_line

pytestmark = pytest.mark.hil

BAUD = 19200


@contextmanager
def tcp_gateway(device: str, baudrate: int) -> Iterator[int]:
    """Relay one TCP connection at a time to ``device``; yields the port it listens on."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    stop = threading.Event()
    line = serial.Serial(device, baudrate, parity=serial.PARITY_EVEN, timeout=0)

    def relay() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([server], [], [], 0.05)
            if not ready:
                continue
            conn, _ = server.accept()
            with conn:
                while not stop.is_set():
                    ready, _, _ = select.select([conn, line.fileno()], [], [], 0.05)
                    if conn in ready:
                        data = conn.recv(4096)
                        if not data:
                            break
                        line.write(data)
                    if line.fileno() in ready:
                        data = line.read(4096)
                        if data:
                            conn.sendall(data)

    thread = threading.Thread(target=relay, name="gateway")
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()
        server.close()
        line.close()


def test_read_through_a_tcp_gateway() -> None:
    with (
        corpus_line(3, BAUD) as line,
        tcp_gateway(line.path, BAUD) as port,
        MBusMaster(f"socket://127.0.0.1:{port}", BAUD) as bus,
    ):
        results = bus.read_many([1, 2, 3])
    assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
    assert results[2].telegrams == line.meter(3).expected_frames()


def test_unreachable_gateway_is_a_port_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        free = probe.getsockname()[1]
    bus = MBusMaster(f"socket://127.0.0.1:{free}", BAUD)
    try:
        bus.open()
    except PortError as exc:
        assert f"cannot open socket://127.0.0.1:{free}" in str(exc)
    else:  # pragma: no cover - the port was taken in between
        bus.close()
        raise AssertionError("connecting to a closed port succeeded")

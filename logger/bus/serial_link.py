"""The serial port: pyserial's only owner, opened by path or URL, 8E1.

Opened once with every setting at once (baud rate, parity, read timeout): on a pty a second
``tcsetattr`` fails once parity has been dropped, and real ports do not mind either way. The
read timeout is a fixed short quantum; deadlines are kept by the caller with a monotonic
clock, so a read returns as soon as bytes arrive and never waits past a deadline by more than
one quantum. A baud-rate change closes and reopens the port.
"""

from __future__ import annotations

import logging
import os
import stat
import termios
import time
from typing import Any

import serial

from logger.bus.errors import PortError

_LOGGER = logging.getLogger(__name__)

READ_QUANTUM = 0.005
_PTY_MAJORS = range(136, 144)  # Unix98 pty slaves (Documentation/admin-guide/devices.txt)


def _is_pty(device: str) -> bool:
    try:
        st = os.stat(device)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS


class SerialLink:
    """A byte pipe to the bus: ``write``, ``read_until(deadline)``, ``purge``."""

    def __init__(self, device: str, baudrate: int) -> None:
        self.device = device
        self.baudrate = baudrate
        self._port: serial.SerialBase | None = None

    def open(self) -> None:
        if self._port is not None:
            return
        extra: dict[str, Any] = {} if "://" in self.device else {"exclusive": True}
        if not self.device.lower().startswith("rfc2217://"):
            # pyserial's RFC 2217 client refuses a write timeout (NotImplementedError at open);
            # its socket carries its own 5 s timeout, which bounds a stuck write just as well.
            extra["write_timeout"] = 10.0
        parity = serial.PARITY_EVEN
        for attempt in (1, 2):
            try:
                self._port = serial.serial_for_url(
                    self.device,
                    baudrate=self.baudrate,
                    bytesize=serial.EIGHTBITS,
                    parity=parity,
                    stopbits=serial.STOPBITS_ONE,
                    timeout=READ_QUANTUM,
                    **extra,
                )
                break
            except termios.error as exc:
                # A pty has no parity (MBUS.md): once a previous user's 8E1 was dropped, a
                # new open that asks for parity again fails with EINVAL. A pty carries bytes,
                # not bits, so opening it without parity changes nothing on the "wire".
                if attempt == 1 and _is_pty(self.device):
                    parity = serial.PARITY_NONE
                    continue
                raise PortError(f"cannot open {self.device}: {exc}") from exc
            except (serial.SerialException, OSError, ValueError) as exc:
                busy = "busy" in str(exc).lower() or "lock" in str(exc).lower()
                raise PortError(f"cannot open {self.device}: {exc}", transient=busy) from exc
        _LOGGER.debug("opened %s at %d Bd 8%s1", self.device, self.baudrate, parity)

    def close(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                _LOGGER.debug("closing %s: %s", self.device, exc)

    def reopen(self, baudrate: int) -> None:
        """Switch the baud rate the safe way: close, then open with every setting again."""
        self.close()
        self.baudrate = baudrate
        self.open()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def _require(self) -> serial.SerialBase:
        if self._port is None:
            self.open()
        assert self._port is not None
        return self._port

    def purge(self) -> int:
        """Drop whatever is waiting in the input (late answers, collisions); bytes dropped."""
        port = self._require()
        try:
            waiting = int(port.in_waiting)
            port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            raise PortError(f"{self.device}: {exc}", transient=True) from exc
        return waiting

    def write(self, data: bytes) -> float:
        """Send ``data`` and wait until it has left; the time the last byte is on the wire.

        A pty or a network gateway reports "sent" at once: the bytes still need their wire
        time, so the returned time is never earlier than start + n x 11 / baud.
        """
        port = self._require()
        start = time.monotonic()
        try:
            port.write(data)
            port.flush()
        except (serial.SerialException, OSError) as exc:
            raise PortError(f"{self.device}: write failed: {exc}", transient=True) from exc
        return max(time.monotonic(), start + len(data) * 11.0 / self.baudrate)

    def read_some(self, deadline: float) -> bytes:
        """Bytes that arrive before ``deadline`` (monotonic); empty if none did."""
        port = self._require()
        try:
            while True:
                waiting = port.in_waiting
                data = port.read(waiting if waiting else 1)
                if data or time.monotonic() >= deadline:
                    return bytes(data)
        except (serial.SerialException, OSError) as exc:
            raise PortError(f"{self.device}: read failed: {exc}", transient=True) from exc

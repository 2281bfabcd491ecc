"""Synthetic M-Bus telegrams: variable-data records encoded from values that change over time.

Used by the simulator for meters whose readings must move (the daemon and HIL tests check that
the values stored and pushed are the ones served). The encoding is EN 13757-3: a CI 0x72 long
header (identification BCD, manufacturer, version, medium, access number, status, signature)
followed by DIF/VIF records; a meter with more records than ``per_telegram`` spreads them over
several telegrams, each but the last ending with DIF 0x1F ("more records follow").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

CI_VARIABLE = 0x72


def manufacturer_code(text: str) -> int:
    """Three letters to the 15-bit code (EN 62056-21 flag association)."""
    if len(text) != 3 or not text.isalpha():
        raise ValueError(f"manufacturer {text!r} must be three letters")
    a, b, c = (ord(ch) - 64 for ch in text.upper())
    return (a << 10) | (b << 5) | c


def bcd(value: int, nbytes: int) -> bytes:
    """Unsigned packed BCD, least significant byte first."""
    if value < 0 or value >= 10 ** (2 * nbytes):
        raise ValueError(f"{value} does not fit {2 * nbytes} BCD digits")
    out = bytearray()
    for _ in range(nbytes):
        value, lo = divmod(value, 10)
        value, hi = divmod(value, 10)
        out.append((hi << 4) | lo)
    return bytes(out)


def long_header(
    ident: int,
    manufacturer: int,
    version: int,
    medium: int,
    access: int,
    status: int = 0,
) -> bytes:
    """The 12-byte header of CI 0x72 (identification as 8 BCD digits)."""
    return (
        bcd(ident, 4)
        + manufacturer.to_bytes(2, "little")
        + bytes((version & 0xFF, medium & 0xFF, access & 0xFF, status & 0xFF, 0, 0))
    )


_INT_DIF = {1: 0x01, 2: 0x02, 3: 0x03, 4: 0x04, 6: 0x06, 8: 0x07}
_BCD_DIF = {1: 0x09, 2: 0x0A, 3: 0x0B, 4: 0x0C, 6: 0x0E}


def int_record(value: int, vif: int, size: int = 4, storage: int = 0) -> bytes:
    """A signed integer record (two's complement, LSB first) with storage number 0 or 1."""
    dif = _INT_DIF[size] | ((storage & 1) << 6)
    return bytes((dif, vif)) + value.to_bytes(size, "little", signed=True)


def bcd_record(value: int, vif: int, size: int = 4) -> bytes:
    return bytes((_BCD_DIF[size], vif)) + bcd(value, size)


def datetime_record(epoch: float) -> bytes:
    """DIF 04 VIF 6D: type F date and time (minute resolution)."""
    t = time.gmtime(epoch)
    year = t.tm_year - 2000
    b0 = t.tm_min & 0x3F
    b1 = t.tm_hour & 0x1F
    b2 = (t.tm_mday & 0x1F) | ((year & 0x07) << 5)
    b3 = (t.tm_mon & 0x0F) | ((year >> 3) << 4)
    return bytes((0x04, 0x6D, b0, b1, b2, b3))


@dataclass
class Quantity:
    """A value that changes over time: ``start + rate x seconds``, rounded to an integer.

    ``vif`` fixes unit and scale (0x03 Wh, 0x13 l, 0x2B W, 0x5A 0.1 degC flow temperature...),
    so the served integer is the raw value; ``name`` keys it in the served-values log.
    """

    name: str
    vif: int
    start: int
    rate: float = 0.0
    size: int = 4
    encoding: str = "int"  # "int" or "bcd"

    def value_at(self, elapsed: float) -> int:
        return self.start + int(self.rate * elapsed)

    def encode(self, value: int) -> bytes:
        if self.encoding == "bcd":
            return bcd_record(value, self.vif, self.size)
        return int_record(value, self.vif, self.size)


def default_quantities() -> list[Quantity]:
    return [
        Quantity("energy_wh", 0x03, 1_000_000, rate=2.5),
        Quantity("volume_l", 0x13, 250_000, rate=0.1, encoding="bcd"),
        Quantity("power_w", 0x2B, 9_000, size=2),
        Quantity("flow_temp_0.1C", 0x5A, 653, size=2),
    ]


@dataclass
class SyntheticMeter:
    """A meter whose telegrams are encoded from its quantities at the time they are asked for.

    ``clock`` is injectable for tests; ``snapshot()`` gives the telegrams and the values they
    carry, taken together so the log shows exactly what went out.
    """

    ident: int
    manufacturer: str = "SIM"
    version: int = 1
    medium: int = 0x07
    quantities: list[Quantity] = field(default_factory=default_quantities)
    per_telegram: int = 0  # 0: all records in one telegram
    with_datetime: bool = True
    clock: Callable[[], float] = time.time
    access: int = 0
    _t0: float | None = None

    @property
    def secondary(self) -> str:
        man = manufacturer_code(self.manufacturer)
        return f"{self.ident:08d}{man:04X}{self.version & 0xFF:02X}{self.medium & 0xFF:02X}"

    def snapshot(self) -> tuple[list[tuple[int, bytes]], dict[str, int]]:
        now = self.clock()
        if self._t0 is None:
            self._t0 = now
        elapsed = now - self._t0
        values = {q.name: q.value_at(elapsed) for q in self.quantities}
        records = [q.encode(values[q.name]) for q in self.quantities]
        if self.with_datetime:
            records.append(datetime_record(now))
        size = self.per_telegram or len(records)
        chunks = [records[i : i + size] for i in range(0, len(records), size)] or [[]]
        telegrams = []
        man = manufacturer_code(self.manufacturer)
        for k, chunk in enumerate(chunks):
            self.access = (self.access + 1) & 0xFF
            body = long_header(self.ident, man, self.version, self.medium, self.access)
            body += b"".join(chunk)
            if k + 1 < len(chunks):
                body += b"\x1f"
            telegrams.append((CI_VARIABLE, body))
        return telegrams, values

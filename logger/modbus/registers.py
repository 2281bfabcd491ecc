"""Register maps to exact values and back: pure functions, no I/O.

Integers are scaled with :class:`~decimal.Decimal` arithmetic (ABB's 0.01 kWh stays exact).
IEEE floats are turned into the *shortest* decimal that converts back to the same float of
their width — ``230.1`` for the float32 nearest 230.1, not 230.100006103515625 — which is
the number the meter's firmware meant; the float's full binary expansion would be noise.
Requests are planned so neighbouring registers share one read (at most 125 registers, the
Modbus limit) unless the ``one_request_per_field`` quirk forbids it.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

from logger.config.model import RegisterFunction, RegisterSpec, RegisterType, WordOrder
from logger.modbus.errors import RegisterValueError
from logger.readings import canonical_decimal

MAX_REGISTERS = 125  # per read request (Modbus application protocol, function 3 and 4)
MAX_GAP = 8  # registers read and thrown away to save a request


@dataclass(frozen=True, slots=True)
class ReadRequest:
    function: RegisterFunction
    address: int
    count: int
    specs: tuple[RegisterSpec, ...]


def plan_requests(
    specs: Sequence[RegisterSpec],
    one_per_field: bool = False,
    max_registers: int = MAX_REGISTERS,
    max_gap: int = MAX_GAP,
) -> list[ReadRequest]:
    """Group register specs into as few read requests as the limits allow."""
    out: list[ReadRequest] = []
    for function in RegisterFunction:
        group = sorted((s for s in specs if s.function is function), key=lambda s: s.address)
        current: list[RegisterSpec] = []
        start = end = 0
        for spec in group:
            spec_end = spec.address + spec.count
            if (
                current
                and not one_per_field
                and spec.address - end <= max_gap
                and max(end, spec_end) - start <= max_registers
            ):
                current.append(spec)
                end = max(end, spec_end)
                continue
            if current:
                out.append(ReadRequest(function, start, end - start, tuple(current)))
            current, start, end = [spec], spec.address, spec_end
        if current:
            out.append(ReadRequest(function, start, end - start, tuple(current)))
    return out


def _words_to_bytes(words: Sequence[int], order: WordOrder) -> bytes:
    ordered = list(words) if order is WordOrder.BIG else list(reversed(words))
    return b"".join(w.to_bytes(2, "big") for w in ordered)


def _bytes_to_words(data: bytes, order: WordOrder) -> list[int]:
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if order is WordOrder.BIG else list(reversed(words))


def shortest_float_text(value: float, width: int) -> str:
    """The shortest decimal text that parses back to the same float of ``width`` bits."""
    if width == 64:
        return repr(value)
    packed = struct.pack(">f", value)
    for digits in range(1, 10):
        text = f"{value:.{digits}g}"
        try:
            if struct.pack(">f", float(text)) == packed:
                return text
        except OverflowError:  # rounded up past the largest float32: needs more digits
            continue
    return repr(value)  # pragma: no cover - 9 significant digits always round-trip float32


def decode_value(spec: RegisterSpec, words: Sequence[int]) -> str:
    """The exact value (canonical decimal string) of ``spec`` from its raw register words."""
    if len(words) != spec.count:
        raise ValueError(f"{spec.name}: {len(words)} words for a {spec.type} ({spec.count})")
    data = _words_to_bytes(words, spec.word_order)
    rtype = spec.type
    raw: Decimal
    if rtype in (RegisterType.FLOAT32, RegisterType.FLOAT64):
        (number,) = struct.unpack(">f" if rtype is RegisterType.FLOAT32 else ">d", data)
        if not math.isfinite(number):
            raise RegisterValueError(f"register {spec.name} at {spec.address} holds {number}")
        raw = Decimal(shortest_float_text(number, 32 if rtype is RegisterType.FLOAT32 else 64))
    else:
        raw = Decimal(int.from_bytes(data, "big", signed=rtype.value.startswith("int")))
    return canonical_decimal(raw * spec.scale)


def encode_value(spec: RegisterSpec, value: Decimal | str | int) -> list[int]:
    """The register words that :func:`decode_value` turns into ``value`` (simulators, tests).

    For integer types ``value / scale`` must be a whole number in range; floats are rounded to
    the nearest float of the register's width.
    """
    raw = Decimal(value) / spec.scale
    rtype = spec.type
    if rtype is RegisterType.FLOAT32:
        data = struct.pack(">f", float(raw))
    elif rtype is RegisterType.FLOAT64:
        data = struct.pack(">d", float(raw))
    else:
        if raw != raw.to_integral_value():
            raise ValueError(f"{spec.name}: {value} is not a multiple of the scale {spec.scale}")
        bits = spec.count * 16
        data = int(raw).to_bytes(bits // 8, "big", signed=rtype.value.startswith("int"))
    return _bytes_to_words(data, spec.word_order)

"""Serial timing derived from the baud rate (EN 13757-2 and what real converters need).

A slave answers between 11 bit times and 330 bit times + 50 ms after the request ends. The
master's answer timeout is that bound plus the first character's own wire time plus a margin
for USB or Ethernet converters (libmbus adds about 100 ms). Once an answer has started, a pause
longer than :func:`char_gap` means it has ended: M-Bus has no gaps inside a telegram, so the
gap only has to cover converter latency.
"""

from __future__ import annotations

BITS_PER_CHAR = 11  # start, 8 data, even parity, stop (8E1)
DEFAULT_MARGIN = 0.1  # USB converters' latency timer and scheduling
MAX_TIMEOUT = 2.0


def wire_time(nbytes: int, baudrate: int) -> float:
    """Seconds ``nbytes`` take on the wire at 8E1."""
    return nbytes * BITS_PER_CHAR / baudrate


def answer_timeout(baudrate: int, margin: float = DEFAULT_MARGIN) -> float:
    """Longest wait from the end of a request to the first answer byte."""
    return 330.0 / baudrate + 0.050 + wire_time(1, baudrate) + margin


def char_gap(baudrate: int, margin: float = DEFAULT_MARGIN) -> float:
    """Silence after which a started answer is over (converter latency, not the meter)."""
    return 40.0 / baudrate + 0.020 + margin / 2


def idle_gap(baudrate: int) -> float:
    """Default pause between an answer and the next request: 11 bit times (one character)."""
    return wire_time(1, baudrate)

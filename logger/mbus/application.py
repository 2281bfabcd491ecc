"""Application layer dispatch (EN 13757-3): the CI field, the data headers, CI 0x70 errors.

:func:`parse_telegram` turns a whole long (or control) frame into a :class:`Telegram`: the
header bytes and the raw records, not yet interpreted. Both the JSON decoder and the libmbus
XML renderer start here, so they always agree on what a frame contains.

CI fields decoded: 0x72 (variable data, long header), 0x76 (the same with multi-byte values
most significant byte first, "mode 2"), 0x7A (short header), 0x78 (no header), 0x73 and 0x77
(fixed data structure, LSB and MSB first) and 0x70 (application error). Anything else is an
:class:`UnsupportedCI`.

MicroPython-clean.
"""

from logger.mbus import frames
from logger.mbus.errors import DecodeError, IncompleteFrame, UnsupportedCI
from logger.mbus.records import parse_records

CI_ERROR = 0x70
CI_VARIABLE = 0x72
CI_FIXED = 0x73
CI_VARIABLE_MSB = 0x76
CI_FIXED_MSB = 0x77
CI_NO_HEADER = 0x78
CI_SHORT_HEADER = 0x7A

VARIABLE = "variable"
FIXED = "fixed"
ERROR = "error"

LONG_HEADER = 12
SHORT_HEADER = 4
FIXED_LENGTH = 16
USER_DATA = 7  # offset of the first byte after CI in a long frame

_CI_NAMES = {
    0x50: "application reset",
    0x51: "data send (master to slave)",
    0x52: "selection of slaves",
    0x56: "selection of slaves (mode 2)",
    0x71: "alarm status",
    0x7B: "wireless M-Bus long header",
}


class Telegram:
    """One frame's application layer, split but not interpreted."""

    __slots__ = (
        "a",
        "c",
        "ci",
        "error_code",
        "error_data",
        "fixed",
        "header",
        "kind",
        "more",
        "msb",
        "records",
    )

    def __init__(self, c: int, a: int, ci: int, kind: str) -> None:
        self.c = c
        self.a = a
        self.ci = ci
        self.kind = kind
        self.header: bytes | None = None  # the long (12) or short (4) header, or None
        self.records: list = []
        self.more = False
        self.error_code = 0
        self.error_data = b""
        self.msb = False
        self.fixed = b""  # the 16 bytes of a fixed data structure


def split_frame(data: bytes) -> tuple[int, int, int, bytes]:
    """The link layer of a whole frame: (C, A, CI, user data). Long and control frames only."""
    if not data:
        raise IncompleteFrame("empty input", 0, "a long frame (68 L L 68 ...)")
    if data[0] != frames.LONG_START:
        if data[0] in (frames.ACK_BYTE, frames.SHORT_START):
            frames.parse_frame(data)  # reports a broken short frame precisely
            raise DecodeError(
                "a %s frame carries no application data"
                % ("single-character" if data[0] == frames.ACK_BYTE else "short"),
                0,
                "a long frame (68 L L 68 ...)",
            )
    frame = frames.parse_frame(data)
    c, a, ci = frame.c, frame.a, frame.ci
    if c is None or a is None or ci is None:  # only long and control frames get here
        raise DecodeError("not a long frame", 0, "a long frame (68 L L 68 ...)")
    return c, a, ci, frame.data


def parse_telegram(data: bytes, libmbus: bool = False) -> "Telegram":
    """Parse a whole frame into a :class:`Telegram` (raises an ``MBusError`` subclass)."""
    c, a, ci, user = split_frame(data)
    if ci == CI_ERROR:
        t = Telegram(c, a, ci, ERROR)
        t.error_code = user[0] if user else 0
        t.error_data = bytes(user[1:])
        return t
    if ci == CI_VARIABLE or ci == CI_VARIABLE_MSB:
        if libmbus and ci != CI_VARIABLE:
            raise UnsupportedCI("libmbus does not decode CI 0x%02X" % ci, 6, "CI 70, 72 or 73")
        if len(user) < LONG_HEADER:
            raise DecodeError(
                "variable data header truncated: %d of 12 bytes" % len(user),
                USER_DATA + len(user),
                "a 12-byte header",
            )
        t = Telegram(c, a, ci, VARIABLE)
        t.msb = ci == CI_VARIABLE_MSB
        t.header = bytes(user[:LONG_HEADER])
        t.records, t.more = parse_records(user, LONG_HEADER, USER_DATA, libmbus)
        return t
    if ci == CI_SHORT_HEADER or ci == CI_NO_HEADER:
        if libmbus:
            raise UnsupportedCI("libmbus does not decode CI 0x%02X" % ci, 6, "CI 70, 72 or 73")
        t = Telegram(c, a, ci, VARIABLE)
        start = 0
        if ci == CI_SHORT_HEADER:
            if len(user) < SHORT_HEADER:
                raise DecodeError(
                    "short header truncated: %d of 4 bytes" % len(user),
                    USER_DATA + len(user),
                    "a 4-byte header",
                )
            t.header = bytes(user[:SHORT_HEADER])
            start = SHORT_HEADER
        t.records, t.more = parse_records(user, start, USER_DATA, libmbus)
        return t
    if ci == CI_FIXED or ci == CI_FIXED_MSB:
        if libmbus and ci != CI_FIXED:
            raise UnsupportedCI("libmbus does not decode CI 0x%02X" % ci, 6, "CI 70, 72 or 73")
        if len(user) != FIXED_LENGTH:
            raise DecodeError(
                "fixed data structure of %d bytes" % len(user),
                USER_DATA + min(len(user), FIXED_LENGTH),
                "exactly 16 bytes",
            )
        t = Telegram(c, a, ci, FIXED)
        t.msb = ci == CI_FIXED_MSB
        t.fixed = bytes(user)
        return t
    name = _CI_NAMES.get(ci)
    if name is None and frames.CI_BAUD_FIRST <= ci <= frames.CI_BAUD_FIRST + 7:
        name = "baud rate switch"
    raise UnsupportedCI(
        "unsupported CI 0x%02X%s" % (ci, " (" + name + ")" if name else ""),
        6,
        "CI 70, 72, 73, 76, 77, 78 or 7A",
    )

"""M-Bus link layer (EN 13757-2, FT1.2 frames): parse, find in a byte stream, encode.

Four frame types: the single character E5 (ACK), the short frame ``10 C A CS 16``, the
control frame ``68 03 03 68 C A CI CS 16`` and the long frame ``68 L L 68 C A CI data CS 16``.
Parsing is strict (length fields, checksum, stop byte); :class:`FrameScanner` finds frames in a
stream with noise before, between and after them (the bus resync after a collision or echo).

The encoders cover every request a master sends and every answer a slave gives, so the meter
simulator is built on the same code as the master.

MicroPython-clean: no typing imports, no enum, plain classes with ``__slots__``.
"""

from logger.mbus.errors import ChecksumError, FrameError, IncompleteFrame, UsageError

ACK_BYTE = 0xE5
SHORT_START = 0x10
LONG_START = 0x68
STOP = 0x16

# Frame kinds.
ACK = 0
SHORT = 1
CONTROL = 2
LONG = 3
KIND_NAMES = ("ack", "short", "control", "long")

# C field values (master -> slave, with FCB bit 0x20 and FCV bit 0x10 where they apply).
C_SND_NKE = 0x40
C_SND_UD = 0x53
C_SND_UD_FCB = 0x73
C_REQ_UD2 = 0x5B
C_REQ_UD2_FCB = 0x7B
C_REQ_UD1 = 0x5A
C_REQ_UD1_FCB = 0x7A
C_FCB = 0x20
C_FCV = 0x10
# Slave -> master.
C_RSP_UD = 0x08
C_ACD = 0x20
C_DFC = 0x10

# Addresses.
ADDR_UNCONFIGURED = 0
ADDR_MAX_PRIMARY = 250
ADDR_SELECTED = 253  # network layer: talk to the slave selected by secondary address
ADDR_TEST = 254  # every slave answers with its own address
ADDR_BROADCAST = 255  # every slave listens, none answers

# CI fields of master requests.
CI_APPLICATION_RESET = 0x50
CI_DATA_SEND = 0x51  # SND_UD with data records (select for readout, set address)
CI_SELECT = 0x52  # secondary address select
CI_SELECT_MSB = 0x56  # secondary address select, mode 2 (MSB first)
CI_BAUD_FIRST = 0xB8

BAUD_RATES = (300, 600, 1200, 2400, 4800, 9600, 19200, 38400)

MAX_LONG_DATA = 252  # L <= 255 = C + A + CI + data
MAX_FRAME_BYTES = 261


class Frame:
    """One parsed link-layer frame. ``data`` is the user data after the CI byte."""

    __slots__ = ("a", "c", "ci", "data", "kind", "length")

    def __init__(
        self,
        kind: int,
        c: "int | None" = None,
        a: "int | None" = None,
        ci: "int | None" = None,
        data: bytes = b"",
        length: int = 1,
    ) -> None:
        self.kind = kind
        self.c = c
        self.a = a
        self.ci = ci
        self.data = data
        self.length = length  # bytes on the wire

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Frame)
            and self.kind == other.kind
            and self.c == other.c
            and self.a == other.a
            and self.ci == other.ci
            and bytes(self.data) == bytes(other.data)
        )

    def __repr__(self) -> str:
        parts = [KIND_NAMES[self.kind]]
        if self.c is not None:
            parts.append("C=%02X" % self.c)
        if self.a is not None:
            parts.append("A=%d" % self.a)
        if self.ci is not None:
            parts.append("CI=%02X" % self.ci)
        if self.data:
            parts.append("data=%d bytes" % len(self.data))
        return "Frame(" + " ".join(parts) + ")"

    @property
    def fcb(self) -> bool:
        return bool(self.c is not None and self.c & C_FCB)

    def encode(self) -> bytes:
        if self.kind == ACK:
            return bytes((ACK_BYTE,))
        c = self.c or 0
        a = self.a or 0
        if self.kind == SHORT:
            return encode_short(c, a)
        return encode_long(c, a, self.ci or 0, self.data)


ACK_FRAME = Frame(ACK)


def checksum(data: bytes, start: int = 0, end: "int | None" = None) -> int:
    """Arithmetic sum modulo 256, as FT1.2 defines it."""
    if end is None:
        end = len(data)
    return sum(data[start:end]) & 0xFF


def parse_frame(data: "bytes | bytearray", strict_end: bool = True) -> Frame:
    """Parse exactly one frame from the start of ``data``.

    With ``strict_end`` bytes after the frame are an error; otherwise they are ignored (the
    frame's ``length`` says how many bytes it used).
    """
    n = len(data)
    if n == 0:
        raise IncompleteFrame("empty input", 0, "a frame start (E5, 10 or 68)")
    start = data[0]
    if start == ACK_BYTE:
        frame = ACK_FRAME
        used = 1
    elif start == SHORT_START:
        if n < 5:
            raise IncompleteFrame("short frame truncated", n, "5 bytes")
        if data[4] != STOP:
            raise FrameError("short frame stop byte is %02X" % data[4], 4, "16")
        cs = (data[1] + data[2]) & 0xFF
        if data[3] != cs:
            raise ChecksumError("short frame checksum %02X, computed %02X" % (data[3], cs), 3)
        frame = Frame(SHORT, data[1], data[2], None, b"", 5)
        used = 5
    elif start == LONG_START:
        if n < 4:
            raise IncompleteFrame("long frame header truncated", n, "68 L L 68")
        length = data[1]
        if data[2] != length:
            raise FrameError("length fields differ (%d, %d)" % (length, data[2]), 2, "L twice")
        if data[3] != LONG_START:
            raise FrameError("second start byte is %02X" % data[3], 3, "68")
        if length < 3:
            raise FrameError("length field %d too small" % length, 1, "L >= 3")
        used = length + 6
        if n < used:
            raise IncompleteFrame(
                "frame truncated: %d of %d bytes" % (n, used), n, "%d bytes" % used
            )
        cs = sum(data[4 : 4 + length]) & 0xFF
        if data[4 + length] != cs:
            raise ChecksumError("checksum %02X, computed %02X" % (data[4 + length], cs), 4 + length)
        if data[5 + length] != STOP:
            raise FrameError("stop byte is %02X" % data[5 + length], 5 + length, "16")
        kind = CONTROL if length == 3 else LONG
        frame = Frame(kind, data[4], data[5], data[6], bytes(data[7 : 4 + length]), used)
    else:
        raise FrameError("no frame start: %02X" % start, 0, "E5, 10 or 68")
    if strict_end and used != n:
        raise FrameError("%d bytes after the frame" % (n - used), used, "end of data")
    return frame


# -- finding frames in a stream -------------------------------------------------------------

NEED_DATA = None


class FrameScanner:
    """Finds frames in a byte stream, skipping noise (resync).

    Feed bytes with :meth:`feed`, take frames with :meth:`next_frame` (``None`` means more
    bytes are needed). When the caller knows no more bytes will come (its timeout expired) it
    calls :meth:`flush`, which gives the remaining complete frames and then describes what was
    left over. ``skipped`` counts the noise bytes dropped so far.
    """

    __slots__ = ("_buf", "_pos", "accept_ack", "offset", "skipped")

    def __init__(self, accept_ack: bool = True) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.skipped = 0
        self.offset = 0  # stream offset of _buf[0]
        self.accept_ack = accept_ack

    def feed(self, data: bytes) -> None:
        if self._pos > 4096:
            self._buf = self._buf[self._pos :]
            self.offset += self._pos
            self._pos = 0
        self._buf.extend(data)

    def pending(self) -> int:
        """Bytes received and not yet consumed."""
        return len(self._buf) - self._pos

    def clear(self) -> None:
        self.skipped += len(self._buf) - self._pos
        self.offset += len(self._buf)
        self._buf = bytearray()
        self._pos = 0

    def next_frame(self) -> "Frame | None":
        buf = self._buf
        n = len(buf)
        while self._pos < n:
            i = self._pos
            b = buf[i]
            if b == ACK_BYTE and self.accept_ack:
                self._pos = i + 1
                return ACK_FRAME
            if b == SHORT_START:
                if n - i < 5:
                    return NEED_DATA
                if buf[i + 4] == STOP and buf[i + 3] == (buf[i + 1] + buf[i + 2]) & 0xFF:
                    self._pos = i + 5
                    return Frame(SHORT, buf[i + 1], buf[i + 2], None, b"", 5)
            elif b == LONG_START:
                if n - i < 4:
                    return NEED_DATA
                length = buf[i + 1]
                if buf[i + 2] == length and buf[i + 3] == LONG_START and length >= 3:
                    end = i + length + 6
                    if n < end:
                        return NEED_DATA
                    try:
                        frame = parse_frame(buf[i:end])
                    except FrameError:
                        frame = None
                    if frame is not None:
                        self._pos = end
                        return frame
            # Not a frame start here: drop one byte of noise and look again.
            self._pos = i + 1
            self.skipped += 1
        return NEED_DATA

    def flush(self) -> "list[Frame]":
        """No more bytes will come: return complete frames left, skipping stuck headers.

        A header that promised more bytes than arrived is treated as noise so that a complete
        frame after it is still found. Returns a list of frames; the bytes that formed no frame
        are counted in ``skipped``.
        """
        frames = []
        while True:
            frame = self.next_frame()
            if frame is not None:
                frames.append(frame)
                continue
            if self._pos >= len(self._buf):
                return frames
            # Stuck on an incomplete header: it is noise now.
            self._pos += 1
            self.skipped += 1


# -- encoders -----------------------------------------------------------------------------


def encode_short(c: int, a: int) -> bytes:
    return bytes((SHORT_START, c, a, (c + a) & 0xFF, STOP))


def encode_long(c: int, a: int, ci: int, data: bytes = b"") -> bytes:
    n = len(data)
    if n > MAX_LONG_DATA:
        raise UsageError("user data of %d bytes exceeds %d" % (n, MAX_LONG_DATA))
    length = n + 3
    out = bytearray(n + 9)
    out[0] = LONG_START
    out[1] = length
    out[2] = length
    out[3] = LONG_START
    out[4] = c
    out[5] = a
    out[6] = ci
    out[7 : 7 + n] = data
    out[7 + n] = (c + a + ci + sum(data)) & 0xFF
    out[8 + n] = STOP
    return bytes(out)


def _check_address(a: int, allow_special: bool = True) -> None:
    if not 0 <= a <= 255:
        raise UsageError("address %r out of range 0-255" % (a,))
    if not allow_special and a > ADDR_MAX_PRIMARY:
        raise UsageError("primary address %d out of range 0-250" % a)


def snd_nke(a: int) -> bytes:
    """Link reset (also clears the FCB state and deselects a secondary-selected slave)."""
    _check_address(a)
    return encode_short(C_SND_NKE, a)


def req_ud2(a: int, fcb: bool = True, fcv: bool = True) -> bytes:
    """Request class 2 data. ``fcv=False`` sends C=0x4B (frame count bit not valid)."""
    _check_address(a)
    c = 0x4B
    if fcv:
        c |= C_FCV
    if fcb:
        c |= C_FCB
    return encode_short(c, a)


def req_ud1(a: int, fcb: bool = True, fcv: bool = True) -> bytes:
    """Request class 1 (alarm) data."""
    _check_address(a)
    c = 0x4A
    if fcv:
        c |= C_FCV
    if fcb:
        c |= C_FCB
    return encode_short(c, a)


def snd_ud(a: int, ci: int, data: bytes = b"", fcb: bool = False) -> bytes:
    """Send user data to a slave (answered with E5)."""
    _check_address(a)
    return encode_long(C_SND_UD_FCB if fcb else C_SND_UD, a, ci, data)


def application_reset(a: int, subcode: "int | None" = None) -> bytes:
    """CI 0x50, optionally with the one-byte reset subcode."""
    data = b"" if subcode is None else bytes((subcode,))
    return snd_ud(a, CI_APPLICATION_RESET, data)


def select_for_readout(a: int, records: bytes) -> bytes:
    """CI 0x51 with the DIF/VIF pairs the slave should include in its next RSP_UD."""
    return snd_ud(a, CI_DATA_SEND, bytes(records))


def set_primary_address(a: int, new_address: int) -> bytes:
    """CI 0x51, DIF 01 VIF 7A: write a new primary address."""
    _check_address(new_address, allow_special=False)
    return snd_ud(a, CI_DATA_SEND, bytes((0x01, 0x7A, new_address)))


def set_baudrate(a: int, baudrate: int) -> bytes:
    """Control frame with CI 0xB8-0xBF; the slave acknowledges at the old rate, then switches."""
    if baudrate not in BAUD_RATES:
        raise UsageError("baud rate %r not one of %s" % (baudrate, BAUD_RATES))
    _check_address(a)
    return encode_long(C_SND_UD, a, CI_BAUD_FIRST + BAUD_RATES.index(baudrate))


def baudrate_from_ci(ci: int) -> "int | None":
    if CI_BAUD_FIRST <= ci <= CI_BAUD_FIRST + 7:
        return BAUD_RATES[ci - CI_BAUD_FIRST]
    return None


# -- secondary addresses ------------------------------------------------------------------

HEX = "0123456789ABCDEF"


def secondary_mask_bytes(mask: str) -> bytes:
    """Encode a 16-character secondary address or mask as the 8 bytes of a CI 0x52 select.

    ``mask`` is ``IIIIIIIIMMMMVVDD`` as libmbus writes it: the 8 identification digits (BCD,
    ``F`` = wildcard digit), the manufacturer code as 4 hex digits, version and medium as 2
    hex digits each; ``F`` in any position is a wildcard nibble. Bytes go out LSB first.
    """
    if len(mask) != 16:
        raise UsageError("secondary address %r must have 16 hex digits" % (mask,))
    mask = mask.upper()
    for ch in mask:
        if ch not in HEX:
            raise UsageError("secondary address %r: %r is not a hex digit" % (mask, ch))
    out = bytearray(8)
    # Identification number: digits 0-7, most significant first; sent LSB first.
    for k in range(4):
        hi = mask[6 - 2 * k]
        lo = mask[7 - 2 * k]
        out[k] = (HEX.index(hi) << 4) | HEX.index(lo)
    man = int(mask[8:12], 16)
    out[4] = man & 0xFF
    out[5] = man >> 8
    out[6] = int(mask[12:14], 16)
    out[7] = int(mask[14:16], 16)
    return bytes(out)


def secondary_from_bytes(data: bytes) -> str:
    """The 16-character secondary address of 8 header bytes (id LSB first, man, ver, med)."""
    if len(data) < 8:
        raise UsageError("secondary address needs 8 bytes, got %d" % len(data))
    digits = ""
    for k in range(3, -1, -1):
        digits += HEX[data[k] >> 4] + HEX[data[k] & 0x0F]
    man = data[4] | (data[5] << 8)
    return digits + "%04X%02X%02X" % (man, data[6], data[7])


def select_secondary(mask: str) -> bytes:
    """SND_UD to address 253 with CI 0x52 selecting the slave(s) matching ``mask``."""
    return snd_ud(ADDR_SELECTED, CI_SELECT, secondary_mask_bytes(mask))


def mask_matches(mask: str, address: str) -> bool:
    """Does a slave with secondary ``address`` (16 hex digits) answer a select of ``mask``?

    Nibble-wise: ``F`` in the mask matches any digit.
    """
    mask = mask.upper()
    address = address.upper()
    for i in range(16):
        m = mask[i]
        if m != "F" and m != address[i]:
            return False
    return True


# -- slave answers ------------------------------------------------------------------------


def ack() -> bytes:
    return bytes((ACK_BYTE,))


def rsp_ud(a: int, ci: int, data: bytes, acd: bool = False, dfc: bool = False) -> bytes:
    """A slave's RSP_UD long frame carrying ``data`` after the CI byte."""
    c = C_RSP_UD
    if acd:
        c |= C_ACD
    if dfc:
        c |= C_DFC
    return encode_long(c, a, ci, data)


def wire_time(nbytes: int, baudrate: int) -> float:
    """Seconds ``nbytes`` take on the wire at 8E1 (11 bits per character)."""
    return nbytes * 11.0 / baudrate

"""Data records of the variable data structure (EN 13757-3): DIF/DIFE, VIF/VIFE, data.

:func:`parse_records` splits the user data into raw records without interpreting values; the
JSON decoder (:mod:`logger.mbus.decoder`) and the libmbus XML renderer (:mod:`logger.mbus.xml`)
both read the same raw records. A raw record is a tuple, cheaper than an object on the hot
path::

    (offset, dif, difes, vif, vifes, text, data, lvar)

``offset`` is the record's first byte in the frame, ``difes``/``vifes`` are ``bytes``,
``vif`` is ``None`` for the manufacturer-data records DIF 0x0F/0x1F, ``text`` is the plain-
text unit of VIF 0x7C/0xFC (already in reading order) or ``None``, ``data`` the value bytes
and ``lvar`` the variable-length byte of data field 0x0D (else ``None``).

Two records mark where the standard's reading has to stop, because the length of what
follows is unknown: a reserved special-function DIF (data field 1111 other than 0x0F, 0x1F,
0x2F) comes as ``vif`` ``None`` with ``data`` holding every byte from the DIF on, and a
reserved LVAR (CA-CF, DA-DF, F7-FF: :func:`lvar_length` is ``None``) as a record whose ``lvar``
is that byte and whose ``data`` holds that byte and every byte after it. Either is always the
last record. Keeping them (instead of refusing the telegram) keeps the readings the meter sent
before them.

The one place the two readers differ is the length of variable-length data (LVAR) above 0xBF:
``libmbus=True`` reproduces libmbus's lengths (so the XML matches it), the default follows the
standard. EN 13757-3 limits a record to 10 DIFEs and 10 VIFEs; so does libmbus.

MicroPython-clean.
"""

from logger.mbus.errors import DecodeError, TruncatedRecord

# Data field (low nibble of DIF) -> data length in bytes; None: variable (LVAR).
DATA_LENGTH = (0, 1, 2, 3, 4, 4, 6, 8, 0, 1, 2, 3, 4, None, 6, 8)

DIF_MANUFACTURER = 0x0F
DIF_MORE_RECORDS = 0x1F
DIF_IDLE_FILLER = 0x2F
MAX_DIFE = 10
MAX_VIFE = 10
MAX_TEXT_VIF = 128  # libmbus's buffer for a plain-text unit


def lvar_length(lvar: int, libmbus: bool) -> int | None:
    """Number of data bytes announced by an LVAR byte, or ``None`` if it is reserved."""
    if lvar <= 0xBF:
        return lvar  # text, lvar characters
    if libmbus:
        if lvar <= 0xDF:
            return (lvar & 0x0F) * 2
        if lvar <= 0xEF:
            return lvar - 0xE0
        if lvar <= 0xFA:
            return lvar - 0xF0
        return None
    if 0xC0 <= lvar <= 0xC9:
        return lvar - 0xC0  # positive BCD, 2 digits per byte
    if 0xD0 <= lvar <= 0xD9:
        return lvar - 0xD0  # negative BCD
    if 0xE0 <= lvar <= 0xEF:
        return lvar - 0xE0  # binary number
    if 0xF0 <= lvar <= 0xF4:
        return 4 * (lvar - 0xEC)  # binary number, 16..32 bytes
    if lvar == 0xF5:
        return 48
    if lvar == 0xF6:
        return 64
    return None


def _text(data: bytes) -> str:
    """Plain text as sent (last character first), read as Latin-1."""
    return "".join([chr(b) for b in reversed(data)])


def _extensions(data: bytes, pos: int, end: int, base: int, name: str, limit: int) -> bytes:
    """The DIFE or VIFE chain at ``data[pos:]``: bit 7 of each byte says another one follows.

    ``name`` ("DIFE"/"VIFE") and ``limit`` (EN 13757-3 allows 10) shape the error messages.
    """
    p = pos
    while True:
        if p >= end:
            raise TruncatedRecord("record ends inside its %ss" % name, base + p, "a " + name)
        if p - pos >= limit:
            raise DecodeError(
                "more than %d %ss" % (limit, name), base + p, "at most %d %ss" % (limit, name)
            )
        b = data[p]
        p += 1
        if not b & 0x80:
            break
    return bytes(data[pos:p])


def parse_records(
    data: bytes, start: int, base: int = 0, libmbus: bool = False
) -> tuple[list, bool]:
    """Split ``data[start:]`` into raw records; returns ``(records, more_records_follow)``.

    ``base`` is added to offsets in errors and records (the position of ``data[0]`` in the
    frame). Raises :class:`TruncatedRecord` when a record runs past the end and
    :class:`DecodeError` for other malformed records, naming the offset.
    """
    records: list[tuple] = []
    more = False
    end = len(data)
    pos = start
    while pos < end:
        dif = data[pos]
        if dif == DIF_IDLE_FILLER:
            pos += 1
            continue
        offset = pos
        if dif == DIF_MANUFACTURER or dif == DIF_MORE_RECORDS:
            if dif == DIF_MORE_RECORDS:
                more = True
            records.append((base + offset, dif, b"", None, b"", None, bytes(data[pos + 1 :]), None))
            break
        if not libmbus and dif & 0x0F == 0x0F:
            # Reserved special function (data field 1111 other than 0F/1F/2F): even its DIFEs
            # and VIF are undefined, so it and everything after it are kept as bytes, unread.
            records.append((base + offset, dif, b"", None, b"", None, bytes(data[pos:]), None))
            break
        pos += 1
        difes = b""
        if dif & 0x80:
            difes = _extensions(data, pos, end, base, "DIFE", MAX_DIFE)
            pos += len(difes)
        if pos >= end:
            raise TruncatedRecord("record ends before its VIF", base + pos, "a VIF")
        vif = data[pos]
        pos += 1
        text = None
        if vif & 0x7F == 0x7C:
            if pos >= end:
                raise TruncatedRecord(
                    "plain-text VIF without its length", base + pos, "a length byte"
                )
            n = data[pos]
            if libmbus and n > MAX_TEXT_VIF:
                raise DecodeError(
                    "plain-text VIF of %d characters is too long" % n,
                    base + pos,
                    "at most %d" % MAX_TEXT_VIF,
                )
            if pos + 1 + n > end:
                raise TruncatedRecord(
                    "plain-text VIF of %d characters runs past the end" % n,
                    base + pos,
                    "%d bytes" % (n + 1),
                )
            text = _text(data[pos + 1 : pos + 1 + n])
            pos += 1 + n
        vifes = b""
        if vif & 0x80:
            vifes = _extensions(data, pos, end, base, "VIFE", MAX_VIFE)
            pos += len(vifes)
        length = DATA_LENGTH[dif & 0x0F]
        lvar = None
        if length is None:
            if pos >= end:
                raise TruncatedRecord(
                    "variable-length record without its LVAR byte", base + pos, "an LVAR byte"
                )
            lvar = data[pos]
            length = lvar_length(lvar, libmbus)
            if length is None:
                if libmbus:
                    length = 0  # libmbus leaves the byte to be read as the next DIF
                    lvar = None
                else:
                    # The length is unknown, so nothing after this byte can be framed.
                    records.append(
                        (base + offset, dif, difes, vif, vifes, text, bytes(data[pos:]), lvar)
                    )
                    break
            else:
                pos += 1
        if pos + length > end:
            raise TruncatedRecord(
                "record data of %d bytes runs past the end (%d left)" % (length, end - pos),
                base + pos,
                "%d data bytes" % length,
            )
        records.append(
            (base + offset, dif, difes, vif, vifes, text, bytes(data[pos : pos + length]), lvar)
        )
        pos += length
    return records, more


def storage_number(dif: int, difes: bytes) -> int:
    n = (dif >> 6) & 1
    shift = 1
    for b in difes:
        n |= (b & 0x0F) << shift
        shift += 4
    return n


def tariff(difes: bytes) -> int:
    n = 0
    shift = 0
    for b in difes:
        n |= ((b >> 4) & 3) << shift
        shift += 2
    return n


def subunit(difes: bytes) -> int:
    n = 0
    shift = 0
    for b in difes:
        n |= ((b >> 6) & 1) << shift
        shift += 1
    return n

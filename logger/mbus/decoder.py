"""``decode(frame_bytes) -> dict``: one telegram as plain JSON-ready values (EN 13757-3).

The schema is documented in ``docs/decoder.md``. Numbers are exact: each numeric
record carries ``mantissa`` and ``exponent`` (value = mantissa x 10^exponent, already in the
SI-normalised unit) and ``value`` is that number as a decimal string. Nothing is dropped
silently: invalid dates, BCD error digits, unknown or reserved codes, record error VIFEs and
manufacturer-specific parts are kept and named in ``flags``.

Hot path notes: one table lookup per VIF, no per-record objects besides the result dict,
integers decoded with ``int.from_bytes`` and two's complement by hand (MicroPython ignores
``signed``).

MicroPython-clean.
"""

from logger.mbus import tables
from logger.mbus.application import ERROR, FIXED, Telegram, parse_telegram
from logger.mbus.numbers import HEX2, dec_str, float32_decimal, hexstr
from logger.mbus.records import (
    DIF_MANUFACTURER,
    DIF_MORE_RECORDS,
    lvar_length,
    storage_number,
    subunit,
    tariff,
)

_PRIMARY = tables.PRIMARY_VIF
_FD = tables.FD_VIF
_FB = tables.FB_VIF
_COMB = tables.COMBINABLE_VIFE
_DATE_VIFES = tables.DATE_VIFES
_FUNCTIONS = tables.FUNCTIONS
NUMERIC = tables.NUMERIC
DATE = tables.DATE
DATETIME = tables.DATETIME
UNSIGNED = tables.UNSIGNED
MANUFACTURER = tables.MANUFACTURER
UNKNOWN = tables.UNKNOWN
TEXT_VIF = tables.TEXT_VIF

_NO_VIF_INFO = ("missing VIF extension", "", 1, 0, UNKNOWN)
# Flag of the last record when a reserved DIF or LVAR leaves the rest of the telegram unframed.
_NOT_DECODED = "rest of telegram not decoded"


def _signed(data: bytes, msb: bool) -> int:
    if not data:
        return 0  # LVAR 0xE0: a binary number of no bytes
    n = int.from_bytes(data, "big" if msb else "little")
    bits = 8 * len(data)
    if n >> (bits - 1):
        n -= 1 << bits
    return n


def _bcd(data: bytes, msb: bool) -> tuple[int | None, str, bool]:
    """BCD digits (LSB byte first): (value or None, digit string as sent, error flag)."""
    if not msb:
        data = bytes(reversed(data))
    digits = hexstr(data)
    neg = False
    body = digits
    if digits and digits[0] == "F":
        neg = True
        body = digits[1:]
    for ch in body:
        if ch > "9":
            return None, digits, True
    value = int(body) if body else 0
    return (-value if neg else value), digits, False


def _date_g(b0: int, b1: int, hundreds: int = 0) -> str | None:
    """Date of type G (and the date part of F and I) as ISO 8601, or None if invalid.

    The year field has two digits (0-99; 100-127 are invalid). Type F adds a hundred-year
    field; when it is 0, years 0-80 are 2000-2080 and 81-99 are 1981-1999 (EN 13757-3's
    compatibility rule for meters without it).
    """
    day = b0 & 0x1F
    month = b1 & 0x0F
    year = ((b0 & 0xE0) >> 5) | ((b1 & 0xF0) >> 1)
    if not (1 <= day <= 31 and 1 <= month <= 12 and year <= 99):
        return None
    if hundreds == 0 and year <= 80:
        hundreds = 1
    return "%04d-%02d-%02d" % (1900 + 100 * hundreds + year, month, day)


def _datetime(data: bytes, flags: list[str]) -> tuple[str | None, str]:
    """Types G (2 bytes), J (3, time), F (4) and I (6) to ISO 8601 local time."""
    n = len(data)
    if n == 2:
        text = _date_g(data[0], data[1])
        kind = "date"
    elif n == 3:
        sec = data[0] & 0x3F
        minute = data[1] & 0x3F
        hour = data[2] & 0x1F
        text = None
        if sec < 60 and minute < 60 and hour < 24:
            text = "%02d:%02d:%02d" % (hour, minute, sec)
        kind = "time"
    elif n == 4:
        kind = "datetime"
        text = None
        if not data[0] & 0x80:
            minute = data[0] & 0x3F
            hour = data[1] & 0x1F
            date = _date_g(data[2], data[3], (data[1] & 0x60) >> 5)
            if date is not None and minute < 60 and hour < 24:
                text = "%sT%02d:%02d" % (date, hour, minute)
            if data[1] & 0x80:
                flags.append("summer time")
    elif n == 6:
        kind = "datetime"
        text = None
        if not data[1] & 0x80:
            sec = data[0] & 0x3F
            minute = data[1] & 0x3F
            hour = data[2] & 0x1F
            date = _date_g(data[3], data[4])
            if date is not None and sec < 60 and minute < 60 and hour < 24:
                text = "%sT%02d:%02d:%02d" % (date, hour, minute, sec)
            if data[0] & 0x40:
                flags.append("summer time")
    else:
        return None, "datetime"  # not reached: callers pass 2, 3, 4 or 6 bytes
    if text is None:
        flags.append("invalid date")
    return text, kind


def _vif_info(vif: int, vifes: bytes, text: str | None, flags: list[str]) -> tuple:
    """(quantity, unit, multiplier, exponent, kind) and the combinable VIFEs that follow."""
    code = vif & 0x7F
    if code == 0x7D or code == 0x7B:
        if not vif & 0x80 or not vifes:
            flags.append("missing VIF extension")
            return _NO_VIF_INFO, b""
        ext = vifes[0] & 0x7F
        info = (_FD if code == 0x7D else _FB)[ext]
        return info, vifes[1:] if vifes[0] & 0x80 else b""
    info = _PRIMARY[code]
    if info[4] == TEXT_VIF:
        info = ("plain-text unit", text, 1, 0, NUMERIC)
    return info, vifes


def _record(rec: tuple, index: int, msb: bool) -> dict:
    offset, dif, difes, vif, vifes, text, data, lvar = rec
    flags: list[str] = []
    info, combinable = _vif_info(vif, vifes, text, flags)
    quantity, unit, multiplier, exponent, kind = info
    modifiers: list[str] = []
    date_vife = False
    if kind == MANUFACTURER:
        combinable = b""  # after VIF 0xFF every VIFE is the manufacturer's own
    for b in combinable:
        c = b & 0x7F
        if c == 0x7F:
            flags.append("manufacturer specific VIFE")
            break
        name, shift = _COMB[c]
        if c < 0x1D:
            if c:
                flags.append(name)
            continue
        if shift:
            exponent += shift
        elif c in _DATE_VIFES:
            date_vife = True
        modifiers.append(name)
    if kind == UNKNOWN:
        flags.append("unknown VIF")
        multiplier = 1
        exponent = 0
    elif kind == MANUFACTURER:
        flags.append("manufacturer specific")
    key = HEX2[dif] + hexstr(difes) + HEX2[vif] if difes else HEX2[dif] + HEX2[vif]
    if text is not None:
        key += HEX2[len(text)] + hexstr([ord(ch) & 0xFF for ch in reversed(text)])
    if vifes:
        key += hexstr(vifes)
    dfield = dif & 0x0F
    value: str | None = None
    mantissa: int | None = None
    raw: int | str | None = None
    vtype: str | None = "none"
    if dfield == 13 and lvar > 0xBF and lvar_length(lvar, False) is None:
        flags.append("reserved LVAR")
        flags.append(_NOT_DECODED)
        raw = hexstr(data)
    elif dfield == 0 or dfield == 8:
        if dfield == 8:
            flags.append("selection for readout")
    elif dfield == 5:
        rawint = int.from_bytes(data, "big" if msb else "little")
        raw = (
            HEX2[rawint >> 24]
            + HEX2[(rawint >> 16) & 255]
            + HEX2[(rawint >> 8) & 255]
            + HEX2[rawint & 255]
        )
        pair = float32_decimal(rawint)
        vtype = "real"
        if pair is None:
            flags.append("not a number")
        else:
            mantissa = pair[0] * multiplier
            exponent += pair[1]
    elif dfield == 13 and lvar <= 0xBF and (kind == DATE or kind == DATETIME or date_vife):
        # Type M (EN 13757-3:2018, date and time in UTC with a time offset, as LVAR): kept as
        # bytes and flagged; it is not text.
        flags.append("date format not decoded")
        raw = hexstr(data)
    elif dfield == 13 and lvar <= 0xBF:
        vtype = "text"
        value = "".join([chr(b) for b in reversed(data)])
        raw = hexstr(data)
    elif (dfield >= 9 and dfield != 13) or (dfield == 13 and lvar < 0xE0):
        vtype = "bcd"
        number, digits, bad = _bcd(data, msb)
        if bad or number is None:
            flags.append("BCD error")
            raw = digits
        else:
            if dfield == 13 and lvar >= 0xD0:
                number = -number
            raw = number
            mantissa = number * multiplier
    else:
        if (kind == DATE or kind == DATETIME or date_vife) and dfield in (2, 3, 4, 6):
            if msb:
                data = bytes(reversed(data))
            value, vtype = _datetime(data, flags)
            raw = hexstr(data)
        elif kind == UNSIGNED or kind == MANUFACTURER:
            vtype = "int"
            mantissa = int.from_bytes(data, "big" if msb else "little")
            raw = mantissa
        else:
            vtype = "int"
            number = _signed(data, msb)
            raw = number
            mantissa = number * multiplier
    if mantissa is not None and (kind == DATE or kind == DATETIME or date_vife):
        # A date VIF with a data field no date type has (8 or 64 bits, BCD, LVAR): the number
        # is kept as sent, and flagged so it is not taken for a reading.
        flags.append("date format not decoded")
    if mantissa is not None:
        if raw is None:
            raw = mantissa
        value = dec_str(mantissa, exponent)
    else:
        exponent = None
    return {
        "id": index,
        "key": key,
        "offset": offset,
        "function": _FUNCTIONS[(dif >> 4) & 3],
        "storage": storage_number(dif, difes) if difes else (dif >> 6) & 1,
        "tariff": tariff(difes) if difes else 0,
        "subunit": subunit(difes) if difes else 0,
        "quantity": quantity,
        "unit": unit,
        "type": vtype,
        "value": value,
        "mantissa": mantissa,
        "exponent": exponent,
        "raw": raw,
        "modifiers": modifiers,
        "flags": flags,
    }


def _reserved_dif(rec: tuple, index: int) -> dict:
    """The record of a reserved special-function DIF: its bytes, and where reading stopped.

    Its DIFEs, VIF and data length are undefined, so nothing after the DIF can be framed; the
    records before it are good readings and are kept (see ``docs/decoder.md``).
    """
    offset, dif, _difes, _vif, _vifes, _text, data, _lvar = rec
    return {
        "id": index,
        "key": HEX2[dif],
        "offset": offset,
        "function": _FUNCTIONS[(dif >> 4) & 3],
        "storage": (dif >> 6) & 1,
        "tariff": 0,
        "subunit": 0,
        "quantity": "reserved",
        "unit": "",
        "type": "none",
        "value": None,
        "mantissa": None,
        "exponent": None,
        "raw": hexstr(data),
        "modifiers": [],
        "flags": ["reserved DIF", _NOT_DECODED],
    }


def _manufacturer(lo: int, hi: int) -> str:
    code = lo | (hi << 8)
    return (
        chr(((code >> 10) & 0x1F) + 64) + chr(((code >> 5) & 0x1F) + 64) + chr((code & 0x1F) + 64)
    )


def _status(status: int) -> list[str]:
    flags = []
    app = tables.STATUS_APPLICATION[status & 3]
    if app:
        flags.append(app)
    for bit, name in tables.STATUS_BITS:
        if status & bit:
            flags.append(name)
    return flags


def _id(data: bytes, msb: bool) -> tuple[str, bool]:
    digits = hexstr(data if msb else bytes(reversed(data)))
    valid = True
    for ch in digits:
        if ch > "9":
            valid = False
            break
    return digits, valid


def _header(h: bytes, msb: bool) -> dict:
    if len(h) == 4:
        access, status, sig = h[0], h[1], h[2] | (h[3] << 8)
        return {
            "id": None,
            "id_valid_bcd": None,
            "manufacturer": None,
            "version": None,
            "medium": None,
            "medium_text": None,
            "access_number": access,
            "status": status,
            "status_flags": _status(status),
            "signature": sig,
        }
    ident, valid = _id(h[0:4], msb)
    if msb:
        man = _manufacturer(h[5], h[4])
        sig = (h[10] << 8) | h[11]
    else:
        man = _manufacturer(h[4], h[5])
        sig = h[10] | (h[11] << 8)
    medium = h[7]
    status = h[9]
    return {
        "id": ident,
        "id_valid_bcd": valid,
        "manufacturer": man,
        "version": h[6],
        "medium": medium,
        "medium_text": tables.MEDIUM.get(medium, "Reserved"),
        "access_number": h[8],
        "status": status,
        "status_flags": _status(status),
        "signature": sig,
    }


def _fixed(t: Telegram) -> tuple[dict, list[dict]]:
    d = t.fixed
    msb = t.msb
    ident, valid = _id(d[0:4], msb)
    status = d[5]
    u1 = d[6]
    u2 = d[7]
    medium = ((u1 & 0xC0) >> 6) | ((u2 & 0xC0) >> 4)
    header = {
        "id": ident,
        "id_valid_bcd": valid,
        "manufacturer": None,
        "version": None,
        "medium": medium,
        "medium_text": tables.FIXED_MEDIUM[medium],
        "access_number": d[4],
        "status": status,
        "status_flags": _status(status),
        "signature": None,
    }
    bcd = not status & 0x80
    function = "stored" if status & 0x40 else "actual"
    records = []
    for i in (0, 1):
        unit_code = (u1, u2)[i] & 0x3F
        raw_bytes = d[8 + 4 * i : 12 + 4 * i]
        quantity, unit, exponent = tables.FIXED_UNITS[unit_code]
        flags = []
        raw: int | str | None
        if bcd:
            number, digits, bad = _bcd(raw_bytes, msb)
            vtype = "bcd"
            raw = number
            if bad:
                flags.append("BCD error")
                raw = digits
        else:
            number = _signed(raw_bytes, msb)
            raw = number
            vtype = "int"
        records.append(
            {
                "id": i,
                "key": "fixed%d" % i,
                "offset": 15 + 4 * i,
                "function": function,
                "storage": 0,
                "tariff": 0,
                "subunit": 0,
                "quantity": quantity,
                "unit": unit,
                "type": vtype,
                "value": None if number is None else dec_str(number, exponent),
                "mantissa": number,
                "exponent": None if number is None else exponent,
                "raw": raw,
                "modifiers": [],
                "flags": flags,
            }
        )
    return header, records


def decode(data: bytes) -> dict:
    """Decode one whole frame (bytes of a long or control frame) to a JSON-ready dict.

    Raises a subclass of :class:`logger.mbus.MBusError` naming the byte offset for anything
    malformed or unsupported; an application error (CI 0x70) is a result, not an exception.
    """
    t = parse_telegram(data)
    records: list[dict] = []
    out: dict = {
        "frame": {"c": t.c, "a": t.a, "ci": t.ci},
        "header": None,
        "records": records,
        "more_records_follow": False,
        "manufacturer_data": None,
        "error": None,
    }
    if t.kind == ERROR:
        out["error"] = {
            "code": t.error_code,
            "text": tables.application_error_text(t.error_code),
            "data": hexstr(t.error_data) if t.error_data else None,
        }
        return out
    if t.kind == FIXED:
        out["header"], out["records"] = _fixed(t)
        return out
    if t.header is not None:
        out["header"] = _header(t.header, t.msb)
    msb = t.msb
    for rec in t.records:
        if rec[3] is None:
            dif = rec[1]
            if dif == DIF_MANUFACTURER or dif == DIF_MORE_RECORDS:
                out["manufacturer_data"] = hexstr(rec[6])
            else:
                records.append(_reserved_dif(rec, len(records)))
            continue
        records.append(_record(rec, len(records), msb))
    out["more_records_follow"] = t.more
    return out

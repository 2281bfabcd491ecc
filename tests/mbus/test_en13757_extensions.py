"""EN 13757-3 cases beyond the corpus: correction VIFEs, 0xFB/0xFD codes of EN 13757-3:2018,
reserved DIFs and LVARs. Each hand-built telegram is decoded whole, byte by byte through the
stream resync, and with trailing garbage, and compared with the expected value."""

from __future__ import annotations

import re
import struct
from typing import Any

import pytest

from logger.mbus import FrameError, decode
from logger.mbus.frames import FrameScanner, encode_long
from logger.mbus.xml import telegram_xml

HEADER = bytes.fromhex("785634122D2C010755000000")  # id 12345678, KAM, water
_NOISE = b"\x00\x01\xff\x42"
_GARBAGE = b"\x16\x00\xfe\x55"
_FIRST_RECORD = 7 + 12  # offset of the first record in a long frame with a long header


def _frame(records: str) -> bytes:
    return encode_long(0x08, 1, 0x72, HEADER + bytes.fromhex(records))


def _bytewise(data: bytes) -> list[bytes]:
    scanner = FrameScanner(accept_ack=False)
    found = []
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
        while True:
            got = scanner.next_frame()
            if got is None:
                break
            found.append(got.encode())
    found.extend(f.encode() for f in scanner.flush())
    return found


def _records(records: str) -> list[dict[str, Any]]:
    """Decode the telegram in the three shapes; they must agree. Returns its records."""
    data = _frame(records)
    whole = decode(data)
    assert _bytewise(data) == [data]
    streamed = _bytewise(_NOISE + data + _GARBAGE)
    assert streamed == [data]
    assert decode(streamed[0]) == whole
    with pytest.raises(FrameError) as info:
        decode(data + _GARBAGE)
    assert info.value.offset == len(data)
    result: list[dict[str, Any]] = whole["records"]
    return result


def _one(records: str) -> dict[str, Any]:
    recs = _records(records)
    assert len(recs) == 1, recs
    return recs[0]


def _norm_values(records: str) -> list[str]:
    return re.findall("<Value>(.*?)</Value>", telegram_xml(_frame(records), normalized=True))


# -- correction VIFEs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hexdata,value,mantissa,exponent,modifiers",
    [
        # E111 0nnn: x 10^(nnn-6), on litres (10^-3 m^3)
        ("04937005000000", "0.000000005", 5, -9, ["multiplicative correction 10^-6"]),
        ("04937705000000", "0.05", 5, -2, ["multiplicative correction 10^1"]),
        # 0x7D: x 10^3; its extension bit chains the next combinable VIFE
        ("0493FD2205000000", "5", 5, 0, ["multiplicative correction 10^3", "per hour"]),
        # BCD and negative integers are scaled exactly the same way
        ("0C937478563412", "123.45678", 12345678, -5, ["multiplicative correction 10^-2"]),
        ("029375FEFF", "-0.0002", -2, -4, ["multiplicative correction 10^-1"]),
        # E111 10nn: the value is an additive correction constant in VIF unit x 10^(nn-3)
        ("04937805000000", "0.000005", 5, -6, ["additive correction constant 10^-3"]),
        ("04937A05000000", "0.0005", 5, -4, ["additive correction constant 10^-1"]),
        ("04937B05000000", "0.005", 5, -3, ["additive correction constant 10^0"]),
        # both kinds on one record: each shifts the exponent once
        (
            "0493F47A05000000",
            "0.000005",
            5,
            -6,
            [
                "multiplicative correction 10^-2",
                "additive correction constant 10^-1",
            ],
        ),
    ],
)
def test_correction_vifes_are_applied_exactly(
    hexdata: str, value: str, mantissa: int, exponent: int, modifiers: list[str]
) -> None:
    rec = _one(hexdata)
    assert (rec["value"], rec["mantissa"], rec["exponent"]) == (value, mantissa, exponent)
    assert rec["modifiers"] == modifiers
    assert (rec["quantity"], rec["unit"], rec["flags"]) == ("volume", "m^3", [])


def test_real32_with_multiplicative_correction() -> None:
    rec = _one("05937D" + struct.pack("<f", 1.5).hex())
    assert (rec["value"], rec["mantissa"], rec["exponent"]) == ("1.5", 15, -1)


def test_xml_keeps_libmbus_reading_of_corrections() -> None:
    """libmbus looks at the first VIFE only and adds 10^(nn-3) in the normalised unit."""
    assert _norm_values("04937A05000000") == ["0.105000"]  # 0.005 m^3 + 0.1
    assert _norm_values("0493F47A05000000") == ["0.000050"]  # 0.005 x 10^-2, 2nd VIFE unread
    assert _norm_values("0493FD2205000000") == ["5.000000"]


# -- 0xFB / 0xFD codes of EN 13757-3:2018 -------------------------------------------------------


@pytest.mark.parametrize(
    "hexdata,quantity,unit,value",
    [
        ("02FB1A0F02", "relative humidity", "%", "52.7"),
        ("02FB1B0F02", "relative humidity", "%", "527"),
        ("02FB2A0807", "phase U-U", "°", "180"),
        ("02FB2B8403", "phase U-I", "°", "90"),
        ("04FB2C50C30000", "frequency", "Hz", "50"),
        ("02FB2EF401", "frequency", "Hz", "50"),
        ("02FB2F3200", "frequency", "Hz", "50"),
        ("01FD71C4", "RF level", "dBm", "-60"),
        ("02FD746D01", "remaining battery life time", "s", "31536000"),
        ("02FD750300", "number of times the meter was stopped", "", "3"),
        ("02FD1C6009", "baud rate", "Bd", "2400"),
        ("02FD1D0B00", "response delay time", "bit times", "11"),
    ],
)
def test_2018_extension_codes(hexdata: str, quantity: str, unit: str, value: str) -> None:
    rec = _one(hexdata)
    assert (rec["quantity"], rec["unit"], rec["value"], rec["flags"]) == (
        quantity,
        unit,
        value,
        [],
    )


# -- reserved DIF / LVAR: keep what came before, say where reading stopped ----------------------


def test_reserved_special_function_dif_stops_reading_with_a_flag() -> None:
    first, reserved = _records("041301000000" + "3F" + "130102030405060708")
    assert first["value"] == "0.001" and first["flags"] == []
    assert reserved["offset"] == _FIRST_RECORD + 6
    assert reserved["key"] == "3F" and reserved["quantity"] == "reserved"
    assert reserved["flags"] == ["reserved DIF", "rest of telegram not decoded"]
    assert reserved["value"] is None and reserved["type"] == "none"
    assert reserved["raw"] == "3F130102030405060708"
    # libmbus reads DIF 3F as 8 bytes of "special function"; the reading before agrees
    assert _norm_values("041301000000" + "3F" + "130102030405060708")[0] == "0.001000"


@pytest.mark.parametrize("dif", ["3F", "4F", "5F", "6F", "7F", "BF", "FF"])
def test_every_reserved_dif_is_kept_not_refused(dif: str) -> None:
    recs = _records("02FD1B0100" + dif + "80")  # even a DIFE that never ends
    assert [r["flags"] for r in recs] == [[], ["reserved DIF", "rest of telegram not decoded"]]
    assert recs[1]["raw"] == dif + "80"


@pytest.mark.parametrize("lvar", ["CA", "CF", "DA", "DF", "F7", "F8", "FA", "FF"])
def test_reserved_lvar_stops_reading_with_a_flag(lvar: str) -> None:
    first, reserved = _records("041301000000" + "0DFD0F" + lvar + "41" + "041302000000")
    assert first["value"] == "0.001"
    assert reserved["key"] == "0DFD0F" and reserved["quantity"] == "software version"
    assert reserved["flags"] == ["reserved LVAR", "rest of telegram not decoded"]
    assert reserved["raw"] == lvar + "41041302000000"
    assert reserved["value"] is None and reserved["mantissa"] is None


def test_defined_lvars_still_decode_past_the_record() -> None:
    recs = _records("0D13F0" + "01" * 16 + "041302000000")
    assert recs[0]["type"] == "int" and recs[0]["flags"] == []
    assert recs[1]["value"] == "0.002"


# -- date VIFs with a data field no date type has ---------------------------------------------


@pytest.mark.parametrize(
    "hexdata,raw",
    [
        ("016D05", 5),  # 8-bit integer
        ("0E6D563412000000", 123456),  # 12-digit BCD
        ("0D6DE3010203", 0x030201),  # LVAR binary number
        ("01FD7005", 5),  # date and time of battery change, 8-bit
        ("01936A05", 5),  # combinable VIFE 0x6A (date of begin of first) on an 8-bit value
    ],
)
def test_date_vif_with_a_non_date_data_field_is_flagged(hexdata: str, raw: int) -> None:
    rec = _one(hexdata)
    assert rec["raw"] == raw
    assert rec["flags"] == ["date format not decoded"]


def test_date_vif_with_a_date_data_field_is_not_flagged() -> None:
    rec = _one("046D2B117811")
    assert (rec["value"], rec["flags"]) == ("2011-01-24T17:43", [])


def test_date_and_time_as_lvar_is_not_read_as_text() -> None:
    """VIF 0x6D with an LVAR of 0x00-0xBF carries type M (EN 13757-3:2018), not text."""
    rec = _one("0D6D" + "06" + "1E2B11781100")
    assert (rec["type"], rec["value"], rec["raw"]) == ("none", None, "1E2B11781100")
    assert rec["flags"] == ["date format not decoded"]

"""EN 13757-3 semantics of ``logger.mbus.decode``: data types, VIF tables, headers, errors."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logger.mbus import DecodeError, MBusError, TruncatedRecord, UnsupportedCI, decode
from logger.mbus.frames import encode_long, encode_short
from logger.mbus.numbers import dec_str, float32_decimal
from logger.mbus.xml import telegram_xml

HEADER = bytes.fromhex("785634122D2C010755000000")  # id 12345678, KAM


def frame(records: str | bytes, ci: int = 0x72, header: bytes = HEADER, c: int = 0x08) -> bytes:
    body = bytes.fromhex(records) if isinstance(records, str) else records
    return encode_long(c, 1, ci, header + body)


def record(hexdata: str, **kw: Any) -> dict[str, Any]:
    result = decode(frame(hexdata, **kw))
    assert len(result["records"]) == 1, result
    rec: dict[str, Any] = result["records"][0]
    return rec


@pytest.mark.parametrize(
    "hexdata,value",
    [
        ("0113FF", "-0.001"),
        ("0213FEFF", "-0.002"),
        ("0313FFFF7F", "8388.607"),
        ("04130000FFFF", "-65.536"),
        ("06130100000000F0", "-17592186044.415"),
        ("071301000000000000F0", "-1152921504606846.975"),
        ("0713FFFFFFFFFFFFFF7F", "9223372036854775.807"),
    ],
)
def test_signed_integers(hexdata: str, value: str) -> None:
    rec = record(hexdata)
    assert rec["type"] == "int"
    assert rec["value"] == value
    assert rec["unit"] == "m^3"
    assert rec["exponent"] == -3
    assert rec["mantissa"] == rec["raw"]


@pytest.mark.parametrize(
    "hexdata,raw,flags",
    [
        ("091342", 42, []),
        ("0A133412", 1234, []),
        ("0B13563412", 123456, []),
        ("0C1378563412", 12345678, []),
        ("0E13907856341212", 121234567890, []),
        ("0C13785634F2", -2345678, []),
        ("0C137856A412", "12A45678", ["BCD error"]),
        ("0A13EEEE", "EEEE", ["BCD error"]),
    ],
)
def test_bcd(hexdata: str, raw: int | str, flags: list[str]) -> None:
    rec = record(hexdata)
    assert rec["type"] == "bcd"
    assert rec["raw"] == raw
    assert rec["flags"] == flags
    if flags:
        assert rec["value"] is None and rec["mantissa"] is None
    else:
        assert rec["mantissa"] == raw


def test_real32_is_the_shortest_exact_decimal() -> None:
    data = struct.pack("<f", 12.565).hex()
    rec = record("055B" + data)  # flow temperature, 1 degree C
    assert rec["type"] == "real"
    assert rec["value"] == "12.565"
    assert (rec["mantissa"], rec["exponent"]) == (12565, -3)
    rec = record("0513" + struct.pack("<f", 0.1).hex())  # litres -> m^3
    assert rec["value"] == "0.0001"
    nan = record("0513" + "0000C07F")
    assert nan["value"] is None and "not a number" in nan["flags"]


def test_variable_length_data() -> None:
    text = record("0DFD0F" + "05" + "312E362E33")  # firmware "3.6.1" sent last byte first
    assert text["type"] == "text" and text["value"] == "3.6.1"
    pos = record("0D13" + "C2" + "3412")
    assert pos["type"] == "bcd" and pos["value"] == "1.234"
    neg = record("0D13" + "D2" + "3412")
    assert neg["value"] == "-1.234"
    binary = record("0D13" + "E3" + "FFFFFF")
    assert binary["type"] == "int" and binary["raw"] == -1
    assert record("0D13" + "E0")["value"] == "0"  # found by fuzzing: empty binary number
    reserved = record("0D13" + "F9" + "00")  # reserved LVAR: kept, reading stops there
    assert reserved["flags"] == ["reserved LVAR", "rest of telegram not decoded"]
    assert reserved["raw"] == "F900" and reserved["value"] is None


@pytest.mark.parametrize(
    "hexdata,value,flags",
    [
        ("026C8C11", "2012-01-12", []),
        ("026C0000", None, ["invalid date"]),
        ("026CFFFF", None, ["invalid date"]),
        ("046D2B117811", "2011-01-24T17:43", []),
        ("046D2B917811", "2011-01-24T17:43", ["summer time"]),
        ("046DAB117811", None, ["invalid date"]),
        ("066D1E2B11781100", "2011-01-24T17:43:30", []),
        ("036D1E2B11", "17:43:30", []),
        ("04FD302B117811", "2011-01-24T17:43", []),
        ("04FD702B117811", "2011-01-24T17:43", []),
    ],
)
def test_dates(hexdata: str, value: str | None, flags: list[str]) -> None:
    rec = record(hexdata)
    assert rec["value"] == value
    assert rec["flags"] == flags
    assert rec["mantissa"] is None
    assert rec["raw"] == hexdata[-(len(hexdata) - (4 if hexdata[2:4] != "FD" else 6)) :]


@pytest.mark.parametrize(
    "hexdata,quantity,unit,value,modifiers",
    [
        ("02060100", "energy", "Wh", "1000", []),
        ("020E0100", "energy", "J", "1000000", []),
        ("02220200", "on time", "s", "7200", []),
        ("02FD48E600", "voltage", "V", "23", []),
        ("02FD590A00", "current", "A", "0.01", []),
        ("02FB000100", "energy", "Wh", "100000", []),
        ("02FB010100", "energy", "Wh", "1000000", []),
        ("02FB1A1002", "relative humidity", "%", "52.8", []),
        ("0296740100", "volume", "m^3", "0.01", ["multiplicative correction 10^-2"]),
        ("02937D0100", "volume", "m^3", "1", ["multiplicative correction 10^3"]),
        ("02BB220100", "volume flow", "m^3/h", "0.001", ["per hour"]),
        ("02FD1B0100", "digital input", "", "1", []),
        ("02FD3A0500", "dimensionless", "", "5", []),
    ],
)
def test_vif_tables(
    hexdata: str, quantity: str, unit: str, value: str, modifiers: list[str]
) -> None:
    rec = record(hexdata)
    assert (rec["quantity"], rec["unit"], rec["value"]) == (quantity, unit, value)
    assert rec["modifiers"] == modifiers
    assert rec["flags"] == []


def test_flags_for_unknown_manufacturer_and_error_codes() -> None:
    assert "unknown VIF" in record("016F05")["flags"]
    assert "unknown VIF" in record("02FD7B0100")["flags"]
    man = record("017F05")
    assert man["flags"] == ["manufacturer specific"] and man["value"] == "5"
    own = record("01FF1605")  # a manufacturer's VIFE 0x16 is not "data overflow"
    assert own["flags"] == ["manufacturer specific"] and own["modifiers"] == []
    err = record("029316FFFF")
    assert "error: data overflow" in err["flags"]
    assert "manufacturer specific VIFE" in record("0293FF010100")["flags"]
    plain = record("02FC0348522574D411")
    assert (plain["unit"], plain["value"]) == ("%RH", "45.64")


def test_dife_storage_tariff_subunit() -> None:
    rec = record("C49F3B1301000000")
    # storage: DIF bit 6 (1) | DIFE1 0xF << 1 | DIFE2 0xB << 5; tariff 1 | 3 << 2; subunit 0|0
    assert rec["storage"] == 1 | (0xF << 1) | (0xB << 5)
    assert rec["tariff"] == 1 | (3 << 2)
    assert rec["subunit"] == 0 | (0 << 1)
    assert rec["function"] == "instantaneous"
    assert record("141301000000")["function"] == "maximum"
    assert record("241301000000")["function"] == "minimum"
    assert record("341301000000")["function"] == "error"
    assert record("84401301000000")["subunit"] == 1


def test_dife_and_vife_limits() -> None:
    ten = "84" + "80" * 9 + "00" + "13" + "01000000"
    assert record(ten)["storage"] == 0
    with pytest.raises(DecodeError) as info:
        decode(frame("84" + "80" * 10 + "00" + "13" + "01000000"))
    assert info.value.offset == 7 + 12 + 11
    ten_vife = "0493" + "A2" * 9 + "22" + "01000000"
    assert len(record(ten_vife)["modifiers"]) == 10
    with pytest.raises(DecodeError):
        decode(frame("0493" + "A2" * 10 + "22" + "01000000"))


def test_truncation_names_the_offset() -> None:
    with pytest.raises(TruncatedRecord) as info:
        decode(frame("04130100"))
    assert info.value.offset == 7 + 12 + 2
    assert "expected 4 data bytes" in str(info.value)
    with pytest.raises(TruncatedRecord):
        decode(frame("84"))
    with pytest.raises(TruncatedRecord):
        decode(frame("04"))
    with pytest.raises(TruncatedRecord):
        decode(frame("0493"))


def test_header_fields() -> None:
    result = decode(frame("2F2F0413010000002F"))
    header = result["header"]
    assert header == {
        "id": "12345678",
        "id_valid_bcd": True,
        "manufacturer": "KAM",
        "version": 1,
        "medium": 7,
        "medium_text": "Water",
        "access_number": 0x55,
        "status": 0,
        "status_flags": [],
        "signature": 0,
    }
    assert len(result["records"]) == 1  # fillers skipped
    odd = bytes.fromhex("7856A4122D2C011601153412")
    header = decode(frame("", header=odd))["header"]
    assert header["id"] == "12A45678" and header["id_valid_bcd"] is False
    assert header["status_flags"] == ["application busy", "power low", "temporary error"]
    assert header["signature"] == 0x1234
    assert header["medium_text"] == "Cold water"


def test_manufacturer_data_and_more_records_follow() -> None:
    result = decode(frame("0413010000000F0102FF"))
    assert result["manufacturer_data"] == "0102FF"
    assert result["more_records_follow"] is False
    result = decode(frame("0413010000001F"))
    assert result["manufacturer_data"] == ""
    assert result["more_records_follow"] is True


def test_ci_variants() -> None:
    lsb = decode(frame("02133412"))["records"][0]
    msb_header = bytes.fromhex("123456782C2D010755000000")
    msb = decode(frame("02131234", ci=0x76, header=msb_header))
    assert msb["header"]["id"] == "12345678" and msb["header"]["manufacturer"] == "KAM"
    assert msb["records"][0]["value"] == lsb["value"] == "4.66"
    none = decode(frame("02133412", ci=0x78, header=b""))
    assert none["header"] is None and none["records"][0]["value"] == "4.66"
    short = decode(frame("02133412", ci=0x7A, header=bytes.fromhex("2A000000")))
    assert short["header"]["access_number"] == 0x2A and short["header"]["id"] is None


def test_fixed_data_structure() -> None:
    body = bytes.fromhex("93929190100005693165000069000000")
    result = decode(encode_long(0x08, 1, 0x73, body))
    assert result["header"]["id"] == "90919293"
    assert result["header"]["medium_text"] == "Heat"
    a, b = result["records"]
    assert (a["quantity"], a["unit"], a["value"], a["function"]) == (
        "energy",
        "Wh",
        "6531000",
        "actual",
    )
    assert (b["quantity"], b["unit"], b["value"]) == ("volume", "m^3", "0.069")
    msb = bytes.fromhex("90919293100005690000653100000069")
    assert decode(encode_long(0x08, 1, 0x77, msb))["records"][0]["value"] == "6531000"
    binary = bytes.fromhex("9392919010800569FFFFFFFF01000000")
    assert decode(encode_long(0x08, 1, 0x73, binary))["records"][0]["value"] == "-1000"


def test_application_error_and_unsupported() -> None:
    err = decode(encode_long(0x08, 1, 0x70, b"\x2a\x01"))["error"]
    assert err == {"code": 42, "text": "Unknown error (0x2A)", "data": "01"}
    with pytest.raises(UnsupportedCI) as info:
        decode(encode_long(0x53, 1, 0x51, b"\x01\x7a\x05"))
    assert "0x51" in str(info.value) and info.value.offset == 6
    with pytest.raises(UnsupportedCI) as info:
        decode(encode_long(0x53, 1, 0xBB, b""))
    assert "baud rate" in str(info.value)
    with pytest.raises(DecodeError):
        decode(encode_short(0x5B, 1))
    with pytest.raises(DecodeError):
        decode(b"\xe5")
    with pytest.raises(MBusError):
        decode(b"")


def test_key_is_stable_across_readouts() -> None:
    a = decode(frame("0413010000000DFD0F0131"))
    other = bytes(HEADER[:8]) + b"\x99" + HEADER[9:]
    b = decode(frame("0413020000000DFD0F0132", header=other))
    assert (
        [r["key"] for r in a["records"]] == [r["key"] for r in b["records"]] == ["0413", "0DFD0F"]
    )
    plain = decode(frame("02FC0348522574D411"))["records"][0]
    assert plain["key"] == "02FC0348522574"


def test_xml_refuses_what_libmbus_refuses() -> None:
    with pytest.raises(UnsupportedCI):
        telegram_xml(frame("02133412", ci=0x78, header=b""))
    with pytest.raises(DecodeError):
        telegram_xml(frame("02133412", c=0x53))
    assert "<Error>" in telegram_xml(encode_long(0x08, 1, 0x70, b"\x08"), normalized=True)


@settings(max_examples=3000, deadline=None)
@given(st.integers(0, 0xFFFFFFFF))
def test_float32_decimal_round_trips(raw: int) -> None:
    value = struct.unpack("<f", raw.to_bytes(4, "little"))[0]
    pair = float32_decimal(raw)
    if value != value or value in (float("inf"), float("-inf")):
        assert pair is None
        return
    assert pair is not None
    mantissa, exponent = pair
    text = dec_str(mantissa, exponent)
    assert struct.unpack("<f", struct.pack("<f", float(text)))[0] == value
    assert len(str(abs(mantissa))) <= 9


@given(st.integers(-(10**30), 10**30), st.integers(-40, 40))
def test_dec_str_is_exact(mantissa: int, exponent: int) -> None:
    from decimal import Decimal, localcontext

    text = dec_str(mantissa, exponent)
    with localcontext() as ctx:
        ctx.prec = 100
        assert Decimal(text) == Decimal(mantissa).scaleb(exponent)
    assert "e" not in text.lower()
    if "." in text:
        assert not text.endswith("0")

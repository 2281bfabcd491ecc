"""The Reading type and the converter from the M-Bus decoder's records."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logger.readings import (
    FLAG_CLOCK_UNSYNCED,
    FLAG_NO_VALUE,
    Reading,
    ReadingError,
    ValueKind,
    canonical_decimal,
    decimal_from_mantissa,
    readings_from_mbus,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "canon"),
    [
        ("12.5000", "12.5"),
        ("-0", "0"),
        ("0.000", "0"),
        ("1E+3", "1000"),
        ("1E-3", "0.001"),
        (Decimal("-12.340"), "-12.34"),
        (7, "7"),
        ("00012", "12"),
    ],
)
def test_canonical_decimal(raw: object, canon: str) -> None:
    assert canonical_decimal(raw) == canon  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "1,5", "", "abc"])
def test_canonical_decimal_refuses_non_numbers(bad: str) -> None:
    with pytest.raises(ReadingError):
        canonical_decimal(bad)


@given(st.integers(-(10**20), 10**20), st.integers(-12, 12))
def test_mantissa_exponent_round_trip(mantissa: int, exponent: int) -> None:
    text = decimal_from_mantissa(mantissa, exponent)
    r = Reading("m", "k", "q", "u", text, ValueKind.NUMBER, NOW)
    m, e = r.mantissa_exponent()
    assert Decimal(m).scaleb(e) == Decimal(mantissa).scaleb(exponent)
    assert r.decimal() == Decimal(text)


def test_reading_refuses_inexact_or_incomplete_values() -> None:
    with pytest.raises(ReadingError, match="canonical decimal"):
        Reading("m", "k", "q", "u", "12.50", ValueKind.NUMBER, NOW)
    with pytest.raises(ReadingError, match="UTC"):
        Reading("m", "k", "q", "u", "1", ValueKind.NUMBER, datetime(2026, 1, 1))
    with pytest.raises(ReadingError, match="meter id"):
        Reading("", "k", "q", "u", "1", ValueKind.NUMBER, NOW)


DECODED = {
    "header": {"id": "12345678", "status": 4, "status_flags": ["power low"]},
    "records": [
        {
            "key": "0C06",
            "quantity": "Energy",
            "unit": "Wh",
            "value": "12345000",
            "mantissa": 12345,
            "exponent": 3,
            "flags": [],
            "storage": 0,
            "tariff": 0,
            "subunit": 0,
            "function": "instantaneous",
        },
        {
            "key": "046D",
            "quantity": "Time Point",
            "unit": "",
            "value": "2026-03-01T12:59:00",
            "flags": [],
            "storage": 0,
            "tariff": 0,
            "subunit": 0,
            "function": "instantaneous",
        },
        {
            "key": "4C06",
            "quantity": "Energy",
            "unit": "Wh",
            "value": "9000000",
            "mantissa": 9,
            "exponent": 6,
            "flags": ["bcd"],
            "storage": 1,
            "tariff": 0,
            "subunit": 0,
            "function": "instantaneous",
        },
        {
            "key": "426C",
            "quantity": "Time Point",
            "unit": "",
            "value": "2025-12-31",
            "flags": [],
            "storage": 1,
            "tariff": 0,
            "subunit": 0,
            "function": "instantaneous",
        },
        {
            "key": "0FFD",
            "quantity": "Manufacturer specific",
            "unit": "",
            "value": "0A0B0C",
            "flags": ["manufacturer_specific"],
            "storage": 0,
            "tariff": 0,
            "subunit": 0,
            "function": "instantaneous",
        },
        {
            "key": "0B3B",
            "quantity": "Volume flow",
            "unit": "m^3/h",
            "value": "-0.012",
            "mantissa": -12,
            "exponent": -3,
            "flags": {"negative": True, "error": False},
            "storage": 0,
            "tariff": 2,
            "subunit": 1,
            "function": "maximum",
        },
    ],
}


def test_mbus_records_become_readings() -> None:
    readings = readings_from_mbus("heat-1", DECODED, NOW, clock_synced=False)
    assert [r.kind for r in readings] == [
        ValueKind.NUMBER,
        ValueKind.DATE,
        ValueKind.NUMBER,
        ValueKind.DATE,
        ValueKind.TEXT,
        ValueKind.NUMBER,
    ]
    energy = readings[0]
    assert (energy.value, energy.unit, energy.key) == ("12345000", "Wh", "0C06")
    assert energy.meter_time == datetime(2026, 3, 1, 12, 59)  # from the storage-0 time point
    assert all(r.meter_time == energy.meter_time for r in readings)
    assert all(FLAG_CLOCK_UNSYNCED in r.flags for r in readings)
    assert readings[2].storage == 1 and "bcd" in readings[2].flags
    assert readings[3].value == "2025-12-31"
    assert readings[5].value == "-0.012"
    assert (readings[5].tariff, readings[5].subunit, readings[5].function) == (2, 1, "maximum")
    assert readings[5].flags == {"negative", FLAG_CLOCK_UNSYNCED, "status:power low"}


def test_mbus_value_disagreeing_with_its_mantissa_is_refused() -> None:
    bad = {
        "records": [
            {
                "key": "0C06",
                "quantity": "Energy",
                "unit": "Wh",
                "value": "12.5",
                "mantissa": 125,
                "exponent": -2,
            }
        ]
    }
    with pytest.raises(ReadingError, match="heat-1 record 0C06"):
        readings_from_mbus("heat-1", bad, NOW)


def test_mbus_float_value_is_refused() -> None:
    bad = [{"key": "x", "quantity": "Energy", "unit": "Wh", "value": 12.56, "kind": "number"}]
    with pytest.raises(ReadingError, match="binary float"):
        readings_from_mbus("heat-1", bad, NOW)


CORPUS = Path(__file__).resolve().parent / "data" / "mbus" / "libmbus" / "test-frames"
"""The project's copy of the libmbus corpus (``tests/data/mbus``): always there, never skipped."""


def _frame(name: str) -> bytes:
    text = (CORPUS / name).read_text()
    return bytes.fromhex("".join(text.split()))


def test_real_telegrams_through_the_decoder() -> None:
    from logger.mbus import decode

    readings = readings_from_mbus("water-1", decode(_frame("ACW_Itron-BM-plus-m.hex")), NOW)
    by_key = {r.key: r for r in readings}
    volume = by_key["0413"]
    assert (volume.value, volume.unit, volume.kind) == ("54.321", "m^3", ValueKind.NUMBER)
    assert volume.mantissa_exponent() == (54321, -3)
    assert volume.meter_time == datetime(2014, 3, 13, 11, 11)
    invalid = by_key["426C"]  # a due date the meter left unset
    assert (invalid.kind, invalid.value) == (ValueKind.TEXT, "")
    assert {"invalid date", FLAG_NO_VALUE} <= invalid.flags
    assert by_key["0C78"].value == "11490378"


def test_every_corpus_telegram_converts() -> None:
    from logger.mbus import MBusError, decode

    converted = 0
    for path in sorted(CORPUS.glob("*.hex")):
        try:
            decoded = decode(_frame(path.name))
        except MBusError:
            continue
        readings = readings_from_mbus("m", decoded, NOW)
        for record, reading in zip(decoded["records"], readings, strict=True):
            if record.get("mantissa") is not None:
                exact = Decimal(record["mantissa"]).scaleb(record["exponent"])
                assert reading.kind is ValueKind.NUMBER and reading.decimal() == exact
                assert canonical_decimal(reading.value) == reading.value
            converted += 1
    assert converted > 300

"""Register words to exact values and back, and request planning."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from logger.config import PROFILES, RegisterFunction, RegisterSpec, RegisterType, WordOrder
from logger.modbus.errors import RegisterValueError
from logger.modbus.registers import decode_value, encode_value, plan_requests

INT_RANGES = {
    RegisterType.INT16: (-(2**15), 2**15 - 1),
    RegisterType.UINT16: (0, 2**16 - 1),
    RegisterType.INT32: (-(2**31), 2**31 - 1),
    RegisterType.UINT32: (0, 2**32 - 1),
    RegisterType.INT64: (-(2**63), 2**63 - 1),
    RegisterType.UINT64: (0, 2**64 - 1),
}


def spec(
    rtype: RegisterType,
    order: WordOrder = WordOrder.BIG,
    scale: str = "1",
    address: int = 0,
    function: RegisterFunction = RegisterFunction.HOLDING,
    name: str = "v",
) -> RegisterSpec:
    return RegisterSpec(name, address, function, rtype, order, Decimal(scale))


@given(
    rtype=st.sampled_from(list(INT_RANGES)),
    order=st.sampled_from(list(WordOrder)),
    scale=st.sampled_from(["1", "0.1", "0.01", "0.001", "10", "2.5"]),
    data=st.data(),
)
def test_integers_scale_exactly(
    rtype: RegisterType, order: WordOrder, scale: str, data: st.DataObject
) -> None:
    lo, hi = INT_RANGES[rtype]
    raw = data.draw(st.integers(lo, hi))
    s = spec(rtype, order, scale)
    value = Decimal(raw) * Decimal(scale)
    words = encode_value(s, value)
    assert len(words) == rtype.words and all(0 <= w <= 0xFFFF for w in words)
    assert Decimal(decode_value(s, words)) == value


def test_word_order() -> None:
    assert encode_value(spec(RegisterType.UINT32, WordOrder.BIG), 0x12345678) == [0x1234, 0x5678]
    assert encode_value(spec(RegisterType.UINT32, WordOrder.LITTLE), 0x12345678) == [0x5678, 0x1234]
    assert decode_value(spec(RegisterType.INT16), [0xFFFF]) == "-1"
    assert (
        decode_value(spec(RegisterType.INT32, WordOrder.LITTLE, "0.1"), [0xFFFE, 0xFFFF]) == "-0.2"
    )


def test_abb_energy_in_hundredths_of_kwh() -> None:
    abb = {r.name: r for r in PROFILES["abb_b23"]}["import_active_energy"]
    assert decode_value(abb, [0, 0, 0x0001, 0x0002]) == "655.38"  # 65538 x 0.01


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_gives_the_shortest_text_of_the_same_float(x: float) -> None:
    s = spec(RegisterType.FLOAT32)
    words = [int.from_bytes(struct.pack(">f", x)[i : i + 2], "big") for i in (0, 2)]
    text = decode_value(s, words)
    # the same float32 (-0.0 reads as the number 0)
    assert struct.pack(">f", float(text)) == struct.pack(">f", x) or x == 0
    assert len(Decimal(text).normalize().as_tuple().digits) <= 9


def test_float32_of_a_meter_reading_is_the_meter_s_number() -> None:
    s = spec(RegisterType.FLOAT32)
    assert decode_value(s, encode_value(s, "230.1")) == "230.1"
    assert (
        decode_value(spec(RegisterType.FLOAT64), encode_value(spec(RegisterType.FLOAT64), "0.1"))
        == "0.1"
    )


@pytest.mark.parametrize("bits", [0x7FC00000, 0x7F800000, 0xFF800000])
def test_nan_and_infinity_are_not_values(bits: int) -> None:
    with pytest.raises(RegisterValueError):
        decode_value(spec(RegisterType.FLOAT32), [bits >> 16, bits & 0xFFFF])


def test_encode_refuses_values_off_the_scale_grid() -> None:
    with pytest.raises(ValueError, match="multiple of the scale"):
        encode_value(spec(RegisterType.UINT16, scale="0.1"), "1.25")


def test_plan_merges_neighbours_within_limits() -> None:
    plan = plan_requests(PROFILES["eastron_sdm630"])
    assert [(r.address, r.count) for r in plan] == [(0, 18), (52, 24), (342, 4)]
    assert sum(len(r.specs) for r in plan) == len(PROFILES["eastron_sdm630"])
    single = plan_requests(PROFILES["eastron_sdm630"], one_per_field=True)
    assert len(single) == len(PROFILES["eastron_sdm630"])
    many = [spec(RegisterType.UINT64, address=4 * i, name=f"r{i}") for i in range(100)]
    assert all(r.count <= 125 for r in plan_requests(many))
    mixed = [
        spec(RegisterType.UINT16, address=0),
        spec(RegisterType.UINT16, address=1, function=RegisterFunction.INPUT, name="w"),
    ]
    assert [(r.function, r.count) for r in plan_requests(mixed)] == [
        (RegisterFunction.HOLDING, 1),
        (RegisterFunction.INPUT, 1),
    ]

"""Primary and secondary scans against simulated meters (sans-I/O), and the complete
read-out under MicroPython."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logger.mbus import frames, master, scan, slave
from tests.support.mbus_wire import ABB_A41, SCHNEIDER_IEM, jmbus_frames, run

LIBMBUS_SELECTS = 185  # libmbus on the eight meters of hil.scenarios.secondary8


_serial = iter(range(1, 1 << 30))


def _meter(secondary: str, address: int = 0) -> slave.Slave:
    """A meter with this address; its energy value differs from every other meter's."""
    header = frames.secondary_mask_bytes(secondary) + bytes(4)
    value = next(_serial).to_bytes(4, "little")
    return slave.Slave(address, [(0x72, header + b"\x04\x03" + value)])


def _scan(secondaries: list[str], mask: str = "FFFFFFFFFFFFFFFF") -> scan.SecondaryScan:
    segment = slave.Segment([_meter(s) for s in secondaries])
    procedure = run(scan.SecondaryScan(mask), segment)
    assert isinstance(procedure, scan.SecondaryScan)
    return procedure


def test_secondary8_all_found_with_fewer_selects_than_libmbus() -> None:
    from hil.scenarios import secondary8

    meters = secondary8()
    procedure = run(scan.SecondaryScan(), slave.Segment([m.slave for m in meters]))
    assert isinstance(procedure, scan.SecondaryScan)
    assert sorted(procedure.found) == sorted(m.secondary for m in meters)
    assert all(frame is not None for frame in procedure.found.values())
    assert procedure.selects < LIBMBUS_SELECTS // 2


def test_no_meter_one_select() -> None:
    procedure = _scan([])
    assert procedure.found == {} and procedure.selects == 1


def test_consecutive_serials_split_on_the_last_digit() -> None:
    ids = [f"1234567{d}04420102" for d in range(10)]
    procedure = _scan(ids)
    assert sorted(procedure.found) == ids
    assert procedure.selects == 11  # the wildcard, then one per last digit


def test_hex_digits_in_manufacturer_version_medium() -> None:
    ids = [
        "1111111104420A02",
        "1111111104420B02",
        "11111111044E0B02",
        "1111111104420BEE",
        "1111111174420B02",
    ]
    procedure = _scan(ids)
    assert sorted(procedure.found) == sorted(ids)


def test_twin_with_f_nibble_is_deduced() -> None:
    ids = ["1111111104420B02", "1111111104420F02"]
    procedure = _scan(ids)
    assert sorted(procedure.found) == sorted(ids)
    assert procedure.found["1111111104420F02"] is None  # no select reaches it alone


def test_meters_with_f_at_a_hex_position_are_found() -> None:
    ids = ["22222222044F0F02", "22222222044F0E02", "3333333304F20102", "333333330FF20102"]
    procedure = _scan(ids)
    assert sorted(procedure.found) == sorted(ids)


def test_hex_digits_in_identification_numbers_with_hex_ids() -> None:
    ids = ["1234567A04420102", "1234567B04420102", "123456FA04420102", "12345F7104420102"]
    segment = slave.Segment([_meter(s) for s in ids])
    plain = run(scan.SecondaryScan(), segment)
    assert len(plain.found) < 4  # BCD digits only: colliding hex ids stay hidden
    full = run(scan.SecondaryScan(hex_ids=True), segment)
    assert sorted(full.found) == sorted(ids)


def test_identical_addresses_are_duplicates() -> None:
    procedure = _scan(["1111111104420B02", "1111111104420B02"])
    assert procedure.found == {} and procedure.duplicates == ["1111111104420B02"]


def test_mask_limits_the_scan() -> None:
    ids = ["1234567004420102", "2234567004420102", "1234567104420102"]
    procedure = _scan(ids, mask="1FFFFFFFFFFFFFFF")
    assert sorted(procedure.found) == ["1234567004420102", "1234567104420102"]


_BCD_ID = st.text("0123456789", min_size=8, max_size=8)
_HEX_NO_F = st.text("0123456789ABCDE", min_size=8, max_size=8).filter(lambda s: s[0] in "01234567")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.sampled_from(["12345670", "12345671", "99999999"]) | _BCD_ID, _HEX_NO_F),
        max_size=12,
        unique=True,
    )
)
def test_scan_finds_exactly_the_meters(pairs: list[tuple[str, str]]) -> None:
    """Any set of distinct addresses (shared prefixes, equal ids, hex digits but no F, whose
    wildcard meaning makes it unselectable): found exactly, each with its telegram."""
    ids = [a + b for a, b in pairs]
    procedure = _scan(ids)
    assert sorted(procedure.found) == sorted(ids)
    assert procedure.duplicates == []
    assert all(frame is not None for frame in procedure.found.values())


def test_primary_scan_reports_found_and_garbled() -> None:
    a = _meter("1111111104420B02", 5)
    b = _meter("2222222204420B02", 7)
    c = _meter("3333333304420B02", 7)  # two meters on one primary address
    procedure = run(scan.PrimaryScan(list(range(0, 10))), slave.Segment([a, b, c]))
    assert isinstance(procedure, scan.PrimaryScan)
    found = {address: (frame, error) for address, frame, error in procedure.found}
    assert sorted(found) == [5, 7]
    assert found[5][1] is None and found[5][0] is not None
    assert master.secondary_of(found[5][0]) == "1111111104420B02"
    assert found[7][1] is not None and "address 7" in found[7][1]


_MICROPYTHON_READOUT = """
from logger.mbus import frames, master, slave, scan

def run(proc, segment):
    link = master.MasterLink()
    while True:
        request = proc.next_request()
        if request is None:
            return proc
        answers = segment.receive_data(link.send(request))
        answer = answers[0] if answers else None
        result = link.receive_data(answer) if answer else None
        if result is None:
            result = link.timeout()
        proc.on_answer(result)

lines = open('/lib/frames.txt').read().split('\\n')
abb = [bytes.fromhex(h) for h in lines[0].split()]
iem = [bytes.fromhex(h) for h in lines[1].split()]
m1 = slave.Slave.from_frames(9, abb)
m2 = slave.Slave.from_frames(93, iem)
segment = slave.Segment([m1, m2])
primary = run(master.ReadOut(address=9), segment)
secondary = run(master.ReadOut(secondary=m2.secondary), segment)
found = run(scan.SecondaryScan(), segment)
print(primary.error, primary.complete, ' '.join(t.hex() for t in primary.telegrams))
print(secondary.error, secondary.complete, ' '.join(t.hex() for t in secondary.telegrams))
print(found.selects, ' '.join(sorted(found.found)))
"""


@pytest.mark.micropython
def test_complete_readout_under_micropython() -> None:
    """SND_NKE, secondary select and multi-telegram REQ_UD2 between the master and the slave
    cores running under MicroPython: the same telegrams as CPython gets."""
    from tests.support.micropython import codec_files, run_micropython

    abb, iem = jmbus_frames(ABB_A41), jmbus_frames(SCHNEIDER_IEM)
    files = codec_files()
    files["frames.txt"] = (
        " ".join(f.hex() for f in abb) + "\n" + " ".join(f.hex() for f in iem) + "\n"
    ).encode()
    out = run_micropython(_MICROPYTHON_READOUT, files).splitlines()
    assert out[0] == "None True " + " ".join(f.hex() for f in abb)
    assert out[1] == "None True " + " ".join(f.hex() for f in iem)
    segment = slave.Segment([slave.Slave.from_frames(9, abb), slave.Slave.from_frames(93, iem)])
    cpython = run(scan.SecondaryScan(), segment)
    assert isinstance(cpython, scan.SecondaryScan)
    assert out[2] == f"{cpython.selects} " + " ".join(sorted(cpython.found))
    json.dumps(out)

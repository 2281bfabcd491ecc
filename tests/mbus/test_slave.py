"""The slave (meter) state machine, alone and back to back with the master."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logger.mbus import frames, master, slave
from logger.mbus.errors import UsageError
from tests.support.mbus_wire import ABB_A41, jmbus_frames, run

STATES = range(len(slave.STATE_NAMES))
EVENTS = range(len(slave.EVENT_NAMES))


def test_table_is_total() -> None:
    assert set(slave.TRANSITIONS) == {(s, e) for s in STATES for e in EVENTS}
    for new, action in slave.TRANSITIONS.values():
        assert new in STATES and action in (slave.SILENT, slave.REPLY_ACK, slave.REPLY_RSP)


@given(st.sampled_from(list(STATES)), st.sampled_from(list(EVENTS)))
def test_every_pair_answers_as_the_table_says(state: int, event: int) -> None:
    new, action = slave.transition(state, event)
    # Only an addressed slave answers; a broadcast or foreign frame never gets an answer.
    if event in (slave.E_NKE_ALL, slave.E_UD_ALL, slave.E_FOREIGN, slave.E_SELECT_OTHER):
        assert action == slave.SILENT
    if event in (slave.E_REQ_NET, slave.E_UD_NET) and state == slave.DESELECTED:
        assert action == slave.SILENT
    if event == slave.E_SELECT_MATCH:
        assert (new, action) == (slave.SELECTED, slave.REPLY_ACK)


def _request_frames() -> st.SearchStrategy[bytes]:
    address = st.integers(0, 255)
    return st.one_of(
        address.map(frames.snd_nke),
        st.tuples(address, st.booleans()).map(lambda t: frames.req_ud2(t[0], fcb=t[1])),
        st.sampled_from(
            ["FFFFFFFFFFFFFFFF", "0021781904422002", "00217819FFFFFFFF", "12345678FFFFFFFF"]
        ).map(frames.select_secondary),
        st.tuples(address, st.integers(0, 250)).map(lambda t: frames.set_primary_address(*t)),
        address.map(frames.application_reset),
        st.tuples(address, st.sampled_from(frames.BAUD_RATES)).map(
            lambda t: frames.set_baudrate(*t)
        ),
    )


@settings(max_examples=150)
@given(st.lists(_request_frames(), max_size=30))
def test_random_requests_get_only_well_formed_answers(requests: list[bytes]) -> None:
    meter = slave.Slave.from_frames(9, jmbus_frames(ABB_A41))
    for raw in requests:
        answer = meter.handle(frames.parse_frame(raw))
        meter.after_ack_sent()
        assert meter.state in STATES
        if answer is not None:
            parsed = frames.parse_frame(answer)
            assert parsed.kind in (frames.ACK, frames.LONG)
            if parsed.kind == frames.LONG:
                assert parsed.c == frames.C_RSP_UD and parsed.a == meter.address


def _meter() -> slave.Slave:
    return slave.Slave.from_frames(9, jmbus_frames(ABB_A41))


def _req(meter: slave.Slave, c: int, a: int = 9) -> bytes | None:
    return meter.handle(frames.parse_frame(frames.encode_short(c, a)))


def test_fcb_rules() -> None:
    telegrams = jmbus_frames(ABB_A41)
    meter = _meter()
    assert _req(meter, 0x40) == b"\xe5"
    assert _req(meter, 0x7B) == telegrams[0]
    assert _req(meter, 0x7B) == telegrams[0]  # same FCB: repeat
    assert _req(meter, 0x5B) == telegrams[1]
    assert _req(meter, 0x4B) == telegrams[1]  # FCV=0: current telegram again
    for k in (2, 3, 4):
        assert _req(meter, 0x7B if k % 2 == 0 else 0x5B) == telegrams[k]
    assert _req(meter, 0x7B) == telegrams[4]  # same FCB: repeat of the last
    assert _req(meter, 0x5B) == telegrams[0]  # after the last, the cycle starts again
    assert _req(meter, 0x40) == b"\xe5"
    assert _req(meter, 0x7B) == telegrams[0]


def test_selection_and_network_address() -> None:
    meter = _meter()
    net = frames.ADDR_SELECTED
    assert _req(meter, 0x7B, net) is None
    select = frames.parse_frame(frames.select_secondary("00217819FFFFFFFF"))
    assert meter.handle(select) == b"\xe5" and meter.state == slave.SELECTED
    assert _req(meter, 0x7B, net) == jmbus_frames(ABB_A41)[0]
    other = frames.parse_frame(frames.select_secondary("99999999FFFFFFFF"))
    assert meter.handle(other) is None and meter.state == slave.DESELECTED
    meter.handle(select)
    assert _req(meter, 0x40, net) == b"\xe5" and meter.state == slave.DESELECTED
    assert _req(meter, 0x40, 255) is None  # broadcast: nobody answers
    assert _req(meter, 0x40, 254) == b"\xe5"  # test address: everybody answers


def test_set_address_application_reset_and_baud_switch() -> None:
    meter = _meter()
    assert meter.handle(frames.parse_frame(frames.set_primary_address(9, 42))) == b"\xe5"
    assert meter.address == 42
    assert meter.handle(frames.parse_frame(frames.application_reset(42))) == b"\xe5"
    assert meter.handle(frames.parse_frame(frames.set_baudrate(42, 9600))) == b"\xe5"
    assert meter.baudrate == 2400 and meter.pending_baudrate == 9600
    meter.after_ack_sent()
    assert meter.baudrate == 9600 and meter.pending_baudrate is None


def test_superpose_models_a_collision() -> None:
    assert slave.superpose([]) is None
    assert slave.superpose([b"\xe5", b"\xe5"]) == b"\xe5"
    a = frames.rsp_ud(0, 0x72, bytes(range(12)))
    b = frames.rsp_ud(0, 0x72, bytes(range(1, 13)))
    with pytest.raises(frames.FrameError):
        frames.parse_frame(slave.superpose([a, b]) or b"")
    # Headers differing in one nibble (B and F) would AND into a valid frame: still broken.
    c = frames.rsp_ud(0, 0x72, bytes(6) + b"\x0b" + bytes(5))
    d = frames.rsp_ud(0, 0x72, bytes(6) + b"\x0f" + bytes(5))
    with pytest.raises(frames.FrameError):
        frames.parse_frame(slave.superpose([c, d]) or b"")


def test_slave_arguments_are_checked() -> None:
    with pytest.raises(UsageError):
        slave.Slave(1, [])
    with pytest.raises(UsageError):
        slave.Slave(1, [(0x78, b"")])  # no header: a secondary address must be given
    with pytest.raises(UsageError):
        slave.Slave(251, [(0x72, bytes(12))])
    with pytest.raises(UsageError):
        slave.Slave.from_frames(1, [b"\xe5"])


def test_master_and_slave_back_to_back_with_set_address() -> None:
    meter = _meter()
    segment = slave.Segment([meter])
    cmd = run(master.Command(frames.set_primary_address(9, 17), "set"), segment)
    assert cmd.error is None and meter.address == 17
    readout = run(master.ReadOut(address=17), segment)
    assert readout.complete and len(readout.telegrams) == 5

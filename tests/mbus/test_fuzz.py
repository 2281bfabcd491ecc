"""Property tests: whatever the bytes, the codec returns a result or raises an ``MBusError``;
nothing else escapes and nothing hangs. Mutated corpus telegrams get their length fields and
checksum repaired so the mutations reach the application layer instead of stopping at the
link layer."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logger.mbus import MBusError, decode
from logger.mbus.frames import FrameScanner, encode_long
from logger.mbus.xml import telegram_xml
from tests.mbus.corpus import decodable_frames

_CORPUS = [data for _, data in decodable_frames() if len(data) > 9]
_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _all_paths(data: bytes) -> None:
    for fn in (decode, telegram_xml, lambda d: telegram_xml(d, normalized=True)):
        try:
            result = fn(data)
        except MBusError as exc:
            assert isinstance(str(exc), str)
            continue
        if fn is decode:
            json.dumps(result)  # JSON-ready, always


@_SETTINGS
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    _all_paths(data)


@_SETTINGS
@given(
    st.sampled_from([0x70, 0x72, 0x73, 0x76, 0x77, 0x78, 0x7A, 0x51, 0xB8]),
    st.binary(max_size=252),
)
def test_well_framed_random_user_data(ci: int, user: bytes) -> None:
    _all_paths(encode_long(0x08, 1, ci, user))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(_CORPUS)))
    user = bytearray(frame[7:-2])
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(user) - 1)))
        if kind == "set" and user:
            user[pos] = draw(st.integers(0, 255))
        elif kind == "insert" and len(user) < 252:
            user.insert(pos, draw(st.integers(0, 255)))
        elif kind == "delete" and user:
            del user[pos]
        elif kind == "truncate":
            del user[pos:]
    if draw(st.booleans()):  # repair the link layer so the application layer is exercised
        return encode_long(frame[4], frame[5], frame[6], bytes(user[:252]))
    return bytes(frame[:7] + user + frame[-2:])


@_SETTINGS
@given(mutated())
def test_mutated_corpus(data: bytes) -> None:
    _all_paths(data)


@_SETTINGS
@given(mutated(), st.binary(max_size=20), st.binary(max_size=20), st.integers(1, 16))
def test_scanner_on_noisy_streams(frame: bytes, before: bytes, after: bytes, chunk: int) -> None:
    stream = before + frame + after
    scanner = FrameScanner()
    found = []
    for i in range(0, len(stream), chunk):
        scanner.feed(stream[i : i + chunk])
        while (f := scanner.next_frame()) is not None:
            found.append(f)
    found.extend(scanner.flush())
    for f in found:
        if f.kind == 3:  # long frames: decoding them must not raise anything unexpected
            _all_paths(f.encode())

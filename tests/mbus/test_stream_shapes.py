"""Every corpus telegram in the three shapes of a parser test (h11's test_io style): whole,
one byte at a time through the stream resync (:class:`FrameScanner`), and with noise before
and trailing garbage after."""

from __future__ import annotations

import pytest

from logger.mbus import FrameError, MBusError, decode
from logger.mbus.frames import FrameScanner
from tests.mbus.corpus import all_frames, decodable_frames

_NOISE = b"\x00\x01\xff\x42"
_GARBAGE = b"\x16\x00\xfe\x55"
_DECODABLE = decodable_frames()


def _bytewise(data: bytes) -> list[bytes]:
    scanner = FrameScanner(accept_ack=False)
    found = []
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
        while True:
            frame = scanner.next_frame()
            if frame is None:
                break
            found.append(frame.encode())
    found.extend(f.encode() for f in scanner.flush())
    return found


@pytest.mark.parametrize("name,data", _DECODABLE, ids=[n for n, _ in _DECODABLE])
def test_whole_bytewise_and_with_garbage(name: str, data: bytes) -> None:
    whole = decode(data)
    assert _bytewise(data) == [data]
    assert _bytewise(_NOISE + data + _GARBAGE) == [data]
    assert decode(_bytewise(_NOISE + data)[0]) == whole
    with pytest.raises(FrameError) as info:
        decode(data + _GARBAGE)
    assert info.value.offset == len(data)


@pytest.mark.parametrize("name,data", all_frames(), ids=[n for n, _ in all_frames()])
def test_every_telegram_is_decoded_or_refused(name: str, data: bytes) -> None:
    try:
        result = decode(data)
    except MBusError as exc:
        assert exc.offset is not None, name
        return
    assert result["frame"]["ci"] == data[6]

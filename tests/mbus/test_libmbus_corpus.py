"""libmbus's own test frames: our XML equals libmbus's ``.xml``/``.norm.xml`` (numbers compared
as numbers), malformed frames are refused with an offset, application errors are reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from logger.mbus import MBusError, decode
from logger.mbus.xml import telegram_xml
from tests.mbus.corpus import libmbus_error_frames, libmbus_test_frames, read_hex

_VALUE = re.compile(r"^(\s*<Value>)(.*)(</Value>)$")
_NUMBER = re.compile(r"^-?\d+\.\d+$")


def assert_same_xml(got: str, want: str) -> None:
    """Line by line; ``%f`` values may differ in the last digit (binary float printing)."""
    got_lines = got.splitlines()
    want_lines = want.splitlines()
    assert len(got_lines) == len(want_lines), (got, want)
    for i, (a, b) in enumerate(zip(got_lines, want_lines, strict=True)):
        if a == b:
            continue
        ma, mb = _VALUE.match(a), _VALUE.match(b)
        assert ma and mb, f"line {i + 1}: {a!r} != {b!r}"
        assert _NUMBER.match(ma.group(2)) and _NUMBER.match(mb.group(2)), f"line {i + 1}"
        x, y = float(ma.group(2)), float(mb.group(2))
        assert abs(x - y) <= 1e-6 * max(1.0, abs(y)), f"line {i + 1}: {x} != {y}"


@pytest.mark.parametrize("path", libmbus_test_frames(), ids=lambda p: p.stem)
@pytest.mark.parametrize("normalized", [False, True], ids=["xml", "norm"])
def test_xml_equals_libmbus(path: Path, normalized: bool) -> None:
    expected = path.with_suffix(".norm.xml" if normalized else ".xml")
    got = telegram_xml(read_hex(path), normalized=normalized)
    assert_same_xml(got, expected.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", libmbus_test_frames(), ids=lambda p: p.stem)
def test_json_decodes_every_test_frame(path: Path) -> None:
    result = decode(read_hex(path))
    assert result["error"] is None
    xml_records = path.with_suffix(".xml").read_text(encoding="utf-8").count("<DataRecord ")
    manufacturer = 1 if result["manufacturer_data"] is not None else 0
    assert len(result["records"]) + manufacturer == xml_records


_ERROR_XML = [p for p in libmbus_error_frames() if p.with_suffix(".xml").exists()]
_MALFORMED = [p for p in libmbus_error_frames() if not p.with_suffix(".xml").exists()]


@pytest.mark.parametrize("path", _ERROR_XML, ids=lambda p: p.stem)
def test_application_errors(path: Path) -> None:
    want = path.with_suffix(".xml").read_text(encoding="utf-8")
    data = read_hex(path)
    assert telegram_xml(data) == want
    assert telegram_xml(data, normalized=True) == want
    text = re.search(r"<Error>(.*)</Error>", want)
    assert text is not None
    error = decode(data)["error"]
    assert error is not None
    assert error["text"] == text.group(1)
    assert error["code"] == (data[7] if len(data) > 9 else 0)


@pytest.mark.parametrize("path", _MALFORMED, ids=lambda p: p.stem)
def test_malformed_frames_refused(path: Path) -> None:
    data = read_hex(path)
    for fn in (decode, telegram_xml):
        with pytest.raises(MBusError) as info:
            fn(data)
        assert info.value.offset is not None
        assert 7 <= info.value.offset <= len(data)
        assert "at byte" in str(info.value)

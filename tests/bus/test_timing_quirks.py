"""Timing derived from the baud rate, quirks as named options, port locks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from logger.bus import QuirkError, Quirks, port_lock, timing


def test_answer_timeout_follows_the_standard_plus_margin() -> None:
    # 330 bit times + 50 ms + first character + 100 ms converter margin.
    assert timing.answer_timeout(2400) == pytest.approx(330 / 2400 + 0.05 + 11 / 2400 + 0.1)
    assert timing.answer_timeout(2400, margin=0) == pytest.approx(0.19208, abs=1e-4)
    assert timing.answer_timeout(300) > timing.answer_timeout(2400) > timing.answer_timeout(9600)
    assert timing.wire_time(261, 2400) == pytest.approx(1.19625)


def test_quirks_parse_and_merge() -> None:
    q = Quirks.parse(["echo", "pause_after_nke=20,max_telegrams=8", "fallback_baudrate=2400"])
    assert q == Quirks(echo=True, pause_after_nke=20.0, max_telegrams=8, fallback_baudrate=2400)
    assert q.as_dict() == {
        "echo": True,
        "pause_after_nke": 20.0,
        "max_telegrams": 8,
        "fallback_baudrate": 2400,
    }
    merged = Quirks(retries=1, echo=True).merged(Quirks(max_telegrams=3))
    assert merged == Quirks(retries=1, echo=True, max_telegrams=3)
    assert Quirks.from_mapping({"no_reset": "yes", "timeout": 0.5}) == Quirks(
        no_reset=True, timeout=0.5
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"ehco": True}, "unknown quirk 'ehco'"),
        ({"echo": "maybe"}, "quirk echo: 'maybe' is not a valid bool"),
        ({"max_telegrams": 0}, "max_telegrams=0: must be 1-255"),
        ({"pause_after_nke": -1}, "pause_after_nke=-1.0: must be 0-120 seconds"),
        ({"fallback_baudrate": 2401}, "fallback_baudrate=2401: not one of"),
        ({"retries": True}, "quirk retries: True is not a valid int"),
    ],
)
def test_quirk_errors_name_the_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(QuirkError, match=message.replace("(", r"\(")):
        Quirks.from_mapping(options)


def test_one_lock_per_physical_port(tmp_path: Path) -> None:
    device = tmp_path / "ttyUSB0"
    device.touch()
    alias = tmp_path / "by-id"
    os.symlink(device, alias)
    assert port_lock(str(device)) is port_lock(str(alias))
    assert port_lock("socket://GW:10001") is port_lock("socket://gw:10001")
    assert port_lock(str(device)) is not port_lock("socket://gw:10001")
    lock = port_lock(str(device))
    with lock:
        taken = threading.Event()

        def other() -> None:
            if lock.acquire(timeout=0.05):
                lock.release()
                taken.set()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        assert not taken.is_set()

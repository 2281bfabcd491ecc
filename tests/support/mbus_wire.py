"""A master procedure against simulated slaves without any I/O (sans-I/O back to back).

``run(procedure, segment)`` drives a :mod:`logger.mbus.master` procedure against a
:class:`logger.mbus.slave.Segment`, the way the serial transport does, but in memory and
instantly. ``lose`` lets a test drop answers (by exchange number) to exercise retries.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from logger.mbus import master, slave

ROOT = Path(__file__).resolve().parents[2]


def jmbus_frames(name: str) -> list[bytes]:
    path = ROOT / "tests" / "data" / "mbus" / "jmbus" / "jmbus_wired_cases.json"
    if not path.exists():
        path = ROOT.parent / "shared" / "corpus" / "mbus" / "jmbus" / "jmbus_wired_cases.json"
    doc = json.loads(path.read_text())
    for case in doc["wired_telegram_cases"]:
        if case["name"] == name:
            return [bytes.fromhex(h) for h in case["frames_hex"]]
    raise KeyError(name)


ABB_A41 = "test_ABB_A41_messages"
SCHNEIDER_IEM = "test_Schneider_Electric_message"


class Trace:
    """What went over the simulated wire: requests and answers, in order."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.answers: list[bytes | None] = []


P = TypeVar("P", bound=master.Procedure)


def run(
    procedure: P,
    segment: slave.Segment,
    lose: Callable[[int], bool] | None = None,
    trace: Trace | None = None,
    limit: int = 100_000,
) -> P:
    link = master.MasterLink()
    for n in range(limit):
        request = procedure.next_request()
        if request is None:
            return procedure
        data = link.send(request)
        if request.expect == master.EXPECT_NONE:
            segment.receive_data(data)  # the slaves hear it; nobody answers a broadcast
            procedure.on_answer(master.Answer(master.NO_ANSWER))
            continue
        answers = segment.receive_data(data)
        answer = answers[0] if answers else None
        if lose is not None and lose(n):
            answer = None
        if trace is not None:
            trace.requests.append(data)
            trace.answers.append(answer)
        result = link.receive_data(answer) if answer else None
        if result is None:
            result = link.timeout()
        procedure.on_answer(result)
    raise AssertionError(f"procedure did not finish in {limit} exchanges")

"""Fixtures' helpers for tests that need simulated meters on a virtual serial line.

``sim_line(meters, baudrate=..., **options)`` is a context manager around
:class:`hil.sim.SimLine`; ``corpus_line(count)`` serves the first ``count`` corpus telegrams at
addresses 1..count. The line's ``served`` list and ``meter(address).expected_frames()`` say
what the meters sent.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hil import scenarios
from hil.sim import Faults, SimLine, SimMeter

__all__ = ["Faults", "SimLine", "SimMeter", "corpus_line", "scenario_line", "sim_line"]


@contextmanager
def sim_line(meters: list[SimMeter], baudrate: int = 19200, **options: Any) -> Iterator[SimLine]:
    before = set(threading.enumerate())
    line = SimLine(meters, baudrate, **options)
    line.start()
    try:
        yield line
    finally:
        line.stop()
        leaked = [t for t in threading.enumerate() if t not in before and t.name.startswith("sim")]
        assert not leaked, f"simulator threads left running: {leaked}"


@contextmanager
def corpus_line(count: int = 3, baudrate: int = 19200, **options: Any) -> Iterator[SimLine]:
    with sim_line(scenarios.corpus_meters(count), baudrate, **options) as line:
        yield line


@contextmanager
def scenario_line(name: str, baudrate: int = 19200, **options: Any) -> Iterator[SimLine]:
    meters, extra = scenarios.build(name)
    with sim_line(meters, baudrate, **{**extra, **options}) as line:
        yield line

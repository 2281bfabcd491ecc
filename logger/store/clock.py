"""Is the wall clock trustworthy? Synchronisation status and clock-jump detection.

A Raspberry Pi has no real-time clock: after a power cut it boots at the last saved time and
jumps when NTP answers. Readings taken before that carry the ``clock_unsynced`` flag, and a jump
is logged once with its size, so a gap or overlap in the logger timestamps has an explanation.
Sequence numbers, not timestamps, order the buffer, so a jump never reorders or loses readings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

_TIME_ERROR = 5  # adjtimex(2): the clock is not synchronised
_TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")


class _Timex(ctypes.Structure):
    # struct timex from <sys/timex.h> (Linux): the fields before the padding; the kernel
    # writes the whole structure, so it is padded to its full size.
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time_sec", ctypes.c_long),
        ("time_usec", ctypes.c_long),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("_pad", ctypes.c_int * 11),
    ]


def kernel_clock_synchronised() -> bool | None:
    """The kernel's NTP status (chrony, ntpd and systemd-timesyncd all maintain it).

    ``None`` when it cannot be read (not Linux, no libc); callers then fall back to
    :func:`clock_synchronised`'s other evidence.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        timex = _Timex()
        state = int(libc.adjtimex(ctypes.byref(timex)))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


def clock_synchronised(flag_file: Path = _TIMESYNCD_FLAG) -> bool:
    """True when the wall clock is known to be set: the kernel says so, or timesyncd does."""
    if flag_file.exists():
        return True
    return bool(kernel_clock_synchronised())


@dataclass(frozen=True, slots=True)
class ClockJump:
    """The wall clock moved ``seconds`` more (positive) or less than the monotonic clock."""

    seconds: float
    wall_before: float
    wall_after: float


class ClockJumpDetector:
    """Compares wall-clock progress with monotonic progress between observations.

    Pure: feed it ``(wall, monotonic)`` pairs (``observe()`` reads the clocks itself when none
    are given). A jump is reported when the two disagree by more than ``threshold_s``.
    """

    def __init__(
        self,
        threshold_s: float = 5.0,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        if threshold_s <= 0:
            raise ValueError("threshold_s must be positive")
        self.threshold_s = threshold_s
        self._wall = wall
        self._mono = mono
        self._last: tuple[float, float] | None = None

    def observe(self, wall: float | None = None, mono: float | None = None) -> ClockJump | None:
        now = (self._wall() if wall is None else wall, self._mono() if mono is None else mono)
        last, self._last = self._last, now
        if last is None:
            return None
        drift = (now[0] - last[0]) - (now[1] - last[1])
        if abs(drift) <= self.threshold_s:
            return None
        jump = ClockJump(drift, last[0], now[0])
        _LOGGER.warning(
            "system clock jumped by %+.1f s (wall %.0f -> %.0f)", drift, last[0], now[0]
        )
        return jump

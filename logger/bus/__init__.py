"""Serial M-Bus transport: pyserial, timing from the baud rate, retries, quirks, port locks.

Public API:

* :class:`MBusMaster` - synchronous master on one port (``read``, ``read_many``,
  ``scan_primary``, ``scan_secondary``, commands); used by the CLI and worker threads.
* :class:`AsyncMBus` - the same on a dedicated thread per port, for asyncio code.
* :class:`Quirks` - per-meter options by name; :func:`port_lock` - the lock every protocol on
  a physical port shares (Modbus RTU too).
* :class:`BusError` / :class:`PortError` - port problems (a meter's failure is a
  :class:`ReadResult` with ``error``, not an exception).

``logger.bus.aio`` is imported lazily so that plain CLI commands do not load asyncio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from logger.bus.errors import BusError, PortError, QuirkError
from logger.bus.locks import port_lock
from logger.bus.mbus import MBusMaster, ReadResult, ScanEntry, Stats
from logger.bus.quirks import Quirks

if TYPE_CHECKING:
    from logger.bus.aio import AsyncMBus

__all__ = [
    "AsyncMBus",
    "BusError",
    "MBusMaster",
    "PortError",
    "QuirkError",
    "Quirks",
    "ReadResult",
    "ScanEntry",
    "Stats",
    "port_lock",
]


def __getattr__(name: str) -> Any:
    if name == "AsyncMBus":
        from logger.bus.aio import AsyncMBus

        return AsyncMBus
    raise AttributeError(name)

"""asyncio front of the M-Bus master: serial I/O on one worker thread per port.

The event loop only awaits; every exchange runs on the port's own thread, so neither a slow
meter nor a 40-second quirk pause can delay the uplink or the TPM, and nothing can delay a
bus exchange either. Calls to one port queue on its thread in order (half duplex: never
pipeline); different ports run in parallel.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from logger.bus.mbus import MBusMaster, ReadResult, ScanEntry
from logger.bus.quirks import Quirks

T = TypeVar("T")


class AsyncMBus:
    """``await bus.read(address=5)``: the synchronous master on a dedicated thread."""

    def __init__(self, device: str, baudrate: int = 2400, **options: Any) -> None:
        self.master = MBusMaster(device, baudrate, **options)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mbus {device}")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def open(self) -> None:
        await self._call(self.master.open)

    async def read(
        self,
        address: int | None = None,
        secondary: str | None = None,
        quirks: Quirks | None = None,
    ) -> ReadResult:
        return await self._call(self.master.read, address, secondary, quirks)

    async def scan_primary(self, addresses: Sequence[int] | None = None) -> list[ScanEntry]:
        return await self._call(self.master.scan_primary, addresses)

    async def scan_secondary(
        self, mask: str = "FFFFFFFFFFFFFFFF", hex_ids: bool = False
    ) -> list[ScanEntry]:
        entries, _procedure = await self._call(self.master.scan_secondary, mask, hex_ids)
        return entries

    async def aclose(self) -> None:
        """Close the port and stop the thread (waits for a running exchange to finish)."""
        try:
            await self._call(self.master.close)
        finally:
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncMBus:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

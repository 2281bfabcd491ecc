"""The M-Bus master on a serial line: runs the sans-I/O procedures of ``logger.mbus``.

:class:`MBusMaster` is the synchronous API (the CLI, the poller's worker thread); it owns one
:class:`~logger.bus.serial_link.SerialLink` and holds the port's lock (:func:`port_lock`) for a
whole procedure, so a multi-telegram read-out is never interleaved with another user of the
port. Each exchange: idle gap, purge, write, wait for the answer from the end of our
transmission, feed the bytes to the link state machine until it has an answer or the deadline
passes. Retries, FCB and what comes next are the procedure's business (``logger.mbus``).

One meter failing never stalls the others: each read has its bounded number of exchanges, each
exchange its bounded time, and the failure is a result (:class:`ReadResult.error`), not an
exception.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

from logger.bus import timing
from logger.bus.errors import BusError
from logger.bus.locks import port_lock
from logger.bus.quirks import Quirks
from logger.bus.serial_link import SerialLink
from logger.mbus import frames
from logger.mbus import master as core
from logger.mbus import scan as scan_core
from logger.mbus.errors import MBusError

_LOGGER = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters for the efficiency figures: what crossed the wire and how often we asked."""

    requests: int = 0
    answers: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    timeouts: int = 0
    invalid: int = 0

    def wire_bound(self, baudrate: int, response_delay: float = 0.0) -> float:
        """Seconds the exchanges need at least: every byte's wire time plus the meters' delay."""
        return timing.wire_time(self.tx_bytes + self.rx_bytes, baudrate) + (
            self.answers * response_delay
        )


@dataclass
class ReadResult:
    """One meter's read-out: the telegrams (full RSP_UD frames) or why it failed."""

    target: str  # "5" or the secondary address as given
    address: int | None
    secondary: str | None
    telegrams: list[bytes] = field(default_factory=list)
    complete: bool = False
    error: str | None = None
    elapsed: float = 0.0
    baudrate: int | None = None  # set when the meter answered at its fallback rate

    @property
    def ok(self) -> bool:
        return self.error is None and self.complete


@dataclass
class ScanEntry:
    """A meter found by a scan: where, who (from its RSP_UD header), and any trouble."""

    address: int | None
    secondary: str | None
    frame: bytes | None
    error: str | None = None


class MBusMaster:
    """Synchronous M-Bus master on one port (path or pyserial URL), 8E1.

    ``timeout`` overrides the answer timeout derived from the baud rate; ``margin`` is the
    converter allowance added to it; ``idle_gap`` the pause between an answer and the next
    request; ``quirks`` the bus-wide defaults that each read may extend. With ``hold_open``
    False the port is opened for each procedure and closed after it, inside the port lock, so
    other users of the same physical port (another master, Modbus RTU) can take turns.
    """

    def __init__(
        self,
        device: str,
        baudrate: int = 2400,
        *,
        timeout: float | None = None,
        margin: float = timing.DEFAULT_MARGIN,
        retries: int = 3,
        idle_gap: float | None = None,
        quirks: Quirks | None = None,
        hold_open: bool = True,
    ) -> None:
        if baudrate not in frames.BAUD_RATES:
            raise BusError(f"baud rate {baudrate} not one of {frames.BAUD_RATES}")
        if timeout is not None and not 0.01 <= timeout <= 10:
            raise BusError(f"timeout {timeout} s out of range 0.01-10")
        self.device = device
        self.baudrate = baudrate
        self.timeout = timeout
        self.margin = margin
        self.retries = retries
        self.idle_gap = timing.idle_gap(baudrate) if idle_gap is None else idle_gap
        self.quirks = quirks or Quirks()
        self.hold_open = hold_open
        self.stats = Stats()
        self._link = SerialLink(device, baudrate)
        self._lock = port_lock(device)
        self._last_activity = 0.0
        # FCB of the last REQ_UD2 per meter, for meters read without a link reset.
        self._last_fcb: dict[str, bool] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            self._link.open()

    def close(self) -> None:
        with self._lock:
            self._link.close()

    def __enter__(self) -> MBusMaster:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- the engine --------------------------------------------------------------------------

    def answer_timeout(self, quirks: Quirks | None = None) -> float:
        q = quirks or self.quirks
        if q.timeout is not None:
            return q.timeout
        if self.timeout is not None:
            return self.timeout
        return timing.answer_timeout(self._link.baudrate, self.margin)

    def run(self, procedure: core.Procedure, quirks: Quirks | None = None) -> core.Procedure:
        """Run a sans-I/O procedure to its end on this port (holding the port lock)."""
        q = quirks or self.quirks
        with self._lock:
            opened_here = not self._link.is_open
            self._link.open()
            try:
                link = core.MasterLink()
                while True:
                    request = procedure.next_request()
                    if request is None:
                        return procedure
                    procedure.on_answer(self._exchange(link, request, q))
            finally:
                if opened_here and not self.hold_open:
                    self._link.close()

    def _exchange(self, link: core.MasterLink, request: core.Request, q: Quirks) -> core.Answer:
        baud = self._link.baudrate
        if request.pause > 0:
            _LOGGER.debug("%s: pause %.1f s before %s", self.device, request.pause, request.label)
            time.sleep(request.pause)
        wait = self._last_activity + self.idle_gap - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        dropped = self._link.purge()
        if dropped:
            _LOGGER.debug("%s: purged %d stray bytes", self.device, dropped)
        data = link.send(request)
        _LOGGER.debug("%s: -> %s %s", self.device, request.label, data.hex(" "))
        end_tx = self._link.write(data)
        self.stats.requests += 1
        self.stats.tx_bytes += len(data)
        if request.expect == core.EXPECT_NONE:
            self._last_activity = end_tx
            return core.Answer(core.NO_ANSWER)
        timeout = self.answer_timeout(q)
        if q.echo:
            timeout += timing.wire_time(len(data), baud)
        deadline = end_tx + timeout
        gap = timing.char_gap(baud, self.margin)
        # An answer that started must end within its own wire time (261 bytes at most).
        hard_stop = deadline + timing.wire_time(frames.MAX_FRAME_BYTES, baud) + gap
        answer: core.Answer | None = None
        received = 0
        while answer is None:
            limit = min(hard_stop, time.monotonic() + gap) if received else deadline
            chunk = self._link.read_some(limit)
            if chunk:
                received += len(chunk)
                answer = link.receive_data(chunk)
            elif time.monotonic() >= limit:
                answer = link.timeout()
        if answer.kind == core.INVALID:
            # Garbage or a collision may still be on the line: a request sent into it would
            # be lost (half duplex). Wait until the line has been quiet for a character gap.
            self._settle(gap, hard_stop)
        self._last_activity = time.monotonic()
        if answer.kind == core.NO_ANSWER:
            self.stats.timeouts += 1
            _LOGGER.debug("%s: <- nothing within %.3f s", self.device, timeout)
        else:
            self.stats.answers += 1
            self.stats.rx_bytes += len(answer.raw) if answer.raw else received
            if answer.kind == core.INVALID:
                self.stats.invalid += 1
                _LOGGER.debug("%s: <- invalid: %s", self.device, answer.reason)
            else:
                _LOGGER.debug("%s: <- %s", self.device, answer.raw.hex(" "))
        return answer

    def _settle(self, gap: float, hard_stop: float) -> None:
        quiet_until = time.monotonic() + gap
        while True:
            now = time.monotonic()
            if now >= quiet_until or now >= hard_stop:
                return
            if self._link.read_some(min(quiet_until, hard_stop)):
                quiet_until = time.monotonic() + gap

    # -- reading -----------------------------------------------------------------------------

    def read(
        self,
        address: int | None = None,
        secondary: str | None = None,
        quirks: Quirks | None = None,
    ) -> ReadResult:
        """Read one meter completely (all telegrams). Never raises for the meter's faults."""
        q = self.quirks.merged(quirks) if quirks is not None else self.quirks
        target = str(address) if address is not None else str(secondary)
        result = ReadResult(target, address, secondary.upper() if secondary else None)
        started = time.monotonic()
        try:
            self._read_into(result, q)
            if (
                result.error is not None
                and q.fallback_baudrate is not None
                and q.fallback_baudrate != self._link.baudrate
                and not result.telegrams
            ):
                self._read_fallback(result, q)
        except MBusError as exc:
            result.error = f"{target}: {exc}"
        result.elapsed = time.monotonic() - started
        if result.error:
            _LOGGER.debug("%s: meter %s failed: %s", self.device, target, result.error)
        return result

    def _read_into(self, result: ReadResult, q: Quirks) -> None:
        key = result.target.upper()
        procedure = core.ReadOut(
            address=result.address,
            secondary=result.secondary,
            reset=not q.no_reset,
            retries=self.retries if q.retries is None else q.retries,
            max_telegrams=q.max_telegrams,
            pause_after_reset=q.pause_after_nke,
            check_address=not q.any_address,
            first_fcb=not self._last_fcb.get(key, False) if q.no_reset else True,
        )
        self.run(procedure, q)
        if procedure.telegrams:
            self._last_fcb[key] = procedure.last_fcb
        result.telegrams = list(procedure.telegrams)
        result.complete = procedure.complete
        result.error = procedure.error

    def _read_fallback(self, result: ReadResult, q: Quirks) -> None:
        assert q.fallback_baudrate is not None
        normal = self._link.baudrate
        first_error = result.error
        with self._lock:
            self._link.reopen(q.fallback_baudrate)
            try:
                self._read_into(result, q)
            finally:
                self._link.reopen(normal)
        if result.error is None:
            result.baudrate = q.fallback_baudrate
            # The result says so (``baudrate``); the poller logs state changes, not every read.
            _LOGGER.debug(
                "%s: meter %s answered only at its fallback rate %d Bd",
                self.device,
                result.target,
                q.fallback_baudrate,
            )
        else:
            result.error = f"{first_error}; at {q.fallback_baudrate} Bd: {result.error}"

    def read_many(
        self,
        addresses: Iterable[int] = (),
        secondaries: Iterable[str] = (),
        quirks: Quirks | None = None,
    ) -> list[ReadResult]:
        """Read several meters one after the other; a failed one does not stop the rest."""
        results = [self.read(address=a, quirks=quirks) for a in addresses]
        results += [self.read(secondary=s, quirks=quirks) for s in secondaries]
        return results

    # -- scanning ----------------------------------------------------------------------------

    def scan_primary(self, addresses: Sequence[int] | None = None) -> list[ScanEntry]:
        """Ping every primary address (0-250 by default); the meters that answered."""
        procedure = scan_core.PrimaryScan(list(addresses) if addresses is not None else None)
        self.run(procedure)
        return [
            ScanEntry(a, core.secondary_of(f), f.encode() if f is not None else None, err)
            for a, f, err in procedure.found
        ]

    def scan_secondary(
        self, mask: str = "FFFFFFFFFFFFFFFF", hex_ids: bool = False
    ) -> tuple[list[ScanEntry], scan_core.SecondaryScan]:
        """Wildcard scan; the meters found and the procedure (selects, probes, duplicates).

        ``hex_ids`` also tries hex digits in identification numbers (non-BCD meters)."""
        procedure = scan_core.SecondaryScan(mask, hex_ids=hex_ids)
        self.run(procedure)
        entries = [
            ScanEntry(f.a if f is not None else None, sec, f.encode() if f is not None else None)
            for sec, f in sorted(procedure.found.items())
        ]
        entries += [
            ScanEntry(None, dup, None, f"several meters answer to {dup} with every digit fixed")
            for dup in procedure.duplicates
        ]
        return entries, procedure

    # -- commands ----------------------------------------------------------------------------

    def command(self, data: bytes, label: str, expect: int = core.EXPECT_ACK) -> core.Command:
        procedure = core.Command(data, label, expect, self.retries)
        self.run(procedure)
        return procedure

    def _confirm(self, data: bytes, label: str) -> None:
        procedure = self.command(data, label)
        if procedure.error:
            raise BusError(procedure.error)

    def link_reset(self, address: int) -> None:
        """SND_NKE; to 255 (broadcast) it resets every meter and nobody answers."""
        if address == frames.ADDR_BROADCAST:
            self.command(frames.snd_nke(address), "SND_NKE broadcast", core.EXPECT_NONE)
            return
        self._confirm(frames.snd_nke(address), f"SND_NKE to {address}")

    def select_for_readout(self, address: int, records: bytes) -> None:
        """CI 0x51 with DIF/VIF pairs: the meter's next RSP_UD carries only those records."""
        self._confirm(frames.select_for_readout(address, records), f"select for readout {address}")

    def application_reset(self, address: int, subcode: int | None = None) -> None:
        self._confirm(frames.application_reset(address, subcode), f"application reset of {address}")

    def set_primary_address(self, address: int, new_address: int) -> None:
        self._confirm(
            frames.set_primary_address(address, new_address),
            f"set address {address} -> {new_address}",
        )

    def select(self, secondary: str) -> None:
        self._confirm(frames.select_secondary(secondary), f"select {secondary}")

    def switch_baudrate(self, address: int, baudrate: int) -> None:
        """Switch a meter and this port to ``baudrate``; verify at the new rate.

        The meter confirms at the old rate, then switches. If it does not answer a link reset
        at the new rate but does at the old one, it fell back (or never switched): the port
        returns to the old rate and a :class:`BusError` says so.
        """
        old = self._link.baudrate
        with self._lock:
            self._confirm(frames.set_baudrate(address, baudrate), f"baud rate {baudrate}")
            self._link.reopen(baudrate)
            self.idle_gap = timing.idle_gap(baudrate)
            if not self.command(frames.snd_nke(address), "SND_NKE").error:
                self.baudrate = baudrate
                return
            self._link.reopen(old)
            self.idle_gap = timing.idle_gap(old)
            back = not self.command(frames.snd_nke(address), "SND_NKE").error
        if back:
            raise BusError(f"meter {address} confirmed {baudrate} Bd but still answers at {old} Bd")
        raise BusError(
            f"meter {address} answers at neither {baudrate} nor {old} Bd after the switch"
        )

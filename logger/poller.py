"""The poller: meters read on their wall-clock grid, one commit per schedule tick.

Why it is shaped this way:

* **Wall-clock grid.** Each meter is due at the slots of :func:`logger.config.next_due` (a
  15-minute meter at :00/:15/:30/:45 plus its offset), whatever time the daemon started. All
  meters due at one slot form a *tick*; the tick's readings go to the store in **one**
  transaction (:meth:`~logger.store.api.ReadingStore.commit_tick`): one fsync group per tick, not
  one per value, which is what an SD card's wear budget allows.
* **One lane per bus.** Meters are grouped into lanes: an M-Bus or Modbus RTU bus (one physical
  port, half duplex: its meters are read one after the other) or a Modbus TCP endpoint. Each
  lane has its own worker thread, so lanes run in parallel, a slow meter delays only its own
  bus, and no serial I/O ever runs on the event loop. The transports also hold the port's
  process-wide lock (:func:`logger.bus.port_lock`) for each read-out.
* **Failure isolation.** A meter's read either returns readings or raises
  :class:`MeterReadError`; either way the lane goes on with the next meter. A meter's health
  (last success, consecutive failures, last error) is kept here, and a meter going down is
  logged once, and once again when it comes back (not on every poll).
* **A reading counts once it is committed.** ``last_success`` moves only after the store's
  commit returned; the commit is reported (log line and :attr:`Poller.on_tick`) only after it.
* **Clock.** Readings taken while the wall clock is not known to be synchronised carry
  :data:`~logger.readings.FLAG_CLOCK_UNSYNCED`. The wait for the next slot wakes at least every
  :data:`MAX_NAP_S` seconds, compares wall and monotonic progress, and re-plans the grid after
  a jump (a Raspberry Pi's clock jumps when NTP first answers). A slot missed because a tick
  was still being read or the clock jumped forward is skipped and counted, never polled twice.

Time is injected (:class:`Timer`), so tests and the benchmark run thousands of ticks without
waiting; the daemon uses :class:`WallTimer`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from logger.config.model import Config, MeterConfig, MeterKind
from logger.config.schedule import next_due
from logger.readings import Reading
from logger.store.api import BufferFull, CommitResult, ReadingStore, StoreError
from logger.store.clock import ClockJump, ClockJumpDetector

_LOGGER = logging.getLogger(__name__)

MAX_NAP_S = 1.0
"""Longest sleep between two looks at the clock (jump detection, stop, reload, heartbeat)."""

CLOSE_TIMEOUT_S = 30.0
"""How long closing a lane may wait for the read it is in the middle of."""

CLOCK_JUMP_THRESHOLD_S = 5.0
"""Wall-clock and monotonic progress differing by more than this is a clock jump."""


class MeterReadError(Exception):
    """One meter could not be read; the message says which meter and why."""


class MeterReader(Protocol):
    """Reads the meters of one lane. Blocking: called on the lane's own worker thread only."""

    def read(self, meter: MeterConfig, logger_time: datetime, clock_synced: bool) -> list[Reading]:
        """All readings of ``meter`` now, or :class:`MeterReadError`."""
        ...

    def close(self) -> None: ...


ReaderFactory = Callable[[str, Config], MeterReader]
"""Builds the reader of a lane (its key, see :func:`lane_of`) from the configuration."""


def lane_of(meter: MeterConfig) -> str:
    """The lane a meter is read on: its bus, or its Modbus TCP endpoint."""
    if meter.kind is MeterKind.MODBUS_TCP:
        return f"tcp:{meter.host}:{meter.port or 502}"
    if meter.bus is None:  # the configuration refuses this; keep the error readable anyway
        raise ValueError(f"meter {meter.id}: a {meter.kind.value} meter needs a bus")
    return f"bus:{meter.bus}"


class Timer(Protocol):
    """Where the poller gets its time from."""

    def now(self) -> datetime:
        """The wall clock (aware, UTC)."""
        ...

    def monotonic(self) -> float: ...

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        """Return at ``when``, when ``wake`` is set, or after at most :data:`MAX_NAP_S`."""
        ...


class WallTimer:
    """The real clocks."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        delay = (when - self.now()).total_seconds()
        if delay <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), min(delay, MAX_NAP_S))
        except TimeoutError:
            pass


@dataclass
class MeterHealth:
    """What ``mbus-logger status`` shows per meter."""

    meter_id: str
    kind: str
    lane: str
    interval_s: int
    state: str = "unknown"  # "up", "down" or "unknown" (not polled yet)
    last_attempt: datetime | None = None
    last_success: datetime | None = None  # the last poll whose readings were committed
    consecutive_failures: int = 0
    last_error: str | None = None
    last_error_at: datetime | None = None
    polls: int = 0
    failures: int = 0
    missed_slots: int = 0
    last_readings: int = 0
    next_due: datetime | None = None
    overrunning: bool = False

    def as_dict(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "meter": self.meter_id,
            "kind": self.kind,
            "lane": self.lane,
            "interval_s": self.interval_s,
            "state": self.state,
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_error_at": iso(self.last_error_at),
            "polls": self.polls,
            "failures": self.failures,
            "missed_slots": self.missed_slots,
            "last_readings": self.last_readings,
            "next_due": iso(self.next_due),
        }


@dataclass(frozen=True, slots=True)
class MeterOutcome:
    meter_id: str
    readings: tuple[Reading, ...] = ()
    error: str | None = None
    started: datetime | None = None


@dataclass(frozen=True, slots=True)
class TickReport:
    """One tick: when, which meters, what was committed (or why not)."""

    tick: datetime
    started: datetime
    finished: datetime
    outcomes: tuple[MeterOutcome, ...]
    commit: CommitResult | None
    store_error: str | None = None
    clock_synced: bool = True

    @property
    def readings(self) -> int:
        return sum(len(o.readings) for o in self.outcomes)

    @property
    def meters_ok(self) -> int:
        return sum(1 for o in self.outcomes if o.error is None)


@dataclass
class _Lane:
    key: str
    reader: MeterReader
    executor: ThreadPoolExecutor
    signature: tuple[Any, ...]


@dataclass
class ClockState:
    synced: bool | None = None
    last_jump: ClockJump | None = None
    last_jump_at: datetime | None = None
    jumps: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "synchronised": self.synced,
            "jumps": self.jumps,
            "last_jump_s": round(self.last_jump.seconds, 3) if self.last_jump else None,
            "last_jump_at": self.last_jump_at.isoformat() if self.last_jump_at else None,
        }


class Poller:
    """Reads the configured meters on their grid and commits each tick to ``store``.

    ``clock_synced`` tells whether the wall clock can be trusted right now (see
    :mod:`logger.store.clock`); ``on_tick`` is called on the event loop after every tick with
    its :class:`TickReport` (the daemon writes its status file from it).
    """

    def __init__(
        self,
        config: Config,
        store: ReadingStore,
        reader_factory: ReaderFactory,
        *,
        timer: Timer | None = None,
        clock_synced: Callable[[], bool] = lambda: True,
        store_executor: ThreadPoolExecutor | None = None,
        on_tick: Callable[[TickReport], Any] | None = None,
    ) -> None:
        self._config = config
        self._pending_config: Config | None = None
        self.store = store
        self._reader_factory = reader_factory
        self.timer: Timer = timer or WallTimer()
        self._clock_synced = clock_synced
        self._own_store_executor = store_executor is None
        self._store_executor = store_executor or ThreadPoolExecutor(1, "store")
        self.on_tick = on_tick
        self.health: dict[str, MeterHealth] = {}
        self.clock = ClockState()
        self._jumps = ClockJumpDetector(
            CLOCK_JUMP_THRESHOLD_S,
            wall=lambda: self.timer.now().timestamp(),
            mono=self.timer.monotonic,
        )
        self._lanes: dict[str, _Lane] = {}
        self._due: dict[str, datetime] = {}  # meter id -> its next slot (UTC)
        self._wake = asyncio.Event()
        self._ticks: set[asyncio.Task[TickReport]] = set()
        self._in_flight: set[str] = set()
        self._failed: list[asyncio.Task[TickReport]] = []
        self._lane_jobs: dict[asyncio.Future[list[MeterOutcome]], float] = {}
        self._traced: set[str] = set()  # meters whose internal error was logged in full
        self._stop = threading.Event()  # also seen by the lane threads between meters
        self.last_tick: TickReport | None = None
        self.ticks = 0
        self._progress = self.timer.monotonic()
        self._build_health(config)

    # --- configuration --------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    def _tz(self) -> tzinfo:
        return ZoneInfo(self._config.installation.timezone)

    def _active(self, config: Config) -> list[MeterConfig]:
        return [m for m in config.meters if m.enabled]

    def _build_health(self, config: Config) -> None:
        old = self.health
        self.health = {}
        for meter in self._active(config):
            health = old.get(meter.id)
            if health is None:
                health = MeterHealth(meter.id, meter.kind.value, lane_of(meter), meter.interval_s)
            else:
                health.kind, health.lane = meter.kind.value, lane_of(meter)
                health.interval_s = meter.interval_s
            self.health[meter.id] = health

    def reconfigure(self, config: Config) -> None:
        """Run ``config`` from the next wake-up on (between ticks, never during one).

        Meters keep their health across a reload; lanes whose bus settings changed are
        rebuilt, the others keep their open ports.
        """
        self._pending_config = config
        self._wake.set()

    def _apply_pending(self) -> None:
        config, self._pending_config = self._pending_config, None
        if config is None:
            return
        old_ids = {m.id: m for m in self._active(self._config)}
        self._config = config
        self._build_health(config)
        wanted = {lane_of(m) for m in self._active(config)}
        for key in list(self._lanes):
            lane = self._lanes[key]
            if key not in wanted or lane.signature != self._lane_signature(key, config):
                self._close_lane(key)
        for meter in self._active(config):
            previous = old_ids.get(meter.id)
            if previous is None or (previous.interval_s, previous.offset_s) != (
                meter.interval_s,
                meter.offset_s,
            ):
                self._due.pop(meter.id, None)
        for meter_id in list(self._due):
            if meter_id not in self.health:
                del self._due[meter_id]
        _LOGGER.info(
            "configuration reloaded: %d meters on %d lanes%s",
            len(self.health),
            len(wanted),
            f" (cloud layer {config.cloud_version})" if config.cloud_version else "",
        )

    def _lane_signature(self, key: str, config: Config) -> tuple[Any, ...]:
        if key.startswith("bus:"):
            try:
                return ("bus", config.bus(key[4:]))
            except KeyError:
                return ("bus", None)
        meters = tuple(m for m in self._active(config) if lane_of(m) == key)
        return ("tcp", tuple((m.timeout_s, m.quirks) for m in meters))

    def _lane(self, key: str) -> _Lane:
        lane = self._lanes.get(key)
        if lane is None:
            reader = self._reader_factory(key, self._config)
            executor = ThreadPoolExecutor(1, thread_name_prefix=f"lane {key}")
            lane = _Lane(key, reader, executor, self._lane_signature(key, self._config))
            self._lanes[key] = lane
        return lane

    def _close_lane(self, key: str) -> None:
        lane = self._lanes.pop(key)
        try:
            # On the lane's own thread: a transport is only ever touched by that thread.
            lane.executor.submit(lane.reader.close).result(timeout=CLOSE_TIMEOUT_S)
        except TimeoutError:
            # A read hung in the transport: leave its thread behind rather than hang the
            # stop or the reload with it (the thread dies with the process).
            _LOGGER.error("lane %s did not close within %.0f s; abandoned", key, CLOSE_TIMEOUT_S)
            lane.executor.shutdown(wait=False, cancel_futures=True)
            return
        except Exception as exc:  # closing a broken port must not stop the daemon
            _LOGGER.warning("closing lane %s: %s", key, exc)
        lane.executor.shutdown(wait=True)

    # --- the loop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Finish the meter being read on each lane, commit the tick, and return from
        :meth:`run`. Safe to call from a signal handler on the event loop."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def progress_age(self) -> float:
        """How long the poller has been stuck, in seconds: since the loop last woke, or since
        the oldest lane job still running started, whichever is longer.

        Every read is bounded (timeouts, retries, quirk pauses), so a lane busy for many
        minutes is a hung transport (a wedged USB converter, a bug); the daemon then stops
        pinging systemd's watchdog, and the restart reopens the ports.
        """
        now = self.timer.monotonic()
        oldest = min(self._lane_jobs.values(), default=now)
        return now - min(self._progress, oldest)

    def _plan(self, after: datetime) -> None:
        tz = self._tz()
        for meter in self._active(self._config):
            if meter.id not in self._due:
                due = next_due(after, meter.interval_s, meter.offset_s, tz)
                self._due[meter.id] = due
                self.health[meter.id].next_due = due

    def _observe_clock(self) -> None:
        jump = self._jumps.observe()
        if jump is None:
            return
        self.clock.last_jump = jump
        self.clock.last_jump_at = self.timer.now()
        self.clock.jumps += 1
        # The grid is re-planned from the new time: forward, the slots in between are skipped
        # (counted below); backward, the next slot is the next one after the new time.
        now = self.timer.now()
        for meter_id, due in list(self._due.items()):
            if jump.seconds < 0 or due <= now:
                del self._due[meter_id]
        self._plan(now)

    def _check_clock_sync(self) -> bool:
        synced = bool(self._clock_synced())
        if synced != self.clock.synced:
            if not synced:
                _LOGGER.warning(
                    "system clock is not synchronised: readings are flagged clock_unsynced"
                )
            elif self.clock.synced is False:
                _LOGGER.warning("system clock is synchronised now: readings no longer flagged")
            self.clock.synced = synced
        return synced

    async def run(self) -> None:
        """Poll until :meth:`stop`; then wait for the ticks in flight (they commit) and close
        the lanes.

        Ticks overlap: a tick starts at its slot even while an earlier one still waits for a
        slow bus, so a 1-minute Modbus TCP meter keeps its grid while a 2400 Bd M-Bus line
        spends 20 s on a dead meter. A meter whose previous read has not finished when its
        next slot comes skips that slot (counted in ``missed_slots``) instead of queueing
        reads it can never catch up with.
        """
        try:
            self._observe_clock()
            self._plan(self.timer.now())
            while not self._stop.is_set():
                self._progress = self.timer.monotonic()
                self._raise_failed_tick()
                if self._pending_config is not None:
                    if self._ticks:  # lanes are rebuilt between ticks, never under one
                        await self.wait_idle()
                        continue
                    self._apply_pending()
                    self._plan(self.timer.now())
                if not self._due:  # no meters: idle until a reload or stop
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), MAX_NAP_S)
                    except TimeoutError:
                        pass
                    continue
                tick = min(self._due.values())
                self._wake.clear()
                await self.timer.sleep_until(tick, self._wake)
                self._observe_clock()
                if self._stop.is_set() or self._pending_config is not None:
                    continue
                now = self.timer.now()
                if now < tick or tick not in self._due.values():
                    continue  # woke early, or the clock jumped and the grid was re-planned
                due = [m for m in self._active(self._config) if self._due[m.id] <= now]
                ready = [m for m in due if m.id not in self._in_flight]
                for meter in due:
                    if meter.id in self._in_flight:
                        self._skipped(meter, 1, "its previous read is still running")
                self._reschedule(due, tick, now)
                if ready:
                    self._start_tick(ready, tick)
            await self.wait_idle()
            self._raise_failed_tick()
        finally:
            for task in self._ticks:
                task.cancel()
            await self.aclose()

    def _start_tick(self, meters: Sequence[MeterConfig], tick: datetime) -> None:
        # Meters are marked in flight per lane (poll_tick), and freed when their lane is done,
        # not when the whole tick is: by then a meter may already be in a newer tick.
        def done(task: asyncio.Task[TickReport]) -> None:
            self._ticks.discard(task)
            if not task.cancelled() and task.exception() is not None:
                self._failed.append(task)
                self._wake.set()

        task = asyncio.get_running_loop().create_task(self.poll_tick(meters, tick))
        self._ticks.add(task)
        task.add_done_callback(done)

    def _raise_failed_tick(self) -> None:
        if self._failed:
            task = self._failed.pop(0)
            exc = task.exception()
            assert exc is not None
            raise exc

    @property
    def busy(self) -> bool:
        """A tick is in flight."""
        return bool(self._ticks)

    async def wait_idle(self) -> None:
        """Return once no tick is in flight (they have committed or failed)."""
        while self._ticks:
            await asyncio.wait(set(self._ticks))

    def _skipped(self, meter: MeterConfig, slots: int, why: str) -> None:
        health = self.health.get(meter.id)
        if health is None:
            return
        health.missed_slots += slots
        # Warn once per episode; a meter slower than its interval would otherwise log at
        # every slot.
        level = logging.DEBUG if health.overrunning else logging.WARNING
        health.overrunning = True
        _LOGGER.log(level, "meter %s: %d slot(s) skipped: %s", meter.id, slots, why)

    def _reschedule(self, meters: Sequence[MeterConfig], tick: datetime, now: datetime) -> None:
        tz = self._tz()
        for meter in meters:
            if meter.id not in self.health:
                continue
            due = next_due(tick, meter.interval_s, meter.offset_s, tz)
            if due <= now:  # woke late (a blocked loop, a clock jump): skip, never catch up
                later = next_due(now, meter.interval_s, meter.offset_s, tz)
                missed = round((later - due).total_seconds() / meter.interval_s)
                self._skipped(meter, missed, f"the slot at {tick.isoformat()} began late")
                due = later
            elif meter.id not in self._in_flight:
                self.health[meter.id].overrunning = False
            self._due[meter.id] = due
            self.health[meter.id].next_due = due

    async def poll_tick(self, meters: Sequence[MeterConfig], tick: datetime) -> TickReport:
        """Read ``meters`` (lanes in parallel) and commit their readings in one transaction."""
        loop = asyncio.get_running_loop()
        started = self.timer.now()
        synced = self._check_clock_sync()
        by_lane: dict[str, list[MeterConfig]] = {}
        for meter in meters:
            by_lane.setdefault(lane_of(meter), []).append(meter)
        jobs = []
        results: dict[str, MeterOutcome] = {}
        for key, lane_meters in by_lane.items():
            try:
                lane = self._lane(key)
            except Exception as exc:
                # A bus that cannot even be set up fails its meters, not the daemon; the
                # next tick tries again.
                error = str(exc) if isinstance(exc, MeterReadError) else f"lane {key}: {exc!r}"
                for meter in lane_meters:
                    results[meter.id] = MeterOutcome(meter.id, (), error, started)
                continue
            job = loop.run_in_executor(lane.executor, self._read_lane, lane, lane_meters, synced)
            ids = {m.id for m in lane_meters}
            self._in_flight |= ids
            self._lane_jobs[job] = self.timer.monotonic()
            # A meter is free for its next slot once its own lane is done with it, even if
            # another lane of this tick (a slow bus) has not finished yet.
            job.add_done_callback(functools.partial(self._lane_done, ids))
            jobs.append(job)
        for outcomes in await asyncio.gather(*jobs):
            for outcome in outcomes:
                results[outcome.meter_id] = outcome
        ordered = tuple(results[m.id] for m in meters if m.id in results)
        readings = [r for o in ordered for r in o.readings]
        commit: CommitResult | None = None
        store_error: str | None = None
        if readings:
            try:
                commit = await loop.run_in_executor(
                    self._store_executor, self.store.commit_tick, readings, None
                )
            except BufferFull as exc:
                store_error = f"buffer full: {exc}"
            except StoreError as exc:
                store_error = str(exc)
            if store_error is not None:
                _LOGGER.error(
                    "tick %s: %d readings of %d meters NOT stored: %s",
                    tick.isoformat(),
                    len(readings),
                    sum(1 for o in ordered if o.readings),
                    store_error,
                )
        finished = self.timer.now()
        self._account(ordered, committed=commit is not None or not readings)
        report = TickReport(tick, started, finished, ordered, commit, store_error, synced)
        if commit is not None and commit.first_seq is not None:
            # The commit is on disk: this line is the daemon's word that it is.
            _LOGGER.info(
                "committed tick=%s epoch=%s seq=%d..%d readings=%d meters=%d/%d",
                tick.isoformat(),
                commit.epoch,
                commit.first_seq,
                commit.last_seq,
                commit.count,
                report.meters_ok,
                len(ordered),
            )
        self.last_tick = report
        self.ticks += 1
        self._progress = self.timer.monotonic()
        if self.on_tick is not None:
            result = self.on_tick(report)
            if asyncio.iscoroutine(result):
                await result
        return report

    def _lane_done(self, ids: set[str], future: asyncio.Future[list[MeterOutcome]]) -> None:
        self._in_flight.difference_update(ids)
        self._lane_jobs.pop(future, None)

    def _read_lane(
        self, lane: _Lane, meters: Sequence[MeterConfig], synced: bool
    ) -> list[MeterOutcome]:
        """One lane's meters, one after the other (on the lane's thread)."""
        out = []
        for meter in meters:
            if self._stop.is_set():
                break  # stopping: commit what was read, leave the rest to the next start
            started = self.timer.now()
            try:
                readings = self._reader_read(lane.reader, meter, started, synced)
            except MeterReadError as exc:
                out.append(MeterOutcome(meter.id, (), str(exc) or type(exc).__name__, started))
                continue
            except Exception as exc:
                # A bug in a transport or decoder must cost this meter's poll, not the daemon.
                # The traceback is logged once per meter; the health shows every occurrence.
                if meter.id not in self._traced:
                    self._traced.add(meter.id)
                    _LOGGER.exception("meter %s: unexpected error while reading", meter.id)
                out.append(MeterOutcome(meter.id, (), f"internal error: {exc!r}", started))
                continue
            if not readings:
                out.append(MeterOutcome(meter.id, (), "the meter sent no records", started))
            else:
                out.append(MeterOutcome(meter.id, tuple(readings), None, started))
        return out

    @staticmethod
    def _reader_read(
        reader: MeterReader, meter: MeterConfig, started: datetime, synced: bool
    ) -> list[Reading]:
        return reader.read(meter, started, synced)

    def _account(self, outcomes: Sequence[MeterOutcome], committed: bool) -> None:
        for outcome in outcomes:
            health = self.health.get(outcome.meter_id)
            if health is None:
                continue
            health.polls += 1
            if outcome.error is not None:
                health.failures += 1
            if (
                health.last_attempt is not None
                and outcome.started is not None
                and outcome.started < health.last_attempt
            ):
                continue  # an older tick that finished late: counted, but it is not news
            health.last_attempt = outcome.started
            if outcome.error is None and committed:
                if health.state == "down":
                    _LOGGER.warning(
                        "meter %s is back up after %d failed poll(s)",
                        health.meter_id,
                        health.consecutive_failures,
                    )
                elif health.state == "unknown":
                    _LOGGER.info(
                        "meter %s is up (%d readings)", health.meter_id, len(outcome.readings)
                    )
                health.state = "up"
                health.consecutive_failures = 0
                health.last_success = outcome.started
                health.last_readings = len(outcome.readings)
            elif outcome.error is not None:
                health.consecutive_failures += 1
                health.last_error = outcome.error
                health.last_error_at = outcome.started
                if health.state != "down":
                    _LOGGER.warning("meter %s is down: %s", health.meter_id, outcome.error)
                health.state = "down"

    async def aclose(self) -> None:
        """Close every lane (ports, connections) and the store thread if it is ours."""
        for key in list(self._lanes):
            await asyncio.to_thread(self._close_lane, key)
        if self._own_store_executor:
            self._store_executor.shutdown(wait=True)

    def health_snapshot(self) -> list[dict[str, Any]]:
        return [h.as_dict() for h in self.health.values()]

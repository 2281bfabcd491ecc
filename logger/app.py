"""The daemon's wiring: configuration, store, buses, poller, signals, sd_notify, status file.

``mbus-logger run --config FILE`` calls :func:`run_daemon`. What runs, and where:

* the **event loop** (one thread) only waits and decides: the poller's schedule, signals, the
  watchdog, the status file's timing, and optional services such as the uplink;
* each **bus** has its own worker thread (see :mod:`logger.poller`), so serial I/O never blocks
  the loop and a slow bus never delays another;
* the **store** has one worker thread: every SQLite call (commits, stats, limits) runs there,
  one after the other.

Tasks are supervised by an :class:`asyncio.TaskGroup`: if one fails, the others are cancelled
and the daemon exits non-zero, so systemd restarts it (``Restart=always``) rather than leaving a
half-working logger. SIGTERM/SIGINT stop cleanly (the running tick is finished and committed);
SIGHUP reloads the configuration after validating it, and keeps the running one if the new file
is invalid. With ``NOTIFY_SOCKET`` set (systemd ``Type=notify``) the daemon reports READY,
STATUS, RELOADING/STOPPING and pings the watchdog only while the poll loop is making progress.

Uplink hook: when the configuration has an ``[uplink]`` section, :func:`optional_services`
asks ``logger.uplink.service.build(context)`` for a :class:`Service` and runs it in the same
task group with a :class:`DaemonContext` (the store and its thread, the live configuration,
meter health, a status hook). Until that module exists the daemon buffers only, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from logger.config import CloudLayerStore, ConfigError, load
from logger.config.model import BusKind, Config, MeterConfig
from logger.fileio import replace_file
from logger.poller import MeterReader, MeterReadError, Poller, TickReport, lane_of
from logger.readings import Reading, ReadingError, readings_from_mbus
from logger.store.api import ReadingStore, SchemaTooNew, StoreError, StoreStats

if TYPE_CHECKING:
    from logger.modbus.client import RegisterSource

_LOGGER = logging.getLogger(__name__)

STATUS_VERSION = 1
LIMITS_EVERY_S = 3600.0
"""How often the age limit is applied while no tick commits (a tick applies it anyway)."""
STALL_LIMIT_S = 600.0
"""The watchdog is no longer pinged when the poll loop made no progress for this long."""


class DaemonError(Exception):
    """The daemon cannot start; ``code`` is the exit code (see logger.cli.common)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- sd_notify ---------------------------------------------------------------------------------


class SdNotify:
    """The sd_notify protocol: datagrams of ``KEY=value`` lines to ``$NOTIFY_SOCKET``.

    A few lines instead of a dependency. ``@name`` is an abstract socket. Without the
    variable every call does nothing, so the daemon runs the same under systemd and by hand.
    Errors are logged once and otherwise ignored: systemd's bookkeeping must never stop the
    logging of readings.
    """

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self._address: str | None = None
        self._sock: socket.socket | None = None
        self._warned = False
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        if self._sock is None or self._address is None:
            return
        message = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:
                _LOGGER.warning("sd_notify to %s failed: %s", self._address.lstrip("\0"), exc)
                self._warned = True

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status, mainpid=os.getpid())

    def status(self, text: str) -> None:
        self.notify(status=text)

    def watchdog(self) -> None:
        self.notify(watchdog=1)

    def reloading(self) -> None:
        self.notify(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.notify(stopping=1, status="stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of systemd's ``WatchdogSec`` if the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    try:
        return max(int(usec) / 1e6 / 2, 0.05)
    except ValueError:
        return None


# --- clock -------------------------------------------------------------------------------------


def clock_check(mode: str) -> Callable[[], bool]:
    """Is the clock synchronised now? ``installation.clock`` overrides the detection."""
    if mode == "synchronised":
        return lambda: True
    if mode == "unsynchronised":
        return lambda: False
    from logger.store.clock import clock_synchronised

    flag = Path(os.environ.get("MBUS_TIMESYNC_FLAG", "/run/systemd/timesync/synchronized"))
    return lambda: clock_synchronised(flag)


# --- readers: configuration to transports ------------------------------------------------------


class MBusReader:
    """The meters of one M-Bus bus: read-outs by the serial master, decoded to readings.

    ``logger.bus`` (pyserial) is imported here, when a bus is first used, so the commands
    that only read the status or the buffer never load it.
    """

    def __init__(self, bus_name: str, config: Config) -> None:
        from logger.bus import BusError, MBusMaster, Quirks

        bus = config.bus(bus_name)
        self._name = bus_name
        try:
            self._master = MBusMaster(
                bus.device,
                bus.baud_rate,
                timeout=bus.timeout_s,
                retries=bus.retries,
                idle_gap=bus.idle_gap_s,
                quirks=Quirks.from_mapping(dict(bus.quirks.values)),
            )
        except (BusError, ValueError) as exc:
            raise MeterReadError(f"bus {bus_name} ({bus.device}): {exc}") from exc

    def read(self, meter: MeterConfig, logger_time: datetime, clock_synced: bool) -> list[Reading]:
        from logger.bus import BusError, Quirks
        from logger.mbus import MBusError, decode

        options: dict[str, Any] = dict(meter.quirks.values)
        if meter.timeout_s is not None:
            options.setdefault("timeout", meter.timeout_s)
        try:
            quirks = Quirks.from_mapping(options) if options else None
            result = self._master.read(
                address=meter.primary_address, secondary=meter.secondary_address, quirks=quirks
            )
        except (BusError, ValueError) as exc:
            self._master.close()  # reopened at the next read (a replugged converter)
            raise MeterReadError(f"meter {meter.id} on bus {self._name}: {exc}") from exc
        if not result.ok:
            raise MeterReadError(f"meter {meter.id}: {result.error or 'read-out incomplete'}")
        records: list[dict[str, Any]] = []
        for n, telegram in enumerate(result.telegrams, 1):
            try:
                decoded = decode(telegram)
            except MBusError as exc:
                raise MeterReadError(f"meter {meter.id} telegram {n}: {exc}") from exc
            if decoded.get("error"):
                error = decoded["error"]
                raise MeterReadError(
                    f"meter {meter.id}: application error {error.get('code')}: {error.get('text')}"
                )
            records.extend(decoded["records"])
        try:
            return readings_from_mbus(meter.id, records, logger_time, clock_synced=clock_synced)
        except ReadingError as exc:
            raise MeterReadError(str(exc)) from exc

    def close(self) -> None:
        self._master.close()


class ModbusReader:
    """The meters of one Modbus RTU bus or one Modbus TCP endpoint."""

    def __init__(self, source: RegisterSource, name: str) -> None:
        self._source = source
        self._name = name

    def read(self, meter: MeterConfig, logger_time: datetime, clock_synced: bool) -> list[Reading]:
        from logger.modbus.client import read_meter
        from logger.modbus.errors import ModbusError

        try:
            result = read_meter(self._source, meter, logger_time, clock_synced=clock_synced)
        except ModbusError as exc:
            raise MeterReadError(f"meter {meter.id}: {exc}") from exc
        if result.errors:
            _LOGGER.debug("meter %s: partial read-out: %s", meter.id, "; ".join(result.errors))
        return result.readings

    def close(self) -> None:
        self._source.close()


def build_reader(lane: str, config: Config) -> MeterReader:
    """The default :data:`~logger.poller.ReaderFactory`: a reader for a lane's transport."""
    if lane.startswith("bus:"):
        bus = config.bus(lane[4:])
        if bus.kind is BusKind.MBUS:
            return MBusReader(bus.name, config)
        from logger.modbus.client import RtuClient

        return ModbusReader(RtuClient(bus), f"bus {bus.name}")
    from logger.modbus.client import client_for

    first = next(m for m in config.meters if m.enabled and lane_of(m) == lane)
    return ModbusReader(client_for(first), lane)


# --- status file -------------------------------------------------------------------------------


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def stats_dict(stats: StoreStats) -> dict[str, Any]:
    limits = stats.limits
    return {
        "epoch": stats.epoch,
        "depth": stats.depth,
        "bytes": stats.bytes,
        "oldest_seq": stats.oldest_seq,
        "newest_seq": stats.newest_seq,
        "oldest_time": _iso(stats.oldest_time),
        "oldest_age_s": round(stats.oldest_age_s, 3) if stats.oldest_age_s is not None else None,
        "next_seq": stats.next_seq,
        "lost_total": stats.lost_total,
        "loss_records": stats.loss_records,
        "limits": {
            "max_bytes": limits.max_bytes,
            "max_age_s": limits.max_age_s,
            "min_free_bytes": limits.min_free_bytes,
            "policy": limits.policy.value,
        },
    }


# --- the uplink hook ---------------------------------------------------------------------------


class Service(Protocol):
    """An optional long-running part of the daemon (the uplink: pusher, cloud configuration,
    reports). ``run`` returns when ``context.stopping`` is set; raising stops the daemon."""

    name: str

    async def run(self, context: DaemonContext) -> None: ...

    def status(self) -> dict[str, Any] | None: ...


@dataclass
class DaemonContext:
    """What a :class:`Service` gets from the daemon."""

    store: ReadingStore
    store_executor: ThreadPoolExecutor
    poller: Poller
    stopping: asyncio.Event
    config_path: Path
    started: datetime
    reload_hooks: list[Callable[[Config], None]] = field(default_factory=list)

    @property
    def config(self) -> Config:
        """The configuration running now (the file merged with the last good cloud layer)."""
        return self.poller.config

    async def in_store_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a store call on the store's thread (SQLite never runs on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.store_executor, fn, *args)


UPLINK_MODULE = "logger.uplink.service"


def optional_services(config: Config, context: DaemonContext) -> list[Service]:
    """The services this configuration asks for. An ``[uplink]`` section asks for the uplink,
    built by ``logger.uplink.service.build(context)``."""
    if config.uplink is None:
        return []
    try:
        module = importlib.import_module(UPLINK_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != UPLINK_MODULE:
            raise
        _LOGGER.warning(
            "an [uplink] is configured but this build has no uplink service: readings are "
            "buffered and not pushed"
        )
        return []
    service: Service = module.build(context)
    return [service]


# --- the daemon --------------------------------------------------------------------------------


def load_config(path: Path) -> Config:
    """The local file merged with the last good cloud layer (ConfigError if the file is bad)."""
    base = load(path)
    return CloudLayerStore(base.paths.cloud_layer).load(base)


def open_store(config: Config) -> ReadingStore:
    from logger.store.sqlite import SqliteStore

    config.paths.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        store = SqliteStore(config.paths.database, config.buffer)
    except SchemaTooNew as exc:
        raise DaemonError(str(exc), 4) from exc
    except (StoreError, OSError) as exc:
        raise DaemonError(f"cannot open the buffer {config.paths.database}: {exc}", 4) from exc
    return store


class Daemon:
    """One run of the logger: build, supervise, stop. See the module docstring."""

    def __init__(
        self,
        config_path: Path,
        config: Config,
        *,
        reader_factory: Callable[[str, Config], MeterReader] = build_reader,
        notify: SdNotify | None = None,
        store: ReadingStore | None = None,
        poller_options: dict[str, Any] | None = None,
    ) -> None:
        self.config_path = config_path
        self.initial_config = config
        self.reader_factory = reader_factory
        self.notify = notify or SdNotify()
        self.store = store
        self.poller_options = poller_options or {}
        self.started = datetime.now(UTC)
        self.stopping = asyncio.Event()
        self.store_executor = ThreadPoolExecutor(1, thread_name_prefix="store")
        self.poller: Poller | None = None
        self.services: list[Service] = []
        self.reloads = 0
        self.last_reload_error: str | None = None
        self._reload_task: asyncio.Task[bool] | None = None
        self._context: DaemonContext | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        config = self.initial_config
        self.notify.status("opening the buffer")
        if self.store is None:
            self.store = await loop.run_in_executor(self.store_executor, open_store, config)
        store = self.store
        self.poller = Poller(
            config,
            store,
            self.reader_factory,
            clock_synced=clock_check(config.installation.clock),
            store_executor=self.store_executor,
            on_tick=self._on_tick,
            **self.poller_options,
        )
        self._context = DaemonContext(
            store,
            self.store_executor,
            self.poller,
            self.stopping,
            self.config_path,
            self.started,
        )
        for sig, handler in (
            (signal.SIGTERM, self.stop),
            (signal.SIGINT, self.stop),
            (signal.SIGHUP, self.request_reload),
        ):
            loop.add_signal_handler(sig, handler)
        try:
            self.services = optional_services(config, self._context)
            await self._write_status()
            meters = len(self.poller.health)
            _LOGGER.info(
                "started: %d meters, buffer %s (epoch %s)",
                meters,
                config.paths.database,
                store.epoch,
            )
            self.notify.ready(f"polling {meters} meters")
            async with asyncio.TaskGroup() as group:
                group.create_task(self._supervised(self.poller.run(), "poller"))
                group.create_task(self._supervised(self._watchdog(), "watchdog"))
                group.create_task(self._supervised(self._limits(), "limits"))
                for service in self.services:
                    group.create_task(self._supervised(service.run(self._context), service.name))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            self.notify.stopping()
            with contextlib.suppress(Exception):
                await self._write_status(state="stopped")
            await loop.run_in_executor(self.store_executor, store.close)
            self.store_executor.shutdown(wait=True)
            self.notify.close()
            _LOGGER.info("stopped")

    async def _supervised(self, coro: Any, name: str) -> None:
        """Run one task; when it ends or fails, the whole daemon stops (fail loudly: systemd
        restarts a crashed daemon, a silently dead poller would log nothing for months)."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.critical("%s failed; stopping the daemon", name, exc_info=True)
            self.stop()
            raise
        if not self.stopping.is_set():
            _LOGGER.error("%s ended unexpectedly; stopping the daemon", name)
            self.stop()

    def stop(self) -> None:
        if self.stopping.is_set():
            return
        _LOGGER.info("stop requested: finishing the current tick")
        self.stopping.set()
        if self.poller is not None:
            self.poller.stop()

    # --- reload ----------------------------------------------------------------------------

    def request_reload(self) -> None:
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> bool:
        """Load and validate the file again; apply it, or keep the running configuration."""
        assert self.poller is not None
        self.notify.reloading()
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            self.last_reload_error = str(exc)
            _LOGGER.error("reload refused, still running the previous configuration:\n%s", exc)
            self.notify.ready("reload refused: configuration invalid (see the log)")
            await self._write_status()
            return False
        running = self.poller.config
        if config.paths != running.paths:
            _LOGGER.warning("reload: [paths] changed; they take effect at the next restart")
        if config.uplink != running.uplink:
            _LOGGER.warning("reload: [uplink] changed; it takes effect at the next restart")
        set_limits = getattr(self.store, "set_limits", None)
        if set_limits is not None and config.buffer != running.buffer:
            await asyncio.get_running_loop().run_in_executor(
                self.store_executor, set_limits, config.buffer
            )
        self.poller.reconfigure(config)
        if self._context is not None:
            for hook in self._context.reload_hooks:
                hook(config)
        self.reloads += 1
        self.last_reload_error = None
        self.notify.ready(f"reloaded: polling {sum(1 for m in config.meters if m.enabled)} meters")
        _LOGGER.info("reload accepted from %s", self.config_path)
        return True

    # --- periodic work ---------------------------------------------------------------------

    async def _watchdog(self) -> None:
        interval = watchdog_interval()
        if interval is None or not self.notify.enabled:
            await self.stopping.wait()
            return
        assert self.poller is not None
        while not self.stopping.is_set():
            if self.poller.progress_age() < STALL_LIMIT_S:
                self.notify.watchdog()
            else:
                _LOGGER.error(
                    "poll loop made no progress for %.0f s: not pinging the watchdog",
                    self.poller.progress_age(),
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), interval)

    async def _limits(self) -> None:
        """Apply the buffer's age limit even when no tick commits (all meters down)."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        while not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), LIMITS_EVERY_S)
            if self.stopping.is_set():
                return
            try:
                await loop.run_in_executor(self.store_executor, self.store.enforce_limits, None)
            except StoreError as exc:
                _LOGGER.error("applying the buffer limits failed: %s", exc)

    async def _on_tick(self, report: TickReport) -> None:
        ok, total = report.meters_ok, len(report.outcomes)
        text = f"last tick {report.tick.strftime('%H:%M:%S')}Z: {ok}/{total} meters"
        if report.commit is not None and report.commit.first_seq is not None:
            text += f", seq {report.commit.first_seq}..{report.commit.last_seq}"
        if report.store_error:
            text += ", NOT STORED"
        self.notify.status(text)
        await self._write_status()

    # --- status ----------------------------------------------------------------------------

    def status_document(self, stats: StoreStats | None, state: str) -> dict[str, Any]:
        assert self.poller is not None
        poller = self.poller
        config = poller.config
        last = poller.last_tick
        last_poll: dict[str, Any] | None = None
        if last is not None:
            commit = last.commit
            last_poll = {
                "tick": _iso(last.tick),
                "started": _iso(last.started),
                "finished": _iso(last.finished),
                "meters": len(last.outcomes),
                "meters_ok": last.meters_ok,
                "readings": last.readings,
                "clock_synced": last.clock_synced,
                "commit": (
                    {
                        "epoch": commit.epoch,
                        "first_seq": commit.first_seq,
                        "last_seq": commit.last_seq,
                        "count": commit.count,
                    }
                    if commit is not None
                    else None
                ),
                "store_error": last.store_error,
            }
        intervals = [m.interval_s for m in config.meters if m.enabled]
        recovery = getattr(self.store, "recovery", None)
        return {
            "version": STATUS_VERSION,
            "state": state,
            "pid": os.getpid(),
            "started": _iso(self.started),
            "updated": _iso(datetime.now(UTC)),
            "config": str(self.config_path),
            "cloud_version": config.cloud_version,
            "site": config.installation.site,
            "shortest_interval_s": min(intervals) if intervals else None,
            "reloads": self.reloads,
            "last_reload_error": self.last_reload_error,
            "ticks": poller.ticks,
            "clock": poller.clock.as_dict(),
            "last_poll": last_poll,
            "buffer": stats_dict(stats) if stats is not None else None,
            "recovered_database": (
                {k: str(v) for k, v in asdict(recovery).items()} if recovery else None
            ),
            "meters": poller.health_snapshot(),
            "services": {s.name: s.status() for s in self.services},
        }

    async def _write_status(self, state: str = "running") -> None:
        assert self.store is not None and self.poller is not None
        path = self.poller.config.paths.status_file
        store = self.store

        def work() -> None:
            try:
                stats: StoreStats | None = store.stats()
            except StoreError as exc:
                _LOGGER.error("buffer statistics unavailable: %s", exc)
                stats = None
            doc = self.status_document(stats, state)
            # Compact: rewritten every tick, pretty-printed by `mbus-logger status`.
            data = json.dumps(doc, separators=(",", ":")).encode() + b"\n"
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Atomic for readers, not fsynced: rewritten every tick and describes the
                # running process only (tmpfs in production); a sync per tick would wear the
                # SD card for nothing the next tick does not rebuild.
                replace_file(path, data, 0o644, fsync=False)
            except OSError as exc:
                _LOGGER.error("cannot write the status file %s: %s", path, exc)

        await asyncio.get_running_loop().run_in_executor(self.store_executor, work)


def run_daemon(config_path: Path) -> int:
    """``mbus-logger run``: 0 after a clean stop; raises :class:`ConfigError` or
    :class:`DaemonError` when it cannot start."""
    config = load_config(config_path)
    daemon = Daemon(config_path, config)
    try:
        asyncio.run(daemon.run())
    except ExceptionGroup as group:
        # A task failed (logged with its traceback by _supervised); systemd restarts us.
        first = group.exceptions[0]
        if isinstance(first, DaemonError):
            raise first from None
        raise DaemonError(f"daemon stopped after an internal error: {first!r}", 3) from None
    return 0

"""Helpers for testing the poller and the daemon: configurations, virtual time, fake meters,
and a real ``mbus-logger run`` subprocess whose commit reports are collected as they happen.

``DaemonProcess`` reads the daemon's stderr on a thread; every ``committed tick=… seq=a..b``
line is recorded the moment it arrives, so a harness that SIGKILLs the daemon knows exactly
which commits the daemon had reported before it died (the witness outside the database).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from logger.config import Config, parse
from logger.config.model import MeterConfig
from logger.poller import MAX_NAP_S, MeterReadError, Poller
from logger.readings import Reading, ValueKind, canonical_decimal

ROOT = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("mbus-logger")
MBUS_LOGGER = (
    [str(_SCRIPT)]
    if _SCRIPT.exists()
    else [sys.executable, "-c", "import sys; from logger.cli import main; sys.exit(main())"]
)
"""The ``mbus-logger`` command of this environment."""


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def config_toml(
    state_dir: Path,
    meters: Sequence[Mapping[str, Any]],
    buses: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    default_interval: str = "1m",
    timezone: str = "UTC",
    clock: str = "synchronised",
    buffer: Mapping[str, Any] | None = None,
    status_file: str | None = None,
    extra: str = "",
) -> str:
    """A configuration file's text (TOML) for tests; ``extra`` is appended as written."""
    lines = [f"default_interval = {toml_value(default_interval)}", ""]
    lines += ["[installation]", 'site = "test bench"', f"timezone = {toml_value(timezone)}"]
    lines += [f"clock = {toml_value(clock)}", "", "[paths]", f"state_dir = {toml_value(state_dir)}"]
    if status_file:
        lines.append(f"status_file = {toml_value(status_file)}")
    lines += ["", "[buffer]"]
    for key, value in (buffer or {"max_bytes": "64 MiB", "min_free_disk": "4 MiB"}).items():
        lines.append(f"{key} = {toml_value(value)}")
    for name, bus in (buses or {}).items():
        lines += ["", f"[buses.{name}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in bus.items()]
    for meter in meters:
        lines += ["", "[[meters]]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in meter.items() if k != "registers"]
        for register in meter.get("registers", ()):
            lines += ["[[meters.registers]]"]
            lines += [f"{k} = {toml_value(v)}" for k, v in register.items()]
    return "\n".join(lines) + "\n" + extra


def make_config(state_dir: Path, meters: Sequence[Mapping[str, Any]], **kw: Any) -> Config:
    """A validated :class:`Config` from the same description :func:`config_toml` takes."""
    import tomllib

    return parse(tomllib.loads(config_toml(state_dir, meters, **kw)), base=state_dir)


def tcp_meter(meter_id: str, interval: str = "1m", **kw: Any) -> dict[str, Any]:
    """A Modbus TCP meter (no bus needed): fake readers key on the meter id only."""
    return {
        "id": meter_id,
        "kind": "modbus_tcp",
        "host": f"{meter_id}.invalid:502",
        "profile": "eastron_sdm120",
        "interval": interval,
        **kw,
    }


def rtu_meter(meter_id: str, bus: str, unit_id: int, interval: str = "1m") -> dict[str, Any]:
    return {
        "id": meter_id,
        "kind": "modbus_rtu",
        "bus": bus,
        "unit_id": unit_id,
        "profile": "eastron_sdm120",
        "interval": interval,
    }


RTU_BUS = {"kind": "modbus_rtu", "device": "/dev/null", "baud_rate": 9600}


class VirtualTimer:
    """Time that jumps to the next slot at once, after the poller has finished its ticks.

    ``jump(seconds)`` moves the wall clock only (a clock step, as NTP does after boot);
    ``stop_at`` stops the poller when the next slot would be at or after it.
    """

    def __init__(
        self, start: datetime, stop_at: datetime | None = None, max_advances: int | None = None
    ) -> None:
        self.t = start
        self.mono = 1000.0
        self.stop_at = stop_at
        self.max_advances = max_advances
        self.advances = 0
        self.poller: Poller | None = None
        self.daemon: Any = None  # a logger.app.Daemon whose poller this timer drives
        self._jumped = False

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.mono += seconds

    def jump(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self._jumped = True

    async def sleep_until(self, when: datetime, wake: asyncio.Event) -> None:
        if self.poller is None and self.daemon is not None:
            self.poller = self.daemon.poller
        if self.poller is not None:
            await asyncio.wait_for(self.poller.wait_idle(), 30)
        if wake.is_set():
            return
        if self.poller is not None and (
            (self.stop_at is not None and when >= self.stop_at)
            or (self.max_advances is not None and self.advances >= self.max_advances)
        ):
            self.poller.stop()
            return
        if when > self.t:
            step = (when - self.t).total_seconds()
            if self._jumped:  # the real timer naps at most MAX_NAP_S, then looks again
                step = min(step, MAX_NAP_S)
                self._jumped = False
            self.advance(step)
            self.advances += 1
        await asyncio.sleep(0)


@dataclass
class ReadCall:
    meter_id: str
    at: datetime
    thread: str
    synced: bool
    started: float
    ended: float = 0.0


@dataclass
class FakeReader:
    """A lane's reader that makes readings up: one energy value per read, counting up.

    ``fail`` maps a meter id to how many of its next reads fail (``-1``: all of them);
    ``hook(meter_id)`` runs inside each read (to block, sleep or signal from the test).
    """

    lane: str
    calls: list[ReadCall]
    fail: dict[str, int] = field(default_factory=dict)
    hook: Callable[[str], None] | None = None
    counter: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    def read(self, meter: MeterConfig, logger_time: datetime, clock_synced: bool) -> list[Reading]:
        call = ReadCall(
            meter.id, logger_time, threading.current_thread().name, clock_synced, time.monotonic()
        )
        self.calls.append(call)
        try:
            if self.hook is not None:
                self.hook(meter.id)
            left = self.fail.get(meter.id, 0)
            if left:
                self.fail[meter.id] = left - 1 if left > 0 else left
                raise MeterReadError(f"meter {meter.id}: no answer (simulated)")
            n = self.counter[meter.id] = self.counter.get(meter.id, 0) + 1
            flags = frozenset() if clock_synced else frozenset({"clock_unsynced"})
            return [
                Reading(
                    meter_id=meter.id,
                    key="energy",
                    quantity="Energy",
                    unit="Wh",
                    value=canonical_decimal(n),
                    kind=ValueKind.NUMBER,
                    logger_time=logger_time,
                    flags=flags,
                )
            ]
        finally:
            call.ended = time.monotonic()

    def close(self) -> None:
        self.closed = True


class FakeMeters:
    """The reader factory for a poller: one :class:`FakeReader` per lane, sharing settings."""

    def __init__(self) -> None:
        self.calls: list[ReadCall] = []
        self.fail: dict[str, int] = {}
        self.hook: Callable[[str], None] | None = None
        self.readers: dict[str, FakeReader] = {}

    def __call__(self, lane: str, config: Config) -> FakeReader:
        reader = FakeReader(lane, self.calls, self.fail, self.hook)
        self.readers[lane] = reader
        return reader

    def times(self, meter_id: str) -> list[datetime]:
        return [c.at for c in self.calls if c.meter_id == meter_id]


# --- a real daemon process -----------------------------------------------------------------

COMMIT_LINE = re.compile(
    r"committed tick=(?P<tick>\S+) epoch=(?P<epoch>[0-9a-f]+) seq=(?P<first>\d+)\.\.(?P<last>\d+)"
    r" readings=(?P<count>\d+)"
)


@dataclass(frozen=True)
class Commit:
    tick: str
    epoch: str
    first: int
    last: int
    count: int


class DaemonProcess:
    """``mbus-logger run --config FILE`` as a child process, its stderr collected live."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.env = {**os.environ, "MBUS_LOG_LEVEL": "INFO", **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.commits: list[Commit] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None

    def start(self) -> DaemonProcess:
        self.proc = subprocess.Popen(
            [*MBUS_LOGGER, "run", "--config", str(self.config)],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                m = COMMIT_LINE.search(line)
                if m:
                    self.commits.append(
                        Commit(
                            m["tick"], m["epoch"], int(m["first"]), int(m["last"]), int(m["count"])
                        )
                    )
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.lines[-30:])
                    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{tail}")
                if self.proc is not None and self.proc.poll() is not None and not predicate():
                    self._cond.wait(0.2)  # let the reader drain the pipe
                    if not predicate():
                        tail = "\n".join(self.lines[-30:])
                        raise AssertionError(
                            f"daemon exited ({self.proc.returncode}) before {what}:\n{tail}"
                        )
                self._cond.wait(min(left, 0.5))

    def wait_commits(self, n: int, timeout: float = 30) -> None:
        self.wait_for(lambda: len(self.commits) >= n, timeout, f"{n} commits")

    def wait_line(self, text: str, timeout: float = 30, after: int = 0) -> None:
        self.wait_for(lambda: any(text in line for line in self.lines[after:]), timeout, repr(text))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> list[Commit]:
        """SIGKILL; returns the commits reported before the kill (the pipe drained)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)
        with self._cond:
            return list(self.commits)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM (unless it already exited) and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        """Wait for the exit code (a daemon that does not exit in time is killed)."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise
        if self._reader is not None:
            self._reader.join(10)
        return code

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)


def group_by_poll(items: Iterable[Any]) -> dict[tuple[str, datetime], list[Any]]:
    """Stored readings grouped by (meter, logger time): one group per meter read."""
    out: dict[tuple[str, datetime], list[Any]] = {}
    for item in items:
        r = item.reading
        out.setdefault((r.meter_id, r.logger_time), []).append(item)
    return out


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)

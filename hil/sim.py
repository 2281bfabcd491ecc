"""M-Bus meter simulator on a virtual serial line (pty): the codec's slave role at wire speed.

``python -m hil.sim SCENARIO`` prints the device path a master opens and serves until killed
(scenarios: ``python -m hil.sim --list``). As a library::

    with SimLine(scenarios.build("corpus", count=20), baudrate=2400) as line:
        read(line.path)            # any master, in-process or another process
        line.served                # what went out: one dict per answer (also --log JSONL)

Every meter is a :class:`logger.mbus.slave.Slave`; the line adds what a real bus does:

* Timing: a request is heard once its bytes have crossed the wire (n x 11 / baud after they
  arrive), the answer follows after the meter's response delay and leaves at wire speed, byte
  groups delivered when they would be complete on a real line.
* Half duplex: bytes arriving while the line is answering (a master that talks too fast) are
  not understood and dropped.
* Baud rate: the pty carries the master's configured rate (its termios); a meter set to another
  rate does not understand it (8E1 framing cannot be checked on a pty, see MBUS.md).
* Several meters answering at once superpose (bits AND together): two E5 look like one,
  different frames become garbage. ``garble_collisions`` makes simultaneous E5 garbled too.
* Faults per meter, on demand and optionally for the next N answers only: silence, late answer,
  garbage, wrong checksum, truncated frame; per line: echo of the master's bytes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hil.telegrams import SyntheticMeter
from logger.mbus import frames
from logger.mbus import slave as slave_core

_LOGGER = logging.getLogger(__name__)

_SPEEDS = {getattr(termios, f"B{b}"): b for b in frames.BAUD_RATES if hasattr(termios, f"B{b}")}
FAULTS = ("silence", "late", "garbage", "bad_checksum", "truncate")


@dataclass
class Faults:
    """What a meter does wrong. ``count``: only the next N answers (None: always)."""

    silence: bool = False
    late: float = 0.0  # extra seconds before the answer
    garbage: bool = False
    bad_checksum: bool = False
    truncate: bool = False
    count: int | None = None

    @property
    def active(self) -> bool:
        any_fault = self.silence or self.late > 0 or self.garbage or self.bad_checksum
        return (any_fault or self.truncate) and (self.count is None or self.count > 0)

    def name(self) -> str | None:
        if not self.active:
            return None
        for fault in FAULTS:
            if getattr(self, fault):
                return fault
        return None

    def used(self) -> None:
        if self.count is not None and self.count > 0:
            self.count -= 1


class SimMeter:
    """A simulated meter: the slave core, its source of telegrams, faults and timing."""

    def __init__(
        self,
        address: int,
        telegrams: Iterable[bytes] | None = None,
        *,
        synthetic: SyntheticMeter | None = None,
        secondary: str | None = None,
        baudrate: int | None = None,
        faults: Faults | None = None,
        response_delay: float | None = None,
        fallback_after: float | None = None,
        name: str = "",
    ) -> None:
        self.synthetic = synthetic
        self.values: dict[str, int] = {}
        if synthetic is not None:
            served, self.values = synthetic.snapshot()
            self.slave = slave_core.Slave(address, served, secondary or synthetic.secondary)
        else:
            if telegrams is None:
                raise ValueError("a meter needs telegrams or a synthetic source")
            self.slave = slave_core.Slave.from_frames(address, list(telegrams), secondary)
        self._explicit_baud = baudrate
        self.faults = faults or Faults()
        self.response_delay = response_delay
        self.fallback_after = fallback_after
        self.factory_baudrate = baudrate or 0
        self.last_heard = 0.0
        self.name = name or f"meter {address}"

    def bind(self, line_baudrate: int) -> None:
        self.slave.baudrate = self._explicit_baud or line_baudrate
        self.factory_baudrate = self.slave.baudrate

    def idle_fallback(self, now: float) -> None:
        """Meters that were switched to another rate return to their factory rate after
        ``fallback_after`` seconds without a request they understood."""
        if (
            self.fallback_after is not None
            and self.slave.baudrate != self.factory_baudrate
            and now - self.last_heard > self.fallback_after
        ):
            _LOGGER.debug("%s: idle, back to %d Bd", self.name, self.factory_baudrate)
            self.slave.baudrate = self.factory_baudrate

    def refresh(self) -> None:
        """A new read-out starts: synthetic meters encode their current values."""
        if self.synthetic is not None:
            self.slave.telegrams, self.values = self.synthetic.snapshot()

    @property
    def address(self) -> int:
        return self.slave.address

    @property
    def secondary(self) -> str:
        return self.slave.secondary

    def expected_frames(self) -> list[bytes]:
        """The RSP_UD frames this meter serves now (with its current primary address)."""
        return [frames.rsp_ud(self.address, ci, data) for ci, data in self.slave.telegrams]


@dataclass
class _Answer:
    meter: SimMeter
    data: bytes
    delay: float
    fault: str | None
    index: int
    values: dict[str, int] = field(default_factory=dict)


class SimLine:
    """Meters on one virtual serial line; :attr:`path` is the device a master opens."""

    def __init__(
        self,
        meters: Iterable[SimMeter],
        baudrate: int = 2400,
        response_delay: float = 0.030,
        *,
        echo: bool = False,
        garble_collisions: bool = False,
        log: str | Path | None = None,
    ) -> None:
        self.meters = list(meters)
        self.baudrate = baudrate
        self.response_delay = response_delay
        self.echo = echo
        self.garble_collisions = garble_collisions
        self.served: list[dict[str, Any]] = []
        self.ignored = 0  # requests not understood (busy line, wrong baud rate)
        self._log_path = Path(log) if log else None
        self._log: TextIO | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._master_fd = -1
        self._slave_fd = -1
        self._wake_r = -1
        self._wake_w = -1
        self._wire_free = 0.0  # when the master's last request has crossed the wire
        self._busy_until = 0.0  # when the last answer has left
        self.path = ""
        for meter in self.meters:
            meter.bind(baudrate)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> str:
        self._master_fd, self._slave_fd = os.openpty()
        tty.setraw(self._master_fd)
        tty.setraw(self._slave_fd)
        # The master side carries the line's rate until the master opens the port with its own.
        attrs = termios.tcgetattr(self._slave_fd)
        speed = getattr(termios, f"B{self.baudrate}")
        attrs[4] = attrs[5] = speed
        termios.tcsetattr(self._slave_fd, termios.TCSANOW, attrs)
        self.path = os.ttyname(self._slave_fd)
        self._wake_r, self._wake_w = os.pipe()
        if self._log_path is not None:
            self._log = self._log_path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._serve, name=f"sim {self.path}", daemon=True)
        self._thread.start()
        return self.path

    def stop(self) -> None:
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for fd in (self._master_fd, self._slave_fd, self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._master_fd = self._slave_fd = self._wake_r = self._wake_w = -1
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SimLine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control from tests ------------------------------------------------------------------

    def meter(self, address: int) -> SimMeter:
        for meter in self.meters:
            if meter.address == address:
                return meter
        raise KeyError(f"no simulated meter at address {address}")

    def set_faults(self, address: int, faults: Faults) -> None:
        with self._lock:
            self.meter(address).faults = faults

    def served_by(self, address: int) -> list[dict[str, Any]]:
        with self._lock:
            return [s for s in self.served if s["address"] == address]

    # -- the line ----------------------------------------------------------------------------

    def _line_baudrate(self) -> int:
        try:
            speed = termios.tcgetattr(self._master_fd)[5]
        except termios.error:
            return self.baudrate
        return _SPEEDS.get(speed, 0)

    def _serve(self) -> None:
        scanner = frames.FrameScanner(accept_ack=False)
        fd = self._master_fd
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([fd, self._wake_r], [], [], 1.0)
                if self._wake_r in ready or fd not in ready:
                    continue
                try:
                    data = os.read(fd, 4096)
                except OSError:
                    # The master closed its side: wait for it to reopen.
                    time.sleep(0.01)
                    continue
                arrived = time.monotonic()
                if self.echo:
                    os.write(fd, data)
                scanner.feed(data)
                while True:
                    frame = scanner.next_frame()
                    if frame is None:
                        break
                    # Frames of one write follow each other on the wire.
                    start = max(arrived, self._wire_free)
                    baud = max(self._line_baudrate(), 1)
                    self._wire_free = start + frame.length * 11.0 / baud
                    if start < self._busy_until:
                        # Sent while a meter was still answering the previous request.
                        self.ignored += 1
                        _LOGGER.debug("request during an answer: not understood")
                        continue
                    self._request(frame, self._wire_free)
        except Exception:  # the test sees the thread die in the log, not a hang
            _LOGGER.exception("simulated line %s failed", self.path)
            raise

    def _request(self, frame: frames.Frame, heard: float) -> None:
        baud = self._line_baudrate()
        answers: list[_Answer] = []
        with self._lock:
            for meter in self.meters:
                meter.idle_fallback(heard)
                if meter.slave.baudrate != baud:
                    self.ignored += 1
                    continue
                meter.last_heard = heard
                event = meter.slave.classify(frame)
                if event in (slave_core.E_NKE, slave_core.E_NKE_NET, slave_core.E_SELECT_MATCH):
                    meter.refresh()
                reply = meter.slave.handle(frame)
                if reply is None:
                    continue
                answer = self._apply_faults(meter, reply)
                if answer is not None:
                    answers.append(answer)
        if not answers:
            for meter in self.meters:
                meter.slave.after_ack_sent()
            return
        if len(answers) == 1:
            data = answers[0].data
        elif self.garble_collisions and all(a.data == b"\xe5" for a in answers):
            data = b"\xe4\xf5"
        else:
            data = slave_core.superpose([a.data for a in answers]) or b""
        delay = max(a.delay for a in answers)
        start = max(heard + delay, time.monotonic())
        done = start + len(data) * 11.0 / baud
        # Logged before it goes out, so the entry exists once the master has the answer.
        self._record(frame, answers, data, time.time() + (done - time.monotonic()))
        self._transmit(data, start, baud)
        for meter in self.meters:
            meter.slave.after_ack_sent()

    def _apply_faults(self, meter: SimMeter, reply: bytes) -> _Answer | None:
        faults = meter.faults
        delay = self.response_delay if meter.response_delay is None else meter.response_delay
        fault = faults.name()
        data = reply
        if fault is not None:
            faults.used()
            if fault == "silence":
                self._record_silence(meter)
                return None
            if fault == "late":
                delay += faults.late
            elif fault == "garbage":
                data = bytes(b if b not in (0x68, 0x10, 0xE5) else 0x55 for b in os.urandom(24))
            elif fault == "bad_checksum" and len(reply) > 5:
                data = reply[:-2] + bytes(((reply[-2] + 1) & 0xFF,)) + reply[-1:]
            elif fault == "truncate" and len(reply) > 5:
                data = reply[: len(reply) // 2]
        return _Answer(meter, data, delay, fault, meter.slave.index, dict(meter.values))

    def _transmit(self, data: bytes, start: float, baud: int) -> None:
        """Send ``data`` at wire speed from ``start``; drop what the master says meanwhile."""
        self._wait_until(start)
        begin = max(time.monotonic(), start)
        step = max(1, int(baud / 11 * 0.01))  # about 10 ms of bytes per write
        sent = 0
        while sent < len(data):
            n = min(step, len(data) - sent)
            self._wait_until(begin + (sent + n) * 11.0 / baud)
            os.write(self._master_fd, data[sent : sent + n])
            sent += n
        self._busy_until = time.monotonic()

    def _wait_until(self, when: float) -> None:
        while True:
            left = when - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self._master_fd], [], [], left)
            if ready:
                try:
                    dropped = os.read(self._master_fd, 4096)
                except OSError:
                    continue
                self.ignored += 1
                _LOGGER.debug("line busy: %d bytes not understood", len(dropped))

    def _record(
        self, frame: frames.Frame, answers: list[_Answer], data: bytes, when: float
    ) -> None:
        """One entry per answering meter; ``t`` is when the answer's last byte is out."""
        now = when
        with self._lock:
            for answer in answers:
                entry = {
                    "t": now,
                    "address": answer.meter.address,
                    "secondary": answer.meter.secondary,
                    "request": frame.encode().hex(),
                    "response": data.hex(),
                    "kind": "ack" if answer.data == b"\xe5" else "rsp_ud",
                    "telegram": answer.index,
                    "fault": answer.fault,
                    "collision": len(answers) > 1,
                    "values": answer.values,
                }
                self.served.append(entry)
                if self._log is not None:
                    self._log.write(json.dumps(entry) + "\n")
                    self._log.flush()

    def _record_silence(self, meter: SimMeter) -> None:
        entry = {
            "t": time.time(),
            "address": meter.address,
            "secondary": meter.secondary,
            "kind": "silence",
            "fault": "silence",
            "values": {},
        }
        self.served.append(entry)
        if self._log is not None:
            self._log.write(json.dumps(entry) + "\n")
            self._log.flush()


def parse_fault(text: str) -> tuple[int, Faults]:
    """``ADDRESS:NAME[=VALUE][,count=N]`` (``12:late=1.5``, ``13:garbage,count=2``)."""
    try:
        address_text, _, spec = text.partition(":")
        address = int(address_text)
        parts = spec.split(",")
        name, _, value = parts[0].partition("=")
        options: dict[str, Any] = {}
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
        options[name] = float(value or 1.0) if name == "late" else True
        for extra in parts[1:]:
            key, _, count = extra.partition("=")
            if key != "count":
                raise ValueError(f"unknown fault option {key!r}")
            options["count"] = int(count)
    except ValueError as exc:
        raise ValueError(f"--fault {text!r}: {exc}") from None
    return address, Faults(**options)


def describe(line: SimLine) -> dict[str, Any]:
    """What a line simulates, as printed by ``--describe`` and used by tests in other
    processes."""
    return {
        "path": line.path,
        "baudrate": line.baudrate,
        "response_delay": line.response_delay,
        "meters": [
            {
                "name": m.name,
                "address": m.address,
                "secondary": m.secondary,
                "baudrate": m.slave.baudrate,
                "faults": asdict(m.faults) if m.faults.active else None,
                "frames": [f.hex() for f in m.expected_frames()],
            }
            for m in line.meters
        ],
    }


def main(argv: list[str] | None = None) -> int:
    from hil import scenarios

    parser = argparse.ArgumentParser(
        prog="python -m hil.sim", description="Simulated M-Bus meters on a virtual serial line."
    )
    parser.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--baudrate", type=int, default=2400)
    parser.add_argument("--delay", type=float, default=0.030, help="response delay (s)")
    parser.add_argument("--count", type=int, default=None, help="number of meters, if variable")
    parser.add_argument("--echo", action="store_true", help="echo the master's bytes")
    parser.add_argument(
        "--garble-collisions",
        action="store_true",
        help="meters answering a select together garble their E5 (default: one clean E5)",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="ADDR:NAME[=V][,count=N]",
        help=f"a meter's fault: {', '.join(FAULTS)} (late=SECONDS); repeatable",
    )
    parser.add_argument("--log", help="append one JSON line per answer served to this file")
    parser.add_argument("--link", help="also make this symlink to the device")
    parser.add_argument(
        "--describe", action="store_true", help="print the meters as JSON (one line) after the path"
    )
    args = parser.parse_args(argv)
    if args.list or not args.scenario:
        for name, text in scenarios.SCENARIOS.items():
            print(f"{name:12} {text}")
        return 0
    try:
        meters, options = scenarios.build(args.scenario, count=args.count)
    except (KeyError, ValueError) as exc:
        print(f"hil.sim: {exc}", file=sys.stderr)
        return 2
    try:
        faults = [parse_fault(text) for text in args.fault]
    except ValueError as exc:
        print(f"hil.sim: {exc}", file=sys.stderr)
        return 2
    if args.garble_collisions:
        options["garble_collisions"] = True
    line = SimLine(meters, args.baudrate, args.delay, echo=args.echo, log=args.log, **options)
    for address, fault in faults:
        try:
            line.set_faults(address, fault)
        except KeyError as exc:
            print(f"hil.sim: {exc.args[0]}", file=sys.stderr)
            return 2
    line.start()
    if args.link:
        link = Path(args.link)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(line.path)
    print(line.path, flush=True)
    if args.describe:
        print(json.dumps(describe(line)), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    line.stop()
    if args.link:
        Path(args.link).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A simulated Modbus energy meter (pymodbus server) serving a register map whose values move.

As a library (in-process, in its own thread with its own event loop)::

    with ModbusSim(PROFILES["eastron_sdm630"], unit_id=1) as sim:      # TCP on 127.0.0.1:0
        read(sim.host, sim.port)
        sim.advance()              # next step: energies grow, voltages wander
        sim.served                 # every step's exact values, as a reading of them must be

    more = [SimMeter(PROFILES["abb_b23"], unit_id=4, salt=1)]         # an RS-485 line
    with ModbusSim(specs, unit_id=3, more=more, rtu=True) as sim:      # RTU over a pty pair
        ModbusSerialClient(sim.device, ...)
        sim.meters[4].fail_with = 6                                    # unit 4 answers "busy"

Each meter appends every step's values to its log; the line's meters step together.

As a program: ``python -m hil.modbus_sim --profile eastron_sdm630 --tcp 127.0.0.1:0`` (or
``--rtu``; ``--meter abb_b23:4`` adds a meter on the same line or gateway) prints one JSON
line ``{"tcp": "127.0.0.1:PORT"}`` / ``{"device": PATH}`` when ready, advances every
``--step`` seconds and appends each step's values to ``--log FILE`` (JSONL), so a test harness
outside the process can check what was stored against what was served.

Values are exact decimals on each register's scale grid; float registers serve the float
nearest to them and :attr:`served` holds the decimal the logger must read back (the shortest
text of that float). The RTU side runs over a pty pair made by ``socat``: a pty carries bytes
instantly and has no parity, so Modbus inter-frame timing and 8E1 framing are not simulated
(clients open the pty 8N1; M-Bus wire timing is simulated, in hil.sim).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from logger.config.model import RegisterFunction, RegisterSpec, RegisterType
from logger.config.profiles import PROFILES
from logger.modbus.registers import decode_value, encode_value

_LOGGER = logging.getLogger(__name__)

# quantity -> (start, change per step, wander amplitude in steps of the grid)
_MODELS: dict[str, tuple[str, str, int]] = {
    "Energy": ("12345.6", "0.7", 0),
    "Reactive energy": ("321.4", "0.1", 0),
    "Voltage": ("230.0", "0.1", 25),
    "Current": ("5.2", "0.01", 40),
    "Power": ("1200", "1", 300),
    "Apparent power": ("1300", "1", 300),
    "Reactive power": ("150", "1", 50),
    "Frequency": ("50.00", "0.01", 5),
    "Power factor": ("0.95", "0.01", 4),
}


def value_at(spec: RegisterSpec, step: int, salt: int = 0) -> Decimal:
    """The value of ``spec`` at ``step``: counters grow, gauges wander (deterministic)."""
    start, delta, wander = _MODELS.get(spec.quantity, ("100", "1", 10))
    grid = (
        spec.scale
        if spec.type not in (RegisterType.FLOAT32, RegisterType.FLOAT64)
        else Decimal(delta)
    )
    base = Decimal(start) + Decimal(salt % 7)
    if wander == 0:
        value = base + Decimal(delta) * step
    else:
        phase = (step * 7 + salt * 3) % (2 * wander + 1) - wander  # -wander..+wander
        value = base + Decimal(delta) * phase
    return (value / grid).to_integral_value() * grid


class SimMeter:
    """One simulated meter: a unit id serving a register map whose values move by step."""

    def __init__(
        self,
        specs: Sequence[RegisterSpec],
        unit_id: int = 1,
        *,
        salt: int = 0,
        log: Path | None = None,
    ) -> None:
        self.specs = tuple(specs)
        self.unit_id = unit_id
        self.salt = salt
        self.log = log
        self.step = 0
        self.reads = 0
        self.fail_with: int | None = None  # answer every request with this exception code
        self.served: list[dict[str, Any]] = []
        self._words: dict[tuple[RegisterFunction, int], int] = {}
        self._lock = threading.Lock()
        self._write_step()

    def values(self, step: int | None = None) -> dict[str, str]:
        """The exact values a logger reads at ``step`` (default: now)."""
        step = self.step if step is None else step
        return {
            s.name: decode_value(s, encode_value(s, value_at(s, step, self.salt)))
            for s in self.specs
        }

    def advance(self, steps: int = 1) -> dict[str, str]:
        with self._lock:
            self.step += steps
            self._write_step()
            values: dict[str, str] = self.served[-1]["values"]
            return values

    def _write_step(self) -> None:
        words: dict[tuple[RegisterFunction, int], int] = {}
        for spec in self.specs:
            for i, word in enumerate(encode_value(spec, value_at(spec, self.step, self.salt))):
                words[(spec.function, spec.address + i)] = word
        self._words = words
        record = {
            "step": self.step,
            "time": time.time(),
            "unit_id": self.unit_id,
            "values": self.values(),
        }
        self.served.append(record)
        if self.log is not None:
            with open(self.log, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def sim_device(self) -> SimDevice:
        # Only the mapped registers exist: reading a hole gets "illegal data address", as on
        # real meters. Holding and input registers are separate blocks.
        blocks: dict[RegisterFunction, list[SimData]] = {f: [] for f in RegisterFunction}
        for spec in self.specs:
            blocks[spec.function].append(
                SimData(spec.address, spec.count, 0, DataType.REGISTERS, readonly=True)
            )
        for block in blocks.values():
            block.sort(key=lambda d: d.address)
            if not block:  # pymodbus wants every block non-empty: one unused register
                block.append(SimData(65534, 1, 0, DataType.REGISTERS, readonly=True))
        bits = [SimData(0, 1, False, DataType.BITS, readonly=True)]
        return SimDevice(
            self.unit_id,
            (bits, list(bits), blocks[RegisterFunction.HOLDING], blocks[RegisterFunction.INPUT]),
            action=self._on_access,
        )

    async def _on_access(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: object,
    ) -> Any:
        """Called by pymodbus on each request: put the current step's words in place."""
        function = RegisterFunction.HOLDING if function_code == 3 else RegisterFunction.INPUT
        with self._lock:
            words = self._words
            self.reads += 1
            fail = self.fail_with
        if fail is not None:
            return ExcCodes(fail)
        for i in range(address, address + count):
            registers[i - start_address] = words.get((function, i), 0)
        return None


class ModbusSim:
    """Simulated meters on one TCP server or one RTU line (a pty pair), in a thread.

    The first meter is given by ``specs``/``unit_id`` (its values, ``advance`` and ``served``
    are available on the simulator itself); ``more`` adds meters on the same line or gateway,
    as on an RS-485 bus. :meth:`advance` steps every meter.
    """

    def __init__(
        self,
        specs: Sequence[RegisterSpec],
        unit_id: int = 1,
        *,
        more: Sequence[SimMeter] = (),
        rtu: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        baudrate: int = 9600,
        parity: str = "N",
        salt: int = 0,
        log: Path | None = None,
    ) -> None:
        self.meter = SimMeter(specs, unit_id, salt=salt, log=log)
        self.meters = {m.unit_id: m for m in (self.meter, *more)}
        if len(self.meters) != 1 + len(more):
            raise ValueError("two simulated meters with the same unit id")
        self.rtu = rtu
        self.host = host
        self.port = port
        self.baudrate = baudrate
        self.parity = parity
        self.device = ""  # the pty the client opens (RTU)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self._thread: threading.Thread | None = None
        self._socat: subprocess.Popen[bytes] | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def served(self) -> list[dict[str, Any]]:
        return self.meter.served

    @property
    def reads(self) -> int:
        return sum(m.reads for m in self.meters.values())

    def values(self, step: int | None = None) -> dict[str, str]:
        return self.meter.values(step)

    def advance(self, steps: int = 1) -> dict[str, str]:
        for meter in self.meters.values():
            if meter is not self.meter:
                meter.advance(steps)
        return self.meter.advance(steps)

    # serving --------------------------------------------------------------------------------

    def start(self) -> ModbusSim:
        if self.rtu:
            self._start_ptys()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(
            target=run, name=f"modbus-sim {self.meter.unit_id}", daemon=True
        )
        self._thread.start()
        if not ready.wait(10) or failure:
            self.stop()
            raise RuntimeError(f"modbus simulator did not start: {failure or 'timeout'}")
        return self

    async def _listen(self) -> None:
        devices = [m.sim_device() for m in self.meters.values()]
        if self.rtu:
            self._server = ModbusSerialServer(
                devices,
                port=self._server_end,
                baudrate=self.baudrate,
                # A pty has no parity (MBUS.md): the meter's end is opened 8N1 whatever the
                # line is configured for; the client may still ask for 8E1.
                parity="N",
                stopbits=1,
                bytesize=8,
                timeout=1,
            )
        else:
            self._server = ModbusTcpServer(devices, address=(self.host, self.port))
        await self._server.serve_forever(background=True)
        if not self.rtu:
            transport: Any = self._server.transport
            self.port = int(transport.sockets[0].getsockname()[1])

    def _start_ptys(self) -> None:
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat is needed for the RTU simulator (apt-get install socat)")
        self._tmp = tempfile.TemporaryDirectory(prefix="modbus-sim-")
        self.device = os.path.join(self._tmp.name, "client")
        self._server_end = os.path.join(self._tmp.name, "meter")
        self._socat = subprocess.Popen(
            [
                socat,
                "-d",
                f"pty,raw,echo=0,link={self.device}",
                f"pty,raw,echo=0,link={self._server_end}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.device) and os.path.exists(self._server_end)):
            if self._socat.poll() is not None or time.monotonic() > deadline:
                err = self._socat.stderr.read().decode() if self._socat.stderr else ""
                raise RuntimeError(f"socat did not create the pty pair: {err}")
            time.sleep(0.01)

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is not None and server is not None and loop.is_running():
            asyncio.run_coroutine_threadsafe(server.shutdown(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if self._socat is not None:
            self._socat.terminate()
            self._socat.wait(10)
            if self._socat.stderr:
                self._socat.stderr.close()
            self._socat = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ModbusSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hil.modbus_sim", description="Simulated Modbus energy meter."
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="eastron_sdm630")
    parser.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    parser.add_argument(
        "--meter",
        action="append",
        default=[],
        metavar="PROFILE:UNIT",
        help="another meter on the same line or gateway (repeatable)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--tcp", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    where.add_argument("--rtu", action="store_true", help="serve RTU on a new pty pair")
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--step", type=float, default=1.0, help="seconds between value steps")
    parser.add_argument("--salt", type=int, default=0, help="varies the values per meter")
    parser.add_argument("--log", type=Path, help="append every step's values here (JSONL)")
    args = parser.parse_args(argv)
    host, _, port = args.tcp.rpartition(":")
    more = []
    for i, item in enumerate(args.meter, 1):
        profile, _, unit = item.partition(":")
        if profile not in PROFILES or not unit.isdigit():
            parser.error(f"--meter {item}: PROFILE:UNIT with a profile of {sorted(PROFILES)}")
        more.append(SimMeter(PROFILES[profile], int(unit), salt=args.salt + i, log=args.log))
    sim = ModbusSim(
        PROFILES[args.profile],
        args.unit,
        more=more,
        rtu=args.rtu,
        host=host or "127.0.0.1",
        port=int(port or 0),
        baudrate=args.baud,
        parity=args.parity,
        salt=args.salt,
        log=args.log,
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())  # stop cleanly: socat must not linger
    sim.start()
    try:
        ready = {"device": sim.device} if args.rtu else {"tcp": f"{sim.host}:{sim.port}"}
        print(json.dumps({**ready, "unit_id": args.unit, "profile": args.profile}), flush=True)
        while not stop.wait(args.step):
            sim.advance()
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading Modbus meters (RTU on a serial bus, TCP) into exact readings.

pymodbus is used here and nowhere else in the logger; its exceptions and error responses are
translated into :mod:`logger.modbus.errors`. The clients are synchronous, like the M-Bus
master: the daemon runs each bus on its own worker thread, and an RTU read-out holds the
port's lock (``logger.bus.port_lock``) for its whole duration, so an M-Bus exchange and a Modbus
exchange never interleave on one line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from pymodbus import ModbusException
from pymodbus.client import ModbusSerialClient, ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from logger.config.model import BusConfig, MeterConfig, MeterKind, Quirks, RegisterFunction
from logger.modbus.errors import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
    RegisterValueError,
)
from logger.modbus.registers import ReadRequest, decode_value, plan_requests
from logger.readings import FLAG_CLOCK_UNSYNCED, Reading, ValueKind

_LOGGER = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 1.0


class RegisterSource(Protocol):
    """Anything that reads raw registers: our pymodbus-backed clients, or a test fake."""

    def read_registers(
        self, function: RegisterFunction, address: int, count: int, unit_id: int
    ) -> list[int]: ...

    def close(self) -> None: ...


class _PymodbusSource:
    """Shared request/translation logic over a pymodbus sync client."""

    def __init__(
        self,
        client: ModbusSerialClient | ModbusTcpClient,
        name: str,
        lock: AbstractContextManager[Any] | None,
        quirks: Quirks,
    ) -> None:
        self._client = client
        self.name = name
        self._lock = lock if lock is not None else nullcontext()
        self._quirks = quirks
        self._connected = False
        self._last_request = 0.0

    def _connect(self) -> None:
        if self._connected and self._client.connected:
            return
        try:
            ok = self._client.connect()
        except (OSError, ModbusException) as exc:
            raise ModbusConnectionError(f"{self.name}: cannot connect: {exc}") from exc
        if not ok:
            raise ModbusConnectionError(f"{self.name}: cannot connect")
        self._connected = True
        pause = float(self._quirks.get("pause_after_connect", 0.0))
        if pause:
            time.sleep(pause)

    def read_registers(
        self, function: RegisterFunction, address: int, count: int, unit_id: int
    ) -> list[int]:
        with self._lock:
            self._connect()
            pause = float(self._quirks.get("pause_between_requests", 0.0))
            if pause:
                wait = self._last_request + pause - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            read = (
                self._client.read_holding_registers
                if function is RegisterFunction.HOLDING
                else self._client.read_input_registers
            )
            where = f"{self.name} unit {unit_id} {function.value} {address}+{count}"
            try:
                response = read(address, count=count, device_id=unit_id)
            except ConnectionException as exc:
                self._drop()
                raise ModbusConnectionError(f"{where}: connection lost: {exc}") from exc
            except ModbusIOException as exc:
                raise ModbusTimeout(f"{where}: no valid answer: {exc}") from exc
            except (ModbusException, OSError) as exc:
                self._drop()
                raise ModbusConnectionError(f"{where}: {exc}") from exc
            finally:
                self._last_request = time.monotonic()
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                name = ModbusExceptionResponse.NAMES.get(code, "exception")
                raise ModbusExceptionResponse(f"{where}: device answered {name} ({code})", code)
            registers = list(response.registers)
            if len(registers) != count:
                raise ModbusTimeout(f"{where}: {len(registers)} registers in the answer")
            return registers

    def _drop(self) -> None:
        self._connected = False
        try:
            self._client.close()
        except (OSError, ModbusException):  # pragma: no cover - closing a broken link
            pass

    def close(self) -> None:
        with self._lock:
            self._drop()


class RtuClient(_PymodbusSource):
    """Modbus RTU on a serial bus, sharing the port's lock with the M-Bus master."""

    def __init__(
        self,
        bus: BusConfig,
        lock: AbstractContextManager[Any] | None = None,
        timeout_s: float | None = None,
    ) -> None:
        if lock is None:
            from logger.bus.locks import port_lock

            lock = port_lock(bus.device)
        client = ModbusSerialClient(
            bus.device,
            baudrate=bus.baud_rate,
            parity=bus.parity,
            stopbits=bus.stop_bits,
            bytesize=8,
            timeout=timeout_s or bus.timeout_s or DEFAULT_TIMEOUT_S,
            retries=bus.retries,
            handle_local_echo=bool(bus.quirks.get("echo")),
            reconnect_delay=0,
            name=f"rtu {bus.name}",
        )
        super().__init__(client, f"bus {bus.name} ({bus.device})", lock, bus.quirks)


class TcpClient(_PymodbusSource):
    """Modbus TCP to a meter or gateway (one connection, kept open between polls)."""

    def __init__(
        self,
        host: str,
        port: int = 502,
        timeout_s: float | None = None,
        retries: int = 1,
        quirks: Quirks | None = None,
    ) -> None:
        client = ModbusTcpClient(
            host,
            port=port,
            timeout=timeout_s or DEFAULT_TIMEOUT_S,
            retries=retries,
            reconnect_delay=0,
            name=f"tcp {host}:{port}",
        )
        super().__init__(client, f"{host}:{port}", threading.RLock(), quirks or Quirks())


@dataclass(slots=True)
class MeterRead:
    """One read-out: the readings, and the registers that could not be read (the meter is
    still up if some were)."""

    meter_id: str
    readings: list[Reading] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_meter(
    source: RegisterSource,
    meter: MeterConfig,
    logger_time: datetime,
    *,
    clock_synced: bool = True,
    quirks: Quirks | None = None,
) -> MeterRead:
    """Read every register of ``meter`` and return exact readings.

    A merged request refused with "illegal data address" is retried register by register (a
    hole in the device's map); registers that still fail are listed in ``errors``. If nothing
    at all could be read, the first error is raised: the meter counts as down.
    """
    if meter.kind is MeterKind.MBUS:
        raise ValueError(f"meter {meter.id} is an M-Bus meter")
    unit_id = meter.unit_id if meter.unit_id is not None else 1
    quirks = quirks or meter.quirks
    result = MeterRead(meter.id)
    flags = frozenset({FLAG_CLOCK_UNSYNCED}) if not clock_synced else frozenset()
    first_error: ModbusError | None = None
    requests = plan_requests(meter.registers, bool(quirks.get("one_request_per_field")))
    pending = list(requests)
    while pending:
        request = pending.pop(0)
        try:
            words = source.read_registers(request.function, request.address, request.count, unit_id)
        except ModbusExceptionResponse as exc:
            if exc.code == 2 and len(request.specs) > 1:
                pending[:0] = [
                    ReadRequest(s.function, s.address, s.count, (s,)) for s in request.specs
                ]
                continue
            first_error = first_error or exc
            result.errors.append(str(exc))
            continue
        except (ModbusTimeout, ModbusConnectionError) as exc:
            # The device or line is gone: the rest of this read-out would only wait too.
            if not result.readings:
                raise
            result.errors.append(str(exc))
            break
        for spec in request.specs:
            offset = spec.address - request.address
            try:
                value = decode_value(spec, words[offset : offset + spec.count])
            except RegisterValueError as exc:
                result.errors.append(f"meter {meter.id}: {exc}")
                continue
            result.readings.append(
                Reading(
                    meter_id=meter.id,
                    key=spec.name,
                    quantity=spec.quantity,
                    unit=spec.unit,
                    value=value,
                    kind=ValueKind.NUMBER,
                    logger_time=logger_time,
                    flags=flags,
                )
            )
    if quirks.get("close_after_read"):
        source.close()  # the gateway has one connection slot: give it back
    if not result.readings and first_error is not None:
        raise first_error
    if result.errors:
        _LOGGER.debug(
            "meter %s: %d registers not read: %s",
            meter.id,
            len(result.errors),
            "; ".join(result.errors),
        )
    return result


def client_for(
    meter: MeterConfig,
    bus: BusConfig | None = None,
    lock_factory: Callable[[str], AbstractContextManager[Any]] | None = None,
) -> RegisterSource:
    """The client a meter needs (RTU on its bus, or TCP to its host)."""
    if meter.kind is MeterKind.MODBUS_TCP:
        assert meter.host is not None
        return TcpClient(meter.host, meter.port or 502, meter.timeout_s, quirks=meter.quirks)
    if meter.kind is MeterKind.MODBUS_RTU:
        if bus is None:
            raise ValueError(f"meter {meter.id}: an RTU meter needs its bus")
        lock = lock_factory(bus.device) if lock_factory else None
        return RtuClient(bus, lock, meter.timeout_s)
    raise ValueError(f"meter {meter.id} is not a Modbus meter")


def read_all(
    source: RegisterSource,
    meters: Sequence[MeterConfig],
    logger_time: datetime,
    clock_synced: bool = True,
) -> dict[str, MeterRead | ModbusError]:
    """Read several meters on one source; one failing meter never stops the others."""
    out: dict[str, MeterRead | ModbusError] = {}
    for meter in meters:
        try:
            out[meter.id] = read_meter(source, meter, logger_time, clock_synced=clock_synced)
        except ModbusError as exc:
            out[meter.id] = exc
    return out

"""Our Modbus errors; pymodbus's exceptions are translated into these in
:mod:`logger.modbus.client` and nowhere else."""

from __future__ import annotations


class ModbusError(Exception):
    """Base class. ``transient`` says whether the next poll may well succeed."""

    transient = True


class ModbusConnectionError(ModbusError):
    """The port or the TCP device/gateway cannot be reached."""


class ModbusTimeout(ModbusError):
    """The device did not answer (in time, or with a valid frame)."""


class ModbusExceptionResponse(ModbusError):
    """The device answered with a Modbus exception (e.g. 2: illegal data address)."""

    NAMES = {
        1: "illegal function",
        2: "illegal data address",
        3: "illegal data value",
        4: "server device failure",
        5: "acknowledge",
        6: "server device busy",
        10: "gateway path unavailable",
        11: "gateway target device failed to respond",
    }

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        # A wrong register map does not fix itself; a busy device or gateway may.
        self.transient = code in (5, 6, 10, 11)


class RegisterValueError(ModbusError):
    """Register contents that cannot be an exact value (NaN, infinity)."""

    transient = False

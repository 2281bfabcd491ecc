"""Modbus meters (pymodbus): RTU on the shared serial bus, TCP, register maps to readings.

Import the clients from :mod:`logger.modbus.client` (it loads pymodbus); the register
arithmetic in :mod:`logger.modbus.registers` and the errors are pure.
"""

from logger.modbus.errors import (
    ModbusConnectionError,
    ModbusError,
    ModbusExceptionResponse,
    ModbusTimeout,
    RegisterValueError,
)

__all__ = [
    "ModbusConnectionError",
    "ModbusError",
    "ModbusExceptionResponse",
    "ModbusTimeout",
    "RegisterValueError",
]

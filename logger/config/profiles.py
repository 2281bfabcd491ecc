"""Built-in register maps of common energy meters, selected with ``profile = "..."``.

Addresses are 0-based protocol addresses as the manufacturers' Modbus manuals list them (in
hex): Eastron's SDM120/SDM630 protocol documents (input registers, IEEE 754 float32, most
significant word first); ABB's B21/B23/B24 Modbus register map (holding registers, unsigned
or signed integers with a fixed resolution, big-endian); Carlo Gavazzi's EM24 communication
protocol (INT32 with the least significant word first, fixed weights). A meter's own
``registers`` entries add to its profile or replace entries of the same name.

Scales are exact decimals applied to the raw integer (ABB energy is in 0.01 kWh, so
``scale = 0.01``); float registers keep scale 1 and are converted with the shortest decimal
that round-trips the float (see :mod:`logger.modbus.registers`).
"""

from __future__ import annotations

from decimal import Decimal

from logger.config.model import RegisterFunction, RegisterSpec, RegisterType, WordOrder

_IN = RegisterFunction.INPUT
_HOLD = RegisterFunction.HOLDING
_F32 = RegisterType.FLOAT32


def _f(name: str, address: int, unit: str, quantity: str) -> RegisterSpec:
    return RegisterSpec(name, address, _IN, _F32, WordOrder.BIG, Decimal(1), unit, quantity)


def _abb(
    name: str, address: int, rtype: RegisterType, scale: str, unit: str, quantity: str
) -> RegisterSpec:
    return RegisterSpec(name, address, _HOLD, rtype, WordOrder.BIG, Decimal(scale), unit, quantity)


def _cg(
    name: str, address: int, rtype: RegisterType, scale: str, unit: str, quantity: str
) -> RegisterSpec:
    return RegisterSpec(
        name, address, _HOLD, rtype, WordOrder.LITTLE, Decimal(scale), unit, quantity
    )


PROFILES: dict[str, tuple[RegisterSpec, ...]] = {
    "eastron_sdm120": (
        _f("voltage", 0x0000, "V", "Voltage"),
        _f("current", 0x0006, "A", "Current"),
        _f("active_power", 0x000C, "W", "Power"),
        _f("apparent_power", 0x0012, "VA", "Apparent power"),
        _f("reactive_power", 0x0018, "var", "Reactive power"),
        _f("power_factor", 0x001E, "", "Power factor"),
        _f("frequency", 0x0046, "Hz", "Frequency"),
        _f("import_active_energy", 0x0048, "kWh", "Energy"),
        _f("export_active_energy", 0x004A, "kWh", "Energy"),
        _f("total_active_energy", 0x0156, "kWh", "Energy"),
    ),
    "eastron_sdm630": (
        _f("voltage_l1", 0x0000, "V", "Voltage"),
        _f("voltage_l2", 0x0002, "V", "Voltage"),
        _f("voltage_l3", 0x0004, "V", "Voltage"),
        _f("current_l1", 0x0006, "A", "Current"),
        _f("current_l2", 0x0008, "A", "Current"),
        _f("current_l3", 0x000A, "A", "Current"),
        _f("active_power_l1", 0x000C, "W", "Power"),
        _f("active_power_l2", 0x000E, "W", "Power"),
        _f("active_power_l3", 0x0010, "W", "Power"),
        _f("total_active_power", 0x0034, "W", "Power"),
        _f("total_power_factor", 0x003E, "", "Power factor"),
        _f("frequency", 0x0046, "Hz", "Frequency"),
        _f("import_active_energy", 0x0048, "kWh", "Energy"),
        _f("export_active_energy", 0x004A, "kWh", "Energy"),
        _f("total_active_energy", 0x0156, "kWh", "Energy"),
        _f("total_reactive_energy", 0x0158, "kvarh", "Reactive energy"),
    ),
    "abb_b23": (
        _abb("import_active_energy", 0x5000, RegisterType.UINT64, "0.01", "kWh", "Energy"),
        _abb("export_active_energy", 0x5004, RegisterType.UINT64, "0.01", "kWh", "Energy"),
        _abb("voltage_l1", 0x5B00, RegisterType.UINT32, "0.1", "V", "Voltage"),
        _abb("voltage_l2", 0x5B02, RegisterType.UINT32, "0.1", "V", "Voltage"),
        _abb("voltage_l3", 0x5B04, RegisterType.UINT32, "0.1", "V", "Voltage"),
        _abb("current_l1", 0x5B0C, RegisterType.UINT32, "0.01", "A", "Current"),
        _abb("current_l2", 0x5B0E, RegisterType.UINT32, "0.01", "A", "Current"),
        _abb("current_l3", 0x5B10, RegisterType.UINT32, "0.01", "A", "Current"),
        _abb("total_active_power", 0x5B14, RegisterType.INT32, "0.01", "W", "Power"),
        _abb("frequency", 0x5B2C, RegisterType.UINT16, "0.01", "Hz", "Frequency"),
        _abb("total_power_factor", 0x5B3A, RegisterType.INT16, "0.001", "", "Power factor"),
    ),
    "carlo_gavazzi_em24": (
        _cg("voltage_l1", 0x0000, RegisterType.INT32, "0.1", "V", "Voltage"),
        _cg("voltage_l2", 0x0002, RegisterType.INT32, "0.1", "V", "Voltage"),
        _cg("voltage_l3", 0x0004, RegisterType.INT32, "0.1", "V", "Voltage"),
        _cg("current_l1", 0x000C, RegisterType.INT32, "0.001", "A", "Current"),
        _cg("current_l2", 0x000E, RegisterType.INT32, "0.001", "A", "Current"),
        _cg("current_l3", 0x0010, RegisterType.INT32, "0.001", "A", "Current"),
        _cg("active_power_l1", 0x0012, RegisterType.INT32, "0.1", "W", "Power"),
        _cg("active_power_l2", 0x0014, RegisterType.INT32, "0.1", "W", "Power"),
        _cg("active_power_l3", 0x0016, RegisterType.INT32, "0.1", "W", "Power"),
        _cg("total_active_power", 0x0028, RegisterType.INT32, "0.1", "W", "Power"),
        _cg("frequency", 0x0033, RegisterType.INT16, "0.1", "Hz", "Frequency"),
        _cg("import_active_energy", 0x0034, RegisterType.INT32, "0.1", "kWh", "Energy"),
        _cg("export_active_energy", 0x004E, RegisterType.INT32, "0.1", "kWh", "Energy"),
    ),
}

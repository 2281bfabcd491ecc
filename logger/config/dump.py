"""The configuration back as plain data: for ``check-config --format json``, the status
report, and for writing a cloud layer from a configuration (``mbus-receiver config``).

:func:`meters_layer` produces exactly the schema :func:`~logger.config.load.apply_cloud_layer`
reads, so ``apply_cloud_layer(base, meters_layer(config, v))`` gives ``config``'s meters back
(a round trip the tests check).
"""

from __future__ import annotations

import enum
from dataclasses import fields, is_dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from logger.config.model import Config, MeterConfig, MeterKind, Quirks, RegisterSpec
from logger.config.profiles import PROFILES


def to_data(value: Any) -> Any:
    """Dataclasses, enums, paths, decimals and quirks as JSON-ready values."""
    if isinstance(value, Quirks):
        return dict(value.values)
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_data(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, tuple | list):
        return [to_data(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_data(v) for k, v in value.items()}
    return value


def _register(spec: RegisterSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "address": spec.address,
        "function": spec.function.value,
        "type": spec.type.value,
        "word_order": spec.word_order.value,
        "scale": str(spec.scale),
        "unit": spec.unit,
        "quantity": spec.quantity,
    }


def meter_entry(meter: MeterConfig) -> dict[str, Any]:
    """One ``[[meters]]`` entry (cloud layer schema, durations in seconds)."""
    out: dict[str, Any] = {"id": meter.id, "kind": meter.kind.value, "interval": meter.interval_s}
    if meter.offset_s:
        out["offset"] = meter.offset_s
    if not meter.enabled:
        out["enabled"] = False
    if meter.timeout_s is not None:
        out["timeout"] = meter.timeout_s
    if meter.quirks:
        out["quirks"] = dict(meter.quirks.values)
    if meter.kind is not MeterKind.MODBUS_TCP:
        out["bus"] = meter.bus
    if meter.kind is MeterKind.MBUS:
        if meter.primary_address is not None:
            out["primary_address"] = meter.primary_address
        else:
            out["secondary_address"] = meter.secondary_address
        return out
    out["unit_id"] = meter.unit_id
    if meter.kind is MeterKind.MODBUS_TCP:
        out["host"] = meter.host
        out["port"] = meter.port
    profile = PROFILES.get(meter.profile or "", ())
    if meter.profile:
        out["profile"] = meter.profile
    extra = [r for r in meter.registers if r not in profile]
    if extra:
        out["registers"] = [_register(r) for r in extra]
    return out


def meters_layer(config: Config, version: int | str) -> dict[str, Any]:
    """A cloud layer carrying ``config``'s meters and default interval."""
    return {
        "version": version,
        "default_interval": config.default_interval_s,
        "meters": [meter_entry(m) for m in config.meters],
    }

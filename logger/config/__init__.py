"""The logger's configuration: one TOML file into frozen dataclasses, plus the cloud layer.

``load(path)`` reads and validates the file (every problem with its line, raised together as
:class:`ConfigError`); :class:`CloudLayerStore` applies and keeps the operator's cloud layer
(meters, register maps, intervals only); :func:`next_due` aligns polling to the wall clock.
Pure standard library (plus the store's limit types), so ``check-config`` starts fast.
"""

from logger.config.cloud import CloudLayerStore
from logger.config.dump import meter_entry, meters_layer, to_data
from logger.config.load import (
    QUIRKS,
    ConfigError,
    Problem,
    apply_cloud_layer,
    load,
    parse,
    parse_cloud_layer,
    parse_duration,
    parse_size,
)
from logger.config.model import (
    CLOUD_FIELDS,
    BusConfig,
    BusKind,
    Config,
    Installation,
    MeterConfig,
    MeterKind,
    Paths,
    Quirks,
    RegisterFunction,
    RegisterSpec,
    RegisterType,
    UplinkConfig,
    WordOrder,
)
from logger.config.profiles import PROFILES
from logger.config.schedule import next_due, valid_interval

__all__ = [
    "CLOUD_FIELDS",
    "PROFILES",
    "QUIRKS",
    "BusConfig",
    "BusKind",
    "CloudLayerStore",
    "Config",
    "ConfigError",
    "Installation",
    "MeterConfig",
    "MeterKind",
    "Paths",
    "Problem",
    "Quirks",
    "RegisterFunction",
    "RegisterSpec",
    "RegisterType",
    "UplinkConfig",
    "WordOrder",
    "apply_cloud_layer",
    "load",
    "meter_entry",
    "meters_layer",
    "next_due",
    "parse",
    "parse_cloud_layer",
    "parse_duration",
    "parse_size",
    "to_data",
    "valid_interval",
]

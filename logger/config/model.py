"""The validated configuration: frozen dataclasses, built only by :mod:`logger.config.load`.

Two layers (ARCHITECTURE.md): the local file owns everything; a cloud layer may replace the
fields listed in :data:`CLOUD_FIELDS` (meters and their register maps, polling intervals) and
nothing else — buses, paths, the uplink, keys and trust, and the location stay the installer's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from logger.store.api import BufferLimits

CLOUD_FIELDS = ("meters", "default_interval")
"""Top-level keys a cloud layer may set; everything else in it is refused."""


class BusKind(enum.StrEnum):
    MBUS = "mbus"
    MODBUS_RTU = "modbus_rtu"


class MeterKind(enum.StrEnum):
    MBUS = "mbus"
    MODBUS_RTU = "modbus_rtu"
    MODBUS_TCP = "modbus_tcp"


class RegisterFunction(enum.StrEnum):
    HOLDING = "holding"  # function code 3
    INPUT = "input"  # function code 4


class RegisterType(enum.StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def words(self) -> int:
        return {"16": 1, "32": 2, "64": 4}[self.value[-2:]]


class WordOrder(enum.StrEnum):
    BIG = "big"  # most significant word first (Modbus convention, Eastron, ABB)
    LITTLE = "little"  # least significant word first (Carlo Gavazzi)


@dataclass(frozen=True, slots=True)
class Quirks:
    """Named per-bus or per-meter workarounds (see :data:`logger.config.load.QUIRKS`)."""

    values: tuple[tuple[str, bool | int | float], ...] = ()

    def get(self, name: str, default: bool | int | float = False) -> bool | int | float:
        return dict(self.values).get(name, default)

    def __bool__(self) -> bool:
        return bool(self.values)

    def merged(self, other: Quirks) -> Quirks:
        """``other`` (a meter's) wins over ``self`` (its bus's)."""
        out = dict(self.values)
        out.update(other.values)
        return Quirks(tuple(sorted(out.items())))


@dataclass(frozen=True, slots=True)
class BusConfig:
    name: str
    kind: BusKind
    device: str  # a path (/dev/ttyUSB0) or a pyserial URL (rfc2217://host:port, socket://)
    baud_rate: int
    parity: str  # "E", "N" or "O"
    stop_bits: int
    timeout_s: float | None  # None: derived from the baud rate by logger.bus
    idle_gap_s: float | None  # None: protocol default (M-Bus 11 bit times; Modbus 3.5 chars)
    retries: int
    quirks: Quirks = field(default_factory=Quirks)


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value of a Modbus meter: where it is and how to turn words into an exact value."""

    name: str
    address: int  # 0-based protocol address (not the 3xxxx/4xxxx "register number")
    function: RegisterFunction
    type: RegisterType
    word_order: WordOrder = WordOrder.BIG
    scale: Decimal = Decimal(1)
    unit: str = ""
    quantity: str = ""

    @property
    def count(self) -> int:
        return self.type.words


@dataclass(frozen=True, slots=True)
class MeterConfig:
    id: str
    kind: MeterKind
    interval_s: int
    offset_s: int = 0
    enabled: bool = True
    bus: str | None = None  # M-Bus and Modbus RTU
    primary_address: int | None = None  # M-Bus 0..250
    secondary_address: str | None = None  # M-Bus: 8 BCD digits, or 16 hex (id+man+ver+medium)
    unit_id: int | None = None  # Modbus
    host: str | None = None  # Modbus TCP
    port: int | None = None
    profile: str | None = None
    registers: tuple[RegisterSpec, ...] = ()
    timeout_s: float | None = None
    quirks: Quirks = field(default_factory=Quirks)


@dataclass(frozen=True, slots=True)
class Installation:
    site: str = ""
    description: str = ""
    latitude: float | None = None
    longitude: float | None = None
    timezone: str = "UTC"  # IANA name: the wall clock polling intervals align to
    # Is the wall clock trustworthy? "auto": ask the kernel/timesyncd; "synchronised": this
    # box has a battery-backed RTC or GPS time; "unsynchronised": flag every reading.
    clock: str = "auto"


@dataclass(frozen=True, slots=True)
class Paths:
    state_dir: Path
    database: Path
    cloud_layer: Path
    status_file: Path


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    endpoint: str
    server_application_uri: str
    tcti: str = "device:/dev/tpmrm0"
    key: str = "tpm"  # "tpm" (persistent key in the TPM) or a path to an encrypted PKCS#8 file
    key_handle: int = 0x81000001
    certificate: Path | None = None
    trust_dir: Path | None = None
    push_interval_s: float = 10.0
    batch_size: int = 5000
    config_poll_interval_s: float = 300.0
    status_interval_s: float = 300.0
    connect_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    installation: Installation
    paths: Paths
    buffer: BufferLimits
    uplink: UplinkConfig | None
    buses: tuple[BusConfig, ...]
    meters: tuple[MeterConfig, ...]
    default_interval_s: int
    source: Path | None = None
    cloud_version: str | None = None  # the cloud layer in force, None: the file's meters

    def bus(self, name: str) -> BusConfig:
        for bus in self.buses:
            if bus.name == name:
                return bus
        raise KeyError(name)

    def meter(self, meter_id: str) -> MeterConfig:
        for meter in self.meters:
            if meter.id == meter_id:
                return meter
        raise KeyError(meter_id)

"""The browseable part of the receiver: loggers, their meters and the latest exact values.

Layout (namespace :data:`logger.contract.NAMESPACE_URI`, string NodeIds so a client can also
address nodes directly)::

    MeterDataReceiver/Loggers/                    ns=N;s=Loggers
      <ApplicationUri>                            ns=N;s=Loggers/<uri>            (object)
        ApplicationUri, Serial, Location,         ns=N;s=Loggers/<uri>/<Name>     (properties)
        FirmwareVersion, CertificateThumbprint, CertificateNotAfter, LastContact,
        BufferDepth, OldestAgeSeconds, Losses, ConfigVersion
        Meters/                                   ns=N;s=Loggers/<uri>/Meters     (folder)
          <meter>/                                ns=N;s=Loggers/<uri>/Meters/<meter>
            <record>                              .../<meter>/<record>            (variable)
              value: the exact value (String), SourceTimestamp = the logger's time of the
              reading; properties Unit, Quantity, MeterTime (DateTime, the meter's own clock,
              absent: 1601-01-01), ValueDouble (Double, NaN for text), Sequence (UInt64)

Everything here is read-only to clients (the server's permission rules). It is rebuilt from
the storage at start (:meth:`AddressSpace.load`) and kept current after each push with one
pass over the batch: only the newest reading of each (meter, record) in the batch is queued,
and a background writer puts it straight into the address space (no per-value service round
trip). The push is answered as soon as the storage committed; while a backlog drains, batches
coalesce in the queue, so the view costs one write per series and round, not per reading, and
at most a tenth of the receiver's time.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from asyncua import Server, ua
from asyncua.common.node import Node

from logger import contract
from receiver.storage import Device, LatestValue

_LOGGER = logging.getLogger(__name__)

NULL_TIME = dt.datetime(1601, 1, 1, tzinfo=dt.UTC)
VIEW_INTERVAL_S = 1.0
"""The latest values are written into the address space at most this often."""
VIEW_CPU_SHARE = 0.1
"""...and with pauses that keep the writer under this share of the receiver's time."""

LOGGER_PROPERTIES: tuple[tuple[str, ua.VariantType], ...] = (
    ("ApplicationUri", ua.VariantType.String),
    ("Serial", ua.VariantType.String),
    ("Location", ua.VariantType.String),
    ("FirmwareVersion", ua.VariantType.String),
    ("CertificateThumbprint", ua.VariantType.String),
    ("CertificateNotAfter", ua.VariantType.DateTime),
    ("LastContact", ua.VariantType.DateTime),
    ("BufferDepth", ua.VariantType.UInt64),
    ("OldestAgeSeconds", ua.VariantType.Double),
    ("Losses", ua.VariantType.UInt64),
    ("ConfigVersion", ua.VariantType.UInt32),
)
VALUE_PROPERTIES: tuple[tuple[str, ua.VariantType], ...] = (
    ("Unit", ua.VariantType.String),
    ("Quantity", ua.VariantType.String),
    ("MeterTime", ua.VariantType.DateTime),
    ("ValueDouble", ua.VariantType.Double),
    ("Sequence", ua.VariantType.UInt64),
)


def _time(t: dt.datetime | None) -> dt.datetime:
    if t is None:
        return NULL_TIME
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _double(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) else math.nan


def _empty(vtype: ua.VariantType) -> Any:
    if vtype is ua.VariantType.String:
        return ""
    if vtype is ua.VariantType.DateTime:
        return NULL_TIME
    if vtype is ua.VariantType.Double:
        return 0.0
    return 0


class AddressSpace:
    """Loggers and latest values under ``MeterDataReceiver/Loggers`` (see the module doc)."""

    def __init__(self, server: Server, idx: int, loggers: Node) -> None:
        self.server = server
        self.idx = idx
        self.loggers = loggers
        self._known: set[str] = set()  # string ids of nodes that exist
        self._lock = asyncio.Lock()
        self._pending: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        self._dirty = asyncio.Event()
        self._units: dict[str, tuple[str, str]] = {}
        self.writes = 0

    @classmethod
    async def attach(cls, server: Server) -> AddressSpace:
        """Find the Loggers folder the server built and take it over."""
        idx = await server.get_namespace_index(contract.NAMESPACE_URI)
        receiver = await server.nodes.objects.get_child(
            ua.QualifiedName(contract.RECEIVER_OBJECT, idx)
        )
        loggers = await receiver.get_child(ua.QualifiedName(contract.LOGGERS_FOLDER, idx))
        return cls(server, idx, loggers)

    def _id(self, path: str) -> ua.NodeId:
        return ua.NodeId(path, self.idx)  # type: ignore[arg-type]

    def _q(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.idx)

    async def _write(self, path: str, value: Any, vtype: ua.VariantType) -> None:
        await self.server.write_attribute_value(
            self._id(path), ua.DataValue(ua.Variant(value, vtype))
        )
        self.writes += 1

    # -- node creation (idempotent, under the lock) ----------------------------------------
    async def _logger_node(self, uri: str) -> str:
        base = f"{contract.LOGGERS_FOLDER}/{uri}"
        if base in self._known:
            return base
        node = await self.loggers.add_object(self._id(base), self._q(uri))
        for name, vtype in LOGGER_PROPERTIES:
            initial = uri if name == "ApplicationUri" else _empty(vtype)
            await node.add_property(self._id(f"{base}/{name}"), self._q(name), initial, vtype)
        await node.add_folder(self._id(f"{base}/{contract.METERS_FOLDER}"), self._q("Meters"))
        self._known.add(base)
        return base

    async def _value_node(self, uri: str, meter: str, record: str) -> str:
        base = await self._logger_node(uri)
        meters = f"{base}/{contract.METERS_FOLDER}"
        meter_path = f"{meters}/{meter}"
        if meter_path not in self._known:
            folder = self.server.get_node(self._id(meters))
            await folder.add_object(self._id(meter_path), self._q(meter))
            self._known.add(meter_path)
        path = f"{meter_path}/{record}"
        if path not in self._known:
            parent = self.server.get_node(self._id(meter_path))
            var = await parent.add_variable(
                self._id(path), self._q(record), "", ua.VariantType.String
            )
            for name, vtype in VALUE_PROPERTIES:
                await var.add_property(
                    self._id(f"{path}/{name}"), self._q(name), _empty(vtype), vtype
                )
            self._known.add(path)
        return path

    # -- updates -------------------------------------------------------------------------
    async def update_device(self, device: Device) -> None:
        """The logger's properties from what the storage knows about it."""
        async with self._lock:
            base = await self._logger_node(device.application_uri)
            status = device.status
            values: dict[str, Any] = {
                "Serial": device.serial or "",
                "Location": device.location or "",
                "FirmwareVersion": device.firmware or "",
                "CertificateThumbprint": device.thumbprint or "",
                "CertificateNotAfter": _time(device.cert_not_after),
                "LastContact": _time(device.last_contact),
            }
            if status is not None:
                values.update(
                    BufferDepth=status.buffer_depth,
                    OldestAgeSeconds=float(status.oldest_age_s),
                    Losses=status.losses,
                    ConfigVersion=status.config_version,
                )
            types = dict(LOGGER_PROPERTIES)
            for name, value in values.items():
                await self._write(f"{base}/{name}", value, types[name])

    def submit(self, device_uri: str, columns: Mapping[str, Sequence[Any]]) -> int:
        """Queue the newest reading of each (meter, record) of a stored batch; returns the
        number of series in it. Cheap (one pass over the batch): the push answers without
        waiting for the address space, and while a backlog drains, batches that arrive
        faster than the view is written coalesce into their newest values."""
        meters, records = columns["Meter"], columns["Record"]
        newest: dict[tuple[Any, Any], int] = {}
        for i, key in enumerate(zip(meters, records, strict=True)):
            newest[key] = i
        values, units, quantities = columns["Value"], columns["Unit"], columns["Quantity"]
        source, logger_time = columns["SourceTime"], columns["LoggerTime"]
        seqs = columns["Sequence"]
        pending = self._pending
        for (meter, record), i in newest.items():
            pending[(device_uri, str(meter), str(record))] = (
                str(values[i]),
                str(units[i]),
                str(quantities[i]),
                source[i],
                logger_time[i],
                int(seqs[i]),
            )
        self._dirty.set()
        return len(newest)

    async def update_values(self, device_uri: str, columns: Mapping[str, Sequence[Any]]) -> int:
        """:meth:`submit` and wait until the view shows it (tests, tools)."""
        n = self.submit(device_uri, columns)
        await self.flush()
        return n

    async def flush(self) -> None:
        """Write everything queued now (on the caller's task)."""
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending, {}
                for count, ((uri, meter, record), row) in enumerate(batch.items(), 1):
                    path = await self._value_node(uri, meter, record)
                    await self._set_value(path, *row)
                    if count % 200 == 0:
                        await asyncio.sleep(0)  # let pushes in between

    async def run(self, interval_s: float = VIEW_INTERVAL_S) -> None:
        """The background writer, until cancelled: applies queued values at most once per
        ``interval_s`` (a view a second old is current enough for 15-minute readings), and
        never more often than keeps it under :data:`VIEW_CPU_SHARE` of the receiver's time:
        while a backlog drains, batches coalesce in the queue and storing them wins."""
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            started = loop.time()
            try:
                await self.flush()
            except Exception:  # the readings are stored; the view catches up with the next
                _LOGGER.exception("address space update failed")
            spent = loop.time() - started
            await asyncio.sleep(max(interval_s, spent * (1 / VIEW_CPU_SHARE - 1)))

    async def _set_value(
        self,
        path: str,
        value: str,
        unit: str,
        quantity: str,
        meter_time: dt.datetime | None,
        logger_time: dt.datetime | None,
        sequence: int,
    ) -> None:
        stamp = _time(logger_time)
        data = ua.DataValue(
            ua.Variant(value, ua.VariantType.String),
            SourceTimestamp=stamp,  # type: ignore[arg-type]
            ServerTimestamp=dt.datetime.now(dt.UTC),  # type: ignore[arg-type]
        )
        await self.server.write_attribute_value(self._id(path), data)
        if self._units.get(path) != (unit, quantity):
            await self._write(f"{path}/Unit", unit, ua.VariantType.String)
            await self._write(f"{path}/Quantity", quantity, ua.VariantType.String)
            self._units[path] = (unit, quantity)
        await self._write(f"{path}/MeterTime", _time(meter_time), ua.VariantType.DateTime)
        await self._write(f"{path}/ValueDouble", _double(value), ua.VariantType.Double)
        await self._write(f"{path}/Sequence", sequence, ua.VariantType.UInt64)

    async def load(self, devices: Sequence[Device], latest: Sequence[LatestValue]) -> None:
        """Rebuild from the storage (at start): every known logger and its latest values."""
        for device in devices:
            await self.update_device(device)
        for v in latest:
            self._pending[(v.device_uri, v.meter, v.record)] = (
                v.value,
                v.unit,
                v.quantity,
                v.source_time,
                v.logger_time,
                v.sequence,
            )
        await self.flush()
        _LOGGER.info("address space: %d loggers, %d latest values", len(devices), len(latest))


__all__ = ["AddressSpace", "LOGGER_PROPERTIES", "VALUE_PROPERTIES"]

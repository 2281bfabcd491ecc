"""The receiver's data path: the loggers' methods and the address space behind them.

The server (:mod:`receiver.server`) authenticates the secure channel, decodes the call's
Variants against the contract (:func:`receiver.server.decode_arguments`), checks the role, and
hands each logger method to a handler here together with the :class:`~receiver.security.Principal`
of the channel certificate - the identity is never an argument. Bad requests raise
:class:`BadRequest` with an OPC UA status code; the server audits them and
answers with that code. Nothing is changed by a bad request.

``PushReadings`` status codes:

=============================  ==========================================================
``BadRequestTooLarge``         more than :data:`logger.contract.MAX_BATCH` readings
``BadSequenceNumberInvalid``   sequence numbers not strictly increasing within the batch
``BadInvalidArgument``         columns of unequal length, empty batch, strings over their
                               bound, an empty meter or record, a missing epoch; or a resent
                               sequence number whose content differs from what is stored
                               (audited with both contents' differences)
``BadTypeMismatch``            a column of the wrong built-in type (from the server)
``BadResourceUnavailable``     the storage cannot commit now (retry; nothing acknowledged)
=============================  ==========================================================

A good batch is committed whole (one transaction) before the answer leaves; then the latest
values in the address space are updated from the batch (:mod:`receiver.addressspace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from asyncua import ua

from logger import contract
from receiver.addressspace import AddressSpace
from receiver.storage import (
    BadBatch,
    MeterHealth,
    SequenceConflict,
    StatusReport,
    Storage,
)

if TYPE_CHECKING:
    from receiver.security import Principal
    from receiver.server import MethodHandler, ReceiverServer

_LOGGER = logging.getLogger(__name__)

DEVICE_REFRESH_S = 10.0
"""A logger's properties (LastContact...) are refreshed after a push at most this often."""


class BadRequest(Exception):
    """A method call refused with an OPC UA status code; nothing was changed by it."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _null_time(value: Any) -> dt.datetime | None:
    """OPC UA's null DateTime (1601-01-01 or earlier) is "none"; naive times are UTC."""
    if not isinstance(value, dt.datetime) or value.year <= 1601:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def push_status(message: str) -> int:
    """The status code for a batch :func:`logger.contract.check_push_columns` refused."""
    if "exceeds" in message:
        return int(ua.StatusCodes.BadRequestTooLarge)
    if "does not increase" in message:
        return int(ua.StatusCodes.BadSequenceNumberInvalid)
    return int(ua.StatusCodes.BadInvalidArgument)


class DataPath:
    """The logger methods (``handlers()``) and the address space they keep current."""

    METHODS = frozenset(
        {
            contract.PUSH_READINGS,
            contract.GET_CONFIGURATION,
            contract.REPORT_INSTALLATION,
            contract.REPORT_STATUS,
        }
    )
    """The contract methods this class implements (the server answers ``GetTrustList``)."""

    def __init__(self, receiver: ReceiverServer) -> None:
        self.receiver = receiver
        self.address_space: AddressSpace | None = None
        self._device_refreshed: dict[str, float] = {}
        self._config_problems: dict[str, str] = {}
        self._writer: asyncio.Task[None] | None = None

    @property
    def storage(self) -> Storage:
        return self.receiver.storage

    def handlers(self) -> dict[str, MethodHandler]:
        return {
            contract.PUSH_READINGS: self.push_readings,
            contract.GET_CONFIGURATION: self.get_configuration,
            contract.REPORT_INSTALLATION: self.report_installation,
            contract.REPORT_STATUS: self.report_status,
        }

    async def start(self) -> None:
        """Take over the server's Loggers folder and fill it from the storage."""
        server = self.receiver.server
        assert server is not None, "start the server first"
        space = await AddressSpace.attach(server)
        await space.load(await self.storage.devices(), await self.storage.latest_values())
        self.address_space = space
        self._writer = asyncio.get_running_loop().create_task(space.run())

    async def stop(self) -> None:
        """Stop the background writer (before the server stops)."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None

    async def _refresh_device(self, uri: str, force: bool = False) -> None:
        if self.address_space is None:
            return
        now = time.monotonic()
        if not force and now - self._device_refreshed.get(uri, -DEVICE_REFRESH_S) < (
            DEVICE_REFRESH_S
        ):
            return
        self._device_refreshed[uri] = now
        device = await self.storage.device(uri)
        if device is not None:
            await self.address_space.update_device(device)

    # -- PushReadings ----------------------------------------------------------------------
    async def push_readings(self, who: Principal, args: dict[str, Any]) -> list[Any]:
        epoch = args["Epoch"]
        if not isinstance(epoch, str) or not epoch or len(epoch) > contract.MAX_STRING:
            raise BadRequest(
                ua.StatusCodes.BadInvalidArgument,
                f"Epoch must be a non-empty string of at most {contract.MAX_STRING} chars",
            )
        columns = {a.name: args[a.name] for a in contract.PUSH_READINGS_INPUT if a.array}
        columns["SourceTime"] = [_null_time(t) for t in columns["SourceTime"]]
        columns["LoggerTime"] = [_null_time(t) for t in columns["LoggerTime"]]
        try:
            n = contract.check_push_columns(columns)
        except ValueError as exc:
            raise BadRequest(push_status(str(exc)), str(exc)) from exc
        if any(t is None for t in columns["LoggerTime"]):
            raise BadRequest(ua.StatusCodes.BadInvalidArgument, "LoggerTime must not be null")
        try:
            result = await self.storage.push(who.application_uri, who.thumbprint, epoch, columns)
        except BadBatch as exc:
            status = (
                ua.StatusCodes.BadRequestTooLarge
                if exc.too_large
                else ua.StatusCodes.BadInvalidArgument
            )
            raise BadRequest(status, str(exc)) from exc
        except SequenceConflict as exc:
            _LOGGER.error("%s: batch refused: %s", who.application_uri, exc)
            raise BadRequest(ua.StatusCodes.BadInvalidArgument, str(exc)) from exc
        if self.address_space is not None and result.inserted:
            try:
                self.address_space.submit(who.application_uri, columns)
                await self._refresh_device(who.application_uri)
            except Exception:  # the readings are stored; the view catches up at the next push
                _LOGGER.exception("address space update after a push of %d readings", n)
        return [result.acknowledged_up_to, result.inserted, result.duplicates]

    # -- GetConfiguration ------------------------------------------------------------------
    async def get_configuration(self, who: Principal, args: dict[str, Any]) -> list[Any]:
        current = await self.storage.get_config(who.application_uri)
        if current is None:
            return [0, ""]
        running = int(args["RunningVersion"] or 0)
        return [current.version, "" if running == current.version else current.document]

    # -- ReportInstallation ----------------------------------------------------------------
    async def report_installation(self, who: Principal, args: dict[str, Any]) -> list[Any]:
        for name in ("Serial", "Location", "FirmwareVersion"):
            text = args[name]
            if not isinstance(text, str) or len(text) > contract.MAX_VALUE_STRING:
                raise BadRequest(
                    ua.StatusCodes.BadInvalidArgument, f"{name} is not a bounded string"
                )
        if who.serial and args["Serial"] != who.serial:
            raise BadRequest(
                ua.StatusCodes.BadInvalidArgument,
                f"serial {args['Serial']!r} does not match the certificate's {who.serial!r}",
            )
        changed = await self.storage.report_installation(
            who.application_uri,
            who.thumbprint,
            args["Serial"],
            args["Location"],
            args["FirmwareVersion"],
        )
        if changed:
            _LOGGER.info(
                "%s reports installation at %r (serial %s, firmware %s)",
                who.application_uri,
                args["Location"],
                args["Serial"],
                args["FirmwareVersion"],
            )
        await self._refresh_device(who.application_uri, force=True)
        return []

    # -- ReportStatus ----------------------------------------------------------------------
    async def report_status(self, who: Principal, args: dict[str, Any]) -> list[Any]:
        ids = args["MeterIds"]
        names = ("MeterOk", "MeterFailures", "MeterLastSuccess", "MeterLastError")
        columns = [args[n] for n in names]
        if any(len(c) != len(ids) for c in columns):
            raise BadRequest(ua.StatusCodes.BadInvalidArgument, "meter arrays of unequal length")
        if len(ids) > contract.MAX_BATCH:
            raise BadRequest(ua.StatusCodes.BadRequestTooLarge, f"more than {contract.MAX_BATCH}")
        problem = args.get("ConfigProblem") or ""
        if not isinstance(problem, str) or len(problem) > contract.MAX_VALUE_STRING:
            raise BadRequest(ua.StatusCodes.BadInvalidArgument, "ConfigProblem is too long")
        try:
            meters = tuple(
                MeterHealth(
                    str(m)[: contract.MAX_STRING],
                    bool(ok),
                    int(f),
                    _null_time(t),
                    str(e or "")[: contract.MAX_VALUE_STRING],
                )
                for m, ok, f, t, e in zip(ids, *columns, strict=True)
            )
            status = StatusReport(
                buffer_depth=int(args["BufferDepth"]),
                oldest_age_s=float(args["OldestAgeSeconds"]),
                losses=int(args["Losses"]),
                cert_days_left=int(args["CertificateDaysLeft"]),
                config_version=int(args["ConfigVersion"]),
                meters=meters,
            )
        except (TypeError, ValueError) as exc:
            raise BadRequest(ua.StatusCodes.BadInvalidArgument, f"ReportStatus: {exc}") from exc
        await self.storage.report_status(who.application_uri, who.thumbprint, status)
        if problem and self._config_problems.get(who.application_uri) != problem:
            await self.storage.audit(
                "config.refused",
                device_uri=who.application_uri,
                thumbprint=who.thumbprint,
                detail=problem[:2000],
            )
            _LOGGER.warning("%s refused its configuration: %s", who.application_uri, problem)
        self._config_problems[who.application_uri] = problem
        await self._refresh_device(who.application_uri, force=True)
        return []


def install_datapath(receiver: ReceiverServer) -> DataPath:
    """Plug the data path into a :class:`ReceiverServer` before ``start()``; call
    ``await datapath.start()`` after it to build the Loggers tree from the storage, and
    ``await datapath.stop()`` before stopping the server."""
    datapath = DataPath(receiver)
    receiver.set_methods(datapath.handlers())
    return datapath


__all__ = ["BadRequest", "DataPath", "install_datapath", "push_status"]

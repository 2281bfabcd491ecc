"""The daemon's uplink service: pusher, cloud configuration and reports around one connection.

:mod:`logger.app` imports this module when the configuration has an ``[uplink]`` section and
runs :func:`build`'s service in its task group. The service owns an
:class:`~logger.uplink.connection.UplinkThread` (asyncua and the TPM on their own thread and
loop) and, on the daemon's loop, one round after another:

1. ``ReportInstallation`` once per start (and again when the location changes on a reload);
2. ``GetConfiguration`` every ``config_poll_interval`` (first right after connecting);
3. drain the buffer (:class:`~logger.uplink.pusher.Pusher`);
4. ``ReportStatus`` every ``status_interval``;

then waits ``push_interval`` (or until the daemon stops). Store calls run on the daemon's store
thread. Errors of the uplink (not connected, stale trust, refused) are logged once per change
and retried at the next round: the buffer keeps everything meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from typing import TYPE_CHECKING, Any

from logger import contract
from logger.config import CloudLayerStore, load
from logger.config.model import Config
from logger.store.api import StoreError
from logger.uplink.cloudconfig import CloudConfigFollower
from logger.uplink.errors import LocalSetupError, UplinkError
from logger.uplink.pusher import AcknowledgementMismatch, Pusher, ReceiverCaller
from logger.uplink.reports import (
    InstallationReport,
    cert_days_left,
    installation_report,
    status_arguments,
)

if TYPE_CHECKING:
    from logger.app import DaemonContext
    from logger.uplink.connection import UplinkThread

_LOGGER = logging.getLogger(__name__)


class UplinkService:
    """See the module doc. ``caller`` replaces the uplink thread (tests)."""

    name = "uplink"

    def __init__(self, context: DaemonContext, caller: ReceiverCaller | None = None) -> None:
        config = context.config
        if config.uplink is None:
            raise LocalSetupError("the configuration has no [uplink] section")
        self.context = context
        self.uplink_config = config.uplink
        self._thread: UplinkThread | None = None
        self._caller = caller
        self.pusher: Pusher | None = None
        self.follower: CloudConfigFollower | None = None
        self.reported: InstallationReport | None = None
        self._last_problem: str | None = None
        self._next_config = 0.0
        self._next_status = 0.0
        self._wake = asyncio.Event()
        self.rounds = 0

    # -- wiring -------------------------------------------------------------------------------
    def _start_thread(self) -> ReceiverCaller:
        from logger.uplink.connection import UplinkSettings, UplinkThread
        from logger.uplink.pusher import UplinkThreadCaller

        up = self.uplink_config
        settings = UplinkSettings(
            endpoint=up.endpoint,
            state_dir=self.context.config.paths.state_dir,
            tcti=up.tcti,
            server_uri=up.server_application_uri,
            connect_timeout_s=up.connect_timeout_s,
        )
        self._thread = UplinkThread(settings)
        self._thread.start()
        return UplinkThreadCaller(self._thread)

    def _apply(self, merged: Config) -> None:
        self.context.poller.reconfigure(merged)
        self.wake()

    def wake(self) -> None:
        """Start the next round now (a new cloud layer, a reload, a test)."""
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------
    async def run(self, context: DaemonContext) -> None:
        caller: ReceiverCaller
        if self._caller is not None:
            caller = self._caller
        else:
            caller = await asyncio.to_thread(self._start_thread)
        config = context.config
        up = self.uplink_config
        self.pusher = Pusher(
            context.store,
            context.in_store_thread,
            caller,
            min(up.batch_size, contract.MAX_BATCH),
        )
        self.follower = CloudConfigFollower(
            caller,
            CloudLayerStore(config.paths.cloud_layer),
            lambda: load(context.config_path),
            lambda: context.config,
            self._apply,
        )
        context.reload_hooks.append(lambda _config: self.wake())
        try:
            while not context.stopping.is_set():
                await self.round(caller)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(_first(context.stopping, self._wake), up.push_interval_s)
        finally:
            if self._thread is not None:
                await asyncio.to_thread(self._thread.stop)

    async def round(self, caller: ReceiverCaller) -> None:
        """One round (see the module doc); errors are logged once per change, never raised."""
        assert self.pusher is not None and self.follower is not None
        self.rounds += 1
        up = self.uplink_config
        try:
            await self._report_installation(caller)
            now = time.monotonic()
            if now >= self._next_config:
                await self.follower.poll()
                self._next_config = now + up.config_poll_interval_s
            await self.pusher.drain()
            if time.monotonic() >= self._next_status:
                await self._report_status(caller)
                self._next_status = time.monotonic() + up.status_interval_s
        except (UplinkError, AcknowledgementMismatch, StoreError) as exc:
            self._problem(exc)
            return
        except Exception as exc:  # a receiver answering outside the contract must not stop
            # the daemon: the readings stay buffered, the next round tries again.
            if str(exc) != self._last_problem:
                _LOGGER.exception("uplink round failed unexpectedly")
            self._problem(exc)
            return
        self._problem(None)

    def _problem(self, exc: BaseException | None) -> None:
        text = None if exc is None else str(exc)
        kind = None
        if exc is not None:
            kind = getattr(exc, "kind", None) or (
                "acknowledgement" if isinstance(exc, AcknowledgementMismatch) else "error"
            )
        if self.pusher is not None:
            self.pusher.stats.last_error = text
            self.pusher.stats.last_error_kind = kind
            self.pusher.stats.blocked = text if isinstance(exc, AcknowledgementMismatch) else None
        if text == self._last_problem:
            return
        self._last_problem = text
        if text is None:
            _LOGGER.info("uplink data path working")
        else:
            _LOGGER.warning("uplink data path paused (%s): %s; readings stay buffered", kind, text)

    async def _report_installation(self, caller: ReceiverCaller) -> None:
        from logger.tpm.state import DeviceState

        state_dir = self.context.config.paths.state_dir
        serial = await asyncio.to_thread(lambda: DeviceState.open(state_dir).identity().serial)
        report = installation_report(serial, self.context.config.installation)
        if report == self.reported:
            return
        await caller.call(contract.REPORT_INSTALLATION, *report.arguments())
        self.reported = report
        _LOGGER.info("installation reported: %s at %r", report.serial, report.location)

    async def _report_status(self, caller: ReceiverCaller) -> None:
        from logger.tpm.state import DeviceState

        assert self.follower is not None
        context = self.context
        stats = await context.in_store_thread(context.store.stats)
        state_dir = context.config.paths.state_dir
        not_after = await asyncio.to_thread(
            lambda: DeviceState.open(state_dir).certificate().not_valid_after_utc
        )
        args = status_arguments(
            stats,
            context.poller.health_snapshot(),
            cert_days_left(not_after, dt.datetime.now(dt.UTC)),
            self.follower.running_version,
            self.follower.problem,
        )
        await caller.call(contract.REPORT_STATUS, *args)

    def status(self) -> dict[str, Any] | None:
        doc: dict[str, Any] = {
            "rounds": self.rounds,
            "pusher": self.pusher.stats.as_dict() if self.pusher else None,
            "config": (
                {
                    "running": self.follower.running_version,
                    "refused": self.follower.refused_version or None,
                    "problem": self.follower.problem or None,
                }
                if self.follower
                else None
            ),
            "installation_reported": self.reported is not None,
        }
        if self._thread is not None:
            # Read the supervisor's plain attributes directly: this runs on the daemon's store
            # thread while it writes the status file, and must never wait for the uplink's
            # loop (a TPM operation may hold it for a second).
            with contextlib.suppress(AssertionError):
                doc["connection"] = self._thread.uplink.status()
        return doc


async def _first(*events: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


def build(context: DaemonContext) -> UplinkService:
    """The hook :func:`logger.app.optional_services` calls."""
    return UplinkService(context)


__all__ = ["UplinkService", "build"]

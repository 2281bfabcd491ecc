"""The secure connection to the receiver: validated, TPM-keyed, kept open, re-established.

Three layers:

* :func:`connect` - one attempt: GetEndpoints over a None channel (no key operation), choose
  the strongest SignAndEncrypt endpoint we accept, validate the server certificate fully
  (:mod:`logger.uplink.validation`) *before* the TPM signs anything, then OpenSecureChannel,
  CreateSession (the server must present the same certificate) and ActivateSession with an
  anonymous token: the application certificate is the credential. Returns a
  :class:`Connection` with what was negotiated and how many key operations it took.
* :class:`Uplink` - the supervisor on an event loop: reconnects with exponential backoff and
  full jitter, logs once per state change (Home Assistant's rule), refreshes trust through
  GetTrustList before the CRLs' nextUpdate, refuses data work while trust is stale.
* :class:`UplinkThread` - the uplink on its own thread and loop, so a TPM operation that takes
  hundreds of milliseconds never delays serial polling; :meth:`UplinkThread.submit` is the
  thread-safe door for the daemon's data path (returns a ``concurrent.futures.Future``).

asyncua renews the secure-channel token at 75 % of its lifetime (OPC UA Part 4, 5.5.2.1);
each renewal costs one sign and one decrypt in the TPM, so the default lifetime is one hour.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from logger import contract
from logger.tpm import DeviceKey, DeviceKeyError, DeviceState, StateDirError, open_device_key
from logger.uplink import _compat
from logger.uplink.errors import (
    LocalSetupError,
    NetworkDown,
    ProtocolError,
    ServerUntrusted,
    TrustStale,
    UplinkError,
    UplinkTimeout,
)
from logger.uplink.trust import TrustUpdate, apply_trust_list
from logger.uplink.validation import (
    TrustStore,
    ValidationError,
    split_der_chain,
    thumbprint,
    utcnow,
    validate,
)

_LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

CLOCK_CHECK_S = 60.0
CLOCK_JUMP_S = 300.0


@dataclass(frozen=True)
class UplinkSettings:
    """Where to connect and with what. ``server_uri`` pins the receiver's ApplicationUri."""

    endpoint: str
    state_dir: Path
    tcti: str | None = None
    server_uri: str | None = None
    secret_file: Path | None = None
    connect_timeout_s: float = 30.0
    request_timeout_s: float = 10.0
    channel_lifetime_ms: int = 3_600_000
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0
    permanent_backoff_s: float = 60.0  # first delay after a refusal (retrying soon is futile)
    trust_refresh_margin: float = 0.5  # refresh when this fraction of a CRL's life is left
    stable_after_s: float = 60.0  # a connection that held this long resets the backoff


@dataclass(frozen=True)
class ServerInfo:
    policy: str
    endpoint_url: str
    application_uri: str
    subject: str
    thumbprint: str
    not_before: dt.datetime
    not_after: dt.datetime
    issuer: str

    def as_dict(self) -> dict[str, Any]:
        doc = dataclasses.asdict(self)
        doc["not_before"] = self.not_before.isoformat()
        doc["not_after"] = self.not_after.isoformat()
        return doc


class Connection:
    """One established session; :meth:`call` invokes a receiver method on it."""

    def __init__(
        self,
        client: _compat.SecureClient,
        info: ServerInfo,
        key_operations: int,
        seconds: float,
        recovery: bool,
        own_cert_not_after: dt.datetime | None = None,
    ) -> None:
        self._client = client
        self.own_cert_not_after = own_cert_not_after
        self.info = info
        self.key_operations = key_operations
        self.seconds = seconds
        self.recovery = recovery  # opened with stale CRLs: only GetTrustList is allowed

    async def call(self, method: str, *args: Any) -> Any:
        """Call a contract method with plain Python values (typed per the contract)."""
        if self.recovery and method != contract.GET_TRUST_LIST:
            raise TrustStale(
                f"refusing {method}: the logger's CRLs are stale; only the trust list is fetched"
            )
        if method not in contract.METHODS:
            raise ValueError(f"{method} is not a method of the receiver contract")
        types = tuple((a.type, a.array) for a in contract.METHODS[method][0])
        return await self._client.call(
            contract.NAMESPACE_URI, contract.RECEIVER_OBJECT, method, args, types
        )

    async def get_trust_list(self) -> tuple[list[bytes], list[bytes]]:
        result = await self.call(contract.GET_TRUST_LIST)
        if not isinstance(result, list) or len(result) != 2:
            raise UplinkError("GetTrustList answered with an unexpected shape")
        certs, crls = result
        return [bytes(c) for c in certs or []], [bytes(c) for c in crls or []]

    def is_connected(self) -> bool:
        return self._client.is_connected()

    @property
    def client(self) -> _compat.SecureClient:
        return self._client

    async def close(self) -> None:
        await self._client.disconnect()


def _load_identity(state_dir: Path) -> tuple[DeviceState, x509.Certificate, list[x509.Certificate]]:
    try:
        state = DeviceState.open(state_dir)
        identity = state.identity()
        cert = state.certificate()
        chain = state.chain()
    except StateDirError as exc:
        raise LocalSetupError(str(exc)) from exc
    del identity
    return state, cert, chain


def validate_server(
    endpoint: _compat.Endpoint,
    settings: UplinkSettings,
    store: TrustStore,
    now: dt.datetime,
    allow_stale_crl: bool = False,
) -> x509.Certificate:
    """The endpoint's certificate (chain allowed), validated; ServerUntrusted otherwise."""
    try:
        leaf, *presented = split_der_chain(endpoint.certificate)
        validate(
            leaf,
            store,
            purpose="server",
            now=now,
            expected_uri=settings.server_uri or endpoint.server_uri or None,
            hostname=_compat.host_of(settings.endpoint),
            presented=presented,
            allow_stale_crl=allow_stale_crl,
        )
    except ValidationError as exc:
        raise ServerUntrusted(f"server certificate refused: {exc}", exc.code) from exc
    return leaf


async def connect(
    settings: UplinkSettings,
    key: DeviceKey,
    on_lost: Callable[[BaseException], Awaitable[None]] | None = None,
    now: dt.datetime | None = None,
) -> Connection:
    """One connection attempt (see the module doc). Raises :class:`UplinkError`."""
    started = time.perf_counter()
    now = now or utcnow()
    try:
        _compat.host_of(settings.endpoint)
    except ValueError as exc:
        raise LocalSetupError(str(exc)) from exc
    state, own_cert, own_chain = _load_identity(settings.state_dir)
    try:
        store = TrustStore.load(settings.state_dir)
    except ValidationError as exc:
        raise LocalSetupError(f"the logger's trust store is unusable: {exc}") from exc
    recovery = False
    try:
        store.check_fresh(now)
    except ValidationError as exc:
        if exc.code != "crl_stale":
            raise TrustStale(f"the logger's trust store is unusable: {exc}") from exc
        recovery = True
        _LOGGER.debug("%s; connecting only to fetch fresh CRLs, no data is sent", exc)
    endpoints = await _compat.get_endpoints(settings.endpoint, settings.request_timeout_s)
    candidates = _compat.choose_endpoints(endpoints)
    chosen = candidates[0]
    server_cert = validate_server(chosen, settings, store, now, allow_stale_crl=recovery)

    def _revalidate(cert: x509.Certificate) -> None:
        validate_server(chosen, settings, store, utcnow(), allow_stale_crl=recovery)

    ops_before = key.operations
    client = _compat.SecureClient(
        settings.endpoint,
        chosen,
        server_cert,
        own_cert,
        own_chain,
        key.private_key,
        state.identity().application_uri,
        settings.request_timeout_s,
        settings.channel_lifetime_ms,
        _revalidate,
        on_lost,
    )
    try:
        await asyncio.wait_for(client.connect(), settings.connect_timeout_s)
    except TimeoutError as exc:
        await client.disconnect()
        raise UplinkTimeout(
            f"no session within {settings.connect_timeout_s:.0f} s (the server may have "
            "dropped our channel without saying why)"
        ) from exc
    except BaseException:
        await client.disconnect()
        raise
    info = ServerInfo(
        policy=chosen.policy_name,
        endpoint_url=settings.endpoint,
        application_uri=settings.server_uri or chosen.server_uri,
        subject=server_cert.subject.rfc4514_string(),
        thumbprint=thumbprint(server_cert),
        not_before=server_cert.not_valid_before_utc,
        not_after=server_cert.not_valid_after_utc,
        issuer=server_cert.issuer.rfc4514_string(),
    )
    return Connection(
        client,
        info,
        key.operations - ops_before,
        time.perf_counter() - started,
        recovery,
        own_cert.not_valid_after_utc,
    )


def backoff_delay(attempt: int, initial: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter (AWS architecture blog): U(0, min(max, b*2^n)).

    Full jitter spreads a fleet's reconnects after a receiver restart instead of synchronising
    them; the lower bound of ``initial / 2`` keeps one logger from spinning.
    """
    ceiling = min(maximum, initial * (2 ** min(attempt, 30)))
    return max(initial / 2, rng.uniform(0, ceiling))


class Uplink:
    """The connection supervisor on one event loop (see the module doc)."""

    def __init__(
        self,
        settings: UplinkSettings,
        key_opener: Callable[[], DeviceKey] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._key_opener = key_opener or (
            lambda: open_device_key(settings.state_dir, settings.tcti, settings.secret_file)
        )
        self._rng = rng or random.Random()
        self._key: DeviceKey | None = None
        self._connection: Connection | None = None
        self._lost = asyncio.Event()
        self._stop = asyncio.Event()
        self._connected = asyncio.Event()
        self.state = "starting"
        self.last_error: UplinkError | None = None
        self.attempts = 0
        self.connections = 0
        self.key_operations_per_connection: list[int] = []
        self.last_trust_update: TrustUpdate | None = None
        self.thread_ident: int | None = None
        self.own_cert_days_left: int | None = None
        self.clock_jumps = 0
        self._trust_valid_until: dt.datetime | None = None
        self._warned_threshold: int | None = None

    # -- observation ----------------------------------------------------------------------
    @property
    def connection(self) -> Connection | None:
        return self._connection

    def status(self) -> dict[str, Any]:
        connection = self._connection  # one read: the loop thread may clear it meanwhile
        info = connection.info.as_dict() if connection is not None else None
        error = self.last_error
        return {
            "state": self.state,
            "error": str(error) if error else None,
            "error_kind": error.kind if error else None,
            "attempts": self.attempts,
            "connections": self.connections,
            "key_operations_per_connection": list(self.key_operations_per_connection[-10:]),
            "certificate_days_left": self.own_cert_days_left,
            "server": info,
        }

    def _set_state(self, state: str, error: UplinkError | None = None) -> None:
        """Log once per change of condition (connected, a kind of error, stopped), never per
        retry: while an error persists, "connecting" again is not news."""
        key_old = self.last_error.kind if self.last_error else self.state
        key_new = error.kind if error else state
        self.state = state
        self.last_error = error
        if key_old == key_new:
            return
        if error is not None:
            hint = " (will retry)" if not error.permanent else " (retrying slowly)"
            _LOGGER.error("uplink %s: %s%s", error.kind, error, hint)
        else:
            _LOGGER.info("uplink %s", state)

    # -- work -----------------------------------------------------------------------------
    async def wait_connected(self, timeout: float | None = None) -> Connection:
        await asyncio.wait_for(self._connected.wait(), timeout)
        assert self._connection is not None
        return self._connection

    async def run_on_connection(self, fn: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``fn`` with the live connection; fail fast when there is none or trust is stale."""
        connection = self._connection
        if connection is None or not self._connected.is_set():
            raise self.last_error or UplinkError("the uplink is not connected")
        stale = self._trust_valid_until is not None and utcnow() > self._trust_valid_until
        if connection.recovery or stale:
            raise TrustStale(
                "the logger's CRLs are stale: it keeps buffering and sends nothing until the "
                "receiver's trust list refreshes them"
            )
        return await fn(connection)

    def stop(self) -> None:
        self._stop.set()
        self._lost.set()

    async def _on_lost(self, exc: BaseException) -> None:
        _LOGGER.debug("connection lost: %r", exc)
        self._lost.set()

    async def refresh_trust(self, connection: Connection) -> TrustUpdate:
        certs, crls = await connection.get_trust_list()
        try:
            update = await asyncio.to_thread(apply_trust_list, self.settings.state_dir, certs, crls)
        except ValidationError as exc:
            raise TrustStale(f"the trust list could not be applied: {exc}") from exc
        except (StateDirError, OSError) as exc:
            raise LocalSetupError(f"cannot store the trust list: {exc}") from exc
        self.last_trust_update = update
        return update

    def _refresh_due(self, now: dt.datetime) -> dt.datetime | None:
        """When the next trust refresh is due: at ``margin`` of the soonest CRL's life."""
        try:
            store = TrustStore.load(self.settings.state_dir)
        except ValidationError:
            return now
        due: dt.datetime | None = None
        for crl in store.crls:
            nxt = crl.next_update_utc
            if nxt is None:
                continue
            life = nxt - crl.last_update_utc
            at = nxt - life * self.settings.trust_refresh_margin
            due = at if due is None or at < due else due
        return due

    async def _session(self, connection: Connection) -> None:
        """Hold the connection until it is lost, refreshing trust when due."""
        if connection.recovery:
            update = await self.refresh_trust(connection)
            if not update.new_crls:
                raise TrustStale(
                    "the logger's CRLs are stale and the receiver had no newer ones "
                    f"({'; '.join(update.rejected) or 'nothing acceptable'})"
                )
            _LOGGER.warning("fresh CRLs installed; reconnecting with full validation")
            return
        wall, mono = utcnow(), time.monotonic()
        while not self._stop.is_set():
            now = utcnow()
            self._check_clock(wall, mono, now)
            wall, mono = now, time.monotonic()
            due = self._refresh_due(now)
            if due is not None and due <= now:
                await self.refresh_trust(connection)
                due = self._refresh_due(utcnow())
                if due is not None and due <= utcnow():
                    # The receiver has nothing fresher: check again in an hour, not in a loop.
                    due = utcnow() + dt.timedelta(hours=1)
            self._note_trust_validity()
            wait = 3600.0 if due is None else max(1.0, (due - utcnow()).total_seconds())
            try:
                # Wake at least once a minute: clock jumps and stale trust are noticed soon.
                await asyncio.wait_for(self._lost.wait(), min(wait, CLOCK_CHECK_S))
            except TimeoutError:
                continue
            return

    def _check_clock(self, wall: dt.datetime, mono: float, now: dt.datetime) -> None:
        """Log a wall-clock jump (NTP stepping after boot, a dead RTC battery): validity
        checks and CRL freshness depend on it."""
        drift = (now - wall).total_seconds() - (time.monotonic() - mono)
        if abs(drift) >= CLOCK_JUMP_S:
            self.clock_jumps += 1
            _LOGGER.warning(
                "the wall clock jumped by %+.0f s; certificate validity and CRL freshness are "
                "re-evaluated against the new time",
                drift,
            )

    def _note_trust_validity(self) -> None:
        try:
            self._trust_valid_until = TrustStore.load(
                self.settings.state_dir
            ).earliest_next_update()
        except ValidationError:
            self._trust_valid_until = utcnow()

    async def run(self) -> None:
        """Connect, hold, reconnect - until :meth:`stop`."""
        self.thread_ident = threading.get_ident()
        failures = 0
        try:
            while not self._stop.is_set():
                self._lost.clear()
                self._set_state("connecting", self.last_error)
                self.attempts += 1
                try:
                    if self._key is None:
                        try:
                            self._key = await asyncio.to_thread(self._key_opener)
                        except DeviceKeyError as exc:
                            raise LocalSetupError(f"device key: {exc}") from exc
                        except StateDirError as exc:
                            raise LocalSetupError(str(exc)) from exc
                    connection = await connect(self.settings, self._key, self._on_lost)
                except UplinkError as exc:
                    failures += 1
                    self._set_state("disconnected", exc)
                    await self._sleep(self._delay(failures, exc))
                    continue
                except Exception as exc:  # a bug or an untranslated library error: log it
                    _LOGGER.exception("uplink connect failed unexpectedly")
                    failures += 1
                    error = ProtocolError(f"unexpected error: {type(exc).__name__}: {exc}")
                    self._set_state("disconnected", error)
                    await self._sleep(self._delay(failures, error))
                    continue
                connected_at = time.monotonic()
                self._note_trust_validity()
                self._warn_expiry(connection)
                self.connections += 1
                self.key_operations_per_connection.append(connection.key_operations)
                self._connection = connection
                if connection.recovery:
                    self._set_state("trust recovery (CRLs stale: fetching, sending nothing)")
                else:
                    self._connected.set()
                    self._set_state(f"connected ({connection.info.policy})", None)
                delay = 0.0
                try:
                    await self._session(connection)
                    if not self._stop.is_set() and not connection.recovery:
                        self._set_state("disconnected", None)
                        if time.monotonic() - connected_at >= self.settings.stable_after_s:
                            failures = 0  # it held: the next loss starts the backoff afresh
                        else:
                            # Dropped right after the handshake (a flapping link, a server
                            # that accepts and kills sessions): back off, or the TPM storms.
                            failures += 1
                            delay = self._delay(failures, NetworkDown("connection dropped"))
                except UplinkError as exc:
                    failures += 1
                    self._set_state("disconnected", exc)
                    delay = self._delay(failures, exc)
                except Exception as exc:  # the supervisor must not die
                    _LOGGER.exception("uplink session failed unexpectedly")
                    failures += 1
                    error = ProtocolError(f"unexpected error: {type(exc).__name__}: {exc}")
                    self._set_state("disconnected", error)
                    delay = self._delay(failures, error)
                finally:
                    self._connected.clear()
                    self._connection = None
                    await connection.close()
                if delay:
                    await self._sleep(delay)
        finally:
            if self._key is not None:
                await asyncio.to_thread(self._key.close)
                self._key = None
            self._set_state("stopped", None)

    def _warn_expiry(self, connection: Connection) -> None:
        """Our certificate's days to expiry, warned from six months before (SECURITY.md),
        once per threshold crossed (183, 30, 7 days) - not on every reconnect."""
        if connection.own_cert_not_after is None:
            return
        days = (connection.own_cert_not_after - utcnow()).days
        self.own_cert_days_left = days
        threshold = next((t for t in (7, 30, 183) if days <= t), None)
        if threshold is not None and threshold != self._warned_threshold:
            self._warned_threshold = threshold
            _LOGGER.warning(
                "the logger's certificate expires in %d days (%s): renew it "
                "(mbus-logger cert csr, then mbus-provision device sign / renew)",
                days,
                f"{connection.own_cert_not_after:%Y-%m-%d}",
            )

    def _delay(self, failures: int, exc: UplinkError) -> float:
        delay = backoff_delay(
            failures - 1, self.settings.backoff_initial_s, self.settings.backoff_max_s, self._rng
        )
        if exc.permanent:
            delay = max(delay, min(self.settings.permanent_backoff_s, self.settings.backoff_max_s))
        return delay

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass


class UplinkThread:
    """The uplink on its own thread and event loop, with a thread-safe door for work.

    ::

        uplink = UplinkThread(settings); uplink.start()
        future = uplink.submit(lambda conn: conn.call("GetConfiguration", 0))
        result = future.result(timeout=30)
        uplink.stop()
    """

    def __init__(self, settings: UplinkSettings, **kwargs: Any) -> None:
        self.settings = settings
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._uplink: Uplink | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the uplink thread is already started")
        self._thread = threading.Thread(target=self._main, name="uplink", daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._uplink = Uplink(self.settings, **self._kwargs)
            self._ready.set()
            loop.run_until_complete(self._uplink.run())
            self._done.set_result(None)
        except BaseException as exc:
            self._ready.set()
            self._done.set_exception(exc)
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    @property
    def uplink(self) -> Uplink:
        assert self._uplink is not None, "start() first"
        return self._uplink

    def submit(self, fn: Callable[[Connection], Awaitable[T]]) -> concurrent.futures.Future[T]:
        """Run ``fn(connection)`` on the uplink's loop; the result arrives in the Future.

        Fails (in the Future) with the current :class:`UplinkError` when not connected, and
        with :class:`TrustStale` while the CRLs are stale: data work is refused, the caller
        keeps buffering.
        """
        if self._loop is None or self._uplink is None:
            raise RuntimeError("the uplink thread is not running")
        return asyncio.run_coroutine_threadsafe(self._uplink.run_on_connection(fn), self._loop)

    def wait_connected(self, timeout: float) -> Connection:
        if self._loop is None or self._uplink is None:
            raise RuntimeError("the uplink thread is not running")
        future = asyncio.run_coroutine_threadsafe(self._uplink.wait_connected(timeout), self._loop)
        return future.result(timeout + 1)

    def status(self) -> dict[str, Any]:
        """A snapshot of the uplink's state, read without waiting for its loop (which may be
        blocked in a TPM operation): plain attribute reads, consistent enough for a status
        report."""
        if self._uplink is None:
            return {"state": "not started"}
        return self._uplink.status()

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is None or self._uplink is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._uplink.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the uplink thread did not stop within {timeout:.0f} s")
        self._done.result(0)


__all__ = [
    "Connection",
    "ServerInfo",
    "Uplink",
    "UplinkSettings",
    "UplinkThread",
    "backoff_delay",
    "connect",
    "validate_server",
]

"""``mbus-receiver serve``: the organization's OPC UA server, hardened.

What it adds to a stock asyncua server (SECURITY.md):

* endpoints: SignAndEncrypt with Aes256_Sha256_RsaPss, Aes128_Sha256_RsaOaep and
  Basic256Sha256 only; the None channel carries GetEndpoints and nothing else that matters;
* a gate on the secure channel's own certificate (:class:`receiver.security.Gate`) at two
  points: OpenSecureChannel (through :mod:`receiver._compat`, before the server's key decrypts
  anything; refused with ``BadSecurityChecksFailed``) and ActivateSession (the user manager gets
  the channel's certificate from asyncua - not the one claimed in CreateSession). Only
  anonymous identity tokens are offered: the application certificate is the credential, and
  everything a session does is attributed to it;
* roles: loggers may call every method; operators browse, read and call only
  :data:`logger.contract.OPERATOR_METHODS`; nobody writes;
* CRLs and trust anchors re-read when their files change (polled every few seconds, well
  inside the 30 s CLI.md promises); every live channel is re-checked after a change, and a
  revoked logger's connection is closed;
* security events and bad requests go to the storage's hash-chained audit log;
* bounded messages: a request larger than :data:`MAX_MESSAGE_SIZE` (the largest PushReadings
  the contract allows, see :func:`push_readings_max_bytes`) is refused at the transport level,
  before it is decoded, and only its connection is closed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from logger import contract
from receiver import _compat
from receiver.datapath import BadRequest, DataPath, install_datapath
from receiver.security import (
    Gate,
    Principal,
    ReceiverDir,
    ReceiverSetupError,
    Refused,
    read_passphrase,
)
from receiver.storage import InvalidConfiguration, Storage, StorageError, open_storage

_LOGGER = logging.getLogger(__name__)

MethodHandler = Callable[[Principal, dict[str, Any]], Awaitable[list[Any]]]
"""One method of the contract: the channel's principal and the decoded inputs -> the outputs.

It raises :class:`receiver.datapath.BadRequest` for a request it refuses; the server checks
the role before and audits the refusal after, so a handler never sees an unauthorised call.
"""

DEFAULT_LISTEN = "opc.tcp://0.0.0.0:4840"
RELOAD_INTERVAL_S = 5.0
RECHECK_INTERVAL_S = 60.0
AUDIT_REPEAT_S = 60.0


push_readings_max_bytes = contract.push_readings_max_bytes

MAX_MESSAGE_SIZE = contract.MAX_MESSAGE_BYTES
"""The receiver's transport limit: :func:`logger.contract.push_readings_max_bytes` rounded up
to whole MiB (89 MiB with the contract's bounds: 10,000 readings of 9,264 bytes each). The
logger asks for the same in its Hello; a client may ask for less, never for more."""

_VARIANT = {
    "String": ua.VariantType.String,
    "UInt64": ua.VariantType.UInt64,
    "UInt32": ua.VariantType.UInt32,
    "Int32": ua.VariantType.Int32,
    "Double": ua.VariantType.Double,
    "Boolean": ua.VariantType.Boolean,
    "DateTime": ua.VariantType.DateTime,
    "ByteString": ua.VariantType.ByteString,
}
_DATATYPE = {
    "String": ua.ObjectIds.String,
    "UInt64": ua.ObjectIds.UInt64,
    "UInt32": ua.ObjectIds.UInt32,
    "Int32": ua.ObjectIds.Int32,
    "Double": ua.ObjectIds.Double,
    "Boolean": ua.ObjectIds.Boolean,
    "DateTime": ua.ObjectIds.DateTime,
    "ByteString": ua.ObjectIds.ByteString,
}


@dataclass
class ChannelUser(User):
    """asyncua's session user, carrying the principal of the channel certificate."""

    principal: Principal | None = None


def _status(code: int) -> ua.StatusCode:
    return ua.StatusCode(ua.UInt32(code))


def _ua_argument(arg: contract.Argument) -> ua.Argument:
    out = ua.Argument()
    out.Name = arg.name
    out.DataType = ua.NodeId(ua.Int32(_DATATYPE[arg.type]))
    out.ValueRank = 1 if arg.array else -1
    out.ArrayDimensions = [0] if arg.array else []
    out.Description = ua.LocalizedText(arg.description)
    return out


def decode_arguments(
    spec: tuple[contract.Argument, ...], variants: tuple[Any, ...]
) -> dict[str, Any]:
    """Check a call's input Variants against the contract; return name -> Python value."""
    if len(variants) < len(spec):
        raise BadRequest(
            ua.StatusCodes.BadArgumentsMissing,
            f"expected {len(spec)} arguments, got {len(variants)}",
        )
    if len(variants) > len(spec):
        raise BadRequest(
            ua.StatusCodes.BadTooManyArguments,
            f"expected {len(spec)} arguments, got {len(variants)}",
        )
    values: dict[str, Any] = {}
    for arg, variant in zip(spec, variants, strict=True):
        value = variant.Value if isinstance(variant, ua.Variant) else variant
        vtype = variant.VariantType if isinstance(variant, ua.Variant) else None
        if arg.array:
            if value is None:
                value = []
            if not isinstance(value, list):
                raise BadRequest(ua.StatusCodes.BadInvalidArgument, f"{arg.name} must be an array")
        elif isinstance(value, list):
            raise BadRequest(ua.StatusCodes.BadInvalidArgument, f"{arg.name} must be a scalar")
        if vtype is not None and vtype != _VARIANT[arg.type] and not (value == [] or value is None):
            raise BadRequest(
                ua.StatusCodes.BadTypeMismatch,
                f"{arg.name} must be {arg.type}, not {vtype.name}",
            )
        values[arg.name] = value
    return values


def _out(spec: tuple[contract.Argument, ...], values: list[Any]) -> list[ua.Variant]:
    return [
        ua.Variant(v, _VARIANT[a.type], is_array=a.array)
        if a.array
        else ua.Variant(v, _VARIANT[a.type])
        for a, v in zip(spec, values, strict=True)
    ]


class _GateUserManager:
    """asyncua user manager: ActivateSession's check on the *channel* certificate."""

    def __init__(self, receiver: ReceiverServer) -> None:
        self._receiver = receiver

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username or password:
            self._receiver.audit_soon(
                "session.rejected", detail="user name tokens are not accepted"
            )
            return None
        der = (
            certificate
            if isinstance(certificate, bytes | bytearray) or certificate is None
            else (None)
        )
        try:
            principal = self._receiver.gate.check(bytes(der) if der else None)
        except Refused as refusal:
            self._receiver.audit_soon(
                refusal.event,
                device_uri=refusal.uri,
                thumbprint=refusal.thumbprint,
                detail=f"ActivateSession: {refusal}",
            )
            _LOGGER.warning("session refused: %s", refusal)
            return None
        if principal.role == "logger":
            self._receiver.spawn(
                self._receiver.storage.record_contact(
                    principal.application_uri, principal.thumbprint, principal.not_after
                )
            )
        return ChannelUser(role=UserRole.User, name=principal.application_uri, principal=principal)


class ReceiverServer:
    """The running receiver: asyncua server, gate, methods, trust reloading.

    ``methods`` are the handlers of the loggers' methods by contract name (every method of
    :data:`logger.contract.METHODS` but ``GetTrustList``, which the server answers itself from
    its gate). By default they are those of a :class:`receiver.datapath.DataPath` without an
    address space; :func:`receiver.datapath.install_datapath` plugs in one that keeps the
    Loggers tree. Whatever the handlers, the role check and the attribution to the channel
    certificate stay here, in :meth:`_method`.
    """

    def __init__(
        self,
        rdir: ReceiverDir,
        storage: Storage,
        listen: str = DEFAULT_LISTEN,
        reload_interval_s: float = RELOAD_INTERVAL_S,
        recheck_interval_s: float = RECHECK_INTERVAL_S,
        methods: Mapping[str, MethodHandler] | None = None,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.rdir = rdir
        self.max_message_size = max_message_size
        self.storage = storage
        self.listen = listen
        self.gate = Gate(rdir)
        self.reload_interval_s = reload_interval_s
        self.recheck_interval_s = recheck_interval_s
        self.server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self.closed_channels = 0
        self._audit_recent: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._handlers: dict[str, MethodHandler] = {}
        self.set_methods(DataPath(self).handlers() if methods is None else methods)

    @classmethod
    def served_methods(cls) -> frozenset[str]:
        """The contract methods a receiver of this build answers (with its default handlers)."""
        return frozenset(DataPath.METHODS) | {contract.GET_TRUST_LIST}

    def set_methods(self, methods: Mapping[str, MethodHandler]) -> None:
        """Use ``methods`` for the loggers' methods; before :meth:`start` only, all of them.

        Refusing an incomplete or unknown set here means a receiver never starts with a
        method node that has nothing behind it, and never lets a handler replace the
        gate's own ``GetTrustList``.
        """
        if self.server is not None:
            raise RuntimeError("the receiver's methods are fixed once it has started")
        expected = set(contract.METHODS) - {contract.GET_TRUST_LIST}
        if set(methods) != expected:
            missing = sorted(expected - set(methods))
            unknown = sorted(set(methods) - expected)
            raise ValueError(
                f"receiver methods: missing {missing or 'none'}, not allowed {unknown or 'none'}"
            )
        self._handlers = {**methods, contract.GET_TRUST_LIST: self._get_trust_list}

    # -- background work -------------------------------------------------------------------
    def spawn(self, coro: Awaitable[Any]) -> None:
        async def _guarded() -> None:
            try:
                await coro
            except StorageError as exc:
                _LOGGER.error("storage: %s", exc)

        task = asyncio.get_running_loop().create_task(_guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def audit_soon(self, event: str, **fields: str) -> None:
        """Audit a refusal; repeats of the same (event, certificate) within
        :data:`AUDIT_REPEAT_S` are counted and folded into the next entry, so a client
        hammering the endpoint cannot flood the audit log (or the disk under it)."""
        key = (event, fields.get("thumbprint", ""), fields.get("device_uri", ""))
        now = asyncio.get_running_loop().time()
        last, suppressed = self._audit_recent.get(key, (-AUDIT_REPEAT_S, 0))
        if now - last < AUDIT_REPEAT_S:
            self._audit_recent[key] = (last, suppressed + 1)
            return
        if suppressed:
            fields["detail"] = (
                f"{fields.get('detail', '')} (+{suppressed} identical in the last "
                f"{AUDIT_REPEAT_S:.0f} s)"
            )
        if len(self._audit_recent) > 10_000:
            self._audit_recent.clear()
        self._audit_recent[key] = (now, 0)
        self.spawn(self.storage.audit(event, **fields))

    async def drain(self) -> None:
        """Wait for scheduled audit entries and contacts (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- the OPN gate ----------------------------------------------------------------------
    def _channel_gate(self, der: bytes | None) -> tuple[int, str] | None:
        if der is None:
            return None  # a None channel: GetEndpoints only; ActivateSession refuses it
        try:
            self.gate.check(bytes(der))
        except Refused as refusal:
            _LOGGER.warning("secure channel refused: %s", refusal)
            self.audit_soon(
                refusal.event,
                device_uri=refusal.uri,
                thumbprint=refusal.thumbprint,
                detail=f"OpenSecureChannel: {refusal}",
            )
            return int(ua.StatusCodes.BadSecurityChecksFailed), str(refusal)
        return None

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def endpoint_url(self) -> str:
        assert self.server is not None and self.server.bserver is not None
        host = urlparse(self.listen).hostname or "127.0.0.1"
        return f"opc.tcp://{host}:{self.server.bserver.port}"

    async def start(self) -> None:
        server = Server(user_manager=_GateUserManager(self))  # type: ignore[arg-type]
        await server.init()
        server.set_endpoint(self.listen)
        server.set_server_name(f"mbus-receiver {self.rdir.org}")
        await server.set_application_uri(self.rdir.application_uri)
        server.product_uri = "urn:mbus-ua-logger:receiver"
        server.set_security_policy(
            list(_compat.POLICY_TYPES),
            permission_ruleset=_compat.ReadOnlyRuleset(),  # type: ignore[arg-type]
        )
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.iserver.certificate = self.rdir.cert
        server.iserver.private_key = self.rdir.key
        server.iserver.max_pending_activation_seconds = 10.0
        _compat.set_transport_limits(server, self.max_message_size)
        _compat.bound_chunk_buffering(server)
        _compat.install_session_context(server)
        await self._build_address_space(server)
        await server.start()
        _compat.gate_endpoints(server, self._channel_gate)
        self.server = server
        self._watcher = asyncio.create_task(self._watch_trust())
        _LOGGER.info("receiver of %s listening on %s", self.rdir.org, self.endpoint_url)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if self.server is not None:
            await self.server.stop()
            self.server = None
        await self.drain()

    async def __aenter__(self) -> ReceiverServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- trust reloading --------------------------------------------------------------------
    async def _watch_trust(self) -> None:
        loop = asyncio.get_running_loop()
        last_recheck = loop.time()
        while True:
            await asyncio.sleep(self.reload_interval_s)
            try:
                if self.gate.changed():
                    await self.reload_trust()
                    last_recheck = loop.time()
                elif loop.time() - last_recheck >= self.recheck_interval_s:
                    await self.recheck_channels()
                    last_recheck = loop.time()
            except Exception:
                _LOGGER.exception("trust watcher")

    async def reload_trust(self) -> int:
        problems = self.gate.reload()
        detail = "; ".join(problems) if problems else "ok"
        _LOGGER.info("trust reloaded from %s: %s", self.rdir.path, detail)
        await self.storage.audit("trust.reloaded", detail=detail[:2000])
        return await self.recheck_channels()

    async def recheck_channels(self) -> int:
        """Re-check every live channel's certificate; close those now refused."""
        if self.server is None:
            return 0
        closed = 0
        for channel in _compat.live_channels(self.server):
            if not channel.certificate:
                continue
            try:
                self.gate.check(bytes(channel.certificate))
            except Refused as refusal:
                closed += 1
                _LOGGER.warning("closing live session of %s: %s", channel.peer, refusal)
                await self.storage.audit(
                    refusal.event,
                    device_uri=refusal.uri,
                    thumbprint=refusal.thumbprint,
                    peer=channel.peer,
                    detail=f"live session closed: {refusal}",
                )
                channel.close()
        self.closed_channels += closed
        return closed

    # -- address space and methods ----------------------------------------------------------
    async def _build_address_space(self, server: Server) -> None:
        idx = await server.register_namespace(contract.NAMESPACE_URI)
        objects = server.nodes.objects
        receiver = await objects.add_object(idx, contract.RECEIVER_OBJECT)
        await receiver.add_folder(idx, contract.LOGGERS_FOLDER)
        for name, (inputs, outputs) in contract.METHODS.items():
            await receiver.add_method(
                idx,
                name,
                self._method(name, inputs, outputs, self._handlers[name]),
                [_ua_argument(a) for a in inputs],
                [_ua_argument(a) for a in outputs],
            )

    def _method(
        self,
        name: str,
        inputs: tuple[contract.Argument, ...],
        outputs: tuple[contract.Argument, ...],
        handler: MethodHandler,
    ) -> Callable[..., Awaitable[Any]]:
        async def _call(parent: ua.NodeId, *variants: Any) -> Any:
            user = _compat.current_user.get()
            principal = getattr(user, "principal", None)
            if not isinstance(principal, Principal):
                return _status(ua.StatusCodes.BadUserAccessDenied)
            if principal.role != "logger" and name not in contract.OPERATOR_METHODS:
                await self.storage.audit(
                    "request.denied",
                    device_uri=principal.application_uri,
                    thumbprint=principal.thumbprint,
                    detail=f"{principal.role} may not call {name}",
                )
                return _status(ua.StatusCodes.BadUserAccessDenied)
            try:
                args = decode_arguments(inputs, variants)
                values = await handler(principal, args)
            except BadRequest as exc:
                await self.storage.audit(
                    "request.bad",
                    device_uri=principal.application_uri,
                    thumbprint=principal.thumbprint,
                    detail=f"{name}: {exc}"[:2000],
                )
                return _status(exc.status)
            except StorageError as exc:
                _LOGGER.error("%s from %s: storage: %s", name, principal.application_uri, exc)
                return _status(ua.StatusCodes.BadResourceUnavailable)
            return _out(outputs, values)

        return _call

    async def _get_trust_list(self, who: Principal, args: dict[str, Any]) -> list[Any]:
        certs, crls = self.gate.trust_list()
        return [certs, crls]


# -- command -------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    from logger.cli.common import PERMANENT, USAGE, CliError

    try:
        passphrase = read_passphrase(getattr(args, "passphrase_file", None))
        rdir = ReceiverDir.load(Path(args.dir), passphrase)
    except ReceiverSetupError as exc:
        raise CliError(str(exc), PERMANENT) from exc
    db = args.db
    if not db:
        raise CliError("no storage: give --db URL or set MBUS_RECEIVER_DB", USAGE)
    try:
        storage = await open_storage(db)
    except InvalidConfiguration as exc:
        raise CliError(str(exc), USAGE) from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    receiver = ReceiverServer(rdir, storage, args.listen or DEFAULT_LISTEN)
    datapath = install_datapath(receiver)  # the loggers' methods and the Loggers tree
    started = False
    try:
        await receiver.start()
        await datapath.start()
        started = True
        await storage.audit("receiver.started", detail=receiver.endpoint_url)
        print(f"listening on {receiver.endpoint_url}", flush=True)
        await stop.wait()
    finally:
        if started:
            await datapath.stop()
        await receiver.stop()
        await storage.close()
    return 0


def serve_main(args: argparse.Namespace) -> int:
    """Entry of ``mbus-receiver serve`` (called by :mod:`receiver.cli`)."""
    return asyncio.run(_serve(args))


__all__ = [
    "MAX_MESSAGE_SIZE",
    "ChannelUser",
    "MethodHandler",
    "ReceiverServer",
    "decode_arguments",
    "push_readings_max_bytes",
    "serve_main",
]

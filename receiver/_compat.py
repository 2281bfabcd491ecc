"""Every use of asyncua *server* internals, in one place.

A stock asyncua server checks client certificates only in CreateSession, and only the one the
client *claims* there (SECURITY.md, gap 2: three ways in without a trusted certificate). The
receiver closes them with hooks asyncua 2.1 does not offer publicly:

* :class:`GatedPolicyFactory` wraps each endpoint's ``SecurityPolicyFactory``: asyncua calls
  ``create(peer_certificate)`` when an OpenSecureChannel arrives, with the certificate from the
  asymmetric security header - the channel's own certificate - *before* the server's private
  key decrypts anything. A refused certificate is answered with an OPC UA ERR message
  (``BadSecurityChecksFailed``) and the socket is closed, so the client learns it was refused
  instead of waiting for a timeout;
* :func:`install_session_context` makes the session that issued a Call visible to method
  handlers (a context variable set around ``InternalSession.call``), because asyncua passes
  methods only the parent node id - and the device a call comes from must be the channel's
  certificate, never an argument;
* :func:`live_channels` / :meth:`LiveChannel.close` enumerate and drop open connections, to
  re-check their certificates after a CRL change (asyncua never re-validates a live channel);
* :func:`set_transport_limits` bounds what one connection may make the server hold: the size
  of a chunk, of a whole message and the number of chunks in it. asyncua checks them as the
  chunks arrive and answers a message over them with an ERR (``BadRequestTooLarge``) and a
  closed socket - that connection only. A client's Hello may lower them, never raise them.
  asyncua checks a chunk's size only once all of it has arrived, and buffers whatever size
  the first 8 bytes announce (up to 4 GiB, before any Hello); :func:`bound_chunk_buffering`
  refuses such a chunk as soon as its header is in (``BadTcpMessageTooLarge``).

The user manager (public API) receives the channel's peer certificate at ActivateSession and is
the second gate; see :mod:`receiver.security`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from asyncua import Server, ua
from asyncua.common.connection import TransportLimits
from asyncua.crypto import security_policies as sp
from asyncua.crypto.permission_rules import PermissionRuleset, User, UserRole
from asyncua.server.binary_server_asyncio import OPCUAProtocol
from asyncua.server.internal_session import InternalSession
from asyncua.ua.ua_binary import uatcp_to_binary
from asyncua.ua.uaerrors import BadRequestTooLarge, UaStatusCodeError

_LOGGER = logging.getLogger(__name__)

POLICY_TYPES = (
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
)

current_user: contextvars.ContextVar[User | None] = contextvars.ContextVar(
    "receiver_current_user", default=None
)


class ChannelRefused(BadRequestTooLarge):
    """Raised inside asyncua's OPN handling; asyncua turns this exception class (and only
    this one, in 2.1) into an ERR message and closes the socket. ``code`` is ours."""

    def __new__(cls, *args: Any) -> ChannelRefused:  # bypass the code -> subclass lookup
        return Exception.__new__(cls, *args)

    def __init__(self, code: int, message: str) -> None:
        Exception.__init__(self, code, message)

    @property
    def code(self) -> int:  # type: ignore[override]
        return int(self.args[0])

    def __str__(self) -> str:
        return str(self.args[1])


# Defining the subclass registered it as *the* class for BadRequestTooLarge's code; undo that
# so asyncua keeps raising its own class for real oversized requests.
UaStatusCodeError._subclasses[BadRequestTooLarge.code] = BadRequestTooLarge


class GatedPolicyFactory(sp.SecurityPolicyFactory):
    """A policy factory that lets only certificates through which ``gate`` accepts.

    ``gate(der)`` returns None to accept or ``(status_code, message)`` to refuse.
    """

    def __init__(self, inner: Any, gate: Callable[[bytes | None], tuple[int, str] | None]) -> None:
        super().__init__(
            inner.cls,
            inner.mode,
            inner.certificate,
            inner.private_key,
            permission_ruleset=inner.permission_ruleset,
            certificate_chain=inner.certificate_chain,
        )
        self._gate = gate
        self._recent: dict[bytes, float] = {}

    def create(self, peer_certificate: bytes | None) -> Any:
        loop_time = asyncio.get_running_loop().time()
        key = bytes(peer_certificate or b"")
        # asyncua selects the policy twice per OpenSecureChannel; check once.
        if self._recent.get(key, -10.0) < loop_time - 2.0:
            refusal = self._gate(peer_certificate)
            if refusal is not None:
                raise ChannelRefused(*refusal)
            if len(self._recent) > 256:
                self._recent.clear()
            self._recent[key] = loop_time
        return super().create(peer_certificate)


def gate_endpoints(server: Server, gate: Callable[[bytes | None], tuple[int, str] | None]) -> None:
    """Wrap the policy factories of a started server's endpoints with ``gate``."""
    bserver = server.bserver
    if bserver is None:
        raise RuntimeError("gate_endpoints needs a started server")
    wrapped = [
        p
        if isinstance(p, GatedPolicyFactory) or p.cls is sp.SecurityPolicyNone
        else GatedPolicyFactory(p, gate)
        for p in bserver._policies
    ]
    bserver._policies[:] = wrapped


class ReadOnlyRuleset(PermissionRuleset):
    """Authenticated sessions (UserRole.User) may browse, read, subscribe and call methods;
    nobody may Write, add or delete nodes; anonymous (un-activated) sessions may do nothing.
    Which methods a role may call is decided per method by the receiver."""

    _ALLOWED = frozenset(
        ua.NodeId(ua.Int32(i))
        for i in (
            ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary,
            ua.ObjectIds.CloseSessionRequest_Encoding_DefaultBinary,
            ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary,
            ua.ObjectIds.ReadRequest_Encoding_DefaultBinary,
            ua.ObjectIds.BrowseRequest_Encoding_DefaultBinary,
            ua.ObjectIds.BrowseNextRequest_Encoding_DefaultBinary,
            ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
            ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
            ua.ObjectIds.TranslateBrowsePathsToNodeIdsRequest_Encoding_DefaultBinary,
            ua.ObjectIds.CreateSubscriptionRequest_Encoding_DefaultBinary,
            ua.ObjectIds.ModifySubscriptionRequest_Encoding_DefaultBinary,
            ua.ObjectIds.DeleteSubscriptionsRequest_Encoding_DefaultBinary,
            ua.ObjectIds.CreateMonitoredItemsRequest_Encoding_DefaultBinary,
            ua.ObjectIds.ModifyMonitoredItemsRequest_Encoding_DefaultBinary,
            ua.ObjectIds.DeleteMonitoredItemsRequest_Encoding_DefaultBinary,
            ua.ObjectIds.PublishRequest_Encoding_DefaultBinary,
            ua.ObjectIds.RepublishRequest_Encoding_DefaultBinary,
            ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
            ua.ObjectIds.CallRequest_Encoding_DefaultBinary,
            ua.ObjectIds.SetMonitoringModeRequest_Encoding_DefaultBinary,
            ua.ObjectIds.SetPublishingModeRequest_Encoding_DefaultBinary,
            ua.ObjectIds.RegisterNodesRequest_Encoding_DefaultBinary,
            ua.ObjectIds.UnregisterNodesRequest_Encoding_DefaultBinary,
        )
    )

    def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
        if user is None or getattr(user, "role", None) is not UserRole.User:
            return False
        return action_type_id in self._ALLOWED


class _ContextSession(InternalSession):
    """An InternalSession that publishes its user to method handlers during Call."""

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        token = current_user.set(self.user)
        try:
            return await super().call(params)
        finally:
            current_user.reset(token)


def install_session_context(server: Server) -> None:
    iserver = server.iserver

    def create_session(
        name: str,
        user: User | None = None,
        external: bool = False,
    ) -> InternalSession:
        return _ContextSession(
            iserver,
            iserver.aspace,
            iserver.subscription_service,
            name,
            user=user or User(role=UserRole.Anonymous),
            external=external,
        )

    iserver.create_session = create_session  # type: ignore[method-assign]


CHUNK_SIZE = 65535
"""Largest chunk the server receives or sends (asyncua's and most stacks' default)."""

CHUNK_OVERHEAD = 1024
"""Bytes of a chunk that are not message body, bounded from above: message and security
headers, sequence header, padding and signature (about 100 for the symmetric policies)."""


def set_transport_limits(server: Server, max_message_size: int) -> TransportLimits:
    """Bound the messages of every connection of a server not yet started.

    The chunk count follows from the message size (a full message in chunks of at least
    ``CHUNK_SIZE - CHUNK_OVERHEAD`` body bytes), so neither limit is the looser one.
    """
    if server.bserver is not None:
        raise RuntimeError("transport limits must be set before the server starts")
    if max_message_size <= 0:
        raise ValueError("the maximum message size must be positive (0 would mean unbounded)")
    limits = TransportLimits(
        max_recv_buffer=CHUNK_SIZE,
        max_send_buffer=CHUNK_SIZE,
        max_chunk_count=-(-max_message_size // (CHUNK_SIZE - CHUNK_OVERHEAD)),
        max_message_size=max_message_size,
    )
    server.limits = limits
    return limits


_CHUNK_LIMIT_ATTR = "_mbus_receiver_chunk_limit"
_HEADER = struct.Struct("<3scI")
_stock_data_received = OPCUAProtocol.data_received


def _bounded_data_received(self: OPCUAProtocol, data: bytes) -> None:
    _stock_data_received(self, data)
    limit = getattr(self.iserver, _CHUNK_LIMIT_ATTR, None)
    # What stays buffered is the head of one incomplete chunk; its header says how big the
    # chunk claims to be.
    if limit is None or len(self._buffer) < _HEADER.size or self.transport is None:
        return
    _type, _chunk, size = _HEADER.unpack_from(self._buffer)
    if size <= limit:
        return
    _LOGGER.warning(
        "connection from %s refused: a chunk of %d bytes announced (at most %d)",
        self.peer_name,
        size,
        limit,
    )
    error = ua.ErrorMessage(
        ua.StatusCode(ua.UInt32(ua.StatusCodes.BadTcpMessageTooLarge)),
        ua.String(f"chunk of {size} bytes exceeds the receive buffer of {limit}"),
    )
    # asyncua annotates the message type as its class, passes the class's bytes constants.
    self.transport.write(uatcp_to_binary(ua.MessageType.Error, error))  # type: ignore[arg-type]
    self.transport.close()
    self._buffer = b""


def bound_chunk_buffering(server: Server) -> None:
    """Refuse a chunk that announces more than the server's receive buffer, before buffering it.

    The hook is installed once on asyncua's connection class, but acts only for servers
    passed here (marked on their internal server): a stock server in the same process keeps
    its own behaviour.
    """
    setattr(server.iserver, _CHUNK_LIMIT_ATTR, int(server.limits.max_recv_buffer))
    if OPCUAProtocol.data_received is not _bounded_data_received:
        OPCUAProtocol.data_received = _bounded_data_received  # type: ignore[method-assign]


@dataclass
class LiveChannel:
    peer: str
    certificate: bytes | None
    user: User | None
    _protocol: Any

    def close(self) -> None:
        transport = self._protocol.transport
        if transport is not None:
            transport.close()


def live_channels(server: Server) -> Iterator[LiveChannel]:
    bserver = server.bserver
    if bserver is None:
        return
    for protocol in list(bserver.clients):
        processor = protocol.processor
        if processor is None:
            continue
        connection = processor._connection
        cert = connection.security_policy.peer_certificate
        session = processor.session
        yield LiveChannel(
            str(protocol.peer_name), cert, session.user if session else None, protocol
        )


__all__ = [
    "CHUNK_SIZE",
    "POLICY_TYPES",
    "ChannelRefused",
    "GatedPolicyFactory",
    "LiveChannel",
    "ReadOnlyRuleset",
    "bound_chunk_buffering",
    "current_user",
    "gate_endpoints",
    "install_session_context",
    "live_channels",
    "set_transport_limits",
]

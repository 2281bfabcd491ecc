"""Every use of asyncua internals on the logger side, in one place (pip-tools' ``_pip_api``).

asyncua's ``Client.set_security()`` only loads keys from files and, without a pinned server
certificate, trusts whatever GetEndpoints returned (SECURITY.md, gaps 1 and 5). Here we:

* fetch the endpoints over a None channel that carries nothing but GetEndpoints (no key
  operation, no data) and pick the strongest SignAndEncrypt endpoint we accept;
* build the security policy object directly around our ``cryptography`` private key - the
  TPM-backed one included - and hand it to the client the way ``set_security`` does
  internally (``client.security_policy`` + ``client.uaclient.set_security``);
* translate asyncua's exceptions into :mod:`logger.uplink.errors`.

The policy classes' constructors take ``(peer_cert, host_cert, host_privkey, mode,
host_cert_chain=...)`` in asyncua 2.1; the TPM key is called synchronously by asyncua during
OpenSecureChannel (sign, decrypt) and ActivateSession (sign), which is why the uplink runs on
its own thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from asyncua import Client, Node, ua
from asyncua.crypto import security_policies as sp
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from logger import contract
from logger.uplink.errors import (
    CertificateRejected,
    NetworkDown,
    NoAcceptablePolicy,
    ProtocolError,
    UplinkError,
    UplinkTimeout,
)

_LOGGER = logging.getLogger(__name__)

# Strongest first (SECURITY.md). Never None, Sign, Basic128Rsa15 or Basic256.
POLICIES: tuple[tuple[str, type[sp.SecurityPolicy]], ...] = (
    ("Aes256_Sha256_RsaPss", sp.SecurityPolicyAes256Sha256RsaPss),
    ("Aes128_Sha256_RsaOaep", sp.SecurityPolicyAes128Sha256RsaOaep),
    ("Basic256Sha256", sp.SecurityPolicyBasic256Sha256),
)
POLICY_NAMES = {cls.URI: name for name, cls in POLICIES}

# Status codes that mean "the server does not accept our certificate".
_REJECTED = {
    ua.StatusCodes.BadSecurityChecksFailed,
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadCertificateRevoked,
    ua.StatusCodes.BadCertificateIssuerRevoked,
    ua.StatusCodes.BadCertificateTimeInvalid,
    ua.StatusCodes.BadCertificateIssuerTimeInvalid,
    ua.StatusCodes.BadCertificateRevocationUnknown,
    ua.StatusCodes.BadCertificateIssuerRevocationUnknown,
    ua.StatusCodes.BadCertificateUriInvalid,
    ua.StatusCodes.BadCertificateUseNotAllowed,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
    ua.StatusCodes.BadSecurityPolicyRejected,
}


@dataclass(frozen=True)
class Endpoint:
    """One endpoint the server offered, reduced to what the decision needs."""

    url: str
    policy_uri: str
    mode: str
    certificate: bytes  # as sent: a DER certificate, possibly followed by its chain
    server_uri: str

    @property
    def policy_name(self) -> str:
        return POLICY_NAMES.get(self.policy_uri, self.policy_uri.rsplit("#", 1)[-1])


def _status_name(code: int) -> str:
    try:
        return str(ua.StatusCode(ua.UInt32(code)).name)
    except Exception:
        return f"0x{code:08X}"


def classify(exc: BaseException, stage: str) -> UplinkError:
    """Translate what asyncua (or the socket) raised during ``stage`` into our errors."""
    if isinstance(exc, UplinkError):
        return exc
    if isinstance(exc, UaStatusCodeError):
        code = int(exc.code)
        name = _status_name(code)
        if code in _REJECTED:
            revoked = code in (
                ua.StatusCodes.BadCertificateRevoked,
                ua.StatusCodes.BadCertificateIssuerRevoked,
            )
            what = "revoked our certificate" if revoked else "rejected our certificate"
            return CertificateRejected(f"the server {what} during {stage} ({name})", name)
        if code in (ua.StatusCodes.BadTimeout, ua.StatusCodes.BadRequestTimeout):
            return UplinkTimeout(f"the server timed out during {stage} ({name})", name)
        if code in (
            ua.StatusCodes.BadServerHalted,
            ua.StatusCodes.BadTooManySessions,
            ua.StatusCodes.BadServerTooBusy,
            ua.StatusCodes.BadShutdown,
            ua.StatusCodes.BadTcpServerTooBusy,
            ua.StatusCodes.BadMaxConnectionsReached,
        ):
            return NetworkDown(f"the server is not available during {stage} ({name})", name)
        return ProtocolError(f"the server answered {name} during {stage}", name)
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return UplinkTimeout(f"no answer from the server during {stage}")
    if isinstance(exc, ConnectionRefusedError):
        return NetworkDown(f"connection refused during {stage}")
    if isinstance(exc, socket.gaierror):
        return NetworkDown(f"cannot resolve the server's host name during {stage}: {exc}")
    if isinstance(exc, ConnectionError | OSError):
        return NetworkDown(f"connection lost during {stage}: {exc or type(exc).__name__}")
    if isinstance(exc, UaError):
        return ProtocolError(f"OPC UA error during {stage}: {exc}")
    return ProtocolError(f"unexpected error during {stage}: {type(exc).__name__}: {exc}")


async def get_endpoints(url: str, timeout: float) -> list[Endpoint]:
    """GetEndpoints over a None channel (the only thing that channel is ever used for)."""
    client = Client(url, timeout=timeout)
    try:
        raw = await asyncio.wait_for(client.connect_and_get_server_endpoints(), timeout)
    except BaseException as exc:
        with contextlib.suppress(Exception):
            client.disconnect_socket()
        if isinstance(exc, asyncio.CancelledError):
            raise
        raise classify(exc, "GetEndpoints") from exc
    endpoints = []
    for ep in raw:
        mode = ep.SecurityMode.name if hasattr(ep.SecurityMode, "name") else str(ep.SecurityMode)
        endpoints.append(
            Endpoint(
                url=ep.EndpointUrl or url,
                policy_uri=ep.SecurityPolicyUri or "",
                mode=mode,
                certificate=bytes(ep.ServerCertificate or b""),
                server_uri=(ep.Server.ApplicationUri or "") if ep.Server else "",
            )
        )
    return endpoints


def choose_endpoints(endpoints: list[Endpoint]) -> list[Endpoint]:
    """The acceptable endpoints, strongest policy first; NoAcceptablePolicy when none is."""
    acceptable = []
    for _name, cls in POLICIES:
        for ep in endpoints:
            if ep.policy_uri == cls.URI and ep.mode == "SignAndEncrypt" and ep.certificate:
                acceptable.append(ep)
                break
    if not acceptable:
        offered = sorted({f"{e.policy_uri.rsplit('#', 1)[-1]}/{e.mode}" for e in endpoints})
        raise NoAcceptablePolicy(
            "the server offers no endpoint we accept: we require SignAndEncrypt with "
            + ", ".join(n for n, _ in POLICIES)
            + f"; it offers {', '.join(offered) or 'nothing'}"
        )
    return acceptable


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class SecureClient:
    """An asyncua client on one SignAndEncrypt endpoint with a pinned, validated server cert."""

    def __init__(
        self,
        url: str,
        endpoint: Endpoint,
        server_cert: x509.Certificate,
        own_cert: x509.Certificate,
        own_chain: list[x509.Certificate],
        private_key: rsa.RSAPrivateKey,
        application_uri: str,
        request_timeout: float,
        channel_lifetime_ms: int,
        revalidate: Callable[[x509.Certificate], None],
        on_lost: Callable[[BaseException], Awaitable[None]] | None = None,
    ) -> None:
        policy_cls = dict((cls.URI, cls) for _n, cls in POLICIES).get(endpoint.policy_uri)
        if policy_cls is None:  # choose_endpoints never lets this happen
            raise NoAcceptablePolicy(f"policy {endpoint.policy_uri} is not acceptable")
        self.endpoint = endpoint
        self.server_cert = server_cert
        client = Client(url, timeout=request_timeout, watchdog_intervall=10.0)
        client.application_uri = application_uri
        client.name = f"mbus-logger {application_uri}"
        client.description = client.name
        client.product_uri = "urn:mbus-ua-logger:logger"
        client.secure_channel_timeout = channel_lifetime_ms
        client.session_timeout = 600_000
        # Bounded messages (SECURITY.md), sized so the largest batch the contract allows fits.
        client.max_messagesize = contract.MAX_MESSAGE_BYTES
        client.max_chunkcount = contract.MAX_CHUNK_COUNT
        policy = policy_cls(
            server_cert,
            own_cert,
            private_key,
            ua.MessageSecurityMode.SignAndEncrypt,
            host_cert_chain=own_chain,
        )
        client.security_policy = policy  # type: ignore[assignment]
        client.uaclient.set_security(policy)

        async def _validator(cert: x509.Certificate, _app: Any) -> None:
            # CreateSession: asyncua already checked it equals the channel's certificate.
            if _der(cert) != _der(server_cert):
                raise ua.UaError("the server presented another certificate in CreateSession")
            revalidate(cert)

        client.certificate_validator = _validator
        if on_lost is not None:
            client.connection_lost_callback = on_lost  # type: ignore[assignment]
        self.client = client
        # (namespace URI, object, method) -> (object node, method NodeId), resolved once per
        # connection: browsing costs three round trips, more than a PushReadings call itself
        # on a fast link. Node ids are only valid for the session they were browsed in, so
        # connect() starts afresh and a failed call forgets its entry.
        self._methods: dict[tuple[str, str, str], tuple[Node, ua.NodeId]] = {}

    @property
    def policy_name(self) -> str:
        return self.endpoint.policy_name

    async def connect(self) -> None:
        self._methods.clear()
        try:
            await self.client.connect()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify(exc, "the secure channel and session set-up") from exc

    async def disconnect(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(), 5.0)

    def is_connected(self) -> bool:
        from asyncua.client.ua_client import UaClientState

        return bool(self.client.uaclient.state is UaClientState.CONNECTED)

    @property
    def channel_lifetime_ms(self) -> int:
        return int(self.client.secure_channel_timeout)

    async def call(
        self,
        namespace_uri: str,
        obj: str,
        method: str,
        args: tuple[Any, ...],
        types: tuple[tuple[str, bool], ...],
    ) -> Any:
        """Call a method of an object under Objects (browse names in ``namespace_uri``).

        ``types`` are the contract's (built-in type name, is array) per argument: Python values
        are wrapped in Variants of exactly that type (asyncua would guess Int64 for an int).
        """
        if len(args) != len(types):
            raise ValueError(f"{method} takes {len(types)} arguments, got {len(args)}")
        variants = [
            a
            if isinstance(a, ua.Variant)
            else ua.Variant(_null_times(a, t), getattr(ua.VariantType, t), is_array=arr)
            for a, (t, arr) in zip(args, types, strict=True)
        ]
        key = (namespace_uri, obj, method)
        try:
            resolved = self._methods.get(key)
            if resolved is None:
                resolved = await self._resolve(namespace_uri, obj, method)
                self._methods[key] = resolved
            parent, method_id = resolved
            return await parent.call_method(method_id, *variants)
        except BaseException as exc:
            self._methods.pop(key, None)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise classify(exc, f"{obj}.{method}") from exc

    async def _resolve(self, namespace_uri: str, obj: str, method: str) -> tuple[Node, ua.NodeId]:
        """Browse Objects/``obj``/``method`` by browse name (the server's ids are its own)."""
        idx = await self.client.get_namespace_index(namespace_uri)
        parent = await self.client.nodes.objects.get_child(f"{idx}:{obj}")
        target = await parent.get_child(f"{idx}:{method}")
        return parent, target.nodeid


_NULL_TIME = datetime.datetime(1601, 1, 1, tzinfo=datetime.UTC)


def _null_times(value: Any, type_name: str) -> Any:
    """OPC UA has no null DateTime but its minimum (1601-01-01) stands for "none"."""
    if type_name != "DateTime":
        return value
    if isinstance(value, list):
        return [_NULL_TIME if v is None else v for v in value]
    return _NULL_TIME if value is None else value


def host_of(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "opc.tcp" or not parsed.hostname:
        raise ValueError(f"endpoint {url!r} is not an opc.tcp://host:port URL")
    return parsed.hostname


__all__ = [
    "POLICIES",
    "POLICY_NAMES",
    "Endpoint",
    "SecureClient",
    "choose_endpoints",
    "classify",
    "get_endpoints",
    "host_of",
]

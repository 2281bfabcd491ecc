"""Helpers for secure-channel tests: a running receiver, rogue servers, crafted clients.

    async with running_receiver(rx, tmp_path) as srv:     # our hardened receiver on port 0
        settings = uplink_settings(srv.endpoint_url, device, rx)
    async with rogue_server(cert, key) as url:             # a stock asyncua server
        ...
    thread = ReceiverThread(rx, db_url); thread.start()   # for code that runs its own loop

Rogue servers are *stock* asyncua servers: the logger must refuse them on its own, whatever
they do, so they need no hardening. Crafted clients use asyncua internals on purpose (the
attacks of SECURITY.md, gap 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from asyncua import Client, Server, ua
from asyncua.crypto import security_policies as sp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from logger.uplink.connection import UplinkSettings
from receiver.security import ReceiverDir
from receiver.server import ReceiverServer
from receiver.storage import Storage, open_storage
from tests.support.pki import DeviceDir
from tests.support.pki import ReceiverDir as ReceiverFiles

ALL_SIGN_AND_ENCRYPT = (
    ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
    ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
)


def uplink_settings(
    url: str, device: DeviceDir, rx: ReceiverFiles | None = None, **kw: Any
) -> UplinkSettings:
    return UplinkSettings(
        endpoint=url,
        state_dir=device.state_dir,
        tcti=device.tcti,
        server_uri=rx.application_uri if rx is not None else None,
        connect_timeout_s=kw.pop("connect_timeout_s", 10.0),
        request_timeout_s=kw.pop("request_timeout_s", 5.0),
        **kw,
    )


@contextlib.asynccontextmanager
async def running_receiver(
    rx: ReceiverFiles,
    db_dir: Path,
    reload_interval_s: float = 5.0,
    storage: Storage | None = None,
    listen: str = "opc.tcp://127.0.0.1:0",
) -> AsyncIterator[ReceiverServer]:
    """Our receiver on 127.0.0.1:0 with a SQLite storage in ``db_dir``."""
    own = storage is None
    if storage is None:
        storage = await open_storage(f"sqlite:///{db_dir / 'receiver.db'}")
    rdir = ReceiverDir.load(rx.dir, rx.passphrase)
    server = ReceiverServer(rdir, storage, listen, reload_interval_s=reload_interval_s)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        if own:
            await storage.close()


@contextlib.asynccontextmanager
async def rogue_server(
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    policies: tuple[ua.SecurityPolicyType, ...] = ALL_SIGN_AND_ENCRYPT,
    application_uri: str | None = None,
) -> AsyncIterator[str]:
    """A stock asyncua server with ``cert``/``key``; yields its endpoint URL."""
    from logger.uplink.validation import application_uri as san_uri

    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:0")
    await server.set_application_uri(application_uri or san_uri(cert) or "urn:rogue")
    server.set_security_policy(list(policies))
    server.iserver.certificate = cert
    server.iserver.private_key = key
    await server.start()
    try:
        assert server.bserver is not None
        yield f"opc.tcp://127.0.0.1:{server.bserver.port}"
    finally:
        await server.stop()


def crafted_client(
    url: str,
    channel_cert: x509.Certificate | None,
    channel_key: rsa.RSAPrivateKey | None,
    server_cert: x509.Certificate,
    claimed_cert: bytes | None = None,
    policy: type[sp.SecurityPolicy] = sp.SecurityPolicyBasic256Sha256,
    timeout: float = 5.0,
) -> Client:
    """An attacker's client built from asyncua internals.

    ``channel_cert is None``: a None channel. Otherwise a SignAndEncrypt channel opened with
    ``channel_cert``; ``claimed_cert`` replaces what CreateSession claims (``b""`` for an empty
    claim, a trusted logger's DER to impersonate it).
    """
    client = Client(url, timeout=timeout)
    if channel_cert is None:
        policy_obj: sp.SecurityPolicy = sp.SecurityPolicyNone()
    else:
        policy_obj = policy(
            server_cert, channel_cert, channel_key, ua.MessageSecurityMode.SignAndEncrypt
        )
    client.security_policy = policy_obj  # type: ignore[assignment]
    client.uaclient.set_security(policy_obj)

    async def create_session() -> Any:
        # The attacker's CreateSession: no endpoint matching, no server checks, and any
        # certificate claimed (the stock server checked only this one).
        from asyncua.common.utils import create_nonce

        params = ua.CreateSessionParameters()
        params.ClientNonce = create_nonce(32)
        if claimed_cert is None:
            params.ClientCertificate = policy_obj.host_certificate
        else:
            params.ClientCertificate = claimed_cert or None
        desc = ua.ApplicationDescription()
        desc.ApplicationUri = "urn:attacker"
        if params.ClientCertificate:
            from logger.uplink.validation import application_uri, split_der_chain

            claimed = split_der_chain(bytes(params.ClientCertificate))[0]
            desc.ApplicationUri = application_uri(claimed) or desc.ApplicationUri
        desc.ApplicationType = ua.ApplicationType.Client
        params.ClientDescription = desc
        params.EndpointUrl = url
        params.SessionName = "attack"
        params.RequestedSessionTimeout = 60_000
        params.MaxResponseMessageSize = 0
        response = await client.uaclient.create_session(params)
        client._server_nonce = response.ServerNonce
        client._policy_ids = response.ServerEndpoints[0].UserIdentityTokens
        return response

    client.create_session = create_session  # type: ignore[method-assign]
    return client


class ReceiverThread:
    """Our receiver on its own thread and loop (for code under test that runs asyncio.run)."""

    def __init__(self, rx: ReceiverFiles, db_dir: Path, reload_interval_s: float = 5.0) -> None:
        self.rx = rx
        self.db_dir = db_dir
        self.reload_interval_s = reload_interval_s
        self.listen = "opc.tcp://127.0.0.1:0"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._cm: Any = None
        self.server: ReceiverServer | None = None

    def start(self) -> str:
        self._thread.start()
        self._cm = running_receiver(
            self.rx, self.db_dir, self.reload_interval_s, listen=self.listen
        )
        future = asyncio.run_coroutine_threadsafe(self._cm.__aenter__(), self._loop)
        self.server = future.result(30)
        return self.server.endpoint_url

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self) -> None:
        if self._cm is not None:
            asyncio.run_coroutine_threadsafe(
                self._cm.__aexit__(None, None, None), self._loop
            ).result(30)
            self._cm = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> ReceiverThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a session-wide PKI for tests that do not mutate it -------------------------------------


class SharedPki:
    """Root, orgs ``acme`` and ``globex``, one acme receiver, one acme logger (file key)."""

    __test__ = False

    def __init__(self, base: Path) -> None:
        from tests.support.pki import TestPki

        self.pki = TestPki.create(base, orgs=("acme", "globex"))
        self.rx = self.pki.receiver("acme")
        self.device = self.pki.device("acme")
        self.operator = self.pki.operator("acme", "alice")

    def close(self) -> None:
        self.pki.close()


def stale_crl(pki: Any, org: str, days_ago: int = 1) -> x509.CertificateRevocationList:
    """A CRL of ``org`` correctly signed but past its nextUpdate (CRL number 0: older than
    anything provisioning issued)."""
    import datetime as dt

    from provisioning import profile

    then = profile.utcnow() - dt.timedelta(days=30 + days_ago)
    return profile.make_crl(pki.ca_cert(org), pki.ca_key(org), [], 0, 30, then)

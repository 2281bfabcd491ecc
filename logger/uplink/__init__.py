"""The logger's side of the secure channel: asyncua with the TPM-held key.

Public API (``asyncua`` is imported only by :mod:`logger.uplink.connection` and
:mod:`logger.uplink._compat`, so importing this package stays cheap)::

    from logger.uplink.connection import UplinkSettings, UplinkThread, connect
    uplink = UplinkThread(UplinkSettings(endpoint=URL, state_dir=D, tcti=T, server_uri=U))
    uplink.start()
    future = uplink.submit(lambda conn: conn.call("PushReadings", ...))  # concurrent Future
    uplink.stop()

Errors are :class:`logger.uplink.errors.UplinkError` subclasses with a ``kind`` and
``permanent``; certificate checks live in :mod:`logger.uplink.validation` (shared with the
receiver's gate); trust refresh from GetTrustList in :mod:`logger.uplink.trust`.
"""

from __future__ import annotations

from logger.uplink.errors import (
    CertificateRejected,
    LocalSetupError,
    NetworkDown,
    NoAcceptablePolicy,
    ProtocolError,
    ServerUntrusted,
    TrustStale,
    UplinkError,
    UplinkTimeout,
)

__all__ = [
    "CertificateRejected",
    "LocalSetupError",
    "NetworkDown",
    "NoAcceptablePolicy",
    "ProtocolError",
    "ServerUntrusted",
    "TrustStale",
    "UplinkError",
    "UplinkTimeout",
]

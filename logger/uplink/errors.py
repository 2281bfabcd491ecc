"""What can go wrong on the uplink, classified so operators know whose move it is.

Each error has a ``kind`` (stable, for logs, ``uplink check --format json`` and status
reports) and ``permanent``: a permanent failure (a certificate problem on either side, no
acceptable policy, stale trust) will not heal by retrying soon - the connection manager backs
off to its maximum delay and says so once; a transient one (network down, timeout) is retried
with exponential backoff.
"""

from __future__ import annotations


class UplinkError(Exception):
    """Base class; ``kind`` names the class of failure."""

    kind = "error"
    permanent = True

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ServerUntrusted(UplinkError):
    """The server's certificate failed validation (other CA, URI, host, expired, revoked...).

    ``reason`` is the :class:`logger.uplink.validation.ValidationError` code.
    """

    kind = "server_untrusted"

    def __init__(self, message: str, reason: str = "untrusted") -> None:
        super().__init__(message, reason)
        self.reason = reason


class CertificateRejected(UplinkError):
    """The server refused our certificate (not trusted there, or it was revoked)."""

    kind = "certificate_rejected"


class NoAcceptablePolicy(UplinkError):
    """The server offers no SignAndEncrypt endpoint with a policy we accept."""

    kind = "no_acceptable_policy"


class TrustStale(UplinkError):
    """Our CRLs are past nextUpdate (or missing): we refuse to push until they are fresh."""

    kind = "trust_stale"


class NetworkDown(UplinkError):
    """The server cannot be reached (refused, unreachable, reset)."""

    kind = "network_down"
    permanent = False


class UplinkTimeout(UplinkError):
    """The server did not answer in time."""

    kind = "timeout"
    permanent = False


class ProtocolError(UplinkError):
    """The server answered with something we did not expect (a bad status, a broken message)."""

    kind = "protocol_error"
    permanent = False


class LocalSetupError(UplinkError):
    """Our own side cannot connect: no identity, key unusable, TPM unreachable."""

    kind = "local_setup"


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

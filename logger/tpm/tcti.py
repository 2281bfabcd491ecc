"""TCTI strings as tpm2-tools take them, and opening an ESAPI context on one.

``device:/dev/tpmrm0`` is the default (the kernel's resource manager flushes transient objects
per connection); ``swtpm:host=127.0.0.1,port=N`` reaches a software TPM for tests and
development. ``mssim:`` and ``tabrmd:`` are passed through to the TCTI loader unchanged.
"""

from __future__ import annotations

import logging

from tpm2_pytss import ESAPI, TCTILdr
from tpm2_pytss.TSS2_Exception import TSS2_Exception

from logger.tpm.errors import TpmUnreachable

_LOGGER = logging.getLogger(__name__)

DEFAULT_TCTI = "device:/dev/tpmrm0"


def split_tcti(tcti: str) -> tuple[str, str | None]:
    """``"swtpm:host=h,port=p"`` -> ``("swtpm", "host=h,port=p")``; rejects empty names."""
    name, sep, conf = tcti.partition(":")
    name = name.strip()
    if not name or any(c.isspace() for c in name):
        raise ValueError(
            f"invalid TCTI string {tcti!r}: expected NAME[:CONFIG], "
            "e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"
        )
    return name, (conf if sep and conf else None)


def open_esapi(tcti: str | None = None) -> ESAPI:
    """An ESAPI context on ``tcti`` (default ``device:/dev/tpmrm0``), or :class:`TpmUnreachable`.

    The loader and the first command are both tried here so that a dead socket or a missing
    device node is reported once, with the TCTI in the message, instead of at the first key use.
    """
    tcti = tcti or DEFAULT_TCTI
    name, conf = split_tcti(tcti)
    try:
        loader = TCTILdr(name, conf)
    except TSS2_Exception as exc:
        raise TpmUnreachable(f"no TPM reachable at {tcti}: {exc}") from exc
    try:
        ectx = ESAPI(loader)
    except TSS2_Exception as exc:
        loader.close()
        raise TpmUnreachable(f"no TPM reachable at {tcti}: {exc}") from exc
    try:
        ectx.get_random(1)
    except TSS2_Exception as exc:
        ectx.close()
        raise TpmUnreachable(f"no TPM reachable at {tcti}: {exc}") from exc
    _LOGGER.debug("TPM opened at %s", tcti)
    return ectx

"""``open_device_key``: the one door through which the uplink gets the device's private key.

Whatever holds the key - the TPM or an encrypted file - the caller gets a
:class:`DeviceKey` whose ``private_key`` is a ``cryptography`` ``RSAPrivateKey`` (hand it to
asyncua's security policy), an operation counter, and ``close()``. The TPM variant's
``sign``/``decrypt`` block for the duration of a TPM command and are serialised by one lock:
call them from a worker thread or the uplink's own thread, never from a loop that also polls
meters.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from logger.tpm.errors import DeviceKeyError, KeyFileError
from logger.tpm.filekey import CountingRsaKey, find_secret, load_key_file
from logger.tpm.state import DeviceState, KeyRef

_LOGGER = logging.getLogger(__name__)


class DeviceKey:
    """The device's private key (TPM-backed or file) and what the uplink needs around it."""

    def __init__(
        self, private_key: rsa.RSAPrivateKey, ref: KeyRef, description: str, closer: Any = None
    ) -> None:
        self.private_key = private_key
        self.ref = ref
        self.description = description
        self._closer = closer

    @property
    def kind(self) -> str:
        """``"tpm"`` or ``"file"``."""
        return self.ref.type

    @property
    def operations(self) -> int:
        """Private-key operations (sign + decrypt) since the key was opened."""
        return int(getattr(self.private_key, "operations", 0))

    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run a blocking key operation on a worker thread (for callers on an event loop)."""
        return await asyncio.to_thread(fn, *args)

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer()

    def __enter__(self) -> DeviceKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_key_ref(
    state: DeviceState,
    ref: KeyRef,
    tcti: str | None = None,
    secret_file: Path | None = None,
    secret: bytes | None = None,
) -> DeviceKey:
    """Open the key that ``ref`` points to (the current, pending or previous one).

    ``secret`` (bytes in hand, e.g. at the factory station) takes precedence over
    ``secret_file``, the systemd credential and the state dir's secret file.
    """
    if secret is None:
        secret = find_secret(state.root, secret_file)
    if ref.type == "file":
        path = state.key_file_path(ref)
        if secret is None:
            raise KeyFileError(
                f"key file {path} needs a passphrase: provide the systemd credential "
                f"'mbus-device-key' or a 0600 file {state.root / 'device-key.secret'}"
            )
        key = CountingRsaKey(load_key_file(path, secret, "device key file"))
        return DeviceKey(key, ref, f"encrypted file {path}")
    from logger.tpm.tpm import PcrSelection, Tpm

    assert ref.handle is not None
    if ref.auth and secret is None:
        raise DeviceKeyError(
            f"key at handle 0x{ref.handle:08x} needs auth: provide the systemd "
            "credential 'mbus-device-key' or a 0600 secret file"
        )
    tpm = Tpm(tcti)
    try:
        pcrs = PcrSelection.parse(ref.pcrs) if ref.pcrs else None
        tpm_key = tpm.open_key(ref.handle, secret if ref.auth else None, pcrs)
    except BaseException:
        tpm.close()
        raise

    def _close() -> None:
        tpm_key.close()
        tpm.close()

    return DeviceKey(tpm_key, ref, f"{ref.describe()} at {tpm.tcti}", _close)


def open_device_key(
    state_dir: Path | str, tcti: str | None = None, secret_file: Path | None = None
) -> DeviceKey:
    """The device key described by ``state_dir/identity.json``.

    ``tcti`` defaults to ``device:/dev/tpmrm0``. The secret (file passphrase or TPM auth value)
    comes from ``secret_file``, else the systemd credential ``mbus-device-key``, else
    ``state_dir/device-key.secret`` (0600). Raises a :class:`DeviceKeyError` subclass with a
    clear message (no TPM reachable, key needs auth, PCR policy not satisfied, key file
    unprotected or wrong passphrase).
    """
    state = DeviceState.open(Path(state_dir))
    return open_key_ref(state, state.identity().key, tcti, secret_file)

"""The device key: in the TPM 2.0 (tpm2-pytss) or, without one, in an encrypted file.

Public API (import from here; ``tpm2_pytss`` is imported only when a TPM is actually used)::

    from logger.tpm import open_device_key, DeviceKey, DeviceState
    with open_device_key(state_dir, tcti="swtpm:host=127.0.0.1,port=2321") as key:
        key.private_key      # cryptography RSAPrivateKey (TPM-backed or file)
        key.operations       # sign + decrypt count

Errors are :class:`DeviceKeyError` subclasses (see :mod:`logger.tpm.errors`); the state dir
layout is documented in :mod:`logger.tpm.state`.
"""

from __future__ import annotations

from logger.tpm.device import DeviceKey, open_device_key, open_key_ref
from logger.tpm.errors import (
    DeviceKeyError,
    KeyFileError,
    PcrPolicyNotSatisfied,
    StateDirError,
    TpmAuthRequired,
    TpmKeyNotFound,
    TpmOperationError,
    TpmUnreachable,
)
from logger.tpm.state import DeviceState, Identity, KeyRef

__all__ = [
    "DeviceKey",
    "DeviceKeyError",
    "DeviceState",
    "Identity",
    "KeyFileError",
    "KeyRef",
    "PcrPolicyNotSatisfied",
    "StateDirError",
    "TpmAuthRequired",
    "TpmKeyNotFound",
    "TpmOperationError",
    "TpmUnreachable",
    "open_device_key",
    "open_key_ref",
]

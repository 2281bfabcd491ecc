"""Errors of the device-key layer.

tpm2-pytss raises ``TSS2_Exception`` with a numeric response code; nobody on a factory line or
in a cabinet can act on ``0x9a2``. Every TPM and key-file failure leaves this package as one of
the classes below, with a message that names what was wrong and where (the TCTI, the handle,
the file), so a command can print it as one line and pick the exit code from the class.
"""

from __future__ import annotations


class DeviceKeyError(Exception):
    """Base class: the device key could not be created, opened or used."""

    #: True when retrying later may help (TPM busy or not reachable).
    transient = False


class TpmUnreachable(DeviceKeyError):
    """No TPM answers at the given TCTI."""

    transient = True


class TpmKeyNotFound(DeviceKeyError):
    """No key at the expected persistent handle."""


class TpmAuthRequired(DeviceKeyError):
    """The key needs an authorization value and none (or a wrong one) was given."""


class PcrPolicyNotSatisfied(DeviceKeyError):
    """The PCRs no longer hold the values the key was bound to: the platform state changed."""


class TpmOperationError(DeviceKeyError):
    """Any other TPM failure, with the TPM's own description of the response code."""


class KeyFileError(DeviceKeyError):
    """The encrypted key file is missing, unprotected, or the passphrase is wrong."""


class StateDirError(Exception):
    """The device state directory is missing a file, holds a malformed one, or is unsafe."""

"""Errors of the serial transport; pyserial's exceptions are translated here and nowhere else."""

from __future__ import annotations


class BusError(Exception):
    """Base class: something about the bus (not one meter's answer) went wrong."""


class PortError(BusError):
    """The serial port or gateway cannot be opened or used (missing, busy, unplugged).

    ``transient`` says whether trying again later may help (a gateway that does not answer,
    a port busy with another program) as opposed to a wrong path or URL.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


class QuirkError(BusError, ValueError):
    """A per-meter quirk option is unknown or has a wrong value."""

"""One lock per physical port, shared by every protocol that talks on it (M-Bus, Modbus RTU).

A port can be named several ways (``/dev/serial/by-id/...`` is a symlink to ``/dev/ttyUSB0``);
local paths are resolved so that both names give the same lock. URLs (``socket://``,
``rfc2217://``) are compared as written, lower-cased.
"""

from __future__ import annotations

import os
import threading

_LOCKS: dict[str, threading.RLock] = {}
_GUARD = threading.Lock()


def port_key(device: str) -> str:
    """The canonical name of a port for locking."""
    if "://" in device:
        return device.strip().lower()
    return os.path.realpath(device)


def port_lock(device: str) -> threading.RLock:
    """The process-wide lock of ``device``: hold it for a whole exchange or procedure.

    Re-entrant, so a procedure may hold it while the single exchanges take it again.
    """
    key = port_key(device)
    with _GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = _LOCKS[key] = threading.RLock()
        return lock

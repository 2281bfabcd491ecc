"""What the logger tells the receiver about itself: installation and periodic status.

* ``ReportInstallation`` (serial from the state dir's identity, location from the local
  configuration, firmware version ``logger.__version__``; the thumbprint is the channel's
  certificate, taken by the receiver) after every start once the uplink is up, and again
  whenever one of those changes (a configuration reload that moves the logger). The receiver
  keeps a history and records only changes, so one report per start costs nothing.
* ``ReportStatus`` every ``status_interval``: buffer depth and age of the oldest reading,
  readings ever lost by the buffer policy, certificate days left, the cloud configuration
  version in use (and why a newer one was refused), and each meter's health.

Pure functions build the arguments (tested without a server); the service sends them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from logger.config.model import Installation
from logger.store.api import StoreStats


@dataclass(frozen=True)
class InstallationReport:
    serial: str
    location: str
    firmware: str

    def arguments(self) -> tuple[str, str, str]:
        return (self.serial, self.location, self.firmware)


def location_text(installation: Installation) -> str:
    """The installer's location as one line: site, description, coordinates when set."""
    parts = [p for p in (installation.site, installation.description) if p]
    if installation.latitude is not None and installation.longitude is not None:
        parts.append(f"{installation.latitude:.6f},{installation.longitude:.6f}")
    return " - ".join(parts)


def installation_report(serial: str, installation: Installation) -> InstallationReport:
    from logger import __version__

    return InstallationReport(serial, location_text(installation), __version__)


def cert_days_left(not_after: dt.datetime | None, now: dt.datetime) -> int:
    """Whole days until the certificate expires (negative once expired; 0 when unknown)."""
    if not_after is None:
        return 0
    return int((not_after - now).total_seconds() // 86400)


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def config_version_number(cloud_version: str | None) -> int:
    """The running cloud layer's version as the contract's UInt32 (0: the file's meters)."""
    if cloud_version is None:
        return 0
    try:
        number = int(str(cloud_version))
    except ValueError:
        return 0
    return number if 0 <= number < 2**32 else 0


def status_arguments(
    stats: StoreStats,
    meters: Sequence[Mapping[str, Any]],
    cert_days: int,
    config_version: int,
    config_problem: str = "",
) -> tuple[Any, ...]:
    """``ReportStatus`` input arguments in contract order (``meters``: the poller's
    ``health_snapshot()`` entries)."""
    ids, ok, failures, last_success, last_error = [], [], [], [], []
    for meter in meters:
        ids.append(str(meter.get("meter", ""))[:256])
        failing = int(meter.get("consecutive_failures") or 0)
        ok.append(meter.get("state") == "up")
        failures.append(min(failing, 2**32 - 1))
        last_success.append(_parse_time(meter.get("last_success")))
        last_error.append(str(meter.get("last_error") or "")[:1024])
    return (
        stats.depth,
        float(stats.oldest_age_s or 0.0),
        stats.lost_total,
        max(min(cert_days, 2**31 - 1), -(2**31)),
        config_version,
        ids,
        ok,
        failures,
        last_success,
        last_error,
        config_problem[:1024],
    )


__all__ = [
    "InstallationReport",
    "cert_days_left",
    "config_version_number",
    "installation_report",
    "location_text",
    "status_arguments",
]

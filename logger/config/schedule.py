"""When is a meter next due? Intervals aligned to the installation's wall clock.

A 15-minute meter is read at :00, :15, :30 and :45 (plus its offset), whatever time the
logger started — so readings of all loggers line up for billing and comparison, and a
restart does not shift the grid. Intervals divide a day, so the grid restarts identically at
every local midnight; alignment uses the installation's time zone, which matters for daily
intervals and zones with a half- or quarter-hour offset. Pure: the caller supplies "now".
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo

DAY_S = 86400


def valid_interval(interval_s: int) -> bool:
    return 0 < interval_s <= DAY_S and DAY_S % interval_s == 0


def next_due(after: datetime, interval_s: int, offset_s: int = 0, tz: tzinfo = UTC) -> datetime:
    """The first slot strictly after ``after`` (an aware datetime), as an aware UTC datetime.

    Slots are local wall-clock times ``midnight + offset_s + k * interval_s``. Across a DST
    change, a slot that does not exist locally is taken at its UTC-equivalent (zoneinfo's
    ``fold=0`` mapping) and a repeated local hour is polled on its first occurrence only.
    """
    if after.tzinfo is None:
        raise ValueError("next_due needs an aware datetime")
    if not valid_interval(interval_s):
        raise ValueError(f"interval {interval_s} s does not divide a day")
    if not 0 <= offset_s < interval_s:
        raise ValueError(f"offset {offset_s} s must be within the interval {interval_s} s")
    local = after.astimezone(tz)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    for days in (-1, 0, 1, 2):
        midnight = day + timedelta(days=days)
        elapsed = (local.replace(tzinfo=None) - midnight).total_seconds() - offset_s
        k = max(0, int(elapsed // interval_s) - 1)
        while k * interval_s + offset_s < DAY_S:
            slot = midnight + timedelta(seconds=k * interval_s + offset_s)
            slot_utc = slot.replace(tzinfo=tz).astimezone(UTC)
            if slot_utc > after:
                # A repeated local hour maps its second pass to earlier UTC slots; skip those.
                return slot_utc
            k += 1
    raise AssertionError("unreachable: a day always has a slot")  # pragma: no cover

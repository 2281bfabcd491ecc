"""Buffered readings as flat records: one layout for ``mbus-logger buffer export`` (JSON lines
and CSV) and anything else that prints them. Values stay the exact decimal text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

from logger.store.api import ReadingStore, StoredReading

COLUMNS = (
    "epoch",
    "seq",
    "meter_id",
    "key",
    "quantity",
    "unit",
    "value",
    "kind",
    "logger_time",
    "meter_time",
    "flags",
    "storage",
    "tariff",
    "subunit",
    "function",
)


def record(epoch: str, item: StoredReading) -> dict[str, Any]:
    """One reading as a flat, JSON-ready dict (keys in :data:`COLUMNS` order)."""
    r = item.reading
    return {
        "epoch": epoch,
        "seq": item.seq,
        "meter_id": r.meter_id,
        "key": r.key,
        "quantity": r.quantity,
        "unit": r.unit,
        "value": r.value,
        "kind": r.kind.value,
        "logger_time": r.logger_time.isoformat(),
        "meter_time": r.meter_time.isoformat() if r.meter_time is not None else None,
        "flags": sorted(r.flags),
        "storage": r.storage,
        "tariff": r.tariff,
        "subunit": r.subunit,
        "function": r.function,
    }


def iter_records(
    store: ReadingStore,
    since_seq: int = 0,
    page: int = 5000,
) -> Iterator[dict[str, Any]]:
    """Every buffered reading after ``since_seq``, oldest first, read page by page."""
    while True:
        items = store.read(since_seq, page)
        if not items:
            return
        for item in items:
            yield record(store.epoch, item)
        since_seq = items[-1].seq


def jsonl(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    for rec in records:
        yield json.dumps(rec, ensure_ascii=False) + "\n"


def csv_lines(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV with a header row; flags joined by ``;``, a missing meter time empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    yield buf.getvalue()
    for rec in records:
        buf.seek(0)
        buf.truncate()
        row = dict(rec, flags=";".join(rec["flags"]), meter_time=rec["meter_time"] or "")
        writer.writerow([row[c] for c in COLUMNS])
        yield buf.getvalue()

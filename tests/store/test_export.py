"""Export records: exact values, JSON lines and CSV that read back to the same readings."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

from logger.readings import ValueKind
from logger.store.export import COLUMNS, csv_lines, iter_records, jsonl
from tests.store.conftest import StoreFactory
from tests.support.store import T0, make_reading


def test_export_pages_through_everything_exactly(make_store: StoreFactory) -> None:
    store = make_store()
    store.commit_tick(
        [
            make_reading(
                "a",
                "energy",
                "12345678901234567890.5",
                at=T0,
                meter_time=datetime(2026, 1, 1, 0, 59),
                flags={"x", "y"},
            ),
            make_reading("b", "serial", 'AB,"C"', kind=ValueKind.TEXT, at=T0),
        ],
        now=T0,
    )
    store.commit_tick([make_reading("c", "energy", "7", at=T0)], now=T0)
    records = list(iter_records(store, since_seq=0, page=1))
    assert [r["seq"] for r in records] == [1, 2, 3]
    assert records[0]["value"] == "12345678901234567890.5"
    assert records[0]["meter_time"] == "2026-01-01T00:59:00"
    assert records[0]["flags"] == ["x", "y"] and records[0]["epoch"] == store.epoch
    assert [json.loads(line) for line in jsonl(records)] == records
    rows = list(csv.DictReader(io.StringIO("".join(csv_lines(records)))))
    assert list(rows[0]) == list(COLUMNS)
    assert rows[1]["value"] == 'AB,"C"' and rows[0]["flags"] == "x;y"
    assert rows[2]["meter_time"] == ""
    assert [r["seq"] for r in iter_records(store, since_seq=2)] == [3]

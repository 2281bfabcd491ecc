"""The buffer killed with SIGKILL at random moments, as a real process, many times.

A writer process commits ticks as fast as it can and reports each commit (epoch, sequence
range) on stdout once ``commit_tick`` returned; the harness records those reports outside the
database (the witness) and kills the writer at a random moment, then starts it again on the
same file. Afterwards every reported commit must be in the store with the values that were
written, sequence numbers strictly increasing without duplicates, and the database must pass
its integrity check. A second process drains and acknowledges concurrently, as the uplink does,
so deletions are killed mid-way too.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logger.store.api import BufferLimits
from logger.store.sqlite import SqliteStore

pytestmark = pytest.mark.hil

WRITER = r"""
import json, sys
from datetime import UTC, datetime, timedelta
from logger.readings import Reading, ValueKind
from logger.store.api import BufferLimits
from logger.store.sqlite import SqliteStore

store = SqliteStore(sys.argv[1], BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0))
start = int(sys.argv[2])
t0 = datetime(2026, 1, 1, tzinfo=UTC)
for tick in range(start, start + 100000):
    at = t0 + timedelta(seconds=tick)
    readings = [Reading(f"m{i}", "energy", "Energy", "Wh", f"{tick}.{i}1", ValueKind.NUMBER, at)
                for i in range(20)]
    r = store.commit_tick(readings, now=at)
    print(json.dumps({"epoch": r.epoch, "first": r.first_seq, "last": r.last_seq,
                      "tick": tick}), flush=True)
"""

DRAINER = r"""
import sys, time
from logger.store.api import BufferLimits
from logger.store.sqlite import SqliteStore

store = SqliteStore(sys.argv[1], BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0),
                    readonly=False)
while True:
    batch = store.pending_batch(int(sys.argv[2]))
    if batch.items:
        # acknowledge only the first half: the rest stays for the check
        keep_from = batch.items[len(batch.items) // 2].seq
        print(f"ack {batch.epoch} {keep_from - 1}", flush=True)
        store.acknowledge(batch.epoch, up_to_seq=keep_from - 1)
    time.sleep(0.005)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )


def test_sigkill_never_loses_or_duplicates_a_reported_commit(tmp_path: Path) -> None:
    db = tmp_path / "buffer.db"
    rng = random.Random(int(os.environ.get("CRASH_SEED", "4")))
    reported: dict[int, tuple[str, int, int]] = {}  # tick -> (epoch, first, last)
    acked: dict[str, int] = {}
    next_tick = 0
    kills = 0
    SqliteStore(db).close()  # created once, so both processes open the same epoch
    for _round in range(25):
        writer = _spawn(WRITER, str(db), str(next_tick))
        drainer = _spawn(DRAINER, str(db), str(rng.randint(10, 200)))
        time.sleep(rng.uniform(0.15, 0.6))
        victims = [writer, drainer] if rng.random() < 0.7 else [drainer, writer]
        for proc in victims:
            proc.send_signal(signal.SIGKILL)
        kills += 2
        for proc in (writer, drainer):
            proc.wait(10)
        out, err = writer.communicate()
        assert "Traceback" not in err, err
        for line in out.splitlines():
            if not line.startswith("{"):
                continue  # a line cut by the kill was never fully reported
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            reported[rec["tick"]] = (rec["epoch"], rec["first"], rec["last"])
            next_tick = max(next_tick, rec["tick"] + 1)
        d_out, d_err = drainer.communicate()
        assert "Traceback" not in d_err, d_err
        for line in d_out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ack":
                acked[parts[1]] = max(acked.get(parts[1], 0), int(parts[2]))
    assert kills >= 50 and len(reported) > 100

    store = SqliteStore(db, BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0))
    try:
        assert store.recovery is None and store.integrity_check() == "ok"
        epoch = store.epoch
        assert {e for e, _, _ in reported.values()} == {epoch}
        rows = {}
        since = 0
        while batch := store.read(since, 10_000):
            rows.update({item.seq: item.reading for item in batch})
            since = batch[-1].seq
        seqs = sorted(rows)
        assert seqs == sorted(set(seqs))
        # Sequence ranges of successive reported ticks are strictly increasing and disjoint.
        ranges = [reported[t][1:] for t in sorted(reported)]
        assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges))
        acked_up_to = acked.get(epoch, 0)
        for tick, (_, first, last) in reported.items():
            for i, seq in enumerate(range(first, last + 1)):
                if seq <= acked_up_to:
                    continue  # acknowledged and deleted, as it should be
                assert seq in rows, f"reported seq {seq} (tick {tick}) is missing"
                assert rows[seq].value == f"{tick}.{i}1" and rows[seq].meter_id == f"m{i}"
        assert store.stats().lost_total == 0
    finally:
        store.close()

"""The buffer on a filesystem that really fills up (a 2 MiB tmpfs mounted for the test).

Needs root: CI runs as root and fails the test if it cannot mount; elsewhere it is skipped
with the reason. Both ways of
running out are covered: the ``min_free_bytes`` limit seen coming (statvfs), and the
filesystem actually full (SQLITE_FULL in the middle of a commit).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from logger.store.api import BufferFull, BufferLimits, BufferPolicy, LossReason
from logger.store.sqlite import SqliteStore
from tests.support.requires import require
from tests.support.store import T0, FakeUplink, make_tick, minutes


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    require(os.geteuid() == 0, "mounting a small filesystem needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(result.returncode == 0, f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _prefill(store: SqliteStore, ticks: int = 60) -> None:
    """A buffer that has been running a while: a few MiB of readings, the WAL at its size."""
    for t in range(ticks):
        store.commit_tick(make_tick(100, T0 - minutes(ticks - t)), now=T0 - minutes(ticks - t))


def _fill(path: Path, leave: int) -> None:
    """Take all but ``leave`` bytes of the filesystem with a ballast file."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    (path / "ballast").write_bytes(b"\0" * max(0, free - leave))


def test_drop_oldest_keeps_polling_when_the_disk_fills(small_fs: Path) -> None:
    store = SqliteStore(
        small_fs / "buffer.db", BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=0)
    )
    _prefill(store)
    _fill(small_fs, leave=64 * 1024)
    committed_after_full = 0
    full_ticks = 0
    for t in range(1, 400):
        try:
            result = store.commit_tick(make_tick(40, T0 + minutes(t)), now=T0 + minutes(t))
            if store.stats(T0).lost_total:
                committed_after_full += result.count
        except BufferFull as exc:  # the poller logs it and goes on with the next tick
            full_ticks += 1
            assert exc.loss is not None and exc.loss.reason is LossReason.DISK_FULL
    stats = store.stats(T0)
    losses = store.losses()
    assert stats.lost_total > 0, "the disk never filled: the test proves nothing"
    assert any(x.reason is LossReason.DISK_FULL for x in losses)
    # The reserve let the policy make room: polling went on, replacing the oldest readings.
    assert committed_after_full >= 100 * 40, (committed_after_full, full_ticks)
    # What is left is intact, contiguous at the new end, and drains exactly once.
    assert store.integrity_check() == "ok"
    uplink = FakeUplink()
    uplink.drain(store, max_n=500)
    seqs = uplink.seqs(store.epoch)
    assert seqs == sorted(set(seqs)) and seqs[-1] == stats.newest_seq
    store.close()


def test_min_free_disk_applies_before_the_disk_is_full(small_fs: Path) -> None:
    store = SqliteStore(
        small_fs / "buffer.db",
        BufferLimits(max_bytes=None, max_age_s=None, min_free_bytes=512 * 1024),
    )
    _prefill(store)
    _fill(small_fs, leave=700 * 1024)
    for t in range(1, 300):
        store.commit_tick(make_tick(40, T0 + minutes(t)), now=T0 + minutes(t))
    reasons = {x.reason for x in store.losses()}
    assert LossReason.MIN_FREE_DISK in reasons
    assert LossReason.DISK_FULL not in reasons  # the limit was honoured before SQLite hit ENOSPC
    st = os.statvfs(small_fs)
    assert st.f_bavail * st.f_frsize > 256 * 1024
    assert store.integrity_check() == "ok"
    store.close()


def test_stop_polling_refuses_ticks_and_resumes_after_the_uplink_drains(small_fs: Path):
    store = SqliteStore(
        small_fs / "buffer.db",
        BufferLimits(
            max_bytes=None,
            max_age_s=None,
            min_free_bytes=512 * 1024,
            policy=BufferPolicy.STOP_POLLING,
        ),
    )
    _prefill(store)
    _fill(small_fs, leave=600 * 1024)
    refused = 0
    for t in range(1, 200):
        try:
            store.commit_tick(make_tick(40, T0 + minutes(t)), now=T0 + minutes(t))
        except BufferFull:
            refused += 1
    assert refused > 0
    assert store.stats(T0).lost_total == refused * 40
    kept = store.stats(T0).depth
    (small_fs / "ballast").unlink()
    FakeUplink().drain(store)
    assert store.commit_tick(make_tick(5), now=T0).count == 5
    assert kept > 0 and store.integrity_check() == "ok"
    store.close()

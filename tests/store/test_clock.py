"""Clock synchronisation status and jump detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from logger.store.clock import ClockJumpDetector, clock_synchronised, kernel_clock_synchronised


def test_no_jump_while_both_clocks_advance_together() -> None:
    d = ClockJumpDetector(threshold_s=5)
    assert d.observe(1000.0, 10.0) is None
    assert d.observe(1060.0, 70.0) is None
    assert d.observe(1064.0, 70.0) is None  # 4 s of drift is within the threshold


def test_forward_and_backward_jumps_are_reported_once(caplog: pytest.LogCaptureFixture) -> None:
    d = ClockJumpDetector(threshold_s=5)
    d.observe(1_000.0, 10.0)
    jump = d.observe(1_700_000_000.0, 11.0)  # NTP sets the clock of a Pi that booted in 1970
    assert jump is not None and jump.seconds == pytest.approx(1_700_000_000 - 1_000 - 1)
    assert "jumped" in caplog.text
    assert d.observe(1_700_000_001.0, 12.0) is None  # measured from the new time on
    back = d.observe(1_699_999_000.0, 13.0)
    assert back is not None and back.seconds < -1000


def test_reads_the_real_clocks_by_default() -> None:
    d = ClockJumpDetector()
    assert d.observe() is None
    assert d.observe() is None


def test_threshold_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ClockJumpDetector(threshold_s=0)


def test_timesyncd_flag_file_means_synchronised(tmp_path: Path) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    assert clock_synchronised(flag) is True
    assert clock_synchronised(tmp_path / "absent") is bool(kernel_clock_synchronised())


def test_kernel_status_is_readable_here() -> None:
    assert kernel_clock_synchronised() in (True, False)

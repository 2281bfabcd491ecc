"""``make demo`` as a program: a timed run reports readings end to end and leaves nothing
running; ``--dir`` keeps the state with ``demo.json``; a used directory is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hil.stack import Capabilities

pytestmark = [pytest.mark.hil, pytest.mark.timeout(180)]


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that name ``text`` (the demo's directory)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def test_timed_demo_keeps_its_state_and_stops_everything(tmp_path: Path) -> None:
    state = tmp_path / "demo-state"
    done = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--duration", "12", "--dir", str(state)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = done.stdout
    assert "summary" in out and "readings produced" in out, out + done.stderr
    if Capabilities.detect().data_path:
        assert done.returncode == 0, out + done.stderr
        assert "RESULT: readings arrived end to end" in out
        assert "duplicates 0" in out
    else:
        assert done.returncode == 1, out + done.stderr
        assert "NOT WIRED YET" in out and "did NOT arrive" in out
    described = json.loads((state / "demo.json").read_text())
    assert described["receivers"]["acme"]["endpoint"].startswith("opc.tcp://127.0.0.1:")
    logger = described["loggers"]["SN-0001"]
    assert Path(logger["config"]).exists() and Path(logger["state_dir"], "buffer.db").exists()
    assert {m["id"] for m in described["meters"]["list"]} >= {"multi", "main-supply"}
    assert (state / "logs" / "receiver-acme.log").stat().st_size > 0
    assert not _processes_mentioning(str(state)), "the demo left processes running"


def test_demo_refuses_a_used_directory(tmp_path: Path) -> None:
    (tmp_path / "old-run").mkdir()
    (tmp_path / "old-run" / "demo.json").write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "hil.demo", "--duration", "5", "--dir", str(tmp_path / "old-run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "not empty" in done.stderr

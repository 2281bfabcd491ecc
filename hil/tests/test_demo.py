"""``make demo`` as a program: a timed run reports readings end to end and leaves nothing
running; ``--dir`` keeps the state with ``demo.json``; a used directory is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert done.returncode == 0, out + done.stderr
    assert "RESULT: readings arrived end to end" in out
    assert "duplicates 0" in out
    assert "readings at the receiver:" in out
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


def test_interactive_demo_stops_on_ctrl_c(tmp_path: Path) -> None:
    """On a terminal: the live table appears, Ctrl-C (the terminal's ^C, not a signal sent
    to a pid) stops everything and the temporary directory goes away."""
    import fcntl
    import pty
    import select
    import termios
    import time

    master, slave = pty.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.demo"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_tty,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 90
        while b"certificate" not in seen or b"meter " not in seen:
            assert time.monotonic() < deadline, seen.decode(errors="replace")[-2000:]
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                seen += os.read(master, 65536)
            assert proc.poll() is None, seen.decode(errors="replace")[-2000:]
        os.write(master, b"\x03")  # ^C: the terminal sends SIGINT to its foreground group
        while proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
            assert time.monotonic() < deadline + 60, "the demo did not stop on Ctrl-C"
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert b"mbus-ua-logger demo" in seen and b"stopping" in seen
    text = seen.decode(errors="replace")
    root = Path(text.split("starting the stack in ", 1)[1].split(" ", 1)[0].strip())
    assert root.parent == tmp_path and not root.exists(), "the temporary state was kept"
    assert not _processes_mentioning(str(tmp_path)), "the demo left processes running"

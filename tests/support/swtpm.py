"""A software TPM (swtpm) on free ports for tests that need a clean TPM 2.0.

Each :func:`swtpm` context starts its own ``swtpm socket`` with a fresh state directory, waits
until the TPM answers a real command (not only until the port accepts), yields the TCTI string
as tpm2-tools take it (``swtpm:host=127.0.0.1,port=P``) and stops it by its pid. Use one per
test that needs a clean TPM; never share one between tests that persist keys.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_START_TIMEOUT_S = 10.0


def _free_port_pair() -> int:
    """A port P such that P and P+1 (server and control channels) are both free now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as ctrl:
            try:
                ctrl.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no pair of free TCP ports on 127.0.0.1 for swtpm")


def _tpm_answers(port: int) -> bool:
    """True when the TPM answers TPM2_GetRandom on its server port (startup done)."""
    # TPM2_GetRandom(8): tag NO_SESSIONS, size 12, command code 0x17B, bytesRequested 8.
    command = bytes.fromhex("80010000000c0000017b0008")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as conn:
            conn.sendall(command)
            answer = conn.recv(64)
    except OSError:
        return False
    return len(answer) >= 10 and answer[6:10] == b"\x00\x00\x00\x00"


@contextlib.contextmanager
def swtpm(state_dir: Path | None = None) -> Iterator[str]:
    """Start a clean swtpm on free ports; yield its TCTI string; stop it on exit.

    swtpm runs as our child (not ``--daemon``) so that stopping it can wait for its exit
    instead of polling a pid that may linger as a zombie in a container without an init.
    """
    if shutil.which("swtpm") is None:
        raise RuntimeError("swtpm is not installed (Debian package swtpm)")
    own_dir = state_dir is None
    workdir = Path(tempfile.mkdtemp(prefix="swtpm-")) if state_dir is None else state_dir
    workdir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    proc: subprocess.Popen[bytes] | None = None
    ctrl_port = 0
    try:
        for _attempt in range(5):
            port = _free_port_pair()
            ctrl_port = port + 1
            proc = subprocess.Popen(
                [
                    "swtpm",
                    "socket",
                    "--tpm2",
                    "--tpmstate",
                    f"dir={workdir}",
                    "--server",
                    f"type=tcp,port={port},bindaddr=127.0.0.1",
                    "--ctrl",
                    f"type=tcp,port={ctrl_port},bindaddr=127.0.0.1",
                    "--flags",
                    "not-need-init,startup-clear",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + _START_TIMEOUT_S
            while time.monotonic() < deadline and proc.poll() is None:
                if _tpm_answers(port):
                    break
                time.sleep(0.005)
            if proc.poll() is not None:
                # Most likely a port race with another process: try another pair.
                assert proc.stderr is not None
                last_error = proc.stderr.read().decode(errors="replace").strip()
                proc = None
                continue
            if not _tpm_answers(port):
                raise RuntimeError(
                    f"swtpm on port {port} did not answer within {_START_TIMEOUT_S:.0f} s"
                )
            yield f"swtpm:host=127.0.0.1,port={port}"
            return
        raise RuntimeError(f"swtpm did not start: {last_error}")
    finally:
        if proc is not None:
            _stop(proc, ctrl_port)
        if own_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def tpm2_tools(tcti: str, *args: str) -> str:
    """Run a tpm2-tools command against the test TPM (the outside checker); its stdout."""
    return subprocess.run(
        list(args),
        env={**os.environ, "TPM2TOOLS_TCTI": tcti},
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _stop(proc: subprocess.Popen[bytes], ctrl_port: int) -> None:
    """CMD_SHUTDOWN (3) on the control channel, then wait; SIGKILL as the last resort."""
    with (
        contextlib.suppress(OSError),
        socket.create_connection(("127.0.0.1", ctrl_port), timeout=2.0) as conn,
    ):
        conn.sendall(b"\x00\x00\x00\x03")
        conn.recv(4)
    try:
        proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stderr is not None:
        proc.stderr.close()

"""HIL: the simulator as its own process, ``mbus-logger`` as its own process, real timing.

The simulator is started exactly as the demo and other suites start it
(``python -m hil.sim SCENARIO --describe --log FILE``); the master is the installed
``mbus-logger`` command.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import serial

from hil import scenarios
from logger.bus import MBusMaster, Quirks, Stats, timing
from logger.mbus import decode, frames
from logger.mbus.xml import telegram_xml
from tests.support.mbus_sim import corpus_line, sim_line
from tests.support.mbus_wire import ABB_A41, SCHNEIDER_IEM, jmbus_frames

pytestmark = pytest.mark.hil

ROOT = Path(__file__).resolve().parents[2]
MBUS_LOGGER = str(Path(sys.executable).with_name("mbus-logger"))


class SimProcess:
    def __init__(self, proc: subprocess.Popen[str], log: Path) -> None:
        self.proc = proc
        self.log = log
        assert proc.stdout is not None
        self.path = proc.stdout.readline().strip()
        self.described: dict[str, Any] = json.loads(proc.stdout.readline())

    def served(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@contextmanager
def sim_process(tmp_path: Path, scenario: str, *args: str) -> Iterator[SimProcess]:
    log = tmp_path / f"{scenario}.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil.sim", scenario, "--describe", "--log", str(log), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        yield SimProcess(proc, log)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def mbus_logger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MBUS_LOGGER, *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_corpus_readouts_equal_the_corpus(tmp_path: Path) -> None:
    corpus = scenarios.corpus_frames()
    count = len(corpus)
    with sim_process(
        tmp_path, "corpus", "--count", str(count), "--baudrate", "38400", "--delay", "0.005"
    ) as sim:
        proc = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "38400",
            "--address",
            f"1-{count}",
            "--format",
            "json",
        )
        xml = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "38400",
            "--address",
            "1-3",
            "--format",
            "xml",
            "--normalized",
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    for entry, (name, original) in zip(doc, corpus, strict=True):
        [telegram] = entry["telegrams"]
        read = frames.parse_frame(bytes.fromhex(telegram["hex"]))
        want = frames.parse_frame(original)
        assert (read.ci, read.data) == (want.ci, want.data), name
        assert telegram["decoded"]["records"] == decode(original)["records"], name
    assert xml.returncode == 0
    assert xml.stdout == "".join(telegram_xml(raw, normalized=True) for _, raw in corpus[:3])


def test_multi_telegram_sets_come_out_whole(tmp_path: Path) -> None:
    with sim_process(tmp_path, "multi", "--baudrate", "9600") as sim:
        proc = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "9600",
            "--address",
            "9,93",
            "--format",
            "json",
        )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [bytes.fromhex(t["hex"]) for t in doc[0]["telegrams"]] == jmbus_frames(ABB_A41)
    assert [bytes.fromhex(t["hex"]) for t in doc[1]["telegrams"]] == jmbus_frames(SCHNEIDER_IEM)
    assert [len(t["decoded"]["records"]) for t in doc[0]["telegrams"]] == [23, 24, 16, 17, 17]
    assert [len(t["decoded"]["records"]) for t in doc[1]["telegrams"]] == [25, 25, 33]


def test_every_fault_is_reported_and_never_stalls_the_bus(tmp_path: Path) -> None:
    with sim_process(tmp_path, "faults", "--baudrate", "9600") as sim:
        started = time.monotonic()
        proc = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "9600",
            "--address",
            "11-16,1-3",
            "--format",
            "json",
        )
        elapsed = time.monotonic() - started
    assert proc.returncode == 1
    doc = {d["address"]: d for d in json.loads(proc.stdout)}
    assert all(doc[a]["ok"] for a in (1, 2, 3))
    reasons = {a: doc[a]["error"] for a in range(11, 17)}
    assert reasons[11] == "address 11: SND_NKE after 4 attempts (no answer)"  # silence
    assert "no answer" in reasons[12]  # answers 1 s late: past every retry
    assert "expected E5, got" in reasons[13] or "garbage" in reasons[13]
    assert "checksum" in reasons[14]
    assert "frame truncated" in reasons[15]
    assert reasons[16] == "address 16: SND_NKE after 4 attempts (no answer)"  # 4800 Bd meter
    for a in range(11, 17):
        assert f"meter {a}: " in proc.stderr
    # Each failing meter costs at most its retries' timeouts plus wire time.
    per_meter = 4 * (timing.answer_timeout(9600) + timing.wire_time(261, 9600) + 0.05)
    assert elapsed < 6 * per_meter + 3 * 1.0 + 2.0


def test_synthetic_values_served_are_the_values_read(tmp_path: Path) -> None:
    with sim_process(tmp_path, "synthetic", "--count", "2", "--baudrate", "19200") as sim:
        first = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "19200",
            "--address",
            "1,2",
            "--format",
            "json",
        )
        time.sleep(0.5)  # energy grows by 2.5 Wh/s
        second = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "19200",
            "--address",
            "1",
            "--format",
            "json",
        )
        served = [s for s in sim.served() if s["kind"] == "rsp_ud"]
    reads = json.loads(first.stdout) + json.loads(second.stdout)
    assert len(served) == 3
    for entry, log in zip(reads, served, strict=True):
        records = entry["telegrams"][0]["decoded"]["records"]
        assert log["address"] == entry["address"]
        assert records[0]["raw"] == log["values"]["energy_wh"]
        assert records[1]["raw"] == log["values"]["volume_l"]
    assert served[2]["values"]["energy_wh"] > served[0]["values"]["energy_wh"]


def test_answers_take_their_wire_time_at_2400_baud() -> None:
    """A master cannot be faster than the wire; ours is not much slower."""
    with corpus_line(3, 2400, response_delay=0.030) as line, MBusMaster(line.path, 2400) as bus:
        bus.read(address=1)  # port opened, caches warm
        bus.stats = Stats()
        started = time.monotonic()
        results = bus.read_many([2, 3])
        wall = time.monotonic() - started
        bound = bus.stats.wire_bound(2400, 0.030)
    assert all(r.ok for r in results)
    assert bound <= wall < bound * 1.2 + 0.1


def test_a_master_that_talks_too_fast_is_not_understood() -> None:
    with corpus_line(1, 2400, response_delay=0.030) as line:
        port = serial.Serial(line.path, 2400, parity=serial.PARITY_EVEN, timeout=0.5)
        try:
            # Two requests back to back: the meter is answering the first when the second
            # arrives (half duplex), so only one answer comes.
            port.write(frames.snd_nke(1) + frames.req_ud2(1))
            time.sleep(0.005)
            port.write(frames.req_ud2(1))
            answer = port.read(300)
        finally:
            port.close()
    assert answer[:1] == b"\xe5"
    assert len([s for s in line.served if s["kind"] == "rsp_ud"]) <= 1
    assert line.ignored >= 1


def test_a_master_at_the_wrong_baud_rate_is_not_understood() -> None:
    with corpus_line(1, 2400) as line, MBusMaster(line.path, 4800, retries=0) as bus:
        result = bus.read(address=1)
    assert result.error == "address 1: SND_NKE after 1 attempts (no answer)"
    assert line.served == [] and line.ignored >= 1


def test_several_lines_in_one_process() -> None:
    with (
        corpus_line(2, 19200) as a,
        sim_line(scenarios.corpus_meters(2, 10), 9600) as b,
        MBusMaster(a.path, 19200) as bus_a,
        MBusMaster(b.path, 9600) as bus_b,
    ):
        assert all(r.ok for r in bus_a.read_many([1, 2]))
        assert all(r.ok for r in bus_b.read_many([10, 11]))


def test_full_primary_scan_finds_exactly_the_meters_within_the_timeout_bound(
    tmp_path: Path,
) -> None:
    """0-250 with 3 meters: exactly those, and no longer than the timeouts make it."""
    timeout = 0.06
    with (
        sim_process(tmp_path, "three", "--baudrate", "38400", "--delay", "0.003") as sim,
        MBusMaster(sim.path, 38400, timeout=timeout) as bus,
    ):
        started = time.monotonic()
        entries = bus.scan_primary()
        wall = time.monotonic() - started
    assert [(e.address, e.secondary) for e in entries] == [
        (m["address"], m["secondary"]) for m in sim.described["meters"]
    ]
    bound = 248 * (timeout + timing.wire_time(5, 38400)) + bus.stats.wire_bound(38400, 0.003)
    assert bound <= wall < bound * 1.25


def test_faults_from_the_command_line(tmp_path: Path) -> None:
    from hil.sim import Faults, parse_fault

    assert parse_fault("12:late=1.5") == (12, Faults(late=1.5))
    assert parse_fault("13:garbage,count=2") == (13, Faults(garbage=True, count=2))
    with pytest.raises(ValueError, match="unknown fault 'loud'"):
        parse_fault("1:loud")
    with sim_process(
        tmp_path,
        "corpus",
        "--count",
        "2",
        "--baudrate",
        "19200",
        "--fault",
        "2:silence",
        "--fault",
        "1:bad_checksum,count=1",
    ) as sim:
        proc = mbus_logger(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            "19200",
            "--address",
            "1,2",
            "--format",
            "json",
            "--retries",
            "1",
        )
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert [d["ok"] for d in doc] == [True, False]
    assert [m["faults"] is not None for m in sim.described["meters"]] == [True, True]


def test_meter_that_falls_back_after_idling_is_still_read() -> None:
    meter = scenarios.corpus_meters(1)[0]
    meter.fallback_after = 0.3
    with sim_line([meter], 9600) as line, MBusMaster(line.path, 9600) as bus:
        bus.switch_baudrate(1, 19200)
        assert bus.read(address=1).ok
        time.sleep(0.4)  # the meter's idle time runs out: it returns to 9600 Bd
        plain = bus.read(address=1, quirks=Quirks(retries=0))
        assert plain.error == "address 1: SND_NKE after 1 attempts (no answer)"
        fallback = bus.read(address=1, quirks=Quirks(fallback_baudrate=9600))
        assert fallback.ok and fallback.baudrate == 9600


def test_secondary_scan_finds_exactly_the_simulated_meters(tmp_path: Path) -> None:
    with sim_process(tmp_path, "secondary8", "--baudrate", "38400", "--delay", "0.003") as sim:
        proc = mbus_logger(
            "scan",
            "--device",
            sim.path,
            "--baudrate",
            "38400",
            "--timeout",
            "0.03",
            "--secondary",
            "--format",
            "json",
        )
        served = sim.served()
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(m["secondary"] for m in doc["meters"]) == sorted(
        m["secondary"] for m in sim.described["meters"]
    )
    assert doc["selects"] < 185
    assert any(s["collision"] for s in served)  # the wildcard selects did collide

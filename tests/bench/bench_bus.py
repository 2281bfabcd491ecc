"""Bus benchmarks: efficiency of a 20-meter read, primary scan time, secondary scan selects.

Run: ``.venv/bin/python -m tests.bench.bench_bus [--quick]``. The simulator runs as its own
process (``python -m hil.sim``) and logs every request and answer; the master is the real
``mbus-logger`` command, process start included.

* Bus efficiency = wire-time lower bound / wall time of one ``mbus-logger read`` of 20 meters
  serving corpus telegrams at 2400 Bd with a 30 ms response delay. The bound is every request
  and answer byte x 11 / baud plus the 30 ms per answer, from the simulator's log. Target
  >= 0.85; libmbus reading meter by meter: 0.52 (reference figure, PERFORMANCE.md).
* Primary scan 0-250 with 3 meters at 2400 Bd against the bound the timeouts set: every empty
  address costs its SND_NKE's wire time plus the answer timeout, nothing more.
* Secondary scan of 8 meters with shared prefixes and hex digits at 2400 Bd: selects and wall
  time, against libmbus's 185 selects, 65 s, 6 of 8 found (reference figures).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The installed console script, as a technician runs it.
MBUS_LOGGER = [str(Path(sys.executable).with_name("mbus-logger"))]
BAUD = 2400
DELAY = 0.030


class Sim:
    """``python -m hil.sim`` as a subprocess; its device path, meters and served log."""

    def __init__(self, scenario: str, *extra: str) -> None:
        self.log = Path(tempfile.mkstemp(prefix="sim-", suffix=".jsonl")[1])
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hil.sim",
                scenario,
                "--baudrate",
                str(BAUD),
                "--delay",
                str(DELAY),
                "--log",
                str(self.log),
                "--describe",
                *extra,
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.path = self.proc.stdout.readline().strip()
        self.described: dict[str, Any] = json.loads(self.proc.stdout.readline())

    def served(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.unlink(missing_ok=True)


def _cli(*args: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.monotonic()
    proc = subprocess.run(
        [*MBUS_LOGGER, *args], cwd=ROOT, capture_output=True, text=True, check=False
    )
    return time.monotonic() - started, proc


def wire_bound(served: list[dict[str, Any]]) -> float:
    seconds = 0.0
    for entry in served:
        if entry["kind"] == "silence":
            continue
        nbytes = len(entry["request"]) // 2 + len(entry["response"]) // 2
        seconds += nbytes * 11 / BAUD + DELAY
    return seconds


def bench_efficiency(count: int = 20) -> None:
    sim = Sim("corpus", "--count", str(count))
    try:
        wall, proc = _cli(
            "read",
            "--device",
            sim.path,
            "--baudrate",
            str(BAUD),
            "--address",
            f"1-{count}",
            "--format",
            "json",
        )
        served = sim.served()
    finally:
        sim.close()
    doc = json.loads(proc.stdout)
    ok = sum(1 for d in doc if d["ok"])
    expected = {m["address"]: m["frames"] for m in sim.described["meters"]}
    equal = all([t["hex"] for t in d["telegrams"]] == expected[d["address"]] for d in doc)
    bound = wire_bound(served)
    print(
        f"bus efficiency: {count} meters at {BAUD} Bd, {DELAY * 1000:.0f} ms response delay, "
        f"one 'mbus-logger read' (process start included)"
    )
    print(f"  meters read       {ok}/{count} (telegrams equal to the served ones: {equal})")
    print(f"  wire-time bound   {bound:7.3f} s  ({len(served)} exchanges)")
    print(f"  wall time         {wall:7.3f} s")
    print(f"  efficiency        {bound / wall:7.3f}   (target >= 0.85; libmbus reference 0.52)")


def bench_primary_scan() -> None:
    from logger.bus import timing

    sim = Sim("three")
    try:
        wall, proc = _cli("scan", "--device", sim.path, "--baudrate", str(BAUD), "--format", "json")
        served = sim.served()
    finally:
        sim.close()
    found = [m["address"] for m in json.loads(proc.stdout)["meters"]]
    timeout = timing.answer_timeout(BAUD)
    empty = 251 - len(found)
    bound = empty * (5 * 11 / BAUD + timeout) + wire_bound(served)
    print(f"primary scan 0-250 at {BAUD} Bd, 3 meters (answer timeout {timeout * 1000:.0f} ms)")
    print(f"  found             {found}")
    print(f"  timeout bound     {bound:7.2f} s  (248 x (SND_NKE wire time + timeout) + answers)")
    print(f"  wall time         {wall:7.2f} s  (process start included)")
    print(f"  bound / wall      {bound / wall:7.3f}   (libmbus reference: about 81 s, 6 meters)")


def bench_secondary_scan() -> None:
    sim = Sim("secondary8")
    try:
        wall, proc = _cli(
            "scan", "--device", sim.path, "--baudrate", str(BAUD), "--secondary", "--format", "json"
        )
    finally:
        sim.close()
    doc = json.loads(proc.stdout)
    found = {m["secondary"] for m in doc["meters"]}
    present = {m["secondary"] for m in sim.described["meters"]}
    print(f"secondary scan at {BAUD} Bd, 8 meters with shared prefixes and hex digits")
    print(f"  found             {len(found & present)}/8 (extra: {len(found - present)})")
    print(f"  selects           {doc['selects']:7d}   (libmbus reference: 185, found 6 of 8)")
    print(f"  ratio             {doc['selects'] / 185:7.3f}   of libmbus's selects")
    print(f"  wall time         {wall:7.2f} s  (libmbus reference: 65 s)")


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    bench_efficiency(5 if quick else 20)
    print()
    bench_secondary_scan()
    if not quick:
        print()
        bench_primary_scan()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

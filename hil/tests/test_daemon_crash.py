"""The daemon under SIGKILL: a real ``mbus-logger run`` polls simulated M-Bus meters (on a pty,
at wire speed) and a simulated Modbus TCP meter every second, and is killed at random moments
at least 50 times and restarted.

The witness outside the database is (a) every commit the daemon reported on stderr before it
was killed (``committed tick=… epoch=… seq=a..b``, printed only after the commit returned), read
live by the harness, and (b) every answer the simulators served. Afterwards the store must hold
every reported commit with exactly the served values, sequence numbers must be contiguous and
never reused across crashes, there must be one epoch, and the database passes its integrity
check.

A second scenario keeps one daemon running: a meter goes silent and comes back (logged once
each way) while the others keep committing, and SIGHUP reloads an invalid file (refused, the
daemon keeps running) and then a valid one (applied).
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from hil.modbus_sim import ModbusSim
from hil.sim import Faults, SimLine, SimMeter
from hil.telegrams import SyntheticMeter
from logger.config.model import RegisterFunction, RegisterSpec, RegisterType, WordOrder
from logger.mbus import decode
from logger.readings import readings_from_mbus
from logger.store.sqlite import SqliteStore
from tests.support.daemon import Commit, DaemonProcess, config_toml, group_by_poll

pytestmark = [pytest.mark.hil, pytest.mark.timeout(300)]

BAUD = 38400
KILLS = 52
SEED = 20261127

# A Modbus meter whose registers are contiguous: one request, so one poll sees one step.
REGISTERS = (
    RegisterSpec(
        "energy",
        0,
        RegisterFunction.HOLDING,
        RegisterType.UINT32,
        WordOrder.BIG,
        Decimal("0.01"),
        "kWh",
        "Energy",
    ),
    RegisterSpec(
        "power",
        2,
        RegisterFunction.HOLDING,
        RegisterType.INT32,
        WordOrder.BIG,
        Decimal(1),
        "W",
        "Power",
    ),
    RegisterSpec(
        "voltage",
        4,
        RegisterFunction.HOLDING,
        RegisterType.FLOAT32,
        WordOrder.BIG,
        Decimal(1),
        "V",
        "Voltage",
    ),
)


def modbus_meter(sim: ModbusSim, meter_id: str = "pv") -> dict[str, Any]:
    return {
        "id": meter_id,
        "kind": "modbus_tcp",
        "host": f"{sim.host}:{sim.port}",
        "unit_id": sim.meter.unit_id,
        "timeout": "500ms",
        "registers": [
            {
                "name": s.name,
                "address": s.address,
                "function": s.function.value,
                "type": s.type.value,
                "scale": str(s.scale),
                "unit": s.unit,
                "quantity": s.quantity,
            }
            for s in REGISTERS
        ],
    }


def mbus_meter(address: int) -> dict[str, Any]:
    return {"id": f"s{address}", "kind": "mbus", "bus": "mbus0", "primary_address": address}


def bus(path: str) -> dict[str, Any]:
    return {"kind": "mbus", "device": path, "baud_rate": BAUD, "retries": 1, "timeout": "150ms"}


@pytest.fixture
def line() -> Iterator[SimLine]:
    meters = [
        SimMeter(a, synthetic=SyntheticMeter(71000000 + a, "SIM", 1, 0x04), name=f"s{a}")
        for a in (1, 2, 3, 4)
    ]
    with SimLine(meters, baudrate=BAUD, response_delay=0.010) as sim_line:
        yield sim_line


@pytest.fixture
def modbus() -> Iterator[ModbusSim]:
    """The simulated Modbus meter, its values stepping every 0.3 s on a thread."""
    stop = threading.Event()
    with ModbusSim(REGISTERS, unit_id=7, salt=3) as sim:

        def step() -> None:
            while not stop.wait(0.3):
                sim.advance()

        stepper = threading.Thread(target=step, daemon=True)
        stepper.start()
        yield sim
        stop.set()
        stepper.join(5)


def served_mbus_values(line: SimLine) -> dict[str, list[dict[str, str]]]:
    """Per meter, the {record key: value} of every telegram the line served."""
    out: dict[str, list[dict[str, str]]] = {}
    for entry in line.served:
        if entry["kind"] != "rsp_ud" or entry["fault"] or entry["collision"]:
            continue
        decoded = decode(bytes.fromhex(entry["response"]))
        meter = f"s{entry['address']}"
        readings = readings_from_mbus(meter, decoded, time_zero())
        out.setdefault(meter, []).append({r.key: r.value for r in readings})
    return out


def time_zero() -> Any:
    from datetime import UTC, datetime

    return datetime(2000, 1, 1, tzinfo=UTC)


def check_store(state: Path, commits: list[Commit], line: SimLine, sim: ModbusSim) -> int:
    """Everything the witness says against what the store holds; returns the readings."""
    assert not list(state.glob("*.corrupt-*")), "a database was moved aside as corrupt"
    with SqliteStore(state / "buffer.db") as store:  # opening runs quick_check
        assert store.recovery is None
        assert store.integrity_check() == "ok"
        assert store.losses() == []
        rows = store.read(0, 10_000_000)
        epoch = store.epoch
    seqs = [r.seq for r in rows]
    # Contiguous from 1: a killed, uncommitted tick consumed no sequence numbers, and none
    # was ever assigned twice.
    assert seqs == list(range(1, len(seqs) + 1))
    # The witness: every reported commit is there, in one epoch, and no range was reused.
    assert {c.epoch for c in commits} == {epoch}
    ranges = sorted((c.first, c.last) for c in commits)
    for (a_first, a_last), (b_first, _) in itertools.pairwise(ranges):
        assert a_last < b_first, f"sequence numbers reused: {a_first}..{a_last} and {b_first}.."
    by_seq = {r.seq: r for r in rows}
    for c in commits:
        assert c.last - c.first + 1 == c.count
        assert all(s in by_seq for s in range(c.first, c.last + 1)), f"commit {c} lost"
    # Every stored poll carries exactly the values one served answer carried.
    mbus = served_mbus_values(line)
    modbus = [step["values"] for step in sim.served]
    for (meter, _time), items in group_by_poll(rows).items():
        values = {i.reading.key: i.reading.value for i in items}
        if meter == "pv":
            assert values in modbus, f"pv stored {values}, never served"
        else:
            assert values in mbus.get(meter, []), f"{meter} stored {values}, never served"
    return len(rows)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, line: SimLine, modbus: ModbusSim
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "logger.toml"
    config.write_text(
        config_toml(
            state,
            [mbus_meter(a) for a in (1, 2, 3, 4)] + [modbus_meter(modbus)],
            buses={"mbus0": bus(line.path)},
            default_interval="1s",
        )
    )
    rng = random.Random(SEED)
    witnessed: list[Commit] = []
    started = time.monotonic()
    for kill in range(KILLS):
        with DaemonProcess(config) as daemon:
            if kill % 2:
                # At a random moment after the first commit: mid-read, mid-commit, mid-status.
                daemon.wait_commits(1, timeout=30)
                time.sleep(rng.uniform(0.0, 1.2))
            else:
                # At a random moment from the start: during imports, migration, the first tick.
                time.sleep(rng.uniform(0.05, 1.5))
            witnessed += daemon.kill()
    # A last, clean run: the daemon starts on whatever the kills left and commits again.
    with DaemonProcess(config) as daemon:
        daemon.wait_commits(2, timeout=30)
        assert daemon.stop() == 0
        witnessed += daemon.commits
    elapsed = time.monotonic() - started
    readings = check_store(state, witnessed, line, modbus)
    assert len(witnessed) >= KILLS // 2, "too few commits reported to prove anything"
    print(
        f"\n{KILLS} kills in {elapsed:.0f} s: {len(witnessed)} commits witnessed, "
        f"{readings} readings in the store, all present and exact"
    )


def test_a_silent_meter_never_stops_the_others_and_sighup_reloads_safely(
    tmp_path: Path, line: SimLine, modbus: ModbusSim
) -> None:
    state = tmp_path / "state"
    config = tmp_path / "logger.toml"

    def write(meters: list[dict[str, Any]]) -> None:
        config.write_text(
            config_toml(state, meters, buses={"mbus0": bus(line.path)}, default_interval="1s")
        )

    write([mbus_meter(1), mbus_meter(2), modbus_meter(modbus)])
    with DaemonProcess(config) as daemon:
        daemon.wait_commits(1)
        line.set_faults(2, Faults(silence=True, count=6))  # three failed polls, then back
        daemon.wait_line("meter s2 is down")
        daemon.wait_line("meter s2 is back up")
        down_at = next(i for i, x in enumerate(daemon.lines) if "meter s2 is down" in x)
        up_at = next(i for i, x in enumerate(daemon.lines) if "meter s2 is back up" in x)
        # While s2 was down, every tick still committed s1 and the Modbus meter.
        between = [x for x in daemon.lines[down_at:up_at] if "committed tick" in x]
        assert between and all("meters=2/3" in x for x in between), between
        assert sum("meter s2 is down" in x for x in daemon.lines) == 1

        # An invalid file: refused, the daemon keeps polling the old meters.
        config.write_text(config.read_text() + '\n[[meters]]\nid = "s9"\nkind = "mbus"\n')
        mark = len(daemon.lines)
        daemon.signal(signal.SIGHUP)
        daemon.wait_line("reload refused", after=mark)
        commits = len(daemon.commits)
        daemon.wait_commits(commits + 2)

        # A valid one: s2 removed, s3 added, applied between ticks.
        write([mbus_meter(1), mbus_meter(3), modbus_meter(modbus)])
        mark = len(daemon.lines)
        before_seq = daemon.commits[-1].last
        daemon.signal(signal.SIGHUP)
        daemon.wait_line("reload accepted", after=mark)
        daemon.wait_line("meter s3 is up", after=mark)
        up_seq = daemon.commits[-1].last
        daemon.wait_commits(len(daemon.commits) + 2)
        status = json.loads((state / "status.json").read_text())
        assert [m["meter"] for m in status["meters"]] == ["s1", "s3", "pv"]
        assert status["reloads"] == 1 and status["last_reload_error"] is None
        assert daemon.stop() == 0
    with SqliteStore(state / "buffer.db", readonly=True) as store:
        rows = store.read(0, 1_000_000)
    early = {r.reading.meter_id for r in rows if r.seq <= before_seq}
    assert early == {"s1", "s2", "pv"}
    assert "s3" in {r.reading.meter_id for r in rows if r.seq > before_seq}
    assert {r.reading.meter_id for r in rows if r.seq > up_seq} == {"s1", "s3", "pv"}

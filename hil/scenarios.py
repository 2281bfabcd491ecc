"""Named sets of simulated meters for ``python -m hil.sim SCENARIO`` and the tests.

Corpus telegrams come from ``tests/data/mbus/`` (the project's copy) or, if that is missing,
from ``../shared/corpus/mbus/`` beside the repository (``MBUS_CORPUS`` overrides both).
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from hil.sim import Faults, SimMeter
from hil.telegrams import Quantity, SyntheticMeter
from logger.mbus import frames
from logger.mbus.master import more_records_follow

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = {
    "corpus": "N meters (default 20) at addresses 1..N serving libmbus corpus telegrams",
    "three": "3 corpus meters at addresses 1, 48 and 250 (primary scan)",
    "secondary8": "8 synthetic meters at address 0: shared prefixes, hex digits, same ids",
    "multi": "ABB A41 (5 telegrams) at 9 and Schneider iEM (3 telegrams) at 93, from jMBus",
    "faults": "good meters at 1-3, then one meter per fault at 11-15 and a 4800 Bd one at 16",
    "synthetic": "N synthetic meters (default 4) at 1..N whose values change over time",
}


def corpus_dir() -> Path:
    env = os.environ.get("MBUS_CORPUS")
    candidates = [Path(env)] if env else []
    candidates += [ROOT / "tests" / "data" / "mbus", ROOT.parent / "shared" / "corpus" / "mbus"]
    for path in candidates:
        if (path / "libmbus").is_dir() or (path / "jmbus").is_dir():
            return path
    raise FileNotFoundError("no M-Bus corpus: looked in " + ", ".join(str(p) for p in candidates))


def _read_hex(path: Path) -> bytes:
    return bytes.fromhex("".join(path.read_text().split()))


@cache
def corpus_frames() -> tuple[tuple[str, bytes], ...]:
    """libmbus test frames that are complete read-outs: well-formed RSP_UD with a long header
    and no "more records follow", sorted by name."""
    folder = corpus_dir() / "libmbus" / "test-frames"
    out = []
    for path in sorted(folder.glob("*.hex")):
        try:
            raw = _read_hex(path)
            frame = frames.parse_frame(raw)
        except (ValueError, frames.FrameError):
            continue
        if frame.kind != frames.LONG or frame.ci not in (0x72, 0x76) or len(frame.data) < 12:
            continue
        if more_records_follow(frame.ci, frame.data):
            continue  # one telegram of a multi-telegram read-out: its successors are missing
        out.append((path.stem, raw))
    return tuple(out)


@cache
def jmbus_cases() -> dict[str, list[bytes]]:
    path = corpus_dir() / "jmbus" / "jmbus_wired_cases.json"
    doc = json.loads(path.read_text())
    return {
        case["name"]: [bytes.fromhex(h) for h in case["frames_hex"]]
        for case in doc["wired_telegram_cases"]
    }


def corpus_meters(count: int = 20, first_address: int = 1) -> list[SimMeter]:
    frames_ = corpus_frames()
    if count > len(frames_):
        raise ValueError(f"only {len(frames_)} corpus telegrams, asked for {count}")
    return [
        SimMeter(first_address + i, [raw], name=name)
        for i, (name, raw) in enumerate(frames_[:count])
    ]


def secondary8() -> list[SimMeter]:
    """Eight meters at address 0 that a libmbus-style scan (0-9, left to right) finds only
    partly: consecutive serial numbers (shared prefix 12345), three that share the last digit,
    two with the same identification number that differ only in a hex version digit (A, B),
    and one with F nibbles in version and medium."""
    specs = [
        (12345670, "ABB", 0x01, 0x02),
        (12345671, "ABB", 0x01, 0x02),
        (12345680, "ABB", 0x01, 0x02),
        (12345690, "KAM", 0x1A, 0x04),
        (87654321, "ELS", 0x0A, 0x07),
        (87654321, "ELS", 0x0B, 0x07),
        (12345672, "SEN", 0xFF, 0x0F),
        (12345673, "LUG", 0x0C, 0x16),
    ]
    meters = []
    for k, (ident, man, version, medium) in enumerate(specs):
        synthetic = SyntheticMeter(
            ident, man, version, medium, quantities=[Quantity("energy_wh", 0x03, 1000 * k)]
        )
        meters.append(SimMeter(0, synthetic=synthetic, name=f"sec{k}"))
    return meters


def multi_meters() -> list[SimMeter]:
    cases = jmbus_cases()
    return [
        SimMeter(9, cases["test_ABB_A41_messages"], name="ABB A41"),
        SimMeter(93, cases["test_Schneider_Electric_message"], name="Schneider iEM3275"),
    ]


def fault_meters() -> list[SimMeter]:
    frames_ = corpus_frames()
    meters = [SimMeter(a, [frames_[a][1]], name=f"good {a}") for a in (1, 2, 3)]
    faults = [
        (11, Faults(silence=True)),
        (12, Faults(late=1.0)),
        (13, Faults(garbage=True)),
        (14, Faults(bad_checksum=True)),
        (15, Faults(truncate=True)),
    ]
    for address, fault in faults:
        meters.append(
            SimMeter(address, [frames_[address][1]], faults=fault, name=f"fault {fault.name()}")
        )
    meters.append(SimMeter(16, [frames_[16][1]], baudrate=4800, name="baud mismatch"))
    return meters


def synthetic_meters(count: int = 4) -> list[SimMeter]:
    return [
        SimMeter(i, synthetic=SyntheticMeter(70000000 + i, "SIM", 1, 0x04), name=f"synthetic {i}")
        for i in range(1, count + 1)
    ]


def build(name: str, count: int | None = None) -> tuple[list[SimMeter], dict[str, Any]]:
    """The meters of a scenario and the line options it needs."""
    if name == "corpus":
        return corpus_meters(count or 20), {}
    if name == "three":
        frames_ = corpus_frames()
        return [SimMeter(a, [frames_[i][1]]) for i, a in enumerate((1, 48, 250))], {}
    if name == "secondary8":
        return secondary8(), {}
    if name == "multi":
        return multi_meters(), {}
    if name == "faults":
        return fault_meters(), {}
    if name == "synthetic":
        return synthetic_meters(count or 4), {}
    raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")

"""The M-Bus telegram corpus copied under ``tests/data/mbus`` (sources and licences there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "mbus"
LIBMBUS = DATA / "libmbus"


def read_hex(path: Path) -> bytes:
    return bytes.fromhex(path.read_text().replace("\r", " ").replace("\n", " "))


def libmbus_test_frames() -> list[Path]:
    return sorted((LIBMBUS / "test-frames").glob("*.hex"))


def libmbus_error_frames() -> list[Path]:
    return sorted((LIBMBUS / "error-frames").glob("*.hex"))


def jmbus() -> dict[str, Any]:
    return json.loads((DATA / "jmbus" / "jmbus_wired_cases.json").read_text())


def pymeterbus() -> dict[str, Any]:
    return json.loads((DATA / "pymeterbus" / "pymeterbus_cases.json").read_text())


def issue_frames() -> list[dict[str, Any]]:
    return json.loads((DATA / "issue-frames" / "issue_frames.json").read_text())["frames"]


def all_frames() -> list[tuple[str, bytes]]:
    """Every telegram of the corpus, valid or not, as (name, bytes)."""
    out = [(p.name, read_hex(p)) for p in libmbus_test_frames() + libmbus_error_frames()]
    for case in jmbus()["wired_telegram_cases"]:
        for i, h in enumerate(case["frames_hex"]):
            out.append((f"jmbus-{case['name']}-{i}", bytes.fromhex(h)))
    doc = pymeterbus()
    for case in doc["cases"]:
        for key, h in case["frames_hex"].items():
            out.append((f"pymeterbus-{case['test_file']}-{key}", bytes.fromhex(h)))
    for blob in doc["blobs"]:
        out.append((f"pymeterbus-{blob['blob']}", bytes.fromhex(blob["hex"])))
    for frame in issue_frames():
        out.append((f"issue-{frame['id']}", bytes.fromhex(frame["hex"])))
    return out


def decodable_frames() -> list[tuple[str, bytes]]:
    """The corpus telegrams ``logger.mbus.decode`` accepts (valid long/control frames)."""
    from logger.mbus import MBusError, decode

    out = []
    for name, data in all_frames():
        try:
            decode(data)
        except MBusError:
            continue
        out.append((name, data))
    return out

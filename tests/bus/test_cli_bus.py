"""``mbus-logger scan`` and ``read`` against simulated meters (in-process, real ptys)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from logger.cli import main
from tests.support.mbus_sim import Faults, corpus_line, scenario_line
from tests.support.mbus_wire import ABB_A41, SCHNEIDER_IEM, jmbus_frames


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_read_json_several_meters_one_failing(capsys: pytest.CaptureFixture[str]) -> None:
    with corpus_line(3, 19200) as line:
        line.set_faults(2, Faults(silence=True))
        code, out, err = _run(
            capsys,
            "read",
            "--device",
            line.path,
            "--baudrate",
            "19200",
            "--address",
            "1,2",
            "--address",
            "3",
            "--format",
            "json",
            "--retries",
            "1",
        )
    assert code == 1
    doc = json.loads(out)
    assert [d["target"] for d in doc] == ["1", "2", "3"]
    assert [d["ok"] for d in doc] == [True, False, True]
    assert doc[1]["error"] == "address 2: SND_NKE after 2 attempts (no answer)"
    assert "meter 2: address 2: SND_NKE after 2 attempts (no answer)" in err
    assert bytes.fromhex(doc[0]["telegrams"][0]["hex"]) == line.meter(1).expected_frames()[0]
    assert doc[0]["telegrams"][0]["decoded"]["records"]


def test_read_multi_telegram_xml_and_secondary(capsys: pytest.CaptureFixture[str]) -> None:
    from logger.mbus.xml import readout_xml

    with scenario_line("multi", 19200) as line:
        secondary = line.meter(93).secondary
        code, out, _ = _run(
            capsys,
            "read",
            "--device",
            line.path,
            "--baudrate",
            "19200",
            "--address",
            "9",
            "--secondary",
            secondary,
            "--format",
            "xml",
        )
    assert code == 0
    assert out == readout_xml(jmbus_frames(ABB_A41)) + readout_xml(jmbus_frames(SCHNEIDER_IEM))


def test_read_text_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with corpus_line(1, 19200) as line:
        code, out, _ = _run(
            capsys, "read", "--device", line.path, "--baudrate", "19200", "--address", "1"
        )
        assert code == 0 and out.startswith("== meter 1: 1 telegram(s), ok")
        assert _run(capsys, "read", "--device", line.path)[0] == 2
        code, _, err = _run(capsys, "read", "--device", line.path, "--address", "251")
        assert code == 2 and "primary address 251 out of range 0-250" in err
        code, _, err = _run(
            capsys, "read", "--device", line.path, "--address", "1", "--quirk", "ehco"
        )
        assert code == 2 and "unknown quirk 'ehco'" in err
        code, _, err = _run(capsys, "read", "--device", line.path, "--secondary", "12")
        assert code == 2 and "must be 16 hex digits" in err
    code, _, err = _run(capsys, "read", "--device", "/dev/does-not-exist", "--address", "1")
    assert code == 4 and "cannot open /dev/does-not-exist" in err


def test_scan_primary_and_secondary(capsys: pytest.CaptureFixture[str]) -> None:
    with scenario_line("three", 38400, response_delay=0.005) as line:
        code, out, err = _run(
            capsys,
            "scan",
            "--device",
            line.path,
            "--baudrate",
            "38400",
            "--timeout",
            "0.04",
            "--addresses",
            "0-5,45-50,250",
            "--format",
            "json",
        )
    assert code == 0
    doc = json.loads(out)
    assert [m["address"] for m in doc["meters"]] == [1, 48, 250]
    assert doc["meters"][0]["secondary"] == line.meter(1).secondary
    with scenario_line("secondary8", 38400, response_delay=0.005) as line:
        code, out, err = _run(
            capsys,
            "scan",
            "--device",
            line.path,
            "--baudrate",
            "38400",
            "--timeout",
            "0.04",
            "--secondary",
        )
    assert code == 0
    assert "8 meter(s) found" in err and "selects" in err
    for meter in line.meters:
        assert meter.secondary in out


def test_read_imports_no_asyncua_or_tpm() -> None:
    code = (
        "import sys\nfrom logger.cli import main\n"
        "try:\n    main(['read', '--device', '/dev/does-not-exist', '--address', '1'])\n"
        "except SystemExit:\n    pass\n"
        "heavy = ('asyncua', 'tpm2_pytss', 'asyncio')\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy]\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"

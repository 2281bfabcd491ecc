"""``mbus-logger decode`` as technicians run it: the installed console script, real files
and stdin, exit codes and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.mbus.corpus import LIBMBUS, jmbus, read_hex

ROOT = Path(__file__).resolve().parents[2]
EXE = shutil.which("mbus-logger", path=str(Path(sys.executable).parent))


def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    command = [EXE] if EXE else [sys.executable, "-m", "logger.cli"]
    return subprocess.run(
        [*command, "decode", *args], input=stdin, capture_output=True, timeout=60, cwd=ROOT
    )


def test_xml_matches_libmbus_files() -> None:
    frame = LIBMBUS / "test-frames" / "kamstrup_382_005.hex"
    for flag, suffix in (([], ".xml"), (["--normalized"], ".norm.xml")):
        proc = run("--format", "xml", *flag, str(frame))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == frame.with_suffix(suffix).read_bytes()


def test_json_from_hex_and_binary_stdin(tmp_path: Path) -> None:
    hexfile = LIBMBUS / "test-frames" / "ACW_Itron-BM-plus-m.hex"
    binary = tmp_path / "frame.bin"
    binary.write_bytes(read_hex(hexfile))
    from_hex = run("--format", "json", str(hexfile))
    from_bin = run("--format", "json", "-", stdin=binary.read_bytes())
    assert from_hex.returncode == from_bin.returncode == 0
    doc = json.loads(from_hex.stdout)
    assert doc == json.loads(from_bin.stdout)
    assert len(doc) == 1 and doc[0]["header"]["id"] == "11490378"
    assert doc[0]["records"][1]["value"] == "54.321"


def test_multi_telegram_readout_in_one_file(tmp_path: Path) -> None:
    case = next(c for c in jmbus()["wired_telegram_cases"] if len(c["frames_hex"]) > 2)
    path = tmp_path / "readout.hex"
    path.write_text(
        "\n".join(" ".join(h[i : i + 2] for i in range(0, len(h), 2)) for h in case["frames_hex"])
    )
    proc = run("--format", "json", str(path))
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    assert [len(d["records"]) for d in docs] == case["expected_record_counts"]


def test_text_table() -> None:
    proc = run(str(LIBMBUS / "test-frames" / "ACW_Itron-BM-plus-m.hex"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("address 8  CI 0x72  id 11490378  manufacturer ACW")
    assert lines[1].split()[:4] == ["ID", "FUNCTION", "STORAGE", "TARIFF"]
    assert "54.321" in lines[3] and "m^3" in lines[3]
    assert lines[-1] == "manufacturer data: 00017513"


def test_malformed_frame_exit_1_one_line() -> None:
    proc = run(str(LIBMBUS / "error-frames" / "premature_end_of_data2.hex"))
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "at byte 32" in lines[0]


def test_application_error_is_output() -> None:
    path = LIBMBUS / "error-frames" / "application_busy.hex"
    proc = run("--format", "json", str(path))
    assert proc.returncode == 0
    assert json.loads(proc.stdout)[0]["error"]["text"] == "Application busy"
    text = run(str(path))
    assert b"application error 8: Application busy" in text.stdout
    xml = run("--format", "xml", str(path))
    assert xml.stdout == path.with_suffix(".xml").read_bytes()


@pytest.mark.parametrize(
    "args,code",
    [(["/nonexistent/frame.hex"], 2), (["--normalized", "-"], 2), (["-"], 1)],
)
def test_usage_errors(args: list[str], code: int) -> None:
    proc = run(*args, stdin=b"68 03")
    assert proc.returncode == code
    assert proc.stderr.decode().count("\n") == 1


def test_decode_imports_stay_light() -> None:
    code = (
        "import sys; from logger.cli import main; "
        "main(['decode', '" + str(LIBMBUS / "test-frames" / "EDC.hex") + "']); "
        "assert 'asyncua' not in sys.modules and 'tpm2_pytss' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_readout_xml_numbers_records_across_frames(tmp_path: Path) -> None:
    case = next(c for c in jmbus()["wired_telegram_cases"] if len(c["frames_hex"]) > 2)
    path = tmp_path / "readout.hex"
    path.write_text(" ".join(case["frames_hex"]))
    proc = run("--format", "xml", str(path))
    assert proc.returncode == 0, proc.stderr
    xml = proc.stdout.decode()
    assert xml.count("<MBusData>") == 1 and xml.count("<SlaveInformation>") == 1
    total = sum(case["expected_record_counts"]) + len(case["frames_hex"])  # + DIF 0F/1F tails
    assert f'<DataRecord id="{total - 1}" frame="{len(case["frames_hex"]) - 1}">' in xml
    normalized = run("--format", "xml", "--normalized", str(path)).stdout.decode()
    assert normalized.count("<MBusData>") == len(case["frames_hex"])

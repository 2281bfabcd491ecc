"""The systemd units: they parse, verify, and the logger's exposure stays at 2.5 or below.

``systemd-analyze security --offline=true`` scores a unit file without a running systemd; the
score is deterministic for a given systemd version (252 on Debian 12), so it is asserted.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.requires import require

SYSTEMD = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service")) + sorted(SYSTEMD.glob("*.timer"))
# Commands these units run that exist only once the package / cloud venv is installed.
NOT_HERE = ("/usr/bin/mbus-logger", "/opt/mbus-ua-logger-cloud/venv/bin/")


@pytest.fixture
def systemd_analyze() -> None:
    """The tests that run systemd-analyze need it (``make setup`` installs it): fail in CI.

    The others read the unit files themselves and run anywhere.
    """
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert "Invalid syntax" not in proc.stderr and "Unknown" not in proc.stderr, proc.stderr
    return float(match.group(1))


def test_logger_exposure_is_at_most_2_5(systemd_analyze):
    score = exposure(SYSTEMD / "mbus-logger.service")
    assert score <= 2.5
    # the tool's own threshold agrees (it takes tenths)
    proc = subprocess.run(
        [
            "systemd-analyze",
            "security",
            "--offline=true",
            "--threshold=25",
            str(SYSTEMD / "mbus-logger.service"),
        ],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0


@pytest.mark.parametrize(
    "name",
    [
        "mbus-receiver.service",
        "mbus-provision-crl-refresh.service",
        "mbus-provision-remind.service",
    ],
)
def test_cloud_units_are_hardened_too(systemd_analyze, name):
    assert exposure(SYSTEMD / name) <= 2.5


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_verify(systemd_analyze, unit):
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    problems = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and not ("is not executable" in line and any(p in line for p in NOT_HERE))
    ]
    assert problems == []


def _settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_logger_unit_has_what_the_daemon_needs_and_no_more():
    s = _settings(SYSTEMD / "mbus-logger.service")
    assert s["ExecStart"] == ["/usr/bin/mbus-logger run --config /etc/mbus-logger/logger.toml"]
    assert s["Type"] == ["notify"] and s["Restart"] == ["always"]
    assert s["User"] == ["mbus-logger"] and s["StateDirectory"] == ["mbus-logger"]
    assert int(s["WatchdogSec"][0].rstrip("s")) > 0
    assert s["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in s["DeviceAllow"]}
    assert allowed == {"char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-ttyS", "/dev/tpmrm0"}
    assert s["LoadCredential"] == ["mbus-device-key:/etc/mbus-logger/device-key.secret"]
    assert s["ProtectSystem"] == ["strict"] and s["NoNewPrivileges"] == ["yes"]
    assert s["CapabilityBoundingSet"] == [""]


def test_timers_start_their_services():
    for timer in SYSTEMD.glob("*.timer"):
        service = timer.with_suffix(".service")
        assert service.exists(), f"{timer.name} has no {service.name}"
        s = _settings(timer)
        assert s["Persistent"] == ["true"] and s["OnCalendar"]
        assert _settings(service)["Type"] == ["oneshot"]


def _exec_start(unit: Path) -> list[str]:
    import shlex

    value = _settings(unit)["ExecStart"][0]
    value = value.replace("%d", "/run/credentials/unit").replace("$REMIND_ARGS", "")
    value = value.replace("${RECEIVER_LISTEN}", "opc.tcp://127.0.0.1:4840")
    value = value.replace("${MBUS_RECEIVER_DB}", "sqlite:///var/lib/mbus-receiver/receiver.db")
    return shlex.split(value)


@pytest.mark.parametrize(
    "name",
    [
        "mbus-receiver.service",
        "mbus-provision-crl-refresh.service",
        "mbus-provision-remind.service",
        "mbus-logger.service",
    ],
)
def test_command_lines_parse_with_the_real_programs(name):
    """The unit's ExecStart is accepted by the parser of the program it names (no unknown or
    misplaced options, nothing required missing), and selects a handler."""
    import importlib

    argv = _exec_start(SYSTEMD / name)
    program = Path(argv[0]).name
    if program == "mbus-logger":
        parser = importlib.import_module("logger.cli")._parser(argv[1])
    elif program == "mbus-receiver":
        parser = importlib.import_module("receiver.cli").build_parser()
    else:
        parser = importlib.import_module("provisioning.cli").build_parser()
    args = parser.parse_args(argv[1:])  # SystemExit(2) on any mistake
    assert callable(getattr(args, "handler", None))

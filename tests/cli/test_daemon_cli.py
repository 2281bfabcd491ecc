"""``mbus-logger run | check-config | status | buffer``: exit codes, formats, exact exports."""

from __future__ import annotations

import csv
import io
import itertools
import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hil.modbus_sim import ModbusSim
from logger.cli import main
from logger.config import PROFILES
from tests.support.daemon import MBUS_LOGGER, ROOT, DaemonProcess, config_toml

EXAMPLE = ROOT / "deploy" / "config" / "logger.example.toml"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_accepts_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "check-config", str(EXAMPLE))
    assert code == 0
    assert "ok (2 buses, 6 meters" in out
    code, out, _ = cli(capsys, "check-config", str(EXAMPLE), "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["valid"] is True and doc["meters"] == 6 and doc["uplink"] is True


def test_check_config_lists_every_problem_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'default_interval = "7m"\n'  # line 1: does not divide a day
        "[installation]\n"
        'clock = "sometimes"\n'  # line 3
        "[[meters]]\n"
        'id = "x"\n'
        'kind = "mbus"\n'
        'bus = "nowhere"\n'  # line 7
        "primary_address = 300\n"  # line 8
    )
    code, _, err = cli(capsys, "check-config", str(bad))
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0] == f"{bad}: 4 problem(s)"
    problems = [x.strip() for x in lines[1:]]
    assert problems[0].startswith(f"{bad}:1: default_interval:")
    assert problems[1].startswith(f"{bad}:3: installation.clock:")
    assert any(x.startswith(f"{bad}:7: meters[0].bus: no bus named 'nowhere'") for x in problems)
    assert any(x.startswith(f"{bad}:8: meters[0].primary_address:") for x in problems)
    code, out, _ = cli(capsys, "check-config", str(bad), "--format", "json")
    doc = json.loads(out)
    assert code == 2 and doc["valid"] is False and len(doc["problems"]) == 4
    assert {p["where"] for p in doc["problems"]} >= {f"{bad}:1", f"{bad}:8"}


def test_run_refuses_an_invalid_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[meters]]\nid = "x"\nkind = "modbus_tcp"\n')
    proc = subprocess.run(
        [*MBUS_LOGGER, "run", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr and f"{bad}:1" in proc.stderr
    assert not (tmp_path / "buffer.db").exists()


def test_status_and_buffer_without_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "logger.toml"
    config.write_text(config_toml(tmp_path / "state", []))
    code, _, err = cli(capsys, "status", "--config", str(config))
    assert code == 3 and "no status file" in err
    code, _, err = cli(capsys, "buffer", "stats", "--config", str(config))
    assert code == 1 and "no buffer database" in err


@pytest.fixture(scope="module")
def ran_daemon(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real daemon reading a simulated Modbus TCP meter until 3 ticks are committed; the
    tests below look at it while it runs and after SIGTERM."""
    tmp = tmp_path_factory.mktemp("daemon")
    with ModbusSim(PROFILES["eastron_sdm120"], unit_id=1) as sim:
        meter = {
            "id": "sdm120",
            "kind": "modbus_tcp",
            "host": f"{sim.host}:{sim.port}",
            "profile": "eastron_sdm120",
            "interval": "1s",
        }
        config = tmp / "logger.toml"
        config.write_text(config_toml(tmp / "state", [meter], clock="unsynchronised"))
        daemon = DaemonProcess(config).start()
        try:
            daemon.wait_commits(3, timeout=60)
            running: dict[str, Any] = {}
            for name, argv in {
                "status": ["status", "--config", str(config)],
                "status_json": ["status", "--config", str(config), "--format", "json"],
                "stats_json": ["buffer", "stats", "--config", str(config), "--format", "json"],
            }.items():
                running[name] = subprocess.run(
                    [*MBUS_LOGGER, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
                )
            code = daemon.stop()
        finally:
            daemon.__exit__()
        yield {
            "config": config,
            "running": running,
            "code": code,
            "daemon": daemon,
            "values": [step["values"] for step in sim.served],
        }


def test_run_reports_commits_and_stops_cleanly_on_sigterm(ran_daemon: dict[str, Any]) -> None:
    daemon = ran_daemon["daemon"]
    assert ran_daemon["code"] == 0
    assert any("stop requested" in line for line in daemon.lines)
    assert daemon.lines[-1].endswith("stopped")
    seqs = [(c.first, c.last) for c in daemon.commits]
    assert seqs[0][0] == 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(seqs))


def test_status_while_running_and_after_the_stop(
    ran_daemon: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    running = ran_daemon["running"]
    assert running["status"].returncode == 0, running["status"].stderr
    text = running["status"].stdout
    assert "daemon:     running" in text
    assert "clock:      NOT synchronised" in text
    assert "sdm120  modbus_tcp  up" in text
    doc = json.loads(running["status_json"].stdout)
    assert doc["running"] is True and doc["stale"] is False
    assert doc["meters"][0]["meter"] == "sdm120" and doc["meters"][0]["state"] == "up"
    assert doc["buffer"]["depth"] >= 1 and doc["buffer"]["lost_total"] == 0
    assert doc["last_poll"]["commit"]["epoch"] == doc["buffer"]["epoch"]
    code, out, _ = cli(capsys, "status", "--config", str(ran_daemon["config"]))
    assert code == 1 and "NOT running (stopped cleanly)" in out


def test_buffer_stats_and_exports_keep_values_exact(
    ran_daemon: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    config = str(ran_daemon["config"])
    stats = json.loads(ran_daemon["running"]["stats_json"].stdout)
    assert stats["losses"] == [] and stats["oldest_seq"] == 1
    code, out, _ = cli(capsys, "buffer", "stats", "--config", config, "--format", "json")
    final = json.loads(out)
    last = ran_daemon["daemon"].commits[-1].last
    assert code == 0 and final["newest_seq"] == last and final["depth"] == last

    code, out, _ = cli(capsys, "buffer", "export", "--config", config)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["seq"] for r in rows] == list(range(1, last + 1))
    assert {r["epoch"] for r in rows} == {final["epoch"]}
    assert all(r["flags"] == ["clock_unsynced"] for r in rows)
    # Each poll's values are exactly one step the simulator served (as text, not floats).
    polls: dict[str, dict[str, str]] = {}
    for r in rows:
        polls.setdefault(r["logger_time"], {})[r["key"]] = r["value"]
    for values in polls.values():
        assert values in ran_daemon["values"]

    code, out, _ = cli(
        capsys, "buffer", "export", "--config", config, "--since", "3", "--format", "csv"
    )
    table = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and int(table[0]["seq"]) == 4 and len(table) == last - 3
    assert [r["value"] for r in table] == [r["value"] for r in rows[3:]]
    assert table[0]["flags"] == "clock_unsynced"


def test_sigint_stops_like_sigterm(tmp_path: Path) -> None:
    """SIGINT behaves like SIGTERM (a technician's Ctrl-C)."""
    config = tmp_path / "logger.toml"
    config.write_text(config_toml(tmp_path / "state", []))
    with DaemonProcess(config) as daemon:
        daemon.wait_line("started: 0 meters")
        daemon.signal(signal.SIGINT)
        assert daemon.wait() == 0  # no SIGTERM after it: the SIGINT alone must stop it


def test_status_of_a_killed_daemon_says_not_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "logger.toml"
    config.write_text(config_toml(tmp_path / "state", []))
    with DaemonProcess(config) as daemon:
        daemon.wait_line("started: 0 meters")
        daemon.kill()
    # The file still says "running" (SIGKILL leaves no time to say otherwise): the pid decides.
    doc = json.loads((tmp_path / "state" / "status.json").read_text())
    assert doc["state"] == "running"
    code, out, _ = cli(capsys, "status", "--config", str(config), "--format", "json")
    shown = json.loads(out)
    assert code == 1 and shown["running"] is False


def test_run_refuses_a_buffer_from_a_newer_version(tmp_path: Path) -> None:
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "buffer.db")
    db.execute("CREATE TABLE future (x)")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    config = tmp_path / "logger.toml"
    config.write_text(config_toml(state, []))
    proc = subprocess.run(
        [*MBUS_LOGGER, "run", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4
    assert "schema version 99 is newer" in proc.stderr
    assert sqlite3.connect(state / "buffer.db").execute("PRAGMA user_version").fetchone()[0] == 99

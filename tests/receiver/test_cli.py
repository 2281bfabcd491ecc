"""``mbus-receiver`` operator commands against real storages (SQLite; PostgreSQL where noted)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from receiver.cli import main
from receiver.storage import MeterHealth, StatusReport, open_storage
from tests.support.postgres import PostgresServer, free_port
from tests.support.receiver_storage import T0, batch, execute_raw, run

DEV = "urn:example:logger:0001"
DEV2 = "urn:example:logger:0002"
THUMB = "c" * 40


def seed(url: str) -> None:
    async def scenario() -> None:
        storage = await open_storage(url)
        try:
            columns = batch(0, 6, meter="heat")
            columns["Value"][0] = "12.340"
            columns["Value"][1] = 'say "hi", twice'
            await storage.push(DEV, THUMB, "e1", columns)
            await storage.push(DEV2, "d" * 40, "e9", batch(0, 2, meter="water"))
            soon = datetime.now(UTC) + timedelta(days=30)
            await storage.record_contact(DEV, THUMB, soon, peer="192.0.2.1:5000")
            await storage.report_installation(DEV, THUMB, "SN-0001", "Boiler room", "1.2.0")
            await storage.report_status(
                DEV,
                THUMB,
                StatusReport(
                    buffer_depth=17,
                    oldest_age_s=42.4,
                    losses=0,
                    cert_days_left=30,
                    config_version=0,
                    meters=(
                        MeterHealth("heat", True, 0, T0, ""),
                        MeterHealth("water", False, 4, None, "timeout"),
                    ),
                ),
            )
            await storage.audit("certificate.rejected", peer="203.0.113.5:1", detail="other CA")
            await storage.audit("certificate.revoked", device_uri=DEV2, thumbprint="d" * 40)
        finally:
            await storage.close()

    run(scenario())


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite://{tmp_path / 'receiver.db'}"
    seed(url)
    return url


def test_devices_text_and_json(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices", "--db", db]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split()[:4] == ["URI", "SERIAL", "LOCATION", "LAST_CONTACT"]
    row = next(line for line in text if line.startswith(DEV + " "))
    assert "SN-0001" in row and "Boiler room" in row and THUMB in row and " 17 " in row
    assert main(["devices", "--db", db, "--format", "json"]) == 0
    docs = {d["application_uri"]: d for d in json.loads(capsys.readouterr().out)}
    first = docs[DEV]
    assert (first["serial"], first["location"], first["firmware"]) == (
        "SN-0001",
        "Boiler room",
        "1.2.0",
    )
    assert (first["buffer_depth"], first["oldest_age_s"], first["losses"]) == (17, 42.4, 0)
    assert first["thumbprint"] == THUMB and first["cert_not_after"].startswith("20")
    assert "certificate expires in 29 days" in first["status"]
    assert "1 of 2 meters failing" in first["status"]
    assert [m["meter"] for m in first["meters"]] == ["heat", "water"]
    assert docs[DEV2]["status"] == "ok" and docs[DEV2]["buffer_depth"] is None


def test_export_csv_keeps_values_exact(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--db", db]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 8
    assert rows[0]["value"] == "12.340" and rows[1]["value"] == 'say "hi", twice'
    assert rows[0]["device"] == DEV and rows[0]["sequence"] == "0"
    assert rows[0]["logger_time"] == T0.isoformat() and rows[0]["source_time"] == ""
    assert main(["export", "--db", db, "--device", DEV2]) == 0
    assert [r["meter"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))] == [
        "water",
        "water",
    ]


def test_export_jsonl_with_filters(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    since = (T0 + timedelta(minutes=4)).isoformat()
    assert (
        main(["export", "--db", db, "--meter", "heat", "--since", since, "--format", "jsonl"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    docs = [json.loads(line) for line in lines]
    assert [(d["device"], d["sequence"]) for d in docs] == [(DEV, 4), (DEV, 5)]
    assert docs[0]["value"] == "4.004" and isinstance(docs[0]["value"], str)
    # A naive --since is UTC; a date alone is midnight.
    assert main(["export", "--db", db, "--since", "2030-01-01", "--format", "jsonl"]) == 0
    assert capsys.readouterr().out == ""


def test_export_with_a_bad_since_is_a_usage_error(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "--db", db, "--since", "last tuesday"]) == 2
    assert "--since 'last tuesday' is not an ISO 8601" in capsys.readouterr().err


def test_config_set_and_show(
    db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = tmp_path / "cloud.json"
    doc.write_text('{"meters": [{"id": "heat", "bus": "mbus0"}], "default_interval": "15m"}')
    assert main(["config", "set", "--db", db, "--device", DEV, str(doc)]) == 0
    assert capsys.readouterr().out.strip() == f"{DEV}: configuration version 1"
    assert main(["config", "set", "--db", db, "--device", DEV, str(doc), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"device": DEV, "version": 1, "changed": False}
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"meters": []}'))
    assert main(["config", "set", "--db", db, "--device", DEV, "-"]) == 0
    assert "version 2" in capsys.readouterr().out
    assert main(["config", "show", "--db", db, "--device", DEV, "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["version"], shown["configuration"]) == (2, {"version": 2, "meters": []})
    assert "@" in shown["set_by"]
    assert main(["config", "show", "--db", db, "--device", DEV]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# device {DEV}, version 2")
    assert json.loads(out.split("\n", 1)[1]) == {"version": 2, "meters": []}
    # The change is in the audit log, attributed to the operator.
    assert main(["audit", "list", "--db", db, "--format", "json"]) == 0
    events = [e["event"] for e in json.loads(capsys.readouterr().out)]
    assert events.count("config.set") == 2


def test_config_refusals(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"uplink": {"security_mode": "None"}}')
    assert main(["config", "set", "--db", db, "--device", DEV, str(bad)]) == 2
    assert "'uplink' cannot be set from the cloud" in capsys.readouterr().err
    assert main(["config", "set", "--db", db, "--device", DEV, str(tmp_path / "none")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["config", "show", "--db", db, "--device", DEV]) == 1
    assert f"no configuration set for {DEV}" in capsys.readouterr().err


def test_audit_verify_intact_then_tampered(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", "--db", db]) == 0
    out = capsys.readouterr().out
    assert out.startswith("audit log intact: 2 entries, head ")
    head = out.split()[-1]
    assert main(["audit", "verify", "--db", db, "--anchor", head]) == 0
    assert main(["audit", "verify", "--db", db, "--anchor", "ab" * 32]) == 1
    assert "is not in the log" in capsys.readouterr().out
    run(execute_raw(db, "UPDATE audit SET peer = '198.51.100.1:1' WHERE id = 1"))
    assert main(["audit", "verify", "--db", db]) == 1
    out = capsys.readouterr().out
    assert out.startswith("audit log TAMPERED: first bad entry 1: entry 1 (certificate.rejected")
    assert main(["audit", "verify", "--db", db, "--format", "json"]) == 1
    verdict = json.loads(capsys.readouterr().out)
    assert (verdict["ok"], verdict["first_bad_id"], verdict["entries"]) == (False, 1, 2)


def test_audit_list(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "TIME", "EVENT", "DEVICE", "THUMBPRINT", "PEER", "DETAIL"]
    assert "certificate.rejected" in lines[1] and "other CA" in lines[1]
    assert main(["audit", "list", "--db", db, "--device", DEV2, "--format", "json"]) == 0
    assert [e["id"] for e in json.loads(capsys.readouterr().out)] == [2]
    assert main(["audit", "list", "--db", db, "--after-id", "1", "--limit", "5"]) == 0
    assert "certificate.revoked" in capsys.readouterr().out


def test_missing_database_and_unreachable_postgres(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["devices", "--db", str(tmp_path / "nope.db")]) == 2
    assert "no receiver database at" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/receiver"
    assert main(["audit", "verify", "--db", url]) == 3
    err = capsys.readouterr().err
    assert "unreachable" in err and "secret" not in err


def test_db_defaults_to_the_environment(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MBUS_RECEIVER_DB", db)
    assert main(["audit", "verify"]) == 0
    monkeypatch.delenv("MBUS_RECEIVER_DB")
    with pytest.raises(SystemExit) as info:
        main(["audit", "verify"])
    assert info.value.code == 2
    assert "--db" in capsys.readouterr().err


def test_serve_without_a_server_module_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "receiver.server", None)
    assert main(["serve", "--dir", str(tmp_path)]) == 2
    assert "no OPC UA server" in capsys.readouterr().err


def test_serve_hands_its_options_to_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = {}

    def serve_main(args: object) -> int:
        seen.update(vars(args))
        return 4

    fake = types.ModuleType("receiver.server")
    fake.serve_main = serve_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "receiver.server", fake)
    secret = tmp_path / "pass"
    argv = [
        "serve",
        "--dir",
        str(tmp_path),
        "--listen",
        "opc.tcp://127.0.0.1:0",
        "--db",
        "sqlite:///x.db",
        "--passphrase-file",
        str(secret),
    ]
    assert main(argv) == 4
    assert seen["dir"] == tmp_path and seen["listen"] == "opc.tcp://127.0.0.1:0"
    assert seen["db"] == "sqlite:///x.db" and seen["passphrase_file"] == secret


def test_console_script_streams_an_export_into_a_closed_pipe(tmp_path: Path) -> None:
    # The installed entry point, as operators run it: `mbus-receiver export | head -1`, with
    # far more output than a pipe buffers, so the reader really goes away mid-stream.
    db = f"sqlite://{tmp_path / 'big.db'}"

    async def fill() -> None:
        storage = await open_storage(db)
        try:
            for k in range(5):
                await storage.push(DEV, THUMB, "e1", batch(k * 10_000, 10_000))
        finally:
            await storage.close()

    run(fill())
    exe = Path(sys.executable).with_name("mbus-receiver")
    proc = subprocess.run(
        ["/bin/bash", "-c", f"'{exe}' export --db '{db}' | head -1; exit ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.startswith("device,epoch,sequence,meter,record,value")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


@pytest.mark.postgres
def test_commands_on_postgres(postgres: PostgresServer, capsys: pytest.CaptureFixture[str]) -> None:
    url = run(postgres.create_schema("cli"))
    seed(url)
    assert main(["export", "--db", url, "--format", "jsonl", "--device", DEV]) == 0
    values = [json.loads(line)["value"] for line in capsys.readouterr().out.splitlines()]
    assert values[:2] == ["12.340", 'say "hi", twice'] and len(values) == 6
    assert main(["audit", "verify", "--db", url]) == 0
    capsys.readouterr()
    run(execute_raw(url, "DELETE FROM audit WHERE id = 1"))
    assert main(["audit", "verify", "--db", url]) == 1
    assert "first bad entry 1: entry 1 missing" in capsys.readouterr().out


def test_text_tables_escape_control_characters(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A hostile peer or logger must not forge audit lines or drive the operator's terminal.
    async def hostile() -> None:
        storage = await open_storage(db)
        try:
            await storage.audit("cert.rejected", detail="ok\n5  fake.event  \x1b[2J")
            await storage.report_installation(DEV2, "d" * 40, "SN-2", "roof\r\nhidden", "1")
        finally:
            await storage.close()

    run(hostile())
    assert main(["audit", "list", "--db", db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4  # header + 3 entries, no forged line
    assert "ok\\x0a5  fake.event  \\x1b[2J" in lines[3]
    assert main(["devices", "--db", db]) == 0
    assert "roof\\x0d\\x0ahidden" in capsys.readouterr().out
    assert main(["audit", "list", "--db", db, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[2]["detail"] == "ok\n5  fake.event  \x1b[2J"

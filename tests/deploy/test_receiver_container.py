"""The receiver's container recipe. No container engine runs here, so the image is not built:
check that the compose file is well-formed, wires PostgreSQL 15 to the receiver without secrets
in the environment, and that its command line is one the real receiver accepts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from receiver.cli import build_parser

HERE = Path(__file__).resolve().parents[2] / "deploy" / "receiver"


def compose() -> dict:
    return yaml.safe_load((HERE / "compose.yaml").read_text())


def test_compose_wires_postgres_15_and_the_receiver():
    doc = compose()
    db, receiver = doc["services"]["db"], doc["services"]["receiver"]
    assert db["image"].endswith("postgres:15-bookworm")
    assert receiver["depends_on"]["db"]["condition"] == "service_healthy"
    assert receiver["environment"]["MBUS_RECEIVER_DB"].startswith("postgresql://")
    assert ":" not in receiver["environment"]["MBUS_RECEIVER_DB"].split("//")[1].split("@")[0]
    assert "internal" in db["networks"] and "ports" not in db
    assert doc["networks"]["internal"]["internal"] is True
    for name in (*db["secrets"], *receiver["secrets"]):
        assert name in doc["secrets"]
    assert receiver["build"]["dockerfile"] == "deploy/receiver/Containerfile"


def test_commands_parse_with_the_real_receiver():
    command = compose()["services"]["receiver"]["command"]
    args = build_parser().parse_args(command)
    assert args.handler.__name__ == "_serve"
    assert str(args.passphrase_file).startswith("/run/secrets/")
    text = (HERE / "Containerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*?\])", text, re.S | re.M).group(1).replace("\\\n", ""))
    assert str(build_parser().parse_args(cmd).dir) == "/etc/mbus-receiver/server"


def test_containerfile_pins_versions_and_installs_the_receiver_extra():
    text = (HERE / "Containerfile").read_text()
    assert '-c requirements/dev.lock ".[receiver]"' in text
    assert "USER mbus-receiver" in text
    assert text.count("FROM docker.io/library/debian:bookworm-slim") == 2

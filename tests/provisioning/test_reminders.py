"""Reminders to a real local SMTP server (aiosmtpd) and a local HTTP webhook, once each."""

from __future__ import annotations

import datetime as dt
import email
import json
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from provisioning import reminders
from provisioning.profile import utcnow
from provisioning.registry import Registry
from tests.provisioning.conftest import Cli
from tests.support.pki import TestPki


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 OK"


class _FreePortController(Controller):
    """aiosmtpd on port 0: read the bound port back before the self-test connection."""

    def _trigger_server(self) -> None:
        server: Any = self.server
        self.port = server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtp() -> Iterator[tuple[_Inbox, int]]:
    inbox = _Inbox()
    controller = _FreePortController(inbox, hostname="127.0.0.1", port=0)
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()


@pytest.fixture
def webhook() -> Iterator[tuple[list[dict[str, Any]], str]]:
    posts: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            posts.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield posts, f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def reminder_rows(cli: Cli) -> int:
    with Registry(cli.pki / "registry.sqlite") as reg:
        return int(reg._db.execute("SELECT count(*) FROM reminders").fetchone()[0])


def test_reminders_once_per_certificate_and_threshold(
    cli: Cli, smtp: tuple[_Inbox, int], webhook: tuple[list[dict[str, Any]], str]
) -> None:
    inbox, port = smtp
    posts, url = webhook
    pki = TestPki.create(cli.base)  # the CLI's --pki directory
    far = pki.device(days=400)  # outside the window
    d100 = pki.device(days=100)
    d20 = pki.device(days=20)
    d5 = pki.device(days=5)
    pki.close()
    args = (
        "remind",
        "--smtp",
        f"127.0.0.1:{port}",
        "--from",
        "pki@provider.example",
        "--webhook",
        url,
        "--format",
        "json",
    )

    # Dry run: the list, nothing sent, nothing recorded.
    r = cli.provision("remind", "--dry-run", "--format", "json")
    assert r.code == 0, r.err
    assert {s["serial"] for s in r.json()["sent"]} == {d100.serial, d20.serial, d5.serial}
    assert inbox.messages == [] and posts == [] and reminder_rows(cli) == 0

    r = cli.provision(*args)
    assert r.code == 0, r.err
    sent = {s["serial"]: s["threshold_days"] for s in r.json()["sent"]}
    assert sent == {d100.serial: 183, d20.serial: 30, d5.serial: 7}
    assert len(inbox.messages) == 3 and len(posts) == 3
    for rcpt, _msg in inbox.messages:
        assert rcpt == ["pki@acme.example"]  # the organization's contact
    bodies = {msg["Subject"]: msg.get_payload() for _, msg in inbox.messages}
    device = d20
    body = next(b for s, b in bodies.items() if device.serial in s)
    assert device.application_uri in body
    from provisioning.profile import thumbprint

    assert thumbprint(device.cert) in body
    assert {p["serial"] for p in posts} == {d100.serial, d20.serial, d5.serial}
    assert all(p["event"] == "certificate-expiry" for p in posts)
    assert far.serial not in {p["serial"] for p in posts}

    # Again: nothing new.
    r = cli.provision(*args)
    assert r.code == 0 and r.json()["sent"] == []
    assert len(inbox.messages) == 3 and len(posts) == 3

    # 71 days later the 100-day certificate crosses 30 days: exactly one more reminder;
    # the other two have expired (the registry shows them as expired, no reminder).
    later = utcnow() + dt.timedelta(days=71)
    with Registry(cli.pki / "registry.sqlite") as reg:
        result = reminders.run(
            reg,
            later,
            smtp=reminders.Smtp("127.0.0.1", port, "pki@provider.example"),
            webhook=reminders.Webhook(url),
        )
        assert [(x.serial, x.threshold) for x in result.sent] == [(d100.serial, 30)]
        again = reminders.run(
            reg, later, smtp=reminders.Smtp("127.0.0.1", port, "pki@provider.example")
        )
        assert again.sent == []
        rows = {r["serial"]: r["state"] for r in reg.device_rows(None, later)}
    assert rows[d20.serial] == "expired" and rows[d100.serial] == "manufactured"
    assert len(inbox.messages) == 4 and len(posts) == 4


def test_undelivered_reminder_is_not_recorded(cli: Cli) -> None:
    pki = TestPki.create(cli.base)
    pki.device(days=20)
    pki.close()
    r = cli.provision("remind", "--smtp", "127.0.0.1:1", "--from", "pki@provider.example")
    assert r.code == 3
    assert "FAILED" in r.out
    assert reminder_rows(cli) == 0
    r = cli.provision("remind")
    assert r.code == 2 and "no reminder channel" in r.err


def test_thresholds() -> None:
    assert reminders.thresholds_for(183) == (183, 30, 7)
    assert reminders.thresholds_for(60) == (60, 30, 7)
    assert reminders.thresholds_for(10) == (10, 7)
    with pytest.raises(ValueError):
        reminders.thresholds_for(0)

"""Expiry reminders: e-mail (SMTP) and webhook, once per certificate and threshold.

The reference use case reminds the organization half a year before a logger's certificate
expires, so that a replacement can be ordered; we add 30- and 7-day reminders for the ones
nobody acted on. A run (``mbus-provision remind``, from a daily timer) looks at every
certificate still in use - loggers, receivers, operator clients and organization CAs - and for
each one that has crossed a threshold not yet recorded sends one reminder (the most urgent
crossed threshold) and records every threshold it has crossed, so a certificate first seen at
20 days left gets one mail, not two. A reminder is recorded only when every channel
accepted it; a failed channel means it is sent again on the next run (at most a duplicate,
never a silent loss). ``--dry-run`` sends and records nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import smtplib
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from provisioning.registry import Registry

_LOGGER = logging.getLogger(__name__)

DEFAULT_WITHIN_DAYS = 183
THRESHOLDS = (183, 30, 7)
_KINDS = ("logger", "receiver", "operator", "org-ca")


class DeliveryError(Exception):
    """A reminder channel (SMTP server, webhook) refused or could not be reached."""


@dataclass(frozen=True)
class Reminder:
    thumbprint: str
    kind: str
    org: str
    contact: str
    serial: str | None
    application_uri: str | None
    subject: str
    not_after: dt.datetime
    days_left: int
    threshold: int
    crossed: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "thumbprint": self.thumbprint,
            "kind": self.kind,
            "org": self.org,
            "contact": self.contact,
            "serial": self.serial,
            "application_uri": self.application_uri,
            "subject": self.subject,
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": self.days_left,
            "threshold_days": self.threshold,
        }

    def text(self) -> str:
        what = {
            "logger": "logger",
            "receiver": "receiver",
            "operator": "operator client",
            "org-ca": "organization CA",
        }[self.kind]
        lines = [
            f"The certificate of {what} {self.serial or self.subject} of organization "
            f"{self.org} expires on {self.not_after:%Y-%m-%d} ({self.days_left} days left).",
            "",
            f"  serial number:   {self.serial or '-'}",
            f"  ApplicationUri:  {self.application_uri or '-'}",
            f"  thumbprint:      {self.thumbprint}",
            f"  subject:         {self.subject}",
            "",
            "Please order a replacement: 'mbus-provision device renew' for a logger with a "
            "TPM, or a new certificate from your provider.",
        ]
        return "\n".join(lines) + "\n"


def thresholds_for(within: int) -> tuple[int, ...]:
    """The thresholds of one run: ``within`` and the standard ones below it, descending."""
    if within < 1:
        raise ValueError(f"--within must be at least 1 day, got {within}")
    return tuple(sorted({within, *(t for t in THRESHOLDS if t < within)}, reverse=True))


def due(
    registry: Registry,
    now: dt.datetime,
    within: int = DEFAULT_WITHIN_DAYS,
    to_override: str | None = None,
) -> list[Reminder]:
    """The reminders this run would send, most urgent first."""
    thresholds = thresholds_for(within)
    contacts = {o["name"]: o["contact"] for o in registry.orgs()}
    out: list[Reminder] = []
    for kind in _KINDS:
        for row in registry.certificates(kind=kind):
            if row.state not in ("manufactured", "installed", "active"):
                continue
            if row.not_after <= now:
                continue  # expired already: the registry shows it, a reminder is too late
            left = row.not_after - now
            days_left = left.days
            crossed = tuple(t for t in thresholds if left <= dt.timedelta(days=t))
            pending = tuple(t for t in crossed if not registry.reminder_sent(row.thumbprint, t))
            if not pending:
                continue
            org = row.org or ""
            out.append(
                Reminder(
                    thumbprint=row.thumbprint,
                    kind=row.kind,
                    org=org,
                    contact=to_override or contacts.get(org, ""),
                    serial=row.device_serial,
                    application_uri=row.application_uri,
                    subject=row.subject,
                    not_after=row.not_after,
                    days_left=days_left,
                    threshold=min(pending),
                    crossed=pending,
                )
            )
    out.sort(key=lambda r: (r.not_after, r.thumbprint))
    return out


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    timeout: float = 30.0

    @classmethod
    def parse(cls, hostport: str, sender: str) -> Smtp:
        host, sep, port = hostport.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"invalid --smtp {hostport!r}: expected HOST:PORT")
        if "@" not in sender:
            raise ValueError(f"invalid --from {sender!r}: expected an e-mail address")
        return cls(host.strip("[]"), int(port), sender)

    def send(self, reminder: Reminder) -> None:
        if not reminder.contact:
            raise DeliveryError(f"no contact address for organization {reminder.org}")
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = reminder.contact
        msg["Subject"] = (
            f"[mbus-ua-logger] certificate of {reminder.serial or reminder.subject}"
            f" expires in {reminder.days_left} days"
        )
        msg.set_content(reminder.text())
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
                smtp.ehlo()
                if smtp.has_extn("starttls"):
                    smtp.starttls()
                    smtp.ehlo()
                smtp.send_message(msg)
        except (OSError, smtplib.SMTPException) as exc:
            raise DeliveryError(f"SMTP {self.host}:{self.port}: {exc}") from exc


@dataclass(frozen=True)
class Webhook:
    url: str
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"invalid --webhook {self.url!r}: expected an http(s) URL")

    def send(self, reminder: Reminder) -> None:
        body = json.dumps(
            {"event": "certificate-expiry", **reminder.as_dict(), "text": reminder.text()}
        ).encode()
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                if not 200 <= response.status < 300:
                    raise DeliveryError(f"webhook {self.url}: HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            raise DeliveryError(f"webhook {self.url}: HTTP {exc.code}") from exc
        except (OSError, urllib.error.URLError) as exc:
            raise DeliveryError(f"webhook {self.url}: {exc}") from exc


@dataclass
class RunResult:
    sent: list[Reminder]
    failed: list[tuple[Reminder, str]]
    dry_run: bool


def run(
    registry: Registry,
    now: dt.datetime,
    within: int = DEFAULT_WITHIN_DAYS,
    smtp: Smtp | None = None,
    webhook: Webhook | None = None,
    to_override: str | None = None,
    dry_run: bool = False,
) -> RunResult:
    """Send and record what is due; see the module docstring for the rules."""
    reminders = due(registry, now, within, to_override)
    result = RunResult([], [], dry_run)
    if dry_run:
        result.sent = reminders
        return result
    if smtp is None and webhook is None:
        raise ValueError(
            "no reminder channel: give --smtp HOST:PORT --from ADDR and/or "
            "--webhook URL (or --dry-run)"
        )
    channels = ",".join(name for name, ch in (("smtp", smtp), ("webhook", webhook)) if ch)
    for reminder in reminders:
        try:
            if smtp is not None:
                smtp.send(reminder)
            if webhook is not None:
                webhook.send(reminder)
        except DeliveryError as exc:
            _LOGGER.warning("reminder for %s not delivered: %s", reminder.thumbprint, exc)
            result.failed.append((reminder, str(exc)))
            continue
        with registry.transaction():
            for threshold in reminder.crossed:
                registry.record_reminder(reminder.thumbprint, threshold, channels, now)
        result.sent.append(reminder)
    return result

"""The fleet registry: one SQLite file in the PKI directory (``registry.sqlite``).

It answers the cloud provider's questions - which loggers exist, where they are installed,
which certificate each one uses, what expires when - and it is the audit trail of the PKI:
every issuance and revocation is a row in ``events`` with the certificate's thumbprint.

Tables:

* ``orgs``            organization, contact e-mail, its CA's thumbprint, revocation time
* ``publish_targets`` directories that get the org's CRLs (receiver directories)
* ``devices``         serial <-> ApplicationUri, one to one (both UNIQUE), org, location
* ``certificates``    every issued certificate: thumbprint, x509 serial, kind
                      (root/org-ca/logger/receiver/operator), org, device serial, not_after,
                      state (manufactured / installed / revoked / superseded / active), PEM
* ``events``          issue / revoke / supersede / install / crl, with thumbprint and detail
* ``reminders``       (thumbprint, threshold) once sent - the "exactly once" of reminders
* ``crls``            per CA: last CRL number, thisUpdate, nextUpdate

"expired" is not stored: it is derived when reading (not_after in the past), so a clock that
moves never leaves a stale state behind.

Writes happen in one transaction per command (``with registry.transaction():``); the PKI
commits the registry only after all files are in place, and removes the files when the commit
fails, so a failed command leaves neither a half-registered device nor an unrecorded
certificate.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS orgs (
    name TEXT PRIMARY KEY,
    contact TEXT NOT NULL,
    ca_thumbprint TEXT,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
CREATE TABLE IF NOT EXISTS publish_targets (
    org TEXT NOT NULL REFERENCES orgs(name),
    path TEXT NOT NULL,
    PRIMARY KEY (org, path)
);
CREATE TABLE IF NOT EXISTS devices (
    serial TEXT PRIMARY KEY,
    application_uri TEXT NOT NULL UNIQUE,
    org TEXT NOT NULL REFERENCES orgs(name),
    location TEXT,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS certificates (
    thumbprint TEXT PRIMARY KEY,
    serial_number TEXT NOT NULL,
    kind TEXT NOT NULL,
    org TEXT,
    device_serial TEXT REFERENCES devices(serial),
    subject TEXT NOT NULL,
    application_uri TEXT,
    issuer_thumbprint TEXT,
    not_before TEXT NOT NULL,
    not_after TEXT NOT NULL,
    state TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    revoked_at TEXT,
    revocation_reason TEXT,
    pem TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS certificates_device ON certificates(device_serial);
CREATE INDEX IF NOT EXISTS certificates_issuer ON certificates(issuer_thumbprint);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    thumbprint TEXT,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS reminders (
    thumbprint TEXT NOT NULL,
    threshold_days INTEGER NOT NULL,
    sent_at TEXT NOT NULL,
    channels TEXT NOT NULL,
    PRIMARY KEY (thumbprint, threshold_days)
);
CREATE TABLE IF NOT EXISTS crls (
    ca_thumbprint TEXT PRIMARY KEY,
    number INTEGER NOT NULL,
    this_update TEXT NOT NULL,
    next_update TEXT NOT NULL
);
"""

DEVICE_STATES = ("registered", "manufactured", "installed", "revoked", "superseded", "expired")


class RegistryError(Exception):
    """A registry rule was violated (duplicate serial, URI bound to another device, ...)."""


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class CertRow:
    thumbprint: str
    serial_number: int
    kind: str
    org: str | None
    device_serial: str | None
    subject: str
    application_uri: str | None
    issuer_thumbprint: str | None
    not_before: dt.datetime
    not_after: dt.datetime
    state: str
    revoked_at: dt.datetime | None
    revocation_reason: str | None
    pem: str


def effective_state(state: str, not_after: dt.datetime | None, now: dt.datetime) -> str:
    """The state to show: a certificate still in use whose validity has ended is "expired"
    (derived when reading, never stored; see the module docstring)."""
    if state in ("manufactured", "installed", "active") and not_after and not_after <= now:
        return "expired"
    return state


class Registry:
    """The registry database; one connection, used from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.executescript(SCHEMA)
        self._depth = 0

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (nested uses join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")
        finally:
            self._depth = 0

    def _event(self, action: str, thumbprint: str | None, detail: str, now: dt.datetime) -> None:
        self._db.execute(
            "INSERT INTO events (at, action, thumbprint, detail) VALUES (?,?,?,?)",
            (_iso(now), action, thumbprint, detail),
        )

    # -- organizations ----------------------------------------------------------------
    def add_org(self, name: str, contact: str, ca_thumbprint: str, now: dt.datetime) -> None:
        if self.org(name) is not None:
            raise RegistryError(f"organization {name!r} already exists")
        self._db.execute(
            "INSERT INTO orgs (name, contact, ca_thumbprint, created_at) VALUES (?,?,?,?)",
            (name, contact, ca_thumbprint, _iso(now)),
        )

    def org(self, name: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM orgs WHERE name = ?", (name,)).fetchone()
        return dict(row) if row else None

    def orgs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._db.execute("SELECT * FROM orgs ORDER BY name")]

    def mark_org_revoked(self, name: str, now: dt.datetime) -> None:
        self._db.execute("UPDATE orgs SET revoked_at = ? WHERE name = ?", (_iso(now), name))

    def add_publish_target(self, org: str, path: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO publish_targets (org, path) VALUES (?,?)", (org, path)
        )

    def publish_targets(self, org: str) -> list[str]:
        return [
            r["path"]
            for r in self._db.execute(
                "SELECT path FROM publish_targets WHERE org = ? ORDER BY path", (org,)
            )
        ]

    # -- devices ----------------------------------------------------------------------
    def device(self, serial: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM devices WHERE serial = ?", (serial,)).fetchone()
        return dict(row) if row else None

    def device_by_uri(self, uri: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM devices WHERE application_uri = ?", (uri,)).fetchone()
        return dict(row) if row else None

    def check_new_device(self, serial: str, uri: str) -> None:
        """Refuse a serial already registered or a URI bound to another serial."""
        existing = self.device(serial)
        if existing is not None:
            raise RegistryError(
                f"serial {serial} is already registered (ApplicationUri "
                f"{existing['application_uri']}, org {existing['org']}); "
                "use 'device renew' for a new certificate"
            )
        other = self.device_by_uri(uri)
        if other is not None:
            raise RegistryError(
                f"ApplicationUri {uri} is already bound to serial {other['serial']}"
            )

    def add_device(self, serial: str, uri: str, org: str, now: dt.datetime) -> None:
        self.check_new_device(serial, uri)
        self._db.execute(
            "INSERT INTO devices (serial, application_uri, org, created_at) VALUES (?,?,?,?)",
            (serial, uri, org, _iso(now)),
        )

    def set_location(self, serial: str, location: str | None) -> None:
        self._db.execute("UPDATE devices SET location = ? WHERE serial = ?", (location, serial))

    # -- certificates -----------------------------------------------------------------
    def add_certificate(
        self,
        *,
        thumbprint: str,
        serial_number: int,
        kind: str,
        org: str | None,
        device_serial: str | None,
        subject: str,
        application_uri: str | None,
        issuer_thumbprint: str | None,
        not_before: dt.datetime,
        not_after: dt.datetime,
        state: str,
        pem: str,
        now: dt.datetime,
    ) -> None:
        self._db.execute(
            "INSERT INTO certificates (thumbprint, serial_number, kind, org, device_serial, "
            "subject, application_uri, issuer_thumbprint, not_before, not_after, state, "
            "issued_at, pem) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                thumbprint,
                f"{serial_number:x}",
                kind,
                org,
                device_serial,
                subject,
                application_uri,
                issuer_thumbprint,
                _iso(not_before),
                _iso(not_after),
                state,
                _iso(now),
                pem,
            ),
        )
        self._event("issue", thumbprint, f"{kind} {subject}", now)

    @staticmethod
    def _row(row: sqlite3.Row) -> CertRow:
        return CertRow(
            thumbprint=row["thumbprint"],
            serial_number=int(row["serial_number"], 16),
            kind=row["kind"],
            org=row["org"],
            device_serial=row["device_serial"],
            subject=row["subject"],
            application_uri=row["application_uri"],
            issuer_thumbprint=row["issuer_thumbprint"],
            not_before=parse_iso(row["not_before"]),
            not_after=parse_iso(row["not_after"]),
            state=row["state"],
            revoked_at=parse_iso(row["revoked_at"]) if row["revoked_at"] else None,
            revocation_reason=row["revocation_reason"],
            pem=row["pem"],
        )

    def certificate(self, thumbprint: str) -> CertRow | None:
        row = self._db.execute(
            "SELECT * FROM certificates WHERE thumbprint = ?", (thumbprint,)
        ).fetchone()
        return self._row(row) if row else None

    def certificates(
        self,
        *,
        kind: str | None = None,
        org: str | None = None,
        device_serial: str | None = None,
        issuer: str | None = None,
    ) -> list[CertRow]:
        clauses, args = [], []
        for column, value in (
            ("kind", kind),
            ("org", org),
            ("device_serial", device_serial),
            ("issuer_thumbprint", issuer),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT * FROM certificates{where} ORDER BY issued_at, rowid", args
        )
        return [self._row(r) for r in rows]

    def set_state(self, thumbprint: str, state: str, now: dt.datetime, detail: str = "") -> None:
        self._db.execute(
            "UPDATE certificates SET state = ? WHERE thumbprint = ?", (state, thumbprint)
        )
        action = {"superseded": "supersede", "installed": "install"}.get(state, state)
        self._event(action, thumbprint, detail, now)

    def mark_revoked(self, thumbprint: str, reason: str | None, now: dt.datetime) -> None:
        self._db.execute(
            "UPDATE certificates SET state = 'revoked', revoked_at = ?, "
            "revocation_reason = ? WHERE thumbprint = ?",
            (_iso(now), reason, thumbprint),
        )
        self._event("revoke", thumbprint, reason or "unspecified", now)

    # -- CRL numbers ------------------------------------------------------------------
    def next_crl_number(
        self, ca_thumbprint: str, this_update: dt.datetime, next_update: dt.datetime
    ) -> int:
        row = self._db.execute(
            "SELECT number FROM crls WHERE ca_thumbprint = ?", (ca_thumbprint,)
        ).fetchone()
        number = (row["number"] if row else 0) + 1
        self._db.execute(
            "INSERT INTO crls (ca_thumbprint, number, this_update, next_update) VALUES (?,?,?,?)"
            " ON CONFLICT(ca_thumbprint) DO UPDATE SET number = excluded.number, "
            "this_update = excluded.this_update, next_update = excluded.next_update",
            (ca_thumbprint, number, _iso(this_update), _iso(next_update)),
        )
        self._event("crl", ca_thumbprint, f"CRL number {number}", this_update)
        return number

    # -- reminders --------------------------------------------------------------------
    def reminder_sent(self, thumbprint: str, threshold: int) -> bool:
        return (
            self._db.execute(
                "SELECT 1 FROM reminders WHERE thumbprint = ? AND threshold_days = ?",
                (thumbprint, threshold),
            ).fetchone()
            is not None
        )

    def record_reminder(
        self, thumbprint: str, threshold: int, channels: str, now: dt.datetime
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO reminders (thumbprint, threshold_days, sent_at, "
            "channels) VALUES (?,?,?,?)",
            (thumbprint, threshold, _iso(now), channels),
        )
        self._event("remind", thumbprint, f"{threshold} days via {channels}", now)

    def events(self, thumbprint: str | None = None) -> list[dict[str, Any]]:
        if thumbprint is None:
            rows = self._db.execute("SELECT * FROM events ORDER BY id")
        else:
            rows = self._db.execute(
                "SELECT * FROM events WHERE thumbprint = ? ORDER BY id", (thumbprint,)
            )
        return [dict(r) for r in rows]

    # -- listing ----------------------------------------------------------------------
    def device_rows(self, org: str | None, now: dt.datetime) -> list[dict[str, Any]]:
        """``registry list``: one row per device certificate (and per device without one)."""
        sql = (
            "SELECT d.serial, d.application_uri, d.org, d.location, c.thumbprint, c.state, "
            "c.not_after FROM devices d LEFT JOIN certificates c "
            "ON c.device_serial = d.serial AND c.kind = 'logger'"
        )
        args: list[Any] = []
        if org is not None:
            sql += " WHERE d.org = ?"
            args.append(org)
        sql += " ORDER BY d.serial, c.issued_at, c.rowid"
        out = []
        for r in self._db.execute(sql, args):
            not_after = parse_iso(r["not_after"]) if r["not_after"] else None
            # No state: a bound serial without a certificate yet.
            state = effective_state(r["state"] or "registered", not_after, now)
            out.append(
                {
                    "serial": r["serial"],
                    "application_uri": r["application_uri"],
                    "org": r["org"],
                    "thumbprint": r["thumbprint"],
                    "state": state,
                    "location": r["location"],
                    "not_after": r["not_after"],
                }
            )
        return out

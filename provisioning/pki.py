"""The PKI directory of ``mbus-provision``: CA keys, CA certificates, CRLs and the registry.

Layout (``--pki DIR``; directories 0700, CA keys encrypted PKCS#8 PEM 0600, openssl opens them
with the PKI passphrase; certificates and CRLs PEM)::

    DIR/
      registry.sqlite              the fleet registry (provisioning.registry)
      root/ca-cert.pem             root CA certificate
      root/ca-key.pem              root CA key (encrypted)
      root/crl.pem                 root CRL (revoked org CAs)
      orgs/<org>/ca-cert.pem       organization CA certificate
      orgs/<org>/ca-key.pem        organization CA key (encrypted)
      orgs/<org>/crl.pem           organization CRL (revoked loggers, receivers, operators)

Receiver directories written by ``server issue`` (and kept current as publish targets)::

    OUT/
      server-cert.pem              the receiver's certificate
      server-key.pem               its key, encrypted with MBUS_RECEIVER_PASSPHRASE, 0600
      chain.pem                    org CA, then root CA
      trust/<SKI-hex>.pem          org CA and root CA certificates (trust anchors)
      crl/<SKI-hex>.pem            their current CRLs, named by the issuing CA's SKI
      receiver.json                {"org", "application_uri", "dns", "thumbprint"}

The same ``trust/`` and ``crl/`` naming is used in a logger's state directory
(:mod:`logger.tpm.state`), so one reader serves both.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from logger.tpm.errors import KeyFileError
from logger.tpm.filekey import load_key_file, write_key_file
from logger.tpm.state import (
    atomic_write,
    ensure_private_dir,
    ensure_secret_dir,
    pem_certs,
    ski_name,
)
from provisioning import profile
from provisioning.profile import ProfileError, RevokedEntry, thumbprint, utcnow
from provisioning.registry import Registry, RegistryError

_LOGGER = logging.getLogger(__name__)

DEFAULT_CRL_DAYS = 30
CA_KEY_BITS = 3072


class PkiError(Exception):
    """The PKI directory is missing something, or an operation on it is not allowed."""


@dataclass(frozen=True)
class CertificateAuthority:
    name: str  # "root" or the organization
    cert: x509.Certificate
    key_path: Path
    crl_path: Path

    @property
    def thumbprint(self) -> str:
        return thumbprint(self.cert)


class Pki:
    """One PKI directory, its registry, and the passphrase of its CA keys."""

    def __init__(self, root: Path, passphrase: bytes | None) -> None:
        self.root = root
        self._passphrase = passphrase
        # The same rule and wording as the device state directory (logger.tpm.state).
        ensure_secret_dir(root, "the PKI directory", "the CA keys", PkiError)
        self.registry = Registry(root / "registry.sqlite")
        os.chmod(root / "registry.sqlite", 0o600)

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> Pki:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths and loading ------------------------------------------------------------
    def _ca_dir(self, name: str) -> Path:
        return self.root / "root" if name == "root" else self.root / "orgs" / name

    def has_root(self) -> bool:
        return (self.root / "root" / "ca-cert.pem").exists()

    def ca(self, name: str) -> CertificateAuthority:
        """The root (``"root"``) or an organization's CA; PkiError if it does not exist."""
        directory = self._ca_dir(name)
        cert_path = directory / "ca-cert.pem"
        if not cert_path.exists():
            if name == "root":
                raise PkiError(f"no root CA in {self.root}; run 'mbus-provision root init'")
            raise PkiError(
                f"unknown organization {name!r} (no CA in {directory}); "
                "run 'mbus-provision org create'"
            )
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        return CertificateAuthority(name, cert, directory / "ca-key.pem", directory / "crl.pem")

    def org_ca(self, org: str) -> CertificateAuthority:
        profile.check_org_name(org)
        if self.registry.org(org) is None:
            raise PkiError(f"unknown organization {org!r}; run 'mbus-provision org create'")
        info = self.registry.org(org)
        if info and info["revoked_at"]:
            raise PkiError(f"organization {org!r} has been revoked; it cannot issue")
        return self.ca(org)

    def ca_key(self, ca: CertificateAuthority) -> rsa.RSAPrivateKey:
        if not self._passphrase:
            raise KeyFileError(
                "the CA keys need the PKI passphrase: set MBUS_PKI_PASSPHRASE "
                "or give --passphrase-file"
            )
        key = load_key_file(ca.key_path, self._passphrase, f"{ca.name} CA key")
        if not profile.same_public_key(key.public_key(), ca.cert.public_key()):
            raise PkiError(f"{ca.key_path} does not belong to {ca.cert.subject.rfc4514_string()}")
        return key

    def check_can_issue(self, ca: CertificateAuthority, now: dt.datetime) -> None:
        if ca.cert.not_valid_after_utc <= now:
            raise PkiError(
                f"the {ca.name} CA expired on {ca.cert.not_valid_after_utc:%Y-%m-%d}; "
                "it cannot issue certificates"
            )
        if ca.cert.not_valid_before_utc > now + dt.timedelta(minutes=10):
            raise PkiError(
                f"the {ca.name} CA is not valid before {ca.cert.not_valid_before_utc:%Y-%m-%d}"
            )

    def chain(self, org: str) -> list[x509.Certificate]:
        """Issuers of a certificate of ``org``, nearest first: org CA, root CA."""
        return [self.ca(org).cert, self.ca("root").cert]

    # -- root and organizations -------------------------------------------------------
    def init_root(
        self,
        name: str,
        years: int = 20,
        key_bits: int = CA_KEY_BITS,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        now = now or utcnow()
        if self.has_root():
            raise PkiError(f"{self.root} already has a root CA; refusing to replace it")
        if not self._passphrase:
            raise KeyFileError(
                "the root CA key needs a passphrase: set MBUS_PKI_PASSPHRASE "
                "or give --passphrase-file"
            )
        key = profile.new_rsa_key(key_bits)
        cert = profile.make_root_ca(name, key, years, now)
        directory = self._ca_dir("root")
        with self._files_or_nothing([directory]):
            ensure_private_dir(directory)
            write_key_file(directory / "ca-key.pem", key, self._passphrase)
            atomic_write(directory / "ca-cert.pem", pem_certs([cert]))
            with self.registry.transaction():
                self._record(cert, "root", None, None, "active", now)
                ca = self.ca("root")
                self._write_crl(ca, key, now)
        return cert

    def create_org(
        self,
        org: str,
        contact: str,
        years: int = 10,
        key_bits: int = CA_KEY_BITS,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        now = now or utcnow()
        profile.check_org_name(org)
        if "@" not in contact or any(c.isspace() for c in contact):
            raise ProfileError(f"invalid contact address {contact!r}: expected an e-mail")
        if self.registry.org(org) is not None or self._ca_dir(org).exists():
            raise PkiError(f"organization {org!r} already exists")
        root = self.ca("root")
        self.check_can_issue(root, now)
        root_key = self.ca_key(root)
        key = profile.new_rsa_key(key_bits)
        cert = profile.make_org_ca(org, key.public_key(), root.cert, root_key, years, now)
        directory = self._ca_dir(org)
        assert self._passphrase
        with self._files_or_nothing([directory]):
            ensure_private_dir(directory.parent)
            ensure_private_dir(directory)
            write_key_file(directory / "ca-key.pem", key, self._passphrase)
            atomic_write(directory / "ca-cert.pem", pem_certs([cert]))
            with self.registry.transaction():
                self._record(cert, "org-ca", org, None, "active", now, issuer=root)
                self.registry.add_org(org, contact, thumbprint(cert), now)
                self._write_crl(self.ca(org), key, now)
        return cert

    # -- issuing ----------------------------------------------------------------------
    def _record(
        self,
        cert: x509.Certificate,
        kind: str,
        org: str | None,
        device_serial: str | None,
        state: str,
        now: dt.datetime,
        issuer: CertificateAuthority | None = None,
    ) -> None:
        self.registry.add_certificate(
            thumbprint=thumbprint(cert),
            serial_number=cert.serial_number,
            kind=kind,
            org=org,
            device_serial=device_serial,
            subject=cert.subject.rfc4514_string(),
            application_uri=profile.application_uri(cert),
            issuer_thumbprint=issuer.thumbprint if issuer else None,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            state=state,
            pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
            now=now,
        )

    def issue(
        self,
        org: str,
        entity: profile.EndEntity,
        public_key: object,
        days: int = profile.DEFAULT_DEVICE_DAYS,
        state: str = "active",
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """Sign and record one end-entity certificate (inside the caller's transaction)."""
        now = now or utcnow()
        ca = self.org_ca(org)
        self.check_can_issue(ca, now)
        ca_key = self.ca_key(ca)
        cert = profile.issue_end_entity(entity, public_key, ca.cert, ca_key, days, now)
        with self.registry.transaction():
            self._record(cert, entity.role, org, entity.serial, state, now, issuer=ca)
        return cert

    def sign_device_csr(
        self,
        org: str,
        csr: x509.CertificateSigningRequest,
        where: str,
        days: int = profile.DEFAULT_DEVICE_DAYS,
        register: bool = True,
        expect_serial: str | None = None,
        expect_uri: str | None = None,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """The cloud side of enrolment: check the CSR against the registry, then sign it.

        A serial already registered must come with its registered ApplicationUri and org
        (renewal keeps the identity); a new serial is registered here, one to one with its
        URI. The subject must be CN=serialNumber=<serial>, O=<org>.
        """
        now = now or utcnow()
        serial, uri = profile.csr_identity(csr, where)
        profile.check_serial(serial)
        profile.check_application_uri(uri)
        if expect_serial is not None and serial != expect_serial:
            raise ProfileError(f"{where}: the CSR is for serial {serial}, expected {expect_serial}")
        if expect_uri is not None and uri != expect_uri:
            raise ProfileError(
                f"{where}: the CSR's ApplicationUri {uri} does not match {expect_uri}"
            )
        orgs = csr.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)
        if len(orgs) != 1 or orgs[0].value != org:
            claimed = str(orgs[0].value) if orgs else "(none)"
            raise ProfileError(f"{where}: the CSR's organization {claimed} is not {org}")
        ca = self.org_ca(org)
        self.check_can_issue(ca, now)
        known = self.registry.device(serial)
        with self.registry.transaction():
            if known is None:
                if not register:
                    raise RegistryError(f"serial {serial} is not registered")
                self.registry.add_device(serial, uri, org, now)
            else:
                if known["application_uri"] != uri:
                    raise RegistryError(
                        f"{where}: the CSR's ApplicationUri {uri} does not match serial "
                        f"{serial}'s registration ({known['application_uri']})"
                    )
                if known["org"] != org:
                    raise RegistryError(
                        f"{where}: serial {serial} belongs to organization "
                        f"{known['org']}, not {org}"
                    )
            # A renewal: the certificates in use become "superseded" (revoked once the new one
            # is reported in use); the new one inherits "installed" from them.
            state = "manufactured"
            for row in self.registry.certificates(kind="logger", device_serial=serial):
                if row.state in ("manufactured", "installed"):
                    if row.state == "installed":
                        state = "installed"
                    self.registry.set_state(row.thumbprint, "superseded", now, "renewed")
            entity = profile.logger_entity(org, serial, uri, profile.csr_dns_names(csr))
            return self.issue(org, entity, csr.public_key(), days, state, now)

    def register_device(
        self, org: str, serial: str, uri: str, now: dt.datetime | None = None
    ) -> None:
        """Bind a serial to its ApplicationUri before any certificate exists (offline flow)."""
        now = now or utcnow()
        profile.check_serial(serial)
        profile.check_application_uri(uri)
        self.org_ca(org)
        with self.registry.transaction():
            self.registry.add_device(serial, uri, org, now)

    def import_installations(
        self, reports: list[dict[str, object]], now: dt.datetime | None = None
    ) -> list[dict[str, str]]:
        """Receiver installation reports -> "installed" with location; superseded revoked.

        Each report is an object of the receiver's ``devices --format json``: at least
        ``application_uri`` and ``thumbprint``, optionally ``serial`` and ``location``.
        Reports of unknown devices or certificates are returned as skipped, not errors: the
        receiver may know loggers of an older registry.
        """
        now = now or utcnow()
        results: list[dict[str, str]] = []
        revoke_orgs: set[str] = set()
        with self.registry.transaction():
            for report in reports:
                uri = str(report.get("application_uri") or "")
                tp_raw = str(report.get("thumbprint") or "")
                location = report.get("location")
                device = self.registry.device_by_uri(uri) if uri else None
                if device is None:
                    results.append({"application_uri": uri, "result": "unknown device"})
                    continue
                try:
                    tp = profile.normalise_thumbprint(tp_raw)
                except ProfileError:
                    results.append({"application_uri": uri, "result": "no valid thumbprint"})
                    continue
                row = self.registry.certificate(tp)
                if row is None or row.device_serial != device["serial"]:
                    results.append(
                        {
                            "application_uri": uri,
                            "thumbprint": tp,
                            "result": "certificate not issued to this device",
                        }
                    )
                    continue
                if isinstance(location, str) and location:
                    self.registry.set_location(device["serial"], location)
                if row.state in ("manufactured",):
                    self.registry.set_state(tp, "installed", now, str(location or ""))
                elif row.state == "superseded":
                    results.append(
                        {
                            "application_uri": uri,
                            "thumbprint": tp,
                            "result": "still using a superseded certificate",
                        }
                    )
                    continue
                for other in self.registry.certificates(
                    kind="logger", device_serial=device["serial"]
                ):
                    if other.state == "superseded":
                        self.registry.mark_revoked(other.thumbprint, "superseded", now)
                        revoke_orgs.add(device["org"])
                results.append(
                    {
                        "application_uri": uri,
                        "thumbprint": tp,
                        "serial": device["serial"],
                        "result": row.state if row.state != "manufactured" else "installed",
                    }
                )
            for org in sorted(revoke_orgs):
                ca = self.ca(org)
                self._write_crl(ca, self.ca_key(ca), now)
        for org in sorted(revoke_orgs):
            self.publish(org)
        return results

    # -- CRLs -------------------------------------------------------------------------
    def _revoked_entries(self, ca: CertificateAuthority) -> list[RevokedEntry]:
        rows = self.registry.certificates(issuer=ca.thumbprint)
        return [
            RevokedEntry(r.serial_number, r.revoked_at, profile.parse_reason(r.revocation_reason))
            for r in rows
            if r.state == "revoked" and r.revoked_at is not None
        ]

    def _write_crl(
        self,
        ca: CertificateAuthority,
        ca_key: rsa.RSAPrivateKey,
        now: dt.datetime,
        days: int = DEFAULT_CRL_DAYS,
    ) -> x509.CertificateRevocationList:
        number = self.registry.next_crl_number(ca.thumbprint, now, now + dt.timedelta(days=days))
        crl = profile.make_crl(ca.cert, ca_key, self._revoked_entries(ca), number, days, now)
        atomic_write(ca.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        return crl

    def crl(self, name: str) -> x509.CertificateRevocationList:
        ca = self.ca(name)
        return x509.load_pem_x509_crl(ca.crl_path.read_bytes())

    def resign_crl(
        self, name: str, now: dt.datetime | None = None, days: int = DEFAULT_CRL_DAYS
    ) -> x509.CertificateRevocationList:
        """Re-sign the CRL of ``name`` and publish it to every target that carries it."""
        now = now or utcnow()
        ca = self.ca(name)
        with self.registry.transaction():
            crl = self._write_crl(ca, self.ca_key(ca), now, days)
        self.publish(name)
        return crl

    def publish(self, name: str) -> list[Path]:
        """Copy the current CRL of ``name`` into each publish target that should have it."""
        ca = self.ca(name)
        crl_bytes = ca.crl_path.read_bytes()
        orgs = [o["name"] for o in self.registry.orgs()] if name == "root" else [name]
        written: list[Path] = []
        for org in orgs:
            for target in self.registry.publish_targets(org):
                directory = Path(target) / "crl"
                if not Path(target).is_dir():
                    _LOGGER.warning("publish target %s of %s is missing; skipped", target, org)
                    continue
                path = directory / f"{ski_name(ca.cert)}.pem"
                ensure_private_dir(directory)
                atomic_write(path, crl_bytes)
                written.append(path)
        return written

    def refresh_crls(
        self, now: dt.datetime | None = None, days: int = DEFAULT_CRL_DAYS, force: bool = False
    ) -> list[str]:
        """Re-sign every CRL past half its lifetime (or all with ``force``); returns names."""
        now = now or utcnow()
        names = ["root"] + [o["name"] for o in self.registry.orgs() if not o["revoked_at"]]
        done = []
        for name in names:
            crl = self.crl(name)
            this_update = crl.last_update_utc
            next_update = crl.next_update_utc
            assert next_update is not None
            if force or now >= this_update + (next_update - this_update) / 2:
                self.resign_crl(name, now, days)
                done.append(name)
        return done

    # -- revocation -------------------------------------------------------------------
    def revoke(
        self, thumbprint_: str, reason: str | None = None, now: dt.datetime | None = None
    ) -> x509.Certificate:
        """Revoke one end-entity certificate: registry, then the issuer's CRL, then publish."""
        now = now or utcnow()
        tp = profile.normalise_thumbprint(thumbprint_)
        profile.parse_reason(reason)
        row = self.registry.certificate(tp)
        if row is None:
            raise PkiError(f"no certificate with thumbprint {tp} in the registry")
        if row.kind in ("root", "org-ca"):
            raise PkiError(f"{tp} is a CA certificate; use 'org revoke' for an organization")
        if row.state == "revoked":
            raise PkiError(f"certificate {tp} is already revoked")
        assert row.org is not None
        ca = self.ca(row.org)
        ca_key = self.ca_key(ca)
        with self.registry.transaction():
            self.registry.mark_revoked(tp, reason, now)
            self._write_crl(ca, ca_key, now)
        self.publish(row.org)
        return x509.load_pem_x509_certificate(row.pem.encode())

    def revoke_org(
        self, org: str, reason: str | None = None, now: dt.datetime | None = None
    ) -> None:
        """Put an organization's CA on the root's CRL."""
        now = now or utcnow()
        info = self.registry.org(org)
        if info is None:
            raise PkiError(f"unknown organization {org!r}")
        if info["revoked_at"]:
            raise PkiError(f"organization {org!r} is already revoked")
        root = self.ca("root")
        root_key = self.ca_key(root)
        with self.registry.transaction():
            self.registry.mark_revoked(info["ca_thumbprint"], reason or "ca-compromise", now)
            self.registry.mark_org_revoked(org, now)
            self._write_crl(root, root_key, now)
        self.publish("root")

    # -- receivers --------------------------------------------------------------------
    def write_trust(self, out: Path, org: str) -> None:
        """trust/ and crl/ for ``org`` into ``out`` (a receiver dir or a device state dir)."""
        for name in (org, "root"):
            ca = self.ca(name)
            ensure_private_dir(out / "trust")
            ensure_private_dir(out / "crl")
            atomic_write(out / "trust" / f"{ski_name(ca.cert)}.pem", pem_certs([ca.cert]))
            atomic_write(out / "crl" / f"{ski_name(ca.cert)}.pem", ca.crl_path.read_bytes())

    def issue_receiver(
        self,
        org: str,
        dns_names: tuple[str, ...],
        application_uri: str,
        out: Path,
        receiver_passphrase: bytes,
        days: int = 825,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """A receiver directory: its certificate and encrypted key, CA certs and CRLs."""
        now = now or utcnow()
        if not receiver_passphrase:
            raise KeyFileError(
                "the receiver key needs a passphrase: set "
                "MBUS_RECEIVER_PASSPHRASE or give --receiver-passphrase-file"
            )
        entity = profile.receiver_entity(org, application_uri, tuple(dns_names))
        out = out.resolve()
        if out == self.root.resolve() or self.root.resolve() in out.parents:
            raise PkiError(
                f"{out} is inside the PKI directory; a receiver directory must not be near CA keys"
            )
        if (out / "server-cert.pem").exists():
            raise PkiError(f"{out} already holds a receiver certificate; choose an empty directory")
        ca = self.org_ca(org)
        self.check_can_issue(ca, now)
        key = profile.new_rsa_key(2048)
        with self._issuing_into(
            out,
            ("server-cert.pem", "server-key.pem", "trust", "crl", "chain.pem", "receiver.json"),
        ):
            cert = self.issue(org, entity, key.public_key(), days, "active", now)
            ensure_private_dir(out)
            write_key_file(out / "server-key.pem", key, receiver_passphrase)
            atomic_write(out / "server-cert.pem", pem_certs([cert]))
            atomic_write(out / "chain.pem", pem_certs(self.chain(org)))
            self.write_trust(out, org)
            atomic_write(
                out / "receiver.json",
                (
                    json.dumps(
                        {
                            "org": org,
                            "application_uri": application_uri,
                            "dns": list(dns_names),
                            "thumbprint": thumbprint(cert),
                        },
                        indent=2,
                    )
                    + "\n"
                ).encode(),
            )
            self.registry.add_publish_target(org, str(out))
        return cert

    def issue_operator(
        self,
        org: str,
        name: str,
        out: Path,
        passphrase: bytes,
        days: int = 825,
        now: dt.datetime | None = None,
    ) -> x509.Certificate:
        """An operator's OPC UA client certificate (read-only role) and encrypted key."""
        now = now or utcnow()
        if not passphrase:
            raise KeyFileError(
                "the operator key needs a passphrase: set MBUS_CLIENT_PASSPHRASE "
                "or give --client-passphrase-file"
            )
        entity = profile.operator_entity(org, name)
        if (out / "client-cert.pem").exists():
            raise PkiError(f"{out} already holds a client certificate")
        ca = self.org_ca(org)
        self.check_can_issue(ca, now)
        key = profile.new_rsa_key(2048)
        with self._issuing_into(
            out,
            ("client-cert.pem", "client-key.pem", "trust", "crl", "client-cert.der", "chain.pem"),
        ):
            cert = self.issue(org, entity, key.public_key(), days, "active", now)
            ensure_private_dir(out)
            write_key_file(out / "client-key.pem", key, passphrase)
            atomic_write(out / "client-cert.pem", pem_certs([cert]))
            atomic_write(out / "client-cert.der", cert.public_bytes(serialization.Encoding.DER))
            atomic_write(out / "chain.pem", pem_certs(self.chain(org)))
            self.write_trust(out, org)
        return cert

    # -- helpers ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _issuing_into(self, out: Path, names: tuple[str, ...]) -> Iterator[None]:
        """Write an issued bundle into ``out`` all or nothing: when the body fails, remove
        ``out`` if it did not exist before (else the ``names`` in it) and roll the registry
        back, so a retry starts clean and the registry names no certificate that was lost."""
        created = not out.exists()
        with (
            self._files_or_nothing([out] if created else [out / n for n in names]),
            self.registry.transaction(),
        ):
            yield

    @contextlib.contextmanager
    def _files_or_nothing(self, paths: list[Path]) -> Iterator[None]:
        """Remove ``paths`` (files or whole directories) when the body fails."""
        existed = {p: p.exists() for p in paths}
        try:
            yield
        except BaseException:
            for path, was_there in existed.items():
                if was_there:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            raise

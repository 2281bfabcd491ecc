"""The legacy batch flow: key and certificate per device, for loggers without a TPM.

In the reference use case the cloud provider ships batches of keys and certificates to the
manufacturer, who puts one on each logger and reports the thumbprint. We keep the flow for
loggers without a TPM, and make it safer: each device's key and certificate chain travel in an
encrypted PKCS#12 file (AES-256, PBKDF2; openssl and Windows open it), the batch passphrase is
a separate secret, and every certificate is registered as "manufactured" with its serial and
ApplicationUri before the batch leaves. ``manifest.json`` (and ``manifest.csv``) list serial,
ApplicationUri, thumbprint, not_after and file name.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, pkcs12

from logger.tpm.filekey import write_private_bytes
from logger.tpm.state import atomic_write, ensure_private_dir
from provisioning import profile
from provisioning.pki import Pki, PkiError
from provisioning.profile import thumbprint


@dataclass(frozen=True)
class BatchItem:
    serial: str
    application_uri: str
    thumbprint: str
    not_after: str
    file: str

    def as_dict(self) -> dict[str, str]:
        return {
            "serial": self.serial,
            "application_uri": self.application_uri,
            "thumbprint": self.thumbprint,
            "not_after": self.not_after,
            "file": self.file,
        }


def issue_batch(
    pki: Pki,
    org: str,
    count: int,
    out: Path,
    passphrase: bytes,
    serial_prefix: str | None = None,
    uri_template: str = "urn:{org}:logger:{serial}",
    days: int = profile.DEFAULT_DEVICE_DAYS,
    now: dt.datetime | None = None,
) -> list[BatchItem]:
    """Issue ``count`` device identities into ``out`` (which must be new or empty)."""
    now = now or profile.utcnow()
    if not 1 <= count <= 10000:
        raise profile.ProfileError(f"--count {count}: 1 to 10000 per batch")
    if not passphrase:
        raise PkiError(
            "the batch needs a passphrase for its PKCS#12 files: set "
            "MBUS_BATCH_PASSPHRASE or give --batch-passphrase-file"
        )
    if "{serial}" not in uri_template:
        raise profile.ProfileError("--uri-template must contain {serial}")
    if out.exists() and any(out.iterdir()):
        raise PkiError(f"{out} is not empty; a batch goes into a new directory")
    ca = pki.org_ca(org)
    pki.check_can_issue(ca, now)
    ca_key = pki.ca_key(ca)
    prefix = serial_prefix if serial_prefix is not None else f"B{now:%Y%m%d}-"
    chain = pki.chain(org)
    items: list[BatchItem] = []
    created = not out.exists()
    try:
        ensure_private_dir(out)
        with pki.registry.transaction():
            number = 0
            while len(items) < count:
                number += 1
                serial = profile.check_serial(f"{prefix}{number:04d}")
                if pki.registry.device(serial) is not None:
                    continue
                uri = profile.check_application_uri(uri_template.format(org=org, serial=serial))
                pki.registry.add_device(serial, uri, org, now)
                key = profile.new_rsa_key(2048)
                entity = profile.logger_entity(org, serial, uri)
                cert = profile.issue_end_entity(
                    entity, key.public_key(), ca.cert, ca_key, days, now
                )
                with pki.registry.transaction():
                    pki._record(cert, "logger", org, serial, "manufactured", now, issuer=ca)
                p12 = pkcs12.serialize_key_and_certificates(
                    serial.encode(), key, cert, chain, BestAvailableEncryption(passphrase)
                )
                name = f"{serial}.p12"
                write_private_bytes(out / name, p12)
                items.append(
                    BatchItem(
                        serial,
                        uri,
                        thumbprint(cert),
                        cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                        name,
                    )
                )
            manifest = {
                "org": org,
                "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "count": len(items),
                "devices": [i.as_dict() for i in items],
            }
            atomic_write(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=list(BatchItem.__dataclass_fields__))
            writer.writeheader()
            for item in items:
                writer.writerow(item.as_dict())
            atomic_write(out / "manifest.csv", buf.getvalue().encode())
    except BaseException:
        for item in items:
            (out / item.file).unlink(missing_ok=True)
        for name in ("manifest.json", "manifest.csv"):
            (out / name).unlink(missing_ok=True)
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
    return items

"""The factory station: enrolment and renewal in one step, all or nothing.

``device enroll`` = the device-side CSR step (key made in the TPM) + the cloud's signing +
the device-side installation, run by one process that holds both the PKI and a connection to
the device's TPM. Every check that can fail without side effects runs first (organization,
CA validity, CA passphrase, serial and URI free, state dir empty); then key, CSR, certificate
and files are made, and the registry is committed last. If anything fails the TPM key is
evicted, the written files removed and the registry transaction rolled back.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from logger.tpm.state import DeviceState
from provisioning import profile
from provisioning.enroll import (
    EnrolmentError,
    Installed,
    KeyOptions,
    csr_with_undo,
    install_certificate,
    undo_on_failure,
)
from provisioning.pki import Pki, PkiError
from provisioning.registry import RegistryError


def enroll_device(
    pki: Pki,
    org: str,
    serial: str,
    application_uri: str,
    state_dir: Path,
    options: KeyOptions,
    dns_names: tuple[str, ...] = (),
    days: int = profile.DEFAULT_DEVICE_DAYS,
    now: dt.datetime | None = None,
) -> Installed:
    now = now or profile.utcnow()
    profile.check_serial(serial)
    profile.check_application_uri(application_uri)
    for name in dns_names:
        profile.check_dns_name(name)
    ca = pki.org_ca(org)
    pki.check_can_issue(ca, now)
    pki.ca_key(ca)  # wrong passphrase: fail before touching the TPM
    pki.registry.check_new_device(serial, application_uri)
    if days > profile.MAX_END_ENTITY_DAYS or days < 1:
        raise profile.ProfileError(f"--days {days}: 1 to {profile.MAX_END_ENTITY_DAYS} allowed")
    if (state_dir / "identity.json").exists() or (state_dir / "device-cert.pem").exists():
        raise EnrolmentError(
            f"{state_dir} already holds a device identity; enrolment needs an "
            "empty state directory (use 'device renew' for a new certificate)"
        )
    with undo_on_failure() as undo:
        state = undo.new_state(state_dir)
        csr = csr_with_undo(state, options, undo, serial, application_uri, org, dns_names)
        with pki.registry.transaction():
            cert = pki.sign_device_csr(
                org,
                csr,
                "the device's CSR",
                days=days,
                now=now,
                expect_serial=serial,
                expect_uri=application_uri,
            )
            pki.write_trust(state.root, org)
            return install_certificate(
                state.root, cert, pki.chain(org), [pki.crl(org), pki.crl("root")], options, now
            )


def renew_device(
    pki: Pki,
    serial: str,
    state_dir: Path,
    options: KeyOptions,
    days: int = profile.DEFAULT_DEVICE_DAYS,
    now: dt.datetime | None = None,
) -> Installed:
    """A new key (in the TPM's other slot) and certificate; same serial and ApplicationUri.

    The certificate it replaces is marked superseded in the registry; it is revoked when the
    receiver reports the new one in use (``registry import-installations``). The data buffer
    and the device's identity are untouched: the receiver keeps attributing to the same URI.
    """
    now = now or profile.utcnow()
    device = pki.registry.device(serial)
    if device is None:
        raise RegistryError(f"serial {serial} is not registered")
    state = DeviceState.open(state_dir)
    identity = state.identity()
    if identity.serial != serial or identity.application_uri != device["application_uri"]:
        raise EnrolmentError(
            f"{state_dir} belongs to serial {identity.serial} "
            f"({identity.application_uri}), not {serial}"
        )
    ca = pki.org_ca(device["org"])
    pki.check_can_issue(ca, now)
    pki.ca_key(ca)
    with undo_on_failure() as undo:
        undo.restore(state.cert_path)
        undo.restore(state.chain_path)
        csr = csr_with_undo(state, options, undo, new_key=True, dns_names=_dns_of_current(state))
        with pki.registry.transaction():
            cert = pki.sign_device_csr(
                device["org"],
                csr,
                "the device's renewal CSR",
                days=days,
                now=now,
                register=False,
                expect_serial=serial,
                expect_uri=device["application_uri"],
            )
            return install_certificate(
                state.root,
                cert,
                pki.chain(device["org"]),
                [pki.crl(device["org"]), pki.crl("root")],
                options,
                now,
            )


def _dns_of_current(state: DeviceState) -> tuple[str, ...]:
    if not state.has_certificate():
        return ()
    from cryptography import x509

    try:
        san = (
            state.certificate()
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value
        )
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName)) + tuple(
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    )


__all__ = ["PkiError", "enroll_device", "renew_device"]

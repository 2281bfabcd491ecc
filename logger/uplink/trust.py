"""Keeping the logger's trust fresh from the receiver's GetTrustList answer.

The receiver serves its CA certificates and their current CRLs (OPC UA Part 12's
GetTrustList, simplified to two ByteString arrays, see :mod:`logger.contract`). The channel
they arrive on is authenticated, but the logger does not trust the receiver to *define* trust:

* a CA certificate is accepted only if it is already a trust anchor, or a re-issue of one
  (same subject, e.g. the organization's renewed CA) signed by a trusted CA - never a new
  root, never another organization's CA under the same root;
* a CRL is accepted only if a trust anchor with its issuer name verifies its signature, it is
  not past its nextUpdate, and it is newer than the installed one (a higher CRL number, or a
  later thisUpdate) - an attacker replaying an old CRL cannot un-revoke anything;
* everything accepted is written atomically (temporary file, fsync, rename) into the state
  dir's ``trust/`` and ``crl/``, named as provisioning names them.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from logger.tpm.state import DeviceState
from logger.uplink.validation import (
    TrustStore,
    ValidationError,
    check_crl,
    describe,
    utcnow,
)

_LOGGER = logging.getLogger(__name__)


@dataclass
class TrustUpdate:
    """What one GetTrustList answer changed (for the log and ``uplink check``)."""

    new_anchors: list[str] = field(default_factory=list)
    new_crls: list[str] = field(default_factory=list)
    unchanged: int = 0
    rejected: list[str] = field(default_factory=list)


def _crl_number(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def _newer(new: x509.CertificateRevocationList, old: x509.CertificateRevocationList) -> bool:
    n_new, n_old = _crl_number(new), _crl_number(old)
    if n_new is not None and n_old is not None:
        return n_new > n_old
    return new.last_update_utc > old.last_update_utc


def _der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)


def _signed_by_anchor(cert: x509.Certificate, anchors: list[x509.Certificate]) -> bool:
    for anchor in anchors:
        if cert.issuer != anchor.subject:
            continue
        try:
            cert.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def apply_trust_list(
    state_dir: Path,
    certificates: list[bytes],
    crls: list[bytes],
    now: dt.datetime | None = None,
) -> TrustUpdate:
    """Install what is acceptable from a GetTrustList answer; report the rest as rejected."""
    now = now or utcnow()
    state = DeviceState.open(state_dir)
    store = TrustStore.load(state_dir)
    update = TrustUpdate()
    anchors = list(store.anchors)
    for i, der in enumerate(certificates):
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            update.rejected.append(f"certificate {i}: not DER ({exc})")
            continue
        if cert in anchors:
            update.unchanged += 1
            continue
        bc = None
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            pass
        if bc is None or not bc.ca:
            update.rejected.append(f"certificate {describe(cert)}: not a CA certificate")
            continue
        if not _signed_by_anchor(cert, anchors) or cert.subject == cert.issuer:
            update.rejected.append(
                f"certificate {describe(cert)}: not signed by a CA the logger already trusts"
            )
            continue
        if not any(a.subject == cert.subject for a in anchors):
            # Only a re-issue of a CA we already trust (same name, e.g. a renewed org CA);
            # never another organization's CA, even one the same root signed.
            update.rejected.append(
                f"certificate {describe(cert)}: not a re-issue of a CA the logger trusts"
            )
            continue
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            update.rejected.append(f"certificate {describe(cert)}: outside its validity")
            continue
        state.write_trust_anchor(cert)
        anchors.append(cert)
        update.new_anchors.append(describe(cert))
    for i, der in enumerate(crls):
        try:
            crl = x509.load_der_x509_crl(der)
        except ValueError as exc:
            update.rejected.append(f"CRL {i}: not DER ({exc})")
            continue
        issuers = [a for a in anchors if a.subject == crl.issuer]
        if not issuers:
            update.rejected.append(
                f"CRL of {crl.issuer.rfc4514_string()}: no trusted CA of that name"
            )
            continue
        errors = []
        issuer: x509.Certificate | None = None
        for candidate in issuers:
            try:
                check_crl(crl, candidate, now)
            except ValidationError as exc:
                errors.append(str(exc))
                continue
            issuer = candidate
            break
        if issuer is None:
            update.rejected.append(errors[0])
            continue
        installed = [c for c in store.crls if c.issuer == crl.issuer]
        if installed and not all(_newer(crl, old) for old in installed):
            if any(_der(c) == _der(crl) for c in installed):
                update.unchanged += 1
            else:
                update.rejected.append(
                    f"CRL of {describe(issuer)}: not newer than the installed one"
                )
            continue
        state.write_crl(crl, issuer)
        update.new_crls.append(describe(issuer))
    for line in update.rejected:
        _LOGGER.warning("trust list from the receiver: rejected %s", line)
    if update.new_anchors or update.new_crls:
        _LOGGER.info(
            "trust list from the receiver: installed %d CA certificate(s), %d CRL(s)",
            len(update.new_anchors),
            len(update.new_crls),
        )
    return update


__all__ = ["TrustUpdate", "apply_trust_list"]

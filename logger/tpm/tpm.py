"""The device key inside the TPM 2.0: creation, persistence, use, all through one lock.

What the TPM holds for us:

* the **storage primary key** (SRK) at ``0x81000001``, made from the TCG template of the TCG
  "TPM 2.0 Provisioning Guidance" (RSA-2048, AES-128-CFB, restricted decrypt, fixedTPM,
  fixedParent, sensitiveDataOrigin, userWithAuth, noDA, empty auth, empty unique). Because the
  template is fixed, any tool recreates the same key from the same seed; we create and
  persist it only when the handle is empty, and use whatever sits there otherwise (as
  tpm2-tools and the tpm2-tss FAPI do);
* the **device key**: RSA-2048, ``sign`` and ``decrypt`` with a NULL scheme (OPC UA needs
  PKCS#1 v1.5 and PSS signatures and OAEP decryption with one key), non-restricted, fixedTPM,
  fixedParent, sensitiveDataOrigin: it is generated inside the TPM and can never be exported
  or duplicated. It is persisted at a configurable handle (default ``0x81000002``).

Authorisation of the device key, chosen at creation:

* nothing (empty auth, ``userWithAuth``) - the default of the product, as CLI.md says;
* an auth value (``userWithAuth``, dictionary-attack protected);
* a PCR policy (``PolicyPCR`` over the chosen PCRs, plus ``PolicyPassword`` when an auth value
  is also set). ``userWithAuth`` is then *cleared*: the auth value alone cannot bypass the
  policy. Every use opens a policy session, replays the policy and flushes the session, which
  costs three TPM commands more per operation (measured in the provisioning README section).

ESAPI contexts are not thread-safe and a TPM executes one command at a time, so :class:`Tpm`
owns one context and one lock; everything that talks to the TPM takes it. The calls block
(a discrete TPM takes 50-300 ms per RSA operation): callers on an event loop run them on a
thread (:meth:`TpmRsaKey.sign` is safe to call from any thread). Transient objects (the key
loaded before persisting, policy sessions) are flushed before the lock is released, because over
a raw swtpm socket (no resource manager) they would otherwise stay in the TPM.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.hashes import HashAlgorithm
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_RC,
    TPM2_SE,
    TPMA_OBJECT,
)
from tpm2_pytss.cryptography import tpm_rsa_private_key
from tpm2_pytss.TSS2_Exception import TSS2_Exception
from tpm2_pytss.types import (
    TPM2B_AUTH,
    TPM2B_DIGEST,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMS_SENSITIVE_CREATE,
    TPMT_SYM_DEF,
)

from logger.tpm.errors import (
    DeviceKeyError,
    PcrPolicyNotSatisfied,
    TpmAuthRequired,
    TpmKeyNotFound,
    TpmOperationError,
    TpmUnreachable,
)
from logger.tpm.tcti import DEFAULT_TCTI, open_esapi

_LOGGER = logging.getLogger(__name__)

SRK_HANDLE = 0x81000001
DEFAULT_KEY_HANDLE = 0x81000002
_PERSISTENT_FIRST = 0x81000000
_PERSISTENT_LAST = 0x817FFFFF

_SRK_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.USERWITHAUTH
    | TPMA_OBJECT.NODA
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)
_KEY_BASE_ATTRS = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.DECRYPT
    | TPMA_OBJECT.SIGN_ENCRYPT
)
_PCR_BANKS = ("sha1", "sha256", "sha384", "sha512")


def parse_handle(text: str | int) -> int:
    """``"0x81000002"`` or an int -> int, checked to be in the owner's persistent range."""
    try:
        value = text if isinstance(text, int) else int(str(text), 0)
    except ValueError:
        raise ValueError(f"invalid TPM handle {text!r}: expected e.g. 0x81000002") from None
    if not _PERSISTENT_FIRST <= value <= _PERSISTENT_LAST:
        raise ValueError(
            f"TPM handle 0x{value:08x} is not a persistent owner handle "
            f"(0x{_PERSISTENT_FIRST:08x}-0x{_PERSISTENT_LAST:08x})"
        )
    if value == SRK_HANDLE:
        raise ValueError(f"TPM handle 0x{value:08x} is reserved for the storage primary key")
    return value


@dataclass(frozen=True)
class PcrSelection:
    """A PCR bank and indexes, written as tpm2-tools write it: ``sha256:0,2,7``."""

    bank: str
    indexes: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        match = re.fullmatch(
            r"\s*(sha1|sha256|sha384|sha512)\s*:\s*([0-9]+(?:\s*,\s*[0-9]+)*)\s*", text
        )
        if match is None:
            raise ValueError(
                f"invalid PCR selection {text!r}: expected BANK:N[,N...], "
                f"BANK one of {', '.join(_PCR_BANKS)}, e.g. sha256:0,2,7"
            )
        indexes = tuple(sorted({int(i) for i in match.group(2).split(",")}))
        if any(i > 23 for i in indexes):
            raise ValueError(f"invalid PCR selection {text!r}: PCR indexes are 0-23")
        return cls(match.group(1), indexes)

    def __str__(self) -> str:
        return f"{self.bank}:{','.join(str(i) for i in self.indexes)}"

    def to_tpm(self) -> TPML_PCR_SELECTION:
        return TPML_PCR_SELECTION.parse(str(self))


@dataclass(frozen=True)
class KeyInfo:
    """What ``key info`` shows: read back from the TPM, not from our own records."""

    handle: int
    attributes: str
    attributes_value: int
    key_bits: int
    scheme: str
    name_alg: str
    auth_policy: str  # hex, empty when no policy
    public_key_pem: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "handle": f"0x{self.handle:08x}",
            "attributes": self.attributes,
            "attributes_value": f"0x{self.attributes_value:08x}",
            "key_bits": self.key_bits,
            "scheme": self.scheme,
            "name_alg": self.name_alg,
            "auth_policy": self.auth_policy,
            "public_key": self.public_key_pem,
        }


def _translate(exc: TSS2_Exception, what: str, handle: int | None = None) -> DeviceKeyError:
    """A tpm2-pytss error -> ours, naming what failed and where."""
    where = f" (key at handle 0x{handle:08x})" if handle is not None else ""
    error = exc.error
    if error == TPM2_RC.POLICY_FAIL or error == TPM2_RC.PCR_CHANGED:
        return PcrPolicyNotSatisfied(
            f"{what}: PCR policy not satisfied{where}; the platform's measured state differs "
            "from the one the key was bound to"
        )
    if error in (TPM2_RC.AUTH_FAIL, TPM2_RC.BAD_AUTH):
        if handle is None or what.startswith(("creating", "evicting")):
            # Creating and persisting objects are authorised by the owner hierarchy.
            return TpmAuthRequired(
                f"{what}: the TPM refused the owner authorization (an owner hierarchy "
                "password is set; this product expects it empty)"
            )
        return TpmAuthRequired(
            f"{what}: key at handle 0x{handle:08x} needs auth "
            "(authorization value missing or wrong)"
        )
    if error == TPM2_RC.LOCKOUT:
        return TpmAuthRequired(f"{what}: the TPM is in dictionary-attack lockout{where}")
    if error in (TPM2_RC.HANDLE, TPM2_RC.REFERENCE_H0) and handle is not None:
        return TpmKeyNotFound(f"{what}: no key at handle 0x{handle:08x}")
    if exc.rc & 0xFFFF0000 == 0x000A0000:  # TCTI layer: the connection itself failed
        return TpmUnreachable(f"{what}: TPM connection failed: {exc}")
    return TpmOperationError(f"{what}{where}: TPM error 0x{exc.rc:x}: {exc}")


class Tpm:
    """One ESAPI context and the lock that serialises every command sent through it."""

    def __init__(self, tcti: str | None = None) -> None:
        self.tcti = tcti or DEFAULT_TCTI
        self._ectx: ESAPI | None = open_esapi(self.tcti)
        self._lock = threading.RLock()

    # -- context management -------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._ectx is not None:
                self._ectx.close()
                self._ectx = None

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def session(self, what: str, handle: int | None = None) -> Iterator[ESAPI]:
        """The ESAPI context under the lock; TPM errors leave as ours."""
        with self._lock:
            if self._ectx is None:
                raise TpmOperationError(f"{what}: the TPM connection to {self.tcti} is closed")
            try:
                yield self._ectx
            except TSS2_Exception as exc:
                raise _translate(exc, what, handle) from exc

    # -- queries -------------------------------------------------------------------------
    def persistent_handles(self) -> list[int]:
        with self.session("listing persistent handles") as ectx:
            handles: list[int] = []
            more = True
            start = _PERSISTENT_FIRST
            while more:
                more, data = ectx.get_capability(TPM2_CAP.HANDLES, start, 64)
                found = [int(h) for h in data.data.handles]
                handles.extend(found)
                if not found:
                    break
                start = found[-1] + 1
            return handles

    def has_handle(self, handle: int) -> bool:
        return handle in self.persistent_handles()

    # -- storage primary -----------------------------------------------------------------
    def ensure_primary(self) -> None:
        """Create and persist the SRK at 0x81000001 unless something is already there."""
        if self.has_handle(SRK_HANDLE):
            return
        template = TPM2B_PUBLIC.parse(
            "rsa2048:aes128cfb", objectAttributes=_SRK_ATTRS, nameAlg="sha256"
        )
        with self.session("creating the storage primary key") as ectx:
            primary, _pub, _cd, _dig, _tk = ectx.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.OWNER
            )
            try:
                persistent = ectx.evict_control(ESYS_TR.OWNER, primary, SRK_HANDLE)
                ectx.tr_close(persistent)
            finally:
                ectx.flush_context(primary)
        _LOGGER.info("storage primary key created at 0x%08x on %s", SRK_HANDLE, self.tcti)

    # -- device key ----------------------------------------------------------------------
    def policy_digest(self, pcrs: PcrSelection, with_auth: bool) -> bytes:
        """The policy digest of PolicyPCR(current values) [+ PolicyPassword], via a trial."""
        with self.session(f"computing the PCR policy for {pcrs}") as ectx:
            trial = ectx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.TRIAL,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
            try:
                ectx.policy_pcr(trial, TPM2B_DIGEST(), pcrs.to_tpm())
                if with_auth:
                    ectx.policy_password(trial)
                return bytes(ectx.policy_get_digest(trial))
            finally:
                ectx.flush_context(trial)

    def create_key(
        self,
        handle: int = DEFAULT_KEY_HANDLE,
        auth: bytes | None = None,
        pcrs: PcrSelection | None = None,
        replace: bool = False,
    ) -> KeyInfo:
        """Create the device key inside the TPM and persist it at ``handle``.

        Refuses an occupied handle unless ``replace`` (renewal evicts the key two generations
        old, never the one in use). Returns what the TPM reports about the new key.
        """
        self.ensure_primary()
        if self.has_handle(handle):
            if not replace:
                raise DeviceKeyError(
                    f"TPM handle 0x{handle:08x} already holds a key; refusing to overwrite it"
                )
            self.evict(handle)
        attrs = _KEY_BASE_ATTRS
        policy = b""
        if pcrs is not None:
            policy = self.policy_digest(pcrs, with_auth=bool(auth))
        else:
            attrs |= TPMA_OBJECT.USERWITHAUTH
        if not auth:
            attrs |= TPMA_OBJECT.NODA
        template = TPM2B_PUBLIC.parse(
            "rsa2048:null:null", objectAttributes=attrs, nameAlg="sha256", authPolicy=policy or None
        )
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(auth or b"")))
        with self.session("creating the device key", handle) as ectx:
            srk = ectx.tr_from_tpmpublic(SRK_HANDLE)
            try:
                private, public, _cd, _dig, _tk = ectx.create(srk, sensitive, template)
                loaded = ectx.load(srk, private, public)
                try:
                    persistent = ectx.evict_control(ESYS_TR.OWNER, loaded, handle)
                    ectx.tr_close(persistent)
                finally:
                    ectx.flush_context(loaded)
            finally:
                ectx.tr_close(srk)
        _LOGGER.info(
            "device key created at 0x%08x on %s (pcr policy: %s, auth: %s)",
            handle,
            self.tcti,
            pcrs or "none",
            "yes" if auth else "no",
        )
        return self.key_info(handle)

    def evict(self, handle: int) -> None:
        """Remove the persistent object at ``handle`` (the old key after a renewal)."""
        with self.session("evicting a key", handle) as ectx:
            obj = ectx.tr_from_tpmpublic(handle)
            ectx.evict_control(ESYS_TR.OWNER, obj, handle)
            # ESAPI keeps the evicted object's name cached under this handle; a key persisted
            # there later would then fail the name check when it is read back.
            ectx.tr_close(obj)

    def key_info(self, handle: int) -> KeyInfo:
        if not self.has_handle(handle):
            raise TpmKeyNotFound(f"no key at handle 0x{handle:08x} in the TPM at {self.tcti}")
        with self.session("reading the device key", handle) as ectx:
            obj = ectx.tr_from_tpmpublic(handle)
            try:
                public, _name, _qn = ectx.read_public(obj)
            finally:
                ectx.tr_close(obj)
        area = public.publicArea
        if area.type != TPM2_ALG.RSA:
            raise TpmOperationError(f"the key at handle 0x{handle:08x} is not an RSA key")
        from tpm2_pytss.internal.crypto import public_to_key

        pem = public_to_key(area).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return KeyInfo(
            handle=handle,
            attributes=str(TPMA_OBJECT(int(area.objectAttributes))),
            attributes_value=int(area.objectAttributes),
            key_bits=int(area.parameters.rsaDetail.keyBits),
            scheme=str(TPM2_ALG(int(area.parameters.rsaDetail.scheme.scheme))).lower(),
            name_alg=str(TPM2_ALG(int(area.nameAlg))).lower(),
            auth_policy=bytes(area.authPolicy).hex(),
            public_key_pem=pem.decode("ascii"),
        )

    def open_key(
        self, handle: int, auth: bytes | None = None, pcrs: PcrSelection | None = None
    ) -> TpmRsaKey:
        """The persistent key at ``handle`` as a ``cryptography`` RSAPrivateKey."""
        if not self.has_handle(handle):
            raise TpmKeyNotFound(f"no key at handle 0x{handle:08x} in the TPM at {self.tcti}")
        return TpmRsaKey(self, handle, auth, pcrs)


class TpmRsaKey(tpm_rsa_private_key):
    """tpm2-pytss's TPM-backed RSAPrivateKey, made safe for our use.

    Adds, around every private-key operation: the :class:`Tpm` lock (callable from any
    thread), a fresh policy session for PCR-bound keys (a policy session is consumed by the
    command it authorises), error translation, and an operation counter (the uplink reports
    TPM operations per connection).
    """

    def __init__(
        self, tpm: Tpm, handle: int, auth: bytes | None, pcrs: PcrSelection | None
    ) -> None:
        self._tpm = tpm
        self._handle_value = handle
        self._auth = auth
        self._pcrs = pcrs
        self.operations = 0
        with tpm.session("opening the device key", handle) as ectx:
            obj = ectx.tr_from_tpmpublic(handle)
            if auth:
                ectx.tr_set_auth(obj, TPM2B_AUTH(auth))
            super().__init__(ectx, obj)
        attrs = int(self._public.objectAttributes)
        if pcrs is None and not attrs & TPMA_OBJECT.USERWITHAUTH:
            raise PcrPolicyNotSatisfied(
                f"key at handle 0x{handle:08x} is bound to a policy; give its PCR selection"
            )

    @property
    def handle(self) -> int:
        return self._handle_value

    @contextlib.contextmanager
    def _authorised(self, what: str) -> Iterator[None]:
        with self._tpm.session(what, self._handle_value) as ectx:
            session = ESYS_TR.PASSWORD
            if self._pcrs is not None:
                session = ectx.start_auth_session(
                    ESYS_TR.NONE,
                    ESYS_TR.NONE,
                    TPM2_SE.POLICY,
                    TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                    TPM2_ALG.SHA256,
                )
            try:
                if self._pcrs is not None:
                    ectx.policy_pcr(session, TPM2B_DIGEST(), self._pcrs.to_tpm())
                    if self._auth:
                        ectx.policy_password(session)
                self._session = session
                self.operations += 1
                yield
            finally:
                self._session = ESYS_TR.PASSWORD
                if session != ESYS_TR.PASSWORD:
                    # ESAPI starts sessions with continueSession set: the session outlives the
                    # command (success or failure) and would fill the TPM's session slots.
                    with contextlib.suppress(TSS2_Exception):
                        ectx.flush_context(session)

    def sign(
        self,
        data: bytes,
        padding: asym_padding.AsymmetricPadding,
        algorithm: HashAlgorithm | Prehashed,
    ) -> bytes:
        with self._authorised("signing with the device key"):
            return super().sign(data, padding, algorithm)

    def decrypt(self, ciphertext: bytes, padding: asym_padding.AsymmetricPadding) -> bytes:
        with self._authorised("decrypting with the device key"):
            return super().decrypt(ciphertext, padding)

    def public_key(self) -> rsa.RSAPublicKey:
        key: rsa.RSAPublicKey = super().public_key()
        return key

    def close(self) -> None:
        """Release the ESAPI reference to the persistent key (the key stays in the TPM)."""
        with contextlib.suppress(DeviceKeyError), self._tpm.session("closing the key") as ectx:
            ectx.tr_close(self._handle)

    def __copy__(self) -> TpmRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TpmRsaKey:
        return self


__all__ = [
    "DEFAULT_KEY_HANDLE",
    "SRK_HANDLE",
    "KeyInfo",
    "PcrSelection",
    "Tpm",
    "TpmRsaKey",
    "parse_handle",
]

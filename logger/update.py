"""Signed software updates: bundle format, verification, versioned releases, boot guard.

A **bundle** is an uncompressed (or gzip) tar holding, in this order:

``manifest.json``
    ``{"format": 1, "product": "mbus-ua-logger", "version": "0.2.0",
    "created": "2026-11-27T05:00:00Z", "architecture": "amd64" | "all",
    "files": [{"path": "venv/bin/python3", "type": "symlink", "target": "/usr/bin/python3"},
    {"path": "venv/lib/...", "type": "file", "mode": 420, "size": 123, "sha256": "..."},
    {"path": "venv/include", "type": "dir", "mode": 493}, ...]}``
``manifest.sig``
    the 64-byte Ed25519 signature of the exact bytes of ``manifest.json`` by the
    manufacturer's update key.
``payload/<path>``
    one member per manifest entry, nothing else.

The manufacturer's public key is pinned on the device at enrolment (``update trust``). A bundle
is verified completely before anything is written: signature over the manifest, product,
architecture, version strictly newer than anything installed before (anti-rollback), and every
payload member against its manifest entry (type, size, SHA-256, symlink target; no member
missing, none extra). Extraction then re-checks each file's hash while writing it, so a bundle
changed between the two passes is still refused.

**Releases** live under ``ROOT`` (``/opt/mbus-ua-logger`` on a device)::

    ROOT/releases/<version>/     one release tree (venv/...); read-only, root-owned
    ROOT/current  -> releases/<version>     what the service runs (atomic symlink flip)
    ROOT/previous -> releases/<version>     the last good release, the rollback target
    ROOT/update-state.json       the trial state machine below (root-owned)

**Trial and rollback.** ``apply`` installs the new release, records it as on *trial* and flips
``current``. The systemd unit runs this module's guard (the Debian package's copy at
``/usr/lib/mbus-ua-logger/update-guard``, which never changes with a bundle, so a broken release
cannot break its own rollback) before each start (``boot``: count the attempt, and after
``max_attempts`` failed starts flip ``current`` back to ``previous``) and after the daemon
reported ``READY=1`` (``confirm``: the release came up; the trial ends). A release that failed
its trial stays refused: a fix needs a newer version.

The guard part of this module uses only the standard library (run as
``python3 -I -S update-guard boot --root ROOT``); ``cryptography`` is imported only where a
signature is checked or made.
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

_LOGGER = logging.getLogger(__name__)

PRODUCT = "mbus-ua-logger"
FORMAT = 1
DEFAULT_ROOT = Path("/opt/mbus-ua-logger")
DEFAULT_TRUST_KEY = Path("/etc/mbus-logger/trust/update-signing.pub")
TRUST_KEY_NAME = "update-signing.pub"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD = "payload/"
STATE_FILE = "update-state.json"
LOCK_FILE = ".update.lock"
BUNDLE_MARKER = ".bundle-manifest.json"
DEFAULT_MAX_ATTEMPTS = 3

# Bounds: a bundle is read before it is trusted, so nothing in it may be unbounded.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_ENTRIES = 200_000
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024
ED25519_SIGNATURE_BYTES = 64
_CHUNK = 1024 * 1024

_VERSION_RE = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MACHINE_TO_DEB = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "armhf",
    "armv6l": "armhf",
    "i686": "i386",
    "i386": "i386",
}


class UpdateError(Exception):
    """An update could not be carried out because of the device's own set-up."""


class BundleRefused(UpdateError):
    """The bundle is not acceptable; ``reason`` names why in one word for scripts.

    Reasons: ``unsigned``, ``bad-signature``, ``tampered``, ``malformed``, ``other-product``,
    ``wrong-architecture``, ``not-newer``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# Versions


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.2.3"`` -> ``(1, 2, 3, 0)``: dotted numbers only, so ordering is never ambiguous."""
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise ValueError(f"version {text!r} is not of the form N[.N[.N[.N]]]")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def device_architecture() -> str:
    """The Debian architecture name of this machine (what a bundle's ``architecture`` names)."""
    machine = platform.machine()
    return _MACHINE_TO_DEB.get(machine, machine)


# --------------------------------------------------------------------------------------------
# Manifest


@dataclass(frozen=True)
class Entry:
    """One file, directory or symlink of a release tree."""

    path: str
    type: str  # "file" | "dir" | "symlink"
    mode: int = 0o644
    size: int = 0
    sha256: str = ""
    target: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "type": self.type}
        if self.type == "file":
            doc.update(mode=self.mode, size=self.size, sha256=self.sha256)
        elif self.type == "dir":
            doc["mode"] = self.mode
        else:
            doc["target"] = self.target
        return doc


@dataclass(frozen=True)
class Manifest:
    product: str
    version: str
    created: str
    architecture: str
    entries: tuple[Entry, ...]

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT,
            "product": self.product,
            "version": self.version,
            "created": self.created,
            "architecture": self.architecture,
            "files": [e.to_json() for e in self.entries],
        }
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def _check_path(path: object) -> str:
    if not isinstance(path, str) or not path or len(path) > 4096:
        raise BundleRefused("malformed", f"manifest entry has a bad path: {path!r}")
    pure = PurePosixPath(path)
    if (
        pure.is_absolute()
        or path != pure.as_posix()
        or any(part in ("", ".", "..") for part in path.split("/"))
        or "\x00" in path
    ):
        raise BundleRefused("malformed", f"manifest path {path!r} is not a plain relative path")
    return path


def _check_mode(mode: object, path: str) -> int:
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise BundleRefused("malformed", f"manifest entry {path!r} has a bad mode: {mode!r}")
    if mode & 0o022:
        raise BundleRefused(
            "malformed", f"manifest entry {path!r} is group/world-writable ({mode:04o})"
        )
    return mode


def parse_manifest(data: bytes) -> Manifest:
    """Validate the manifest's schema and paths (after its signature was verified)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleRefused("malformed", f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BundleRefused("malformed", "manifest is not a JSON object")
    if doc.get("format") != FORMAT:
        raise BundleRefused("malformed", f"manifest format {doc.get('format')!r} is not {FORMAT}")
    product, version, created = doc.get("product"), doc.get("version"), doc.get("created")
    arch = doc.get("architecture", "all")
    if not isinstance(version, str):
        raise BundleRefused("malformed", "manifest field 'version' is missing or bad")
    for name, value in (("product", product), ("created", created), ("architecture", arch)):
        if not isinstance(value, str) or not value or len(value) > 200:
            raise BundleRefused("malformed", f"manifest field {name!r} is missing or bad")
    try:
        parse_version(version)
    except ValueError as exc:
        raise BundleRefused("malformed", f"manifest: {exc}") from None
    files = doc.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_ENTRIES:
        raise BundleRefused("malformed", "manifest 'files' must be a non-empty list (bounded)")
    entries: list[Entry] = []
    seen: set[str] = set()
    total = 0
    for item in files:
        if not isinstance(item, dict):
            raise BundleRefused("malformed", "manifest 'files' holds a non-object")
        path = _check_path(item.get("path"))
        if path in seen:
            raise BundleRefused("malformed", f"manifest lists {path!r} twice")
        seen.add(path)
        kind = item.get("type")
        if kind == "file":
            size, digest = item.get("size"), item.get("sha256")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise BundleRefused("malformed", f"manifest entry {path!r} has a bad size")
            if size > MAX_FILE_BYTES:
                raise BundleRefused("malformed", f"manifest entry {path!r} is too large")
            if not isinstance(digest, str) or not _SHA256_RE.match(digest):
                raise BundleRefused("malformed", f"manifest entry {path!r} has a bad sha256")
            total += size
            entries.append(Entry(path, "file", _check_mode(item.get("mode"), path), size, digest))
        elif kind == "dir":
            entries.append(Entry(path, "dir", _check_mode(item.get("mode"), path)))
        elif kind == "symlink":
            target = item.get("target")
            if not isinstance(target, str) or not target or "\x00" in target or len(target) > 4096:
                raise BundleRefused("malformed", f"manifest symlink {path!r} has a bad target")
            entries.append(Entry(path, "symlink", target=target))
        else:
            raise BundleRefused("malformed", f"manifest entry {path!r} has type {kind!r}")
    if total > MAX_TOTAL_BYTES:
        raise BundleRefused("malformed", f"bundle payload is too large ({total} bytes)")
    # Nothing may be written through a symlink of the bundle itself (b -> /etc, then b/passwd).
    links = {e.path for e in entries if e.type == "symlink"}
    for e in entries:
        parents = PurePosixPath(e.path).parents
        for parent in list(parents)[:-1]:
            if parent.as_posix() in links:
                raise BundleRefused(
                    "malformed", f"manifest entry {e.path!r} lies beneath symlink {parent}"
                )
    return Manifest(str(product), version, str(created), str(arch), tuple(entries))


def scan_tree(src: Path) -> list[Entry]:
    """The manifest entries of a release tree on disk (sorted; files, dirs and symlinks)."""
    if not src.is_dir():
        raise UpdateError(f"release tree {src} is not a directory")
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            full = base / name
            rel = full.relative_to(src).as_posix()
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries.append(Entry(rel, "symlink", target=os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                entries.append(Entry(rel, "dir", mode=stat.S_IMODE(st.st_mode) & 0o755))
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256()
                with open(full, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                entries.append(Entry(rel, "file", mode, st.st_size, digest.hexdigest()))
            else:
                raise UpdateError(f"{full} is neither a file, a directory nor a symlink")
    entries.sort(key=lambda e: e.path)
    return entries


def write_bundle(
    src: Path,
    out: Path,
    *,
    version: str,
    sign: Callable[[bytes], bytes],
    product: str = PRODUCT,
    architecture: str = "all",
    created: str | None = None,
) -> Manifest:
    """Pack the release tree ``src`` into a signed bundle at ``out`` (written atomically).

    ``sign`` gets the manifest bytes and returns the Ed25519 signature; the private key stays
    with the caller (``mbus-provision update sign``). The tar is deterministic: sorted members,
    root ownership, mtime = ``created``.
    """
    parse_version(version)
    if created is None:
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    entries = scan_tree(src)
    if not entries:
        raise UpdateError(f"release tree {src} is empty")
    manifest = Manifest(product, version, created, architecture, tuple(entries))
    parse_manifest(manifest.to_bytes())  # the writer obeys the same rules as the reader
    data = manifest.to_bytes()
    signature = sign(data)
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise UpdateError("the signing key did not produce an Ed25519 signature")
    try:
        mtime = calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        raise UpdateError(f"created {created!r} is not of the form YYYY-MM-DDTHH:MM:SSZ") from None

    def info(name: str, kind: bytes, mode: int, size: int = 0, target: str = "") -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.linkname = target
        return ti

    # Not part of the guard (which has no ``logger`` package to import): the bundle is made on
    # the build station, where the whole package is installed.
    from logger.fileio import replacing

    out.parent.mkdir(parents=True, exist_ok=True)
    with (
        replacing(out, 0o644) as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf,
    ):
        tf.addfile(info(MANIFEST, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        tf.addfile(info(SIGNATURE, tarfile.REGTYPE, 0o644, len(signature)), io.BytesIO(signature))
        for e in entries:
            name = PAYLOAD + e.path
            if e.type == "file":
                with open(src / e.path, "rb") as fh:
                    tf.addfile(info(name, tarfile.REGTYPE, e.mode, e.size), fh)
            elif e.type == "dir":
                tf.addfile(info(name, tarfile.DIRTYPE, e.mode))
            else:
                tf.addfile(info(name, tarfile.SYMTYPE, 0o777, target=e.target))
    return manifest


# --------------------------------------------------------------------------------------------
# Trust: the pinned public key


def load_trust_key(path: Path) -> Any:
    """The pinned Ed25519 public key; refused if anyone but root (or us) could have replaced it.

    The update key decides what code runs as root, so a key file the daemon's own user could
    write (its state directory, say) would turn any compromise of the daemon into root.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        st = path.lstat()
    except FileNotFoundError:
        raise UpdateError(
            f"no update signing key is pinned at {path} (pin it with 'mbus-logger update trust')"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise UpdateError(f"pinned update key {path} is not a regular file")
    allowed = {0, os.geteuid()}
    for item, what in ((path, "key file"), (path.parent, "its directory")):
        ist = item.stat()
        if ist.st_uid not in allowed or ist.st_mode & 0o022:
            raise UpdateError(
                f"pinned update key {path}: {what} {item} is owned by uid {ist.st_uid} with mode "
                f"{stat.S_IMODE(ist.st_mode):04o}; only root may be able to change it"
            )
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except ValueError as exc:
        raise UpdateError(f"pinned update key {path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UpdateError(f"pinned update key {path} is not an Ed25519 key")
    return key


def key_fingerprint(public_pem: bytes) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo DER, hex: what operators compare by phone."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


def pin_trust_key(source: Path, dest: Path, *, replace: bool = False) -> str:
    """Pin ``source`` (an Ed25519 public key PEM) at ``dest``; returns its fingerprint.

    Pinning happens once, at enrolment; a different key is refused unless ``replace`` is set.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pem = source.read_bytes()
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise UpdateError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UpdateError(f"{source} is not an Ed25519 public key")
    if dest.exists() and not replace:
        if key_fingerprint(dest.read_bytes()) == key_fingerprint(pem):
            return key_fingerprint(pem)
        raise UpdateError(
            f"a different update key is already pinned at {dest}; refusing to replace it"
        )
    dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_file_atomic(dest, pem, 0o644)
    return key_fingerprint(pem)


# --------------------------------------------------------------------------------------------
# Reading and verifying a bundle


@dataclass
class VerifiedBundle:
    """A bundle whose signature, manifest and every payload member were checked."""

    path: Path
    manifest: Manifest
    manifest_bytes: bytes


def _read_member(tf: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes:
    if not member.isreg() or member.size > limit:
        raise BundleRefused("malformed", f"bundle member {member.name!r} is not a small file")
    fh = tf.extractfile(member)
    assert fh is not None
    return fh.read()


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:*")
    except FileNotFoundError:
        raise UpdateError(f"bundle {path} does not exist") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleRefused("malformed", f"{path} is not a bundle (tar): {exc}") from None


def _member_matches(member: tarfile.TarInfo, entry: Entry) -> bool:
    if entry.type == "file":
        return member.isreg() and member.size == entry.size
    if entry.type == "dir":
        return member.isdir()
    return member.issym() and member.linkname == entry.target


def _hash_stream(fh: IO[bytes], size: int, sink: Callable[[bytes], object] | None = None) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining > 0:
        chunk = fh.read(min(_CHUNK, remaining))
        if not chunk:
            break
        remaining -= len(chunk)
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
    return digest.hexdigest()


def verify_bundle(
    path: Path,
    public_key: Any,
    *,
    product: str = PRODUCT,
    installed: str | None = None,
    architecture: str | None = None,
) -> VerifiedBundle:
    """Check everything about a bundle without writing a byte; raise ``BundleRefused``.

    ``installed`` is the highest version this device ran or tried (anti-rollback floor): the
    bundle must be strictly newer. ``architecture`` defaults to this machine's.
    """
    from cryptography.exceptions import InvalidSignature

    arch = architecture or device_architecture()
    with _open_tar(path) as tf:
        by_name: dict[str, tarfile.TarInfo] = {}
        try:
            for m in tf:  # headers only; bounded before anything is trusted
                if len(by_name) > MAX_ENTRIES + 2:
                    raise BundleRefused("malformed", f"{path}: more than {MAX_ENTRIES} members")
                if m.name in by_name:
                    raise BundleRefused("tampered", f"{path}: member {m.name!r} appears twice")
                by_name[m.name] = m
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise BundleRefused("malformed", f"{path}: damaged tar: {exc}") from None
        if MANIFEST not in by_name:
            raise BundleRefused("malformed", f"{path}: no {MANIFEST}; not an update bundle")
        if SIGNATURE not in by_name:
            raise BundleRefused("unsigned", f"{path} is not signed (no {SIGNATURE}); refusing it")
        data = _read_member(tf, by_name[MANIFEST], MAX_MANIFEST_BYTES)
        signature = _read_member(tf, by_name[SIGNATURE], ED25519_SIGNATURE_BYTES)
        try:
            public_key.verify(signature, data)
        except InvalidSignature:
            raise BundleRefused(
                "bad-signature",
                f"{path}: the manifest's signature does not verify with the pinned update key "
                "(tampered, or signed by another key)",
            ) from None
        manifest = parse_manifest(data)
        if manifest.product != product:
            raise BundleRefused(
                "other-product", f"{path} is for {manifest.product!r}, not {product!r}"
            )
        if manifest.architecture not in ("all", arch):
            raise BundleRefused(
                "wrong-architecture",
                f"{path} is built for {manifest.architecture}, this device is {arch}",
            )
        if installed is not None and parse_version(manifest.version) <= parse_version(installed):
            raise BundleRefused(
                "not-newer",
                f"{path} holds version {manifest.version}, not newer than {installed} "
                "(installed before); refusing to go back",
            )
        expected = {PAYLOAD + e.path: e for e in manifest.entries}
        extra = sorted(set(by_name) - set(expected) - {MANIFEST, SIGNATURE})
        missing = sorted(set(expected) - set(by_name))
        if extra or missing:
            raise BundleRefused(
                "tampered",
                f"{path}: payload differs from the signed manifest "
                f"(extra {extra[:3]}, missing {missing[:3]})",
            )
        for name, entry in expected.items():
            member = by_name[name]
            if not _member_matches(member, entry):
                raise BundleRefused("tampered", f"{path}: {entry.path} differs from the manifest")
            if entry.type == "file":
                fh = tf.extractfile(member)
                assert fh is not None
                if _hash_stream(fh, member.size) != entry.sha256:
                    raise BundleRefused(
                        "tampered", f"{path}: {entry.path} does not match its signed SHA-256"
                    )
    return VerifiedBundle(path, manifest, data)


def _extract(bundle: VerifiedBundle, dest: Path) -> None:
    """Write the verified payload into the empty directory ``dest``, re-checking each hash."""
    expected = {PAYLOAD + e.path: e for e in bundle.manifest.entries}
    with _open_tar(bundle.path) as tf:
        written: set[str] = set()
        for member in tf:
            entry = expected.get(member.name)
            if entry is None:
                if member.name in (MANIFEST, SIGNATURE):
                    continue
                raise BundleRefused("tampered", f"{bundle.path} changed while being installed")
            if member.name in written or not _member_matches(member, entry):
                raise BundleRefused("tampered", f"{bundle.path} changed while being installed")
            written.add(member.name)
            target = dest / entry.path
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            if entry.type == "dir":
                target.mkdir(mode=0o755, exist_ok=True)
                os.chmod(target, entry.mode, follow_symlinks=False)
            elif entry.type == "symlink":
                os.symlink(entry.target, target)
            else:
                src = tf.extractfile(member)
                assert src is not None
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(target, flags, 0o600)
                with os.fdopen(fd, "wb") as out:
                    digest = _hash_stream(src, member.size, out.write)
                    os.fchmod(out.fileno(), entry.mode)
                if digest != entry.sha256:
                    raise BundleRefused(
                        "tampered", f"{bundle.path}: {entry.path} changed while being installed"
                    )
        if written != set(expected):
            raise BundleRefused("tampered", f"{bundle.path} changed while being installed")


# --------------------------------------------------------------------------------------------
# Releases and the trial state machine (standard library only from here on)


def _optional_version(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"version {value!r} is not a string")
    parse_version(value)
    return value


@dataclass
class UpdateState:
    """``ROOT/update-state.json``: what the guard needs across restarts and reboots.

    state: ``installed`` (no update yet), ``trial``, ``confirmed``, ``rolled-back``.
    floor: the highest version ever installed or tried: anything not newer is refused.
    """

    state: str = "installed"
    trial: str | None = None
    previous: str | None = None
    attempts: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    floor: str | None = None
    failed: list[str] = field(default_factory=list)
    updated: str = ""
    history: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "state": self.state,
            "trial": self.trial,
            "previous": self.previous,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "floor": self.floor,
            "failed": self.failed,
            "updated": self.updated,
            "history": self.history[-20:],
        }

    def log(self, event: str, version: str | None) -> None:
        self.updated = _now()
        self.history.append({"at": self.updated, "event": event, "version": version or ""})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically and durably: temporary file (``mode`` before the first
    byte), fsync, rename, fsync of the directory.

    The standalone copy of :func:`logger.fileio.replace_file`, whose docstring says why each
    step is there. The guard runs as one file (``python3 -I -S update-guard``) with no
    ``logger`` package to import, so it cannot share that module; ``tests/test_fileio.py``
    runs the same contract tests against both so they cannot drift apart.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (see :func:`logger.fileio.fsync_dir`)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Releases:
    """The release directory of one installation (``ROOT``); every change holds its lock."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = root
        self.releases = root / "releases"
        self.state_path = root / STATE_FILE

    # -- reading

    def _link_version(self, name: str) -> str | None:
        link = self.root / name
        try:
            target = os.readlink(link)
        except (FileNotFoundError, OSError):
            return None
        version = PurePosixPath(target).name
        return version if (self.releases / version).is_dir() else None

    @property
    def current(self) -> str | None:
        """The version ``current`` points at (None when there is none)."""
        return self._link_version("current")

    @property
    def previous(self) -> str | None:
        return self._link_version("previous")

    def installed(self) -> list[str]:
        if not self.releases.is_dir():
            return []
        found = []
        for child in self.releases.iterdir():
            try:
                parse_version(child.name)
            except ValueError:
                continue
            if child.is_dir():
                found.append(child.name)
        return sorted(found, key=parse_version)

    def load_state(self) -> UpdateState:
        try:
            doc = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return UpdateState()
        except (OSError, ValueError) as exc:
            raise UpdateError(f"update state {self.state_path} is unreadable: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise UpdateError(f"update state {self.state_path} has an unknown format")
        try:
            state = UpdateState(
                state=str(doc.get("state", "installed")),
                trial=_optional_version(doc.get("trial")),
                previous=_optional_version(doc.get("previous")),
                attempts=int(doc.get("attempts", 0)),
                max_attempts=int(doc.get("max_attempts", DEFAULT_MAX_ATTEMPTS)),
                floor=_optional_version(doc.get("floor")),
                failed=[str(v) for v in doc.get("failed", [])],
                updated=str(doc.get("updated", "")),
                history=list(doc.get("history", [])),
            )
        except (TypeError, ValueError) as exc:
            raise UpdateError(f"update state {self.state_path} is damaged: {exc}") from None
        return state

    def floor(self, state: UpdateState | None = None) -> str | None:
        """The version a bundle must be newer than: max of the state's floor and ``current``."""
        state = state or self.load_state()
        candidates = [v for v in (state.floor, self.current) if v]
        return max(candidates, key=parse_version) if candidates else None

    # -- writing

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def save_state(self, state: UpdateState) -> None:
        data = json.dumps(state.to_json(), indent=1).encode() + b"\n"
        write_file_atomic(self.state_path, data, 0o644)

    def _point(self, name: str, version: str | None) -> None:
        """Atomically (re)point ``ROOT/name`` at ``releases/version`` (or remove it)."""
        link = self.root / name
        if version is None:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            _fsync_dir(self.root)
            return
        if not (self.releases / version).is_dir():
            raise UpdateError(f"release {version} is not installed under {self.releases}")
        tmp = self.root / f".{name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, link)
        _fsync_dir(self.root)

    def install(
        self, bundle: VerifiedBundle, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS
    ) -> UpdateState:
        """Unpack a verified bundle as a new release on trial and make it ``current``.

        The release is written to a hidden directory, synced, renamed into place; then the state
        records the trial (so a power cut before the flip is finished by the next ``boot``), and
        ``current`` flips. Old bundle-installed releases beyond current and previous are pruned.
        """
        version = bundle.manifest.version
        with self.locked():
            state = self.load_state()
            floor = self.floor(state)
            if floor is not None and parse_version(version) <= parse_version(floor):
                raise BundleRefused(
                    "not-newer", f"version {version} is not newer than {floor} (installed before)"
                )
            self.releases.mkdir(mode=0o755, parents=True, exist_ok=True)
            final = self.releases / version
            if final.exists():
                shutil.rmtree(final)  # a leftover of an interrupted apply of this same version
            staging = Path(tempfile.mkdtemp(prefix=f".incoming-{version}-", dir=self.releases))
            try:
                os.chmod(staging, 0o755)
                _extract(bundle, staging)
                write_file_atomic(staging / BUNDLE_MARKER, bundle.manifest_bytes, 0o644)
                os.sync()
                os.rename(staging, final)
                _fsync_dir(self.releases)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            running = self.current
            # The rollback target is the last release that came up: while one is still on
            # trial (not confirmed), that is the trial's own rollback target, not the trial.
            fallback = running
            if (
                state.state == "trial"
                and state.previous is not None
                and (self.releases / state.previous).is_dir()
            ):
                fallback = state.previous
            state.state = "trial"
            state.trial = version
            state.previous = fallback
            state.attempts = 0
            state.max_attempts = max_attempts
            state.floor = version
            state.log("applied", version)
            self.save_state(state)
            if fallback is not None:
                self._point("previous", fallback)
            self._point("current", version)
            self._prune(keep={version, fallback})
            return state

    def _prune(self, keep: set[str | None]) -> None:
        for version in self.installed():
            release = self.releases / version
            if version in keep or not (release / BUNDLE_MARKER).exists():
                continue  # the Debian package's own release is dpkg's to remove
            _LOGGER.info("removing old release %s", version)
            shutil.rmtree(release, ignore_errors=True)
        for stale in self.releases.glob(".incoming-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def boot(self) -> str:
        """Before each start of the service: count a trial start, roll back when exhausted."""
        with self.locked():
            state = self.load_state()
            if state.state != "trial" or not state.trial:
                return f"no release on trial; running {self.current}"
            if self.current != state.trial and (self.releases / state.trial).is_dir():
                self._point("current", state.trial)  # an apply interrupted before its flip
            state.attempts += 1
            if state.attempts <= state.max_attempts:
                self.save_state(state)
                return (
                    f"release {state.trial} on trial: start {state.attempts} "
                    f"of {state.max_attempts}"
                )
            failed = state.trial
            target = state.previous
            if target is None or not (self.releases / target).is_dir():
                state.log("rollback-impossible", failed)
                self.save_state(state)
                return (
                    f"release {failed} failed {state.max_attempts} starts but there is no "
                    "previous release to roll back to; keeping it"
                )
            self._point("current", target)
            state.state = "rolled-back"
            state.failed.append(failed)
            state.trial = None
            state.attempts = 0
            state.log("rolled-back", failed)
            self.save_state(state)
            return (
                f"release {failed} did not come up in {state.max_attempts} starts: "
                f"rolled back to {target}"
            )

    def confirm(self) -> str:
        """The running release came up: end its trial (``previous`` stays for manual rollback)."""
        with self.locked():
            state = self.load_state()
            if state.state != "trial" or not state.trial:
                return f"nothing to confirm; running {self.current}"
            if self.current != state.trial:
                return (
                    f"release {state.trial} is on trial but {self.current} is current; "
                    "not confirming"
                )
            version = state.trial
            state.state = "confirmed"
            state.trial = None
            state.attempts = 0
            state.log("confirmed", version)
            self.save_state(state)
            return f"release {version} confirmed"

    def rollback(self) -> str:
        """Operator's rollback: make ``previous`` current again (the failed one stays refused)."""
        with self.locked():
            state = self.load_state()
            target = self.previous or state.previous
            running = self.current
            if target is None or not (self.releases / target).is_dir():
                raise UpdateError("there is no previous release to roll back to")
            self._point("current", target)
            self._point("previous", None)
            if running:
                state.failed.append(running)
            state.state = "rolled-back"
            state.trial = None
            state.attempts = 0
            state.previous = None
            state.log("rolled-back", running)
            self.save_state(state)
            return f"rolled back from {running} to {target}"

    def adopt(self, version: str) -> str:
        """The Debian package installed ``releases/<version>``: run it unless something newer is
        current (a bundle newer than the package keeps running)."""
        parse_version(version)
        with self.locked():
            if not (self.releases / version).is_dir():
                raise UpdateError(f"release {version} is not installed under {self.releases}")
            running = self.current
            state = self.load_state()
            if running is not None and parse_version(running) >= parse_version(version):
                return f"keeping release {running} (package release {version} is not newer)"
            if running is not None:
                self._point("previous", running)
            self._point("current", version)
            if not state.floor or parse_version(version) > parse_version(state.floor):
                state.floor = version
            state.state, state.trial, state.attempts = "installed", None, 0
            state.previous = running
            state.log("package-installed", version)
            self.save_state(state)
            return f"release {version} is current"

    def status(self) -> dict[str, Any]:
        state = self.load_state()
        return {
            "root": str(self.root),
            "current": self.current,
            "previous": self.previous,
            "state": state.state,
            "trial": state.trial,
            "attempts": state.attempts,
            "max_attempts": state.max_attempts,
            "floor": self.floor(state),
            "failed": state.failed,
            "releases": self.installed(),
            "updated": state.updated,
        }


# --------------------------------------------------------------------------------------------
# Guard entry point: `python3 -I -S update-guard {boot,confirm,adopt} --root ROOT`


def guard_main(argv: list[str] | None = None) -> int:
    """The systemd side of the trial: must never stop the service from starting.

    Errors are printed (to the journal) and the exit status stays 0 for ``boot``/``confirm``:
    a guard that cannot read its state must not keep the logger down.
    """
    parser = argparse.ArgumentParser(prog="update-guard", description=guard_main.__doc__)
    parser.add_argument("action", choices=("boot", "confirm", "adopt", "status"))
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--version", help="adopt: the package's release version")
    args = parser.parse_args(argv)
    releases = Releases(args.root)
    try:
        if args.action == "boot":
            message = releases.boot()
        elif args.action == "confirm":
            message = releases.confirm()
        elif args.action == "adopt":
            if not args.version:
                parser.error("adopt needs --version")
            message = releases.adopt(args.version)
        else:
            message = json.dumps(releases.status(), indent=1)
    except (UpdateError, OSError, ValueError) as exc:
        print(f"update-guard: {args.action}: {exc}", file=sys.stderr)
        return 1 if args.action in ("adopt", "status") else 0
    if args.action == "status":
        print(message)
    else:
        print(f"update-guard: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(guard_main())

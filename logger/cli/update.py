"""``mbus-logger update``: apply signed update bundles, show, confirm and roll back releases.

``apply`` runs as root (it writes ``/opt/mbus-ua-logger``); the daemon itself never can. The
bundle is verified against the manufacturer's key pinned at enrolment (``update trust``) before
anything is written. Refusals (unsigned, tampered, other product, not newer) exit 4.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from logger.cli.common import (
    OK,
    PERMANENT,
    TRANSIENT,
    USAGE,
    CliError,
    add_format,
    emit,
    print_json,
)

SERVICE = "mbus-logger.service"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "update",
        help="signed software updates",
        description="Signed software updates: verify and install bundles, releases, rollback.",
    )
    sub = parser.add_subparsers(dest="update_command", metavar="ACTION")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--root",
            type=Path,
            default=None,
            help="installation root holding releases/ and current (default /opt/mbus-ua-logger)",
        )
        add_format(p)

    def trust(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument(
            "--trust-key",
            type=Path,
            help="the pinned update key (default /etc/mbus-logger/trust/update-signing.pub)",
        )
        group.add_argument(
            "--state-dir",
            type=Path,
            help="use the key pinned in STATE_DIR/trust/update-signing.pub",
        )

    p = sub.add_parser("apply", help="verify a bundle, install it and restart the service")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    trust(p)
    common(p)
    p.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        help="failed starts before the guard rolls back (default 3)",
    )
    p.add_argument(
        "--no-restart",
        action="store_true",
        help="do not restart mbus-logger.service (it runs the new release at its next start)",
    )
    p.set_defaults(handler=_apply)

    p = sub.add_parser("verify", help="verify a bundle without installing it")
    p.add_argument("bundle", type=Path, metavar="BUNDLE")
    trust(p)
    common(p)
    p.set_defaults(handler=_verify)

    p = sub.add_parser("status", help="releases, the one running, trial state")
    trust(p)
    common(p)
    p.set_defaults(handler=_status)

    p = sub.add_parser("confirm", help="end the running release's trial (it came up)")
    common(p)
    p.set_defaults(handler=_confirm)

    p = sub.add_parser("rollback", help="go back to the previous release")
    common(p)
    p.add_argument("--no-restart", action="store_true", help="do not restart the service")
    p.set_defaults(handler=_rollback)

    p = sub.add_parser("trust", help="pin the manufacturer's update key (at enrolment)")
    p.add_argument("key_file", type=Path, metavar="PUBKEY", help="Ed25519 public key (PEM)")
    trust(p)
    p.add_argument("--replace", action="store_true", help="replace a different key already pinned")
    add_format(p)
    p.set_defaults(handler=_trust)


def _root(args: argparse.Namespace) -> Path:
    from logger.update import DEFAULT_ROOT

    root: Path | None = getattr(args, "root", None)
    return root if root is not None else DEFAULT_ROOT


def _trust_path(args: argparse.Namespace) -> Path:
    from logger.update import DEFAULT_TRUST_KEY, TRUST_KEY_NAME

    if getattr(args, "trust_key", None) is not None:
        return Path(args.trust_key)
    if getattr(args, "state_dir", None) is not None:
        return Path(args.state_dir) / "trust" / TRUST_KEY_NAME
    return DEFAULT_TRUST_KEY


def _translate(exc: Exception) -> CliError:
    from logger.update import BundleRefused

    if isinstance(exc, BundleRefused):
        return CliError(f"update refused ({exc.reason}): {exc}", PERMANENT)
    if isinstance(exc, FileNotFoundError):
        return CliError(f"no such file: {exc.filename}", USAGE)
    if isinstance(exc, OSError):
        return CliError(f"update failed: {exc}", TRANSIENT)
    return CliError(str(exc), USAGE)


def _restart(no_restart: bool) -> str:
    """Restart the service when systemd runs here; report what happened."""
    if no_restart:
        return "not restarted (--no-restart)"
    if not os.path.isdir("/run/systemd/system") or shutil.which("systemctl") is None:
        return "not restarted (systemd is not running)"
    proc = subprocess.run(
        ["systemctl", "try-restart", SERVICE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise CliError(
            f"installed, but 'systemctl try-restart {SERVICE}' failed: {proc.stderr.strip()}",
            TRANSIENT,
        )
    return f"{SERVICE} restarted"


def _apply(args: argparse.Namespace) -> int:
    from logger.update import Releases, UpdateError, load_trust_key, verify_bundle

    releases = Releases(_root(args))
    if args.max_attempts < 1:
        raise CliError("--max-attempts must be at least 1", USAGE)
    try:
        key = load_trust_key(_trust_path(args))
        verified = verify_bundle(args.bundle, key, installed=releases.floor())
        state = releases.install(verified, max_attempts=args.max_attempts)
    except (UpdateError, OSError) as exc:
        raise _translate(exc) from None
    restart = _restart(args.no_restart)
    doc = {
        "version": verified.manifest.version,
        "previous": state.previous,
        "state": state.state,
        "max_attempts": state.max_attempts,
        "restart": restart,
    }
    emit(
        args,
        doc,
        f"installed {verified.manifest.version} (previous {state.previous or 'none'}); "
        f"on trial for {state.max_attempts} starts; {restart}",
    )
    return OK


def _verify(args: argparse.Namespace) -> int:
    from logger.update import Releases, UpdateError, load_trust_key, verify_bundle

    releases = Releases(_root(args))
    try:
        key = load_trust_key(_trust_path(args))
        verified = verify_bundle(args.bundle, key, installed=releases.floor())
    except (UpdateError, OSError) as exc:
        raise _translate(exc) from None
    manifest = verified.manifest
    doc = {
        "product": manifest.product,
        "version": manifest.version,
        "created": manifest.created,
        "architecture": manifest.architecture,
        "files": len(manifest.entries),
        "bytes": manifest.total_bytes,
    }
    emit(
        args,
        doc,
        f"{args.bundle}: good signature; {manifest.product} {manifest.version} "
        f"({manifest.architecture}, {len(manifest.entries)} entries, "
        f"created {manifest.created})",
    )
    return OK


def _status(args: argparse.Namespace) -> int:
    from logger.update import Releases, UpdateError, key_fingerprint

    try:
        doc: dict[str, Any] = Releases(_root(args)).status()
    except (UpdateError, OSError) as exc:
        raise _translate(exc) from None
    trust = _trust_path(args)
    doc["trust_key"] = str(trust)
    try:
        doc["trust_key_sha256"] = key_fingerprint(trust.read_bytes())
    except (OSError, ValueError):
        doc["trust_key_sha256"] = None
    if args.format == "json":
        print_json(doc)
        return OK
    for name in ("current", "previous", "state", "trial", "floor", "trust_key_sha256"):
        value = doc[name]
        if name == "trial" and value:
            value = f"{value} (start {doc['attempts']} of {doc['max_attempts']})"
        print(f"{name + ':':18} {value if value is not None else '-'}")
    print(f"{'releases:':18} {' '.join(doc['releases']) or '-'}")
    if doc["failed"]:
        print(f"{'failed:':18} {' '.join(doc['failed'])}")
    return OK


def _confirm(args: argparse.Namespace) -> int:
    from logger.update import Releases, UpdateError

    try:
        message = Releases(_root(args)).confirm()
    except (UpdateError, OSError) as exc:
        raise _translate(exc) from None
    emit(args, {"message": message}, message)
    return OK


def _rollback(args: argparse.Namespace) -> int:
    from logger.update import Releases, UpdateError

    try:
        message = Releases(_root(args)).rollback()
    except (UpdateError, OSError) as exc:
        raise _translate(exc) from None
    restart = _restart(args.no_restart)
    emit(args, {"message": message, "restart": restart}, f"{message}; {restart}")
    return OK


def _trust(args: argparse.Namespace) -> int:
    from logger.update import UpdateError, pin_trust_key

    dest = _trust_path(args)
    try:
        fingerprint = pin_trust_key(args.key_file, dest, replace=args.replace)
    except (UpdateError, OSError) as exc:
        raise _translate(exc) from None
    emit(
        args,
        {"trust_key": str(dest), "sha256": fingerprint},
        f"update key pinned at {dest}; SHA-256 {fingerprint}",
    )
    return OK

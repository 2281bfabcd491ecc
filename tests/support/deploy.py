"""Helpers for signed-update tests: release trees, a manufacturer key, bundles.

Used by ``tests/deploy`` and by HIL scenarios that apply an update to a running logger.
The keys are made by the project's own provisioning code, never committed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from provisioning.updates import generate_signing_key, sign_release

PASSPHRASE = b"update-test-passphrase"


@dataclass
class Manufacturer:
    """A PKI directory holding an update signing key, and its public key file."""

    pki: Path
    public_key: Path
    passphrase: bytes = PASSPHRASE

    def sign(self, release: Path, out: Path, version: str, **kwargs: str) -> Path:
        sign_release(self.pki, self.passphrase, release, out, version=version, **kwargs)
        return out


def make_manufacturer(directory: Path, passphrase: bytes = PASSPHRASE) -> Manufacturer:
    pki = directory / "pki"
    public, _fingerprint = generate_signing_key(pki, passphrase)
    return Manufacturer(pki, public, passphrase)


def make_release_tree(directory: Path, version: str, *, exit_code: int = 0) -> Path:
    """A small release tree shaped like the real one (venv/bin, a symlink, an empty dir).

    ``venv/bin/mbus-logger`` is a shell script that exits with ``exit_code`` after writing the
    version it belongs to, so a test can see which release ran and make one that fails.
    """
    tree = directory / f"tree-{version}"
    (tree / "venv" / "bin").mkdir(parents=True)
    (tree / "venv" / "include").mkdir()
    lib = tree / "venv" / "lib" / "python3.11" / "site-packages" / "logger"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text(f'__version__ = "{version}"\n')
    (lib / "payload.bin").write_bytes(os.urandom(4096) + f"release {version} payload".encode())
    script = tree / "venv" / "bin" / "mbus-logger"
    script.write_text(
        '#!/bin/sh\necho "running release ' + version + f'" >> "$RUN_LOG"\nexit {exit_code}\n'
    )
    script.chmod(0o755)
    (tree / "venv" / "bin" / "python3").symlink_to("/usr/bin/python3")
    (tree / "venv" / "bin" / "python").symlink_to("python3")
    (tree / "release.json").write_text(f'{{"version": "{version}"}}\n')
    return tree


def pin_key(manufacturer: Manufacturer, trust_dir: Path) -> Path:
    """Pin the manufacturer's key as enrolment does (root-owned, 0644, dir 0755)."""
    trust_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    dest = trust_dir / "update-signing.pub"
    dest.write_bytes(manufacturer.public_key.read_bytes())
    dest.chmod(0o644)
    return dest

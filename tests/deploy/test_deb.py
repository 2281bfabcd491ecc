"""The Debian package: the device lock, what the .deb holds, and (as root) installing it.

The package is built once per module by the real build (``deploy.debian.build``, what
``make deb`` runs); the dependencies' virtualenv is cached under ``build/deb/cache`` keyed by
the lock, so only the first run compiles tpm2-pytss.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from deploy.debian import build as debbuild
from deploy.debian import lock
from logger.update import Releases
from tests.support.deploy import make_manufacturer, pin_key
from tests.support.requires import require

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PREFIX = Path("/opt/mbus-ua-logger")


def test_device_lock_is_derived_from_dev_lock():
    assert (REPO / "requirements" / "device.lock").read_text() == lock.derive()


def test_device_lock_holds_the_base_dependencies_only():
    pins = lock.read_lock(REPO / "requirements" / "device.lock")
    dev = lock.read_lock(REPO / "requirements" / "dev.lock")
    for name in ("asyncua", "cryptography", "pyserial", "pymodbus", "tpm2-pytss"):
        assert pins[name] == dev[name]
    for name in ("asyncpg", "pytest", "hypothesis", "ruff", "mypy", "aiosmtpd", "pymeterbus"):
        assert name not in pins
    assert all(pins[k] == dev[k] for k in pins)


def test_lock_refuses_a_dependency_dev_lock_does_not_pin(tmp_path):
    from packaging.requirements import Requirement

    pins = lock.read_lock(REPO / "requirements" / "dev.lock")
    del pins["cffi"]
    with pytest.raises(lock.LockError, match="cffi"):
        lock.closure([Requirement("cryptography")], pins)


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(
        shutil.which("dpkg-deb") is not None and Path("/usr/bin/python3").exists(),
        "building the .deb needs dpkg-deb and Debian's python3",
    )
    base = tmp_path_factory.mktemp("deb")
    return debbuild.build(base / "dist", base / "work", cache=REPO / "build" / "deb" / "cache")


@pytest.fixture(scope="module")
def extracted(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("extracted")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_control_fields(deb):
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert deb.name == f"mbus-ua-logger_{VERSION}_{arch}.deb"
    assert field(deb, "Package") == "mbus-ua-logger"
    assert field(deb, "Version") == VERSION and field(deb, "Architecture") == arch
    depends = [d.strip() for d in field(deb, "Depends").split(",")]
    names = {d.split()[0] for d in depends}
    # tpm2-pytss is compiled against libtss2: its runtime libraries, found from the ELF files
    for lib in ("libtss2-esys-3.0.2-0", "libtss2-tctildr0", "libtss2-mu0", "libtss2-rc0"):
        assert lib in names, depends
    assert {"python3", "adduser", "libtss2-tcti-device0", "libc6"} <= names
    assert "python3 (<< 3.12)" in depends
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True).stdout
    for script in ("postinst", "prerm", "postrm", "md5sums"):
        assert script in info


def test_contents(deb):
    listing = subprocess.run(
        ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    ).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    release = f"/opt/mbus-ua-logger/releases/{VERSION}"
    for expected in (
        "/usr/bin/mbus-logger",
        "/usr/lib/mbus-ua-logger/update-guard",
        "/lib/systemd/system/mbus-logger.service",
        "/lib/udev/rules.d/61-mbus-logger.rules",
        "/usr/lib/modules-load.d/mbus-logger.conf",
        "/usr/share/doc/mbus-ua-logger/copyright",
        f"{release}/release.json",
        f"{release}/venv/pyvenv.cfg",
        f"{release}/venv/lib/python3.11/site-packages/logger/update.py",
        f"{release}/venv/lib/python3.11/site-packages/logger/__pycache__/update.cpython-311.pyc",
    ):
        assert expected in paths, expected
    assert any(re.search(r"tpm2_pytss/_libtpm2_pytss.*\.so$", p) for p in paths)
    assert f"{release}/venv/bin/python3 -> /usr/bin/python3" in listing
    # no receiver extras, no dev tools, no pip, no link dpkg would own
    site = f"{release}/venv/lib/python3.11/site-packages/"
    for absent in ("asyncpg", "pytest", "hypothesis", "pip", "setuptools", "mypy", "ruff"):
        assert not any(p.startswith(site + absent + "/") for p in paths), absent
    assert "/opt/mbus-ua-logger/current" not in paths
    assert all(" root/root " in line for line in listing.splitlines())


def test_payload_has_no_build_paths_and_matches_the_sources(extracted):
    release = extracted / f"opt/mbus-ua-logger/releases/{VERSION}"
    needle = str(REPO).encode()
    for path in release.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert needle not in path.read_bytes(), path
    cfg = (release / "venv/pyvenv.cfg").read_text()
    assert "home = /usr/bin" in cfg
    guard = extracted / "usr/lib/mbus-ua-logger/update-guard"
    assert guard.read_bytes() == (REPO / "logger/update.py").read_bytes()
    unit = extracted / "lib/systemd/system/mbus-logger.service"
    assert unit.read_bytes() == (REPO / "deploy/systemd/mbus-logger.service").read_bytes()
    for script in ("postinst", "prerm", "postrm"):
        subprocess.run(["sh", "-n", str(REPO / "deploy/debian" / script)], check=True)


def test_the_private_venv_runs_from_any_place(extracted):
    """A venv on Debian's python3 is relocatable: its imports work even extracted here."""
    python = extracted / f"opt/mbus-ua-logger/releases/{VERSION}/venv/bin/python"
    code = (
        "import sys, asyncua, cryptography, serial, pymodbus, tpm2_pytss, logger.update;"
        "print(sys.prefix)"
    )
    proc = subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=False, cwd="/"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(f"releases/{VERSION}/venv")
    receiver = subprocess.run([str(python), "-I", "-c", "import asyncpg"], capture_output=True)
    assert receiver.returncode != 0  # no receiver extras on a device


# --- installing the package (root only: CI runs as root) ----------------------------------------


def _installed() -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", "mbus-ua-logger"], capture_output=True, text=True
    )
    return (
        proc.returncode == 0 and "installed" in proc.stdout and "not-installed" not in proc.stdout
    )


def _sh(*argv: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def _step_check_config() -> None:
    """The example configuration the package ships validates with the installed command."""
    example = "/usr/share/mbus-ua-logger/logger.example.toml"
    proc = _sh("/usr/bin/mbus-logger", "check-config", example, cwd="/", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _step_key_info(tmp_path: Path) -> None:
    """The installed tpm2-pytss (compiled against libtss2) makes a key in a software TPM."""
    from tests.support.swtpm import swtpm

    state = tmp_path / "device-state"
    with swtpm() as tcti:
        csr = _sh(
            "/usr/bin/mbus-logger",
            "cert",
            "csr",
            "--state-dir",
            str(state),
            "--tpm",
            tcti,
            "--serial",
            "SN-DEB-1",
            "--application-uri",
            "urn:example:logger:SN-DEB-1",
            "--org",
            "acme",
            "--out",
            str(tmp_path / "device.csr"),
            cwd="/",
        )
        assert (tmp_path / "device.csr").read_bytes().startswith(b"-----BEGIN"), csr.stderr
        info = _sh(
            "/usr/bin/mbus-logger",
            "key",
            "info",
            "--state-dir",
            str(state),
            "--tpm",
            tcti,
            "--format",
            "json",
            cwd="/",
        )
    doc = json.loads(info.stdout)
    assert doc["type"] == "tpm" and doc["tcti"] == tcti


def _step_uplink_check(tmp_path: Path) -> None:
    """The installed logger, enrolled by the provider, connects to a running receiver.

    The bench (hil.stack: swtpm, PKI by ``mbus-provision``, ``mbus-receiver serve``) comes from
    the development tree; only the logger side runs from the installed package.
    """
    from hil.stack import Stack

    with Stack(tmp_path / "stack", loggers=("SN-DEB-2",)) as stack:
        stack.start(start_loggers=False)
        config = str(stack.logger.config_path)
        checked = _sh("/usr/bin/mbus-logger", "check-config", config, cwd="/", check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        proc = _sh(
            "/usr/bin/mbus-logger",
            "uplink",
            "check",
            "--config",
            config,
            "--format",
            "json",
            cwd="/",
            check=False,
            timeout=90,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    json.loads(proc.stdout)


@pytest.mark.hil
def test_install_run_update_and_purge(deb, tmp_path):
    require(os.geteuid() == 0, "installing a .deb needs root (CI runs as root)")
    require(
        not (_installed() or PREFIX.exists()),
        f"mbus-ua-logger is installed on this machine already ({PREFIX}); not touching it",
    )
    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    try:
        _sh("dpkg", "-i", str(deb), env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        # what postinst set up
        _sh("getent", "passwd", "mbus-logger")
        assert os.readlink(PREFIX / "current") == f"releases/{VERSION}"
        assert (os.stat("/etc/mbus-logger").st_mode & 0o777) == 0o750
        assert (os.stat("/etc/mbus-logger/device-key.secret").st_mode & 0o777) == 0o600
        state = os.stat("/var/lib/mbus-logger")
        assert state.st_mode & 0o777 == 0o700
        # run from the installed package, in a directory that has nothing to offer
        help_out = _sh("/usr/bin/mbus-logger", "--help", cwd="/").stdout
        assert "update" in help_out
        status = _sh("/usr/bin/mbus-logger", "update", "status", "--format", "json", cwd="/")
        assert f'"current": "{VERSION}"' in status.stdout
        verify = _sh("systemd-analyze", "verify", "/lib/systemd/system/mbus-logger.service")
        assert verify.stderr.strip() == ""
        _step_check_config()
        _step_key_info(tmp_path)
        _step_uplink_check(tmp_path)

        # a signed update of the installed release, applied with the installed command
        maker = make_manufacturer(tmp_path / "factory")
        pin_key(maker, Path("/etc/mbus-logger/trust"))
        newer = f"{VERSION}.1"
        bundle = maker.sign(PREFIX / "releases" / VERSION, tmp_path / "u.tar", newer)
        _sh("/usr/bin/mbus-logger", "update", "apply", str(bundle), "--no-restart", cwd="/")
        assert Releases(PREFIX).current == newer
        assert "update" in _sh("/usr/bin/mbus-logger", "--help", cwd="/").stdout
        # the package's guard (what the unit's ExecStartPost runs) confirms it
        guard = ["/usr/bin/python3", "-I", "-S", "/usr/lib/mbus-ua-logger/update-guard"]
        _sh(*guard, "confirm", "--root", str(PREFIX))
        assert Releases(PREFIX).status()["state"] == "confirmed"
        # reinstalling the (older) package keeps the newer bundle running
        _sh("dpkg", "-i", str(deb))
        assert Releases(PREFIX).current == newer
        # remove: the software goes (the bundle's release too), configuration and state stay
        (Path("/var/lib/mbus-logger") / "buffer.db").write_bytes(b"readings")
        _sh("dpkg", "--remove", "mbus-ua-logger")
        assert not os.path.lexists("/usr/bin/mbus-logger")
        assert not os.path.lexists(PREFIX / "current")
        assert not (PREFIX / "releases").exists()
        assert Path("/etc/mbus-logger/trust/update-signing.pub").exists()
        assert (Path("/var/lib/mbus-logger") / "buffer.db").read_bytes() == b"readings"
        assert (PREFIX / "update-state.json").exists()  # the anti-rollback floor survives
    finally:
        purge = _sh("dpkg", "--purge", "mbus-ua-logger", check=False)
    assert purge.returncode == 0, purge.stderr
    for gone in ("/usr/bin/mbus-logger", "/opt/mbus-ua-logger", "/etc/mbus-logger"):
        assert not os.path.lexists(gone), gone
    assert not os.path.exists("/var/lib/mbus-logger")

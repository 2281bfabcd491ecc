"""Build the ``mbus-ua-logger`` Debian package for this machine's architecture (``make deb``).

No debhelper: the tree is staged by hand and packed with ``dpkg-deb --root-owner-group``, so
the build runs as any user on a development machine or a Raspberry Pi. What the package holds::

    /opt/mbus-ua-logger/releases/<version>/venv     private virtualenv on Debian's python3:
                                                    requirements/device.lock + the project wheel
    /opt/mbus-ua-logger/releases/<version>/release.json
    /usr/bin/mbus-logger                            wrapper: runs /opt/mbus-ua-logger/current
    /usr/lib/mbus-ua-logger/update-guard            the update trial guard (logger/update.py)
    /lib/systemd/system/mbus-logger.service         the hardened unit (deploy/systemd)
    /lib/udev/rules.d/61-mbus-logger.rules          stable /dev/mbus/* names, TPM access
    /usr/lib/modules-load.d/mbus-logger.conf        serial drivers loaded before the service
    /usr/share/mbus-ua-logger/logger.example.toml   the example configuration
    /usr/share/doc/mbus-ua-logger/                  deployment guide, copyright

``current`` is not shipped: the maintainer scripts point it at the package's release unless a
newer signed update bundle is running (see :mod:`logger.update`).

The dependencies' virtualenv is cached under ``build/deb/cache/`` keyed by the device lock,
the interpreter and the architecture, so only the first build compiles tpm2-pytss.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from deploy.debian import lock

REPO = Path(__file__).resolve().parents[2]
DEBIAN_SRC = Path(__file__).resolve().parent
PACKAGE = "mbus-ua-logger"
PREFIX = "/opt/mbus-ua-logger"
SYSTEM_PYTHON = "/usr/bin/python3"
# Loaded at run time by libtss2-tctildr (dlopen), so no ELF file names them.
TCTI_DEPENDS = ["libtss2-tcti-device0"]
TCTI_SUGGESTS = ["libtss2-tcti-swtpm0", "tpm2-tools"]
DESCRIPTION = """\
Secure M-Bus/Modbus meter data logger with an OPC UA uplink
 mbus-logger reads M-Bus meters over a serial line (and Modbus meters), buffers every
 reading in SQLite and pushes the readings as an OPC UA client over SignAndEncrypt to its
 organization's OPC UA server, with its private key held in the TPM 2.0.
 .
 The package installs a private virtualenv under /opt/mbus-ua-logger, the hardened systemd
 unit mbus-logger.service, udev rules for stable serial names and TPM access, and accepts
 signed update bundles (mbus-logger update apply)."""


class BuildError(Exception):
    """The package cannot be built; the message says what is missing."""


def run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a build step; its output is shown only when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(cmd[:4])}... failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
            f"{proc.stderr[-3000:]}"
        )
    return proc


def project_version() -> str:
    version = str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])
    if not re.fullmatch(r"[0-9]+(\.[0-9]+){0,3}", version):
        raise BuildError(
            f"project version {version!r} is not N.N.N: releases and update bundles "
            "compare versions numerically"
        )
    return version


def architecture() -> str:
    return run(["dpkg", "--print-architecture"]).stdout.strip()


def python_tag(python: str) -> str:
    return run(
        [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]
    ).stdout.strip()


# --------------------------------------------------------------------------------------------
# The virtualenv


def deps_venv(cache_root: Path, python: str, arch: str) -> Path:
    """The cached virtualenv holding exactly ``requirements/device.lock``.

    Builds running at the same time (``make deb`` and the tests) take turns on the cache.
    """
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        return _deps_venv_locked(cache_root, python, arch)


def _deps_venv_locked(cache_root: Path, python: str, arch: str) -> Path:
    lock_text = (REPO / "requirements" / "device.lock").read_text()
    key = hashlib.sha256(
        f"{lock_text}\n{python}\n{python_tag(python)}\n{arch}".encode()
    ).hexdigest()[:16]
    cache = cache_root / f"venv-{arch}-{key}"
    if (cache / ".complete").exists():
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    for stale in cache_root.glob(f"venv-{arch}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # one cache per architecture is enough
    cache.parent.mkdir(parents=True, exist_ok=True)
    print(f"building the dependencies' virtualenv ({cache.name}); tpm2-pytss compiles once")
    run([python, "-m", "venv", str(cache)])
    pip = [str(cache / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run(
        [
            *pip,
            "install",
            "--no-deps",
            "--no-compile",
            "-r",
            str(REPO / "requirements" / "device.lock"),
        ]
    )
    (cache / ".complete").write_text(key + "\n")
    return cache


def project_wheel(work: Path, python_venv: Path) -> Path:
    out = work / "wheel"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pip = [str(python_venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", "--no-deps", "-w", str(out), str(REPO)])
    wheels = list(out.glob("*.whl"))
    if len(wheels) != 1:
        raise BuildError(f"expected one project wheel in {out}, found {wheels}")
    return wheels[0]


def stage_release(root: Path, cache: Path, wheel: Path, version: str, arch: str) -> Path:
    """Copy the cached venv into the package tree, add the project, fix paths, byte-compile."""
    release = root / PREFIX.lstrip("/") / "releases" / version
    venv = release / "venv"
    final_venv = f"{PREFIX}/releases/{version}/venv"
    shutil.copytree(cache, venv, symlinks=True)
    (venv / ".complete").unlink()
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", "--no-deps", "--no-compile", str(wheel)])
    # The device never runs pip: less code, nothing to install from at run time.
    run([*pip, "uninstall", "-y", "pip", "setuptools"])
    for cached in venv.rglob("__pycache__"):
        shutil.rmtree(cached)
    # Absolute paths of the build (script shebangs, activate, pyvenv.cfg) become the final one.
    for old in (str(venv), str(cache)):
        _replace_in_tree(venv, old.encode(), final_venv.encode())
    # Byte-code for the final paths; unchecked-hash: releases are immutable, and bundle
    # extraction does not preserve mtimes, so never compare against the source's mtime.
    run(
        [
            SYSTEM_PYTHON,
            "-m",
            "compileall",
            "-q",
            "-j0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            str(venv / "lib"),
        ]
    )
    (release / "release.json").write_text(
        json.dumps(
            {"product": PACKAGE, "version": version, "architecture": arch, "python": "3.11"},
            indent=1,
        )
        + "\n"
    )
    return release


def _replace_in_tree(tree: Path, old: bytes, new: bytes) -> None:
    for path in tree.rglob("*"):
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data and b"\x00" not in data[:1024]:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            path.chmod(mode)


# --------------------------------------------------------------------------------------------
# Dependencies on Debian packages


def shlib_depends(tree: Path) -> list[str]:
    """Debian packages providing the shared libraries the venv's ELF files need.

    Libraries bundled inside the venv (manylinux wheels) are skipped; the rest are found with
    ldconfig and dpkg on this (build) machine, which runs the same Debian release as the
    devices, and required at least at the version built against.
    """
    bundled = {p.name for p in tree.rglob("*.so*") if p.is_file()}
    needed: set[str] = set()
    for path in tree.rglob("*.so*"):
        if not path.is_file() or path.is_symlink():
            continue
        proc = subprocess.run(
            ["readelf", "-d", str(path)], capture_output=True, text=True, check=False
        )
        needed.update(re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", proc.stdout))
    multiarch = run(
        [SYSTEM_PYTHON, "-c", "import sysconfig; print(sysconfig.get_config_var('MULTIARCH'))"]
    ).stdout.strip()
    ldconfig = run(["/sbin/ldconfig", "-p"]).stdout
    known: dict[str, str] = {}
    for line in ldconfig.splitlines():
        match = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
        # The machine's own architecture only (a multiarch system lists i386 libraries too).
        if match and f"/{multiarch}/" in match.group(3):
            known.setdefault(match.group(1), match.group(3))
    packages: dict[str, str] = {}
    for soname in sorted(needed - bundled):
        if soname not in known:
            raise BuildError(f"shared library {soname} needed by the venv is not installed here")
        owner = subprocess.run(
            ["dpkg", "-S", os.path.realpath(known[soname])],
            capture_output=True,
            text=True,
            check=False,
        )
        if owner.returncode != 0:
            owner = run(["dpkg", "-S", known[soname]])
        package = owner.stdout.split(":", 1)[0].strip()
        version = run(["dpkg-query", "-W", "-f=${Version}", package]).stdout.strip()
        upstream = re.sub(r"^[0-9]+:", "", version).rsplit("-", 1)[0]
        packages[package] = upstream
    return [f"{pkg} (>= {ver})" for pkg, ver in sorted(packages.items())]


# --------------------------------------------------------------------------------------------
# The package tree


def _install(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def stage_files(root: Path) -> None:
    deploy = REPO / "deploy"
    _install(DEBIAN_SRC / "mbus-logger.sh", root / "usr/bin/mbus-logger", 0o755)
    _install(REPO / "logger" / "update.py", root / "usr/lib/mbus-ua-logger/update-guard", 0o644)
    _install(
        deploy / "systemd" / "mbus-logger.service",
        root / "lib/systemd/system/mbus-logger.service",
        0o644,
    )
    _install(
        deploy / "udev" / "61-mbus-logger.rules",
        root / "lib/udev/rules.d/61-mbus-logger.rules",
        0o644,
    )
    _install(
        deploy / "udev" / "modules-load.conf",
        root / "usr/lib/modules-load.d/mbus-logger.conf",
        0o644,
    )
    example = deploy / "config" / "logger.example.toml"
    if example.exists():
        _install(example, root / "usr/share/mbus-ua-logger/logger.example.toml", 0o644)
    else:
        print(f"warning: {example} does not exist; the package ships no example configuration")
    doc = root / "usr/share/doc" / PACKAGE
    guide = REPO / "docs" / "deployment.md"
    if guide.exists():
        _install(guide, doc / "README.deployment.md", 0o644)
    _install(DEBIAN_SRC / "copyright", doc / "copyright", 0o644)


def control_files(root: Path, version: str, arch: str, depends: list[str]) -> None:
    debian = root / "DEBIAN"
    debian.mkdir(parents=True)
    size_kib = sum(p.lstat().st_size for p in root.rglob("*") if not p.is_dir()) // 1024 + 1
    all_depends = [
        "python3 (>= 3.11~)",
        "python3 (<< 3.12)",
        "adduser",
        *TCTI_DEPENDS,
        *depends,
    ]
    control = (
        f"Package: {PACKAGE}\n"
        f"Version: {version}\n"
        f"Architecture: {arch}\n"
        "Maintainer: mbus-ua-logger maintainers <mbus-ua-logger@localhost>\n"
        f"Installed-Size: {size_kib}\n"
        f"Depends: {', '.join(dict.fromkeys(all_depends))}\n"
        f"Suggests: {', '.join(TCTI_SUGGESTS)}\n"
        "Section: misc\n"
        "Priority: optional\n"
        f"Description: {DESCRIPTION}\n"
    )
    (debian / "control").write_text(control)
    for script in ("postinst", "prerm", "postrm"):
        text = (DEBIAN_SRC / script).read_text().replace("@VERSION@", version)
        (debian / script).write_text(text)
        (debian / script).chmod(0o755)
    sums = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and "DEBIAN" not in path.parts:
            digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
            sums.append(f"{digest}  {path.relative_to(root).as_posix()}\n")
    (debian / "md5sums").write_text("".join(sums))


def build(
    out: Path,
    work: Path,
    *,
    cache: Path | None = None,
    compression: str = "xz",
    python: str = SYSTEM_PYTHON,
) -> Path:
    """Build the .deb into ``out`` (staging in ``work``); returns its path."""
    for tool in ("dpkg-deb", "dpkg", "readelf"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is needed to build the package")
    if not Path(python).exists():
        raise BuildError(f"{python} is missing: install python3 and python3-venv")
    expected = lock.derive()
    if (REPO / "requirements" / "device.lock").read_text() != expected:
        raise BuildError(
            "requirements/device.lock is out of date: run 'python -m deploy.debian.lock'"
        )
    version = project_version()
    arch = architecture()
    work.mkdir(parents=True, exist_ok=True)
    venv = deps_venv(cache or work / "cache", python, arch)
    wheel = project_wheel(work, venv)
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    release = stage_release(root, venv, wheel, version, arch)
    stage_files(root)
    depends = shlib_depends(release)
    control_files(root, version, arch, depends)
    for path in root.rglob("*"):
        if not path.is_symlink():
            mode = path.stat().st_mode
            path.chmod((mode & ~0o022) | (0o755 if path.is_dir() else 0))
    out.mkdir(parents=True, exist_ok=True)
    deb = out / f"{PACKAGE}_{version}_{arch}.deb"
    level = ["-z1"] if compression == "gzip" else []
    run(
        [
            "dpkg-deb",
            "--root-owner-group",
            f"-Z{compression}",
            *level,
            "--build",
            str(root),
            str(deb),
        ]
    )
    return deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.debian.build", description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="where the .deb goes")
    parser.add_argument(
        "--work", type=Path, default=REPO / "build" / "deb", help="staging and cache directory"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="dependency virtualenv cache (default WORK/cache)",
    )
    parser.add_argument(
        "--compression", choices=("xz", "gzip", "none"), default="xz", help="dpkg-deb -Z"
    )
    args = parser.parse_args(argv)
    try:
        deb = build(
            args.out.resolve(),
            args.work.resolve(),
            cache=args.cache.resolve() if args.cache else None,
            compression=args.compression,
        )
    except BuildError as exc:
        print(f"deb build: {exc}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())

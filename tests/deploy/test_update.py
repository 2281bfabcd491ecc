"""Signed updates end to end: keygen, sign, verify, apply, refuse, trial, rollback.

The device side runs through ``mbus-logger update ...`` (the real CLI, in process); the trial
and rollback run the guard exactly as the systemd unit's ExecStartPre/ExecStartPost lines do,
as a separate ``/usr/bin/python3 -I -S`` process.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import tarfile
from pathlib import Path

import pytest

from logger.cli import main as logger_main
from logger.update import (
    BundleRefused,
    Releases,
    load_trust_key,
    parse_manifest,
    parse_version,
    verify_bundle,
)
from provisioning import updates
from tests.support.deploy import (
    Manufacturer,
    make_manufacturer,
    make_release_tree,
    pin_key,
)

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "mbus-logger.service"
GUARD = REPO / "logger" / "update.py"


@pytest.fixture
def maker(tmp_path: Path) -> Manufacturer:
    return make_manufacturer(tmp_path / "factory")


@pytest.fixture
def device(tmp_path: Path, maker: Manufacturer) -> dict[str, Path]:
    """An installation root with release 1.0.0 adopted (as the Debian package leaves it)."""
    root = tmp_path / "opt"
    tree = make_release_tree(tmp_path, "1.0.0")
    (root / "releases").mkdir(parents=True)
    os.rename(tree, root / "releases" / "1.0.0")
    Releases(root).adopt("1.0.0")
    trust = pin_key(maker, tmp_path / "etc" / "trust")
    return {"root": root, "trust": trust, "tmp": tmp_path}


def cli(*argv: str) -> int:
    return logger_main(list(argv))


def apply(device: dict[str, Path], bundle: Path, *extra: str) -> int:
    return cli(
        "update",
        "apply",
        str(bundle),
        "--root",
        str(device["root"]),
        "--trust-key",
        str(device["trust"]),
        "--no-restart",
        *extra,
    )


def releases_on_disk(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "releases").iterdir())


def test_signed_bundle_is_applied(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    assert apply(device, bundle, "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["version"] == "1.1.0" and doc["previous"] == "1.0.0" and doc["state"] == "trial"
    root = device["root"]
    assert os.readlink(root / "current") == "releases/1.1.0"
    assert os.readlink(root / "previous") == "releases/1.0.0"
    installed = root / "releases" / "1.1.0"
    for rel in ("venv/bin/mbus-logger", "venv/lib/python3.11/site-packages/logger/payload.bin"):
        assert (installed / rel).read_bytes() == (tree / rel).read_bytes()
    assert os.readlink(installed / "venv/bin/python3") == "/usr/bin/python3"
    assert os.access(installed / "venv/bin/mbus-logger", os.X_OK)
    assert (installed / "venv/include").is_dir()
    status = Releases(root).status()
    assert status["current"] == "1.1.0" and status["trial"] == "1.1.0"
    assert status["floor"] == "1.1.0"


def test_status_command_reports_the_pinned_key(device, maker, capsys):
    rc = cli("update", "status", "--root", str(device["root"]), "--trust-key", str(device["trust"]))
    out = capsys.readouterr().out
    assert rc == 0
    assert "current:" in out and "1.0.0" in out
    fingerprint = updates.key_fingerprint(maker.public_key.read_bytes())
    assert fingerprint in out


def _tamper_payload(bundle: Path, old: bytes, new: bytes) -> None:
    data = bundle.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    bundle.write_bytes(data.replace(old, new))


def _assert_nothing_installed(device: dict[str, Path]) -> None:
    root = device["root"]
    assert releases_on_disk(root) == ["1.0.0"]  # no release, no half-written staging dir
    assert os.readlink(root / "current") == "releases/1.0.0"


def test_tampered_payload_is_refused_before_anything_is_written(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    _tamper_payload(bundle, b"release 1.1.0 payload", b"release 6.6.6 payload")
    assert apply(device, bundle) == 4
    err = capsys.readouterr().err
    assert "refused (tampered)" in err and "payload.bin" in err
    _assert_nothing_installed(device)


def test_manifest_edited_after_signing_is_refused(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    _tamper_payload(bundle, b'"created": "', b'"created":"2')
    assert apply(device, bundle) == 4
    assert "refused (bad-signature)" in capsys.readouterr().err
    _assert_nothing_installed(device)


def _rewrite(bundle: Path, out: Path, *, drop: str = "", add: tuple[str, bytes] | None = None):
    with tarfile.open(bundle) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            if member.name == drop:
                continue
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        if add is not None:
            info = tarfile.TarInfo(add[0])
            info.size = len(add[1])
            dst.addfile(info, io.BytesIO(add[1]))
    return out


def test_unsigned_bundle_is_refused(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    unsigned = _rewrite(bundle, tmp_path / "unsigned.tar", drop="manifest.sig")
    assert apply(device, unsigned) == 4
    assert "refused (unsigned)" in capsys.readouterr().err
    _assert_nothing_installed(device)


def test_extra_member_is_refused(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    extra = _rewrite(bundle, tmp_path / "extra.tar", add=("payload/venv/bin/evil", b"#!/bin/sh"))
    assert apply(device, extra) == 4
    assert "refused (tampered)" in capsys.readouterr().err
    _assert_nothing_installed(device)


def test_bundle_of_another_key_is_refused(device, tmp_path, capsys):
    other = make_manufacturer(tmp_path / "impostor")
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = other.sign(tree, tmp_path / "b.tar", "1.1.0")
    assert apply(device, bundle) == 4
    assert "refused (bad-signature)" in capsys.readouterr().err
    _assert_nothing_installed(device)


@pytest.mark.parametrize("version", ["1.0.0", "0.9.9", "1.0"])
def test_older_or_equal_version_is_refused(device, maker, tmp_path, capsys, version):
    tree = make_release_tree(tmp_path, version)
    bundle = maker.sign(tree, tmp_path / "b.tar", version)
    assert apply(device, bundle) == 4
    err = capsys.readouterr().err
    assert "refused (not-newer)" in err and "1.0.0" in err
    _assert_nothing_installed(device)


def test_other_product_and_architecture_are_refused(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "p.tar", "1.1.0", product="someone-elses-logger")
    assert apply(device, bundle) == 4
    assert "refused (other-product)" in capsys.readouterr().err
    foreign = "arm64" if os.uname().machine == "x86_64" else "amd64"
    bundle = maker.sign(tree, tmp_path / "a.tar", "1.1.0", architecture=foreign)
    assert apply(device, bundle) == 4
    assert "refused (wrong-architecture)" in capsys.readouterr().err
    _assert_nothing_installed(device)


def test_signed_but_unsafe_paths_are_refused(maker, tmp_path):
    """Even the manufacturer's key cannot make the device write outside the release."""
    key = updates.load_signing_key(maker.pki, maker.passphrase)
    public = key.public_key()
    base = {"format": 1, "product": "mbus-ua-logger", "version": "2.0.0", "created": "x"}
    digest = "0" * 64
    cases = [
        [{"path": "../etc/cron.d/x", "type": "file", "mode": 0o644, "size": 0, "sha256": digest}],
        [{"path": "/etc/passwd", "type": "file", "mode": 0o644, "size": 0, "sha256": digest}],
        [
            {"path": "link", "type": "symlink", "target": "/etc"},
            {"path": "link/passwd", "type": "file", "mode": 0o644, "size": 0, "sha256": digest},
        ],
        [{"path": "suid", "type": "file", "mode": 0o4755, "size": 0, "sha256": digest}],
        [{"path": "ww", "type": "file", "mode": 0o666, "size": 0, "sha256": digest}],
    ]
    for files in cases:
        data = json.dumps({**base, "files": files}).encode()
        bundle = tmp_path / "evil.tar"
        with tarfile.open(bundle, "w") as tf:
            for name, payload in (("manifest.json", data), ("manifest.sig", key.sign(data))):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
        with pytest.raises(BundleRefused) as caught:
            verify_bundle(bundle, public, installed="1.0.0")
        assert caught.value.reason == "malformed", files


def test_manifest_parser_rejects_garbage():
    for data in (b"", b"[]", b"{}", b'{"format": 1, "product": "p", "version": "x"}'):
        with pytest.raises(BundleRefused):
            parse_manifest(data)


def test_versions_compare_numerically():
    assert parse_version("1.10.0") > parse_version("1.9.9")
    assert parse_version("1.0") == parse_version("1.0.0")
    for bad in ("1.0.0rc1", "v1", "", "1..0", "1.0.0.0.0"):
        with pytest.raises(ValueError):
            parse_version(bad)


def test_trust_key_writable_by_others_is_refused(device, maker, tmp_path, capsys):
    device["trust"].chmod(0o666)
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    assert apply(device, bundle) == 2
    assert "only root may be able to change it" in capsys.readouterr().err
    device["trust"].chmod(0o644)
    device["trust"].parent.chmod(0o777)
    with pytest.raises(Exception, match="only root"):
        load_trust_key(device["trust"])
    _assert_nothing_installed(device)


def test_missing_trust_key_is_a_clear_error(device, maker, tmp_path, capsys):
    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    device["trust"].unlink()
    assert apply(device, bundle) == 2
    assert "no update signing key is pinned" in capsys.readouterr().err


def test_trust_command_pins_once(tmp_path, maker, capsys):
    state = tmp_path / "state"
    assert cli("update", "trust", str(maker.public_key), "--state-dir", str(state)) == 0
    pinned = state / "trust" / "update-signing.pub"
    assert pinned.read_bytes() == maker.public_key.read_bytes()
    # the same key again is fine; another one is refused unless --replace
    assert cli("update", "trust", str(maker.public_key), "--state-dir", str(state)) == 0
    other = make_manufacturer(tmp_path / "other")
    assert cli("update", "trust", str(other.public_key), "--state-dir", str(state)) == 2
    assert "already pinned" in capsys.readouterr().err
    assert pinned.read_bytes() == maker.public_key.read_bytes()


# --- the manufacturer's side -----------------------------------------------------------------


def provision(*argv: str) -> int:
    """``mbus-provision`` itself (its CLI mounts provisioning.updates.register)."""
    from provisioning.cli import main

    return main(list(argv))


def test_keygen_writes_an_encrypted_key_openssl_can_open(tmp_path, monkeypatch, capsys):
    pki = tmp_path / "pki"
    monkeypatch.setenv("MBUS_PKI_PASSPHRASE", "s3cret-pass")
    assert provision("update", "keygen", "--pki", str(pki), "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    key_path = pki / "update" / "signing-key.pem"
    assert (key_path.stat().st_mode & 0o777) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_path.read_bytes()
    opened = subprocess.run(
        ["openssl", "pkey", "-in", str(key_path), "-passin", "pass:s3cret-pass", "-pubout"],
        capture_output=True,
        check=True,
    )
    assert opened.stdout == Path(doc["public_key"]).read_bytes()
    # never overwritten; wrong passphrase is a clear error
    assert provision("update", "keygen", "--pki", str(pki)) == 2
    monkeypatch.setenv("MBUS_PKI_PASSPHRASE", "wrong")
    tree = make_release_tree(tmp_path, "1.1.0")
    args = ["update", "sign", str(tree), "--pki", str(pki), "--version", "1.1.0"]
    assert provision(*args, "--out", str(tmp_path / "b.tar")) == 2
    assert "wrong passphrase" in capsys.readouterr().err
    monkeypatch.delenv("MBUS_PKI_PASSPHRASE")
    assert provision(*args, "--out", str(tmp_path / "b.tar")) == 2
    assert "MBUS_PKI_PASSPHRASE" in capsys.readouterr().err


def test_sign_command_makes_a_bundle_the_device_accepts(tmp_path, monkeypatch, device, maker):
    secret = tmp_path / "pass"
    secret.write_bytes(maker.passphrase + b"\n")
    secret.chmod(0o600)
    tree = make_release_tree(tmp_path, "1.2.0")
    out = tmp_path / "bundle.tar"
    rc = provision(
        "update",
        "sign",
        str(tree),
        "--pki",
        str(maker.pki),
        "--passphrase-file",
        str(secret),
        "--version",
        "1.2.0",
        "--out",
        str(out),
    )
    assert rc == 0
    assert cli("update", "verify", str(out), "--root", str(device["root"]),
               "--trust-key", str(device["trust"])) == 0  # fmt: skip
    assert apply(device, out) == 0
    assert Releases(device["root"]).current == "1.2.0"


# --- trial and rollback, driven by the unit's own command lines --------------------------------


def _unit_commands() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, _, value = line.partition("=")
        if key in ("ExecStartPre", "ExecStart", "ExecStartPost"):
            found[key] = shlex.split(value.lstrip("+-"))
    return found


class FakeSystemd:
    """Starts the service the way systemd does: Pre, main (Type=notify), Post when it came up.

    The guard runs from the repository's logger/update.py in place of the package's copy
    (/usr/lib/mbus-ua-logger/update-guard is that same file), under /usr/bin/python3 -I -S as in
    the unit; the main command runs ROOT/current's entry point as /usr/bin/mbus-logger does.
    """

    def __init__(self, root: Path, log: Path) -> None:
        self.root = root
        self.log = log
        self.commands = _unit_commands()

    def _resolve(self, argv: list[str]) -> list[str]:
        out = []
        for arg in argv:
            arg = arg.replace("/usr/lib/mbus-ua-logger/update-guard", str(GUARD))
            arg = arg.replace("/opt/mbus-ua-logger", str(self.root))
            out.append(arg)
        return out

    def start(self) -> bool:
        env = {"RUN_LOG": str(self.log), "PATH": "/usr/bin:/bin"}
        pre = self._resolve(self.commands["ExecStartPre"])
        subprocess.run(pre, check=True, env=env, capture_output=True)
        main = self.commands["ExecStart"]
        assert main[0] == "/usr/bin/mbus-logger"
        entry = self.root / "current" / "venv" / "bin" / "mbus-logger"
        came_up = subprocess.run([str(entry), *main[1:]], env=env).returncode == 0
        if came_up:  # READY=1 -> ExecStartPost
            post = self._resolve(self.commands["ExecStartPost"])
            subprocess.run(post, check=True, env=env, capture_output=True)
        return came_up


def test_unit_runs_the_guard_from_the_package_copy():
    cmds = _unit_commands()
    assert cmds["ExecStartPre"][:4] == [
        "/usr/bin/python3",
        "-I",
        "-S",
        "/usr/lib/mbus-ua-logger/update-guard",
    ]
    assert cmds["ExecStartPre"][4] == "boot" and cmds["ExecStartPost"][4] == "confirm"
    text = UNIT.read_text()
    assert "ExecStartPre=+" in text and "ExecStartPost=+" in text


def test_release_that_does_not_come_up_is_rolled_back(device, maker, tmp_path, capsys):
    root = device["root"]
    log = tmp_path / "run.log"
    systemd = FakeSystemd(root, log)
    broken = make_release_tree(tmp_path, "2.0.0", exit_code=1)
    assert apply(device, maker.sign(broken, tmp_path / "b2.tar", "2.0.0")) == 0
    results = [systemd.start() for _ in range(5)]
    assert results == [False, False, False, True, True]
    runs = log.read_text().splitlines()
    assert runs == ["running release 2.0.0"] * 3 + ["running release 1.0.0"] * 2
    status = Releases(root).status()
    assert status["current"] == "1.0.0" and status["state"] == "rolled-back"
    assert status["failed"] == ["2.0.0"]
    # The failed version (or anything older) cannot come back; a fixed, newer one can.
    capsys.readouterr()
    assert apply(device, maker.sign(broken, tmp_path / "b2b.tar", "2.0.0")) == 4
    assert "refused (not-newer)" in capsys.readouterr().err
    fixed = make_release_tree(tmp_path, "2.0.1")
    assert apply(device, maker.sign(fixed, tmp_path / "b3.tar", "2.0.1")) == 0
    assert systemd.start() is True
    status = Releases(root).status()
    assert status["current"] == "2.0.1" and status["state"] == "confirmed"
    assert status["previous"] == "1.0.0"
    # confirmed: later failures are the daemon's own (Restart=always), no rollback
    for _ in range(5):
        systemd.start()
    assert Releases(root).current == "2.0.1"
    # the failed 2.0.0 release was pruned; the package's 1.0.0 stays (dpkg owns it)
    assert releases_on_disk(root) == ["1.0.0", "2.0.1"]


def test_release_that_comes_up_is_confirmed_at_first_start(device, maker, tmp_path):
    systemd = FakeSystemd(device["root"], tmp_path / "run.log")
    good = make_release_tree(tmp_path, "1.1.0")
    assert apply(device, maker.sign(good, tmp_path / "b.tar", "1.1.0")) == 0
    assert systemd.start() is True
    status = Releases(device["root"]).status()
    assert status["state"] == "confirmed" and status["trial"] is None


def test_manual_rollback_and_interrupted_flip(device, maker, tmp_path, capsys):
    root = device["root"]
    good = make_release_tree(tmp_path, "1.1.0")
    assert apply(device, maker.sign(good, tmp_path / "b.tar", "1.1.0")) == 0
    # A power cut after the state was written but before the flip: boot finishes the flip.
    (root / "current").unlink()
    (root / "current").symlink_to("releases/1.0.0")
    Releases(root).boot()
    assert Releases(root).current == "1.1.0"
    assert cli("update", "rollback", "--root", str(root), "--no-restart") == 0
    assert Releases(root).current == "1.0.0"
    assert "rolled back from 1.1.0 to 1.0.0" in capsys.readouterr().out
    assert cli("update", "rollback", "--root", str(root), "--no-restart") == 2


def test_update_over_an_unconfirmed_trial_keeps_the_last_good_release(device, maker, tmp_path):
    root = device["root"]
    systemd = FakeSystemd(root, tmp_path / "run.log")
    broken = make_release_tree(tmp_path, "2.0.0", exit_code=1)
    assert apply(device, maker.sign(broken, tmp_path / "b2.tar", "2.0.0")) == 0
    assert systemd.start() is False  # 2.0.0 is still on trial, never came up
    also_broken = make_release_tree(tmp_path, "2.1.0", exit_code=1)
    assert apply(device, maker.sign(also_broken, tmp_path / "b3.tar", "2.1.0")) == 0
    assert Releases(root).previous == "1.0.0"  # not the unconfirmed 2.0.0
    for _ in range(4):
        systemd.start()
    assert Releases(root).current == "1.0.0"


def test_damaged_state_does_not_stop_the_service(device, tmp_path):
    """The guard reports a damaged state and lets the service start (exit 0)."""
    state = device["root"] / "update-state.json"
    state.write_text('{"format": 1, "attempts": "many"}')
    proc = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", str(GUARD), "boot", "--root", str(device["root"])],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "damaged" in proc.stderr


def test_gzip_bundle_is_accepted_and_truncated_one_refused(device, maker, tmp_path, capsys):
    import gzip

    tree = make_release_tree(tmp_path, "1.1.0")
    bundle = maker.sign(tree, tmp_path / "b.tar", "1.1.0")
    truncated = tmp_path / "short.tar"
    truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    assert apply(device, truncated) == 4
    assert "refused (" in capsys.readouterr().err
    _assert_nothing_installed(device)
    packed = tmp_path / "b.tar.gz"
    packed.write_bytes(gzip.compress(bundle.read_bytes()))
    assert apply(device, packed) == 0
    assert Releases(device["root"]).current == "1.1.0"

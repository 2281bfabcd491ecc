"""The device state directory's own protection: created 0700, refused when others can open it.

CLI.md: directories given with ``--state-dir`` are created 0700 when missing. The state
directory holds the identity, the key reference and (for file keys) the encrypted key and its
secret, so a directory that group or others can read is refused, with the same rule and wording
as the PKI directory. Read-only commands never create it.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from logger.tpm import DeviceState, Identity, KeyRef, StateDirError
from logger.tpm.state import check_secret_dir, ensure_secret_dir

IDENTITY = Identity("SN-1", "urn:t:SN-1", KeyRef("tpm", handle=0x81000002), "acme")


@pytest.fixture
def umask_022() -> Iterator[None]:
    """A typical login umask, so the modes the OS gives new parents are known."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_only_the_leaf_is_created_0700(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "var" / "lib" / "mbus-logger"
    state = DeviceState.create(root)
    assert mode(root) == 0o700
    # Parents as `mkdir -p` makes them: shared directories are not ours to lock down.
    assert mode(tmp_path / "var") == 0o755 and mode(tmp_path / "var" / "lib") == 0o755
    state.save_identity(IDENTITY)
    assert DeviceState.open(root).identity() == IDENTITY


@pytest.mark.parametrize("bad", [0o750, 0o705, 0o755, 0o710, 0o777])
def test_a_state_dir_others_can_open_is_refused(tmp_path: Path, bad: int) -> None:
    root = DeviceState.create(tmp_path / "state").root
    DeviceState(root).save_identity(IDENTITY)
    os.chmod(root, bad)
    want = re.escape(
        f"state directory {root} is accessible by group or others (mode {bad:04o}); chmod 700"
    )
    with pytest.raises(StateDirError, match=want):
        DeviceState.open(root)
    with pytest.raises(StateDirError, match=want):
        DeviceState.create(root)
    with pytest.raises(StateDirError, match=want):
        DeviceState(root).save_identity(IDENTITY)
    assert mode(root) == bad  # refused, not silently "fixed"
    os.chmod(root, 0o700)
    assert DeviceState.open(root).identity() == IDENTITY


def test_open_never_creates_and_names_what_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "typo"
    with pytest.raises(StateDirError, match=re.escape(f"state directory {missing} does not")):
        DeviceState.open(missing)
    assert not missing.exists()


def test_a_file_in_the_way_is_not_a_directory(tmp_path: Path) -> None:
    path = tmp_path / "state"
    path.write_text("")
    os.chmod(path, 0o600)
    for call in (DeviceState.open, DeviceState.create):
        with pytest.raises(StateDirError, match=re.escape(f"{path} is not a directory")):
            call(path)


def test_the_owner_chooses_the_exception(tmp_path: Path) -> None:
    class PkiLikeError(Exception):
        pass

    root = ensure_secret_dir(tmp_path / "pki", "the PKI directory", "the CA keys", PkiLikeError)
    assert mode(root) == 0o700
    os.chmod(root, 0o740)
    with pytest.raises(PkiLikeError, match="it holds the CA keys"):
        check_secret_dir(root, "the PKI directory", "the CA keys", PkiLikeError)


def test_read_only_commands_on_a_missing_state_dir_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from logger.cli import main

    missing = tmp_path / "nowhere"
    for command in (["key", "info"], ["cert", "show"]):
        capsys.readouterr()
        code = main([*command, "--state-dir", str(missing)])
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert f"state directory {missing} does not exist" in err
    assert not missing.exists()


def test_read_only_commands_refuse_an_open_state_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from logger.cli import main

    root = DeviceState.create(tmp_path / "state").root
    DeviceState(root).save_identity(IDENTITY)
    os.chmod(root, 0o755)
    for command in (["key", "info"], ["cert", "show"]):
        capsys.readouterr()
        code = main([*command, "--state-dir", str(root)])
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert "accessible by group or others (mode 0755); chmod 700" in err

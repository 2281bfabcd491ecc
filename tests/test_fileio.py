"""logger.fileio: the old content survives every failure, modes are exact, no temp file stays.

The update guard's standalone copy (``logger.update.write_file_atomic``) is held to the same
contract: every test taking ``writer`` runs against both implementations.

Failures are real where the kernel can produce them without privileges: a file size limit
(``RLIMIT_FSIZE``, so ``write`` fails with EFBIG) in a child process, a full tmpfs when the
test may mount one, a rename onto a directory. ``os.replace`` and ``os.fsync`` are patched
only to fail the one step the kernel will not fail on demand, or to record the order of calls.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from logger import fileio, update
from logger.fileio import fsync_dir, replace_file, replacing
from tests.support.requires import missing

ROOT = Path(__file__).resolve().parent.parent

Writer = Callable[[Path, bytes, int], None]

#: name -> (import line for a child process, the function)
WRITERS: dict[str, tuple[str, Writer]] = {
    "fileio": ("from logger.fileio import replace_file as write", replace_file),
    "update-guard": (
        "from logger.update import write_file_atomic as write",
        update.write_file_atomic,
    ),
}


@pytest.fixture(params=sorted(WRITERS))
def writer_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def writer(writer_name: str) -> Writer:
    return WRITERS[writer_name][1]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def umask_027() -> Iterator[None]:
    """A umask that would strip group write and all bits for others, had the mode come from it."""
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


# --- content and modes ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o400, 0o664, 0o755])
def test_mode_is_exact_whatever_the_umask(
    tmp_path: Path, umask_027: None, writer: Writer, mode: int
) -> None:
    target = tmp_path / "f"
    writer(target, b"one", mode)
    assert target.read_bytes() == b"one"
    assert _mode(target) == mode
    writer(target, b"two", mode)
    assert target.read_bytes() == b"two"
    assert _mode(target) == mode
    assert _names(tmp_path) == ["f"]


def test_default_mode_is_private_and_replaces_a_wider_one(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    target.chmod(0o644)
    replace_file(target, b"new")
    assert _mode(target) == 0o600
    assert target.read_bytes() == b"new"


def test_the_mode_is_set_before_the_first_byte(tmp_path: Path) -> None:
    """A secret is never readable by others, not even while it is being written."""
    target = tmp_path / "key.pem"
    with replacing(target, 0o600) as fh:
        st = os.fstat(fh.fileno())
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == 0
        (tmp,) = [n for n in _names(tmp_path) if n != "key.pem"]
        # next to the target (same file system, so the rename is atomic), hidden, and not
        # matching the target's own extension: a leftover is never globbed as a *.pem
        assert tmp.startswith(".key.pem.") and tmp.endswith(".tmp")
        fh.write(b"secret")
        assert not target.exists()  # nothing visible until the rename
    assert target.read_bytes() == b"secret"
    assert _names(tmp_path) == ["key.pem"]


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path, writer: Writer) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    target = tmp_path / "f"
    target.symlink_to(victim)
    writer(target, b"new", 0o644)
    assert not target.is_symlink()
    assert target.read_bytes() == b"new"
    assert victim.read_bytes() == b"untouched"


def test_a_missing_directory_is_an_error_not_created(tmp_path: Path, writer: Writer) -> None:
    with pytest.raises(FileNotFoundError):
        writer(tmp_path / "missing" / "f", b"x", 0o600)
    assert _names(tmp_path) == []


# --- failures leave the old file and no temporary file -------------------------------------

_FSIZE_CHILD = """
import resource, signal, sys
from pathlib import Path
{import_line}
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG from write() instead of a core dump
_, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, hard))
try:
    write(Path(sys.argv[1]), b"n" * (1 << 20), 0o644)
except OSError as exc:
    print(exc.errno, exc.filename, sep="\\n")
    sys.exit(0)
sys.exit(1)
"""


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, writer_name: str) -> None:
    """The kernel refuses the write (file size limit): old content stays, the temp file goes,
    and the error names the target, which the bare ``write`` error would not."""
    target = tmp_path / "state.json"
    target.write_bytes(b"old")
    run = subprocess.run(
        [
            sys.executable,
            "-c",
            _FSIZE_CHILD.format(import_line=WRITERS[writer_name][0]),
            str(target),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    code, filename = run.stdout.split("\n")[:2]
    assert int(code) == errno.EFBIG
    assert filename == str(target)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["state.json"]


@pytest.fixture
def full_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs; skipped where the test may not mount one (needs root), except in
    CI, which runs as root: there it must mount."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        missing(f"cannot mount a tmpfs here (needs root): {exc}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_a_full_disk_keeps_the_old_file(full_tmpfs: Path, writer: Writer) -> None:
    target = full_tmpfs / "identity.json"
    writer(target, b"old" * 100, 0o600)
    with pytest.raises(OSError) as info:
        writer(target, b"n" * (1 << 20), 0o600)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"old" * 100
    assert _names(full_tmpfs) == ["identity.json"]
    writer(target, b"new", 0o600)  # the space of the failed attempt was given back
    assert target.read_bytes() == b"new"


def test_a_failed_rename_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: Writer
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def refuse(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fileio.os, "replace", refuse)
    with pytest.raises(OSError) as info:
        writer(target, b"new", 0o600)
    monkeypatch.undo()
    assert info.value.errno == errno.EIO
    assert info.value.filename == str(target)
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["f"]


def test_a_rename_onto_a_directory_fails_cleanly(tmp_path: Path, writer: Writer) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "inside").write_bytes(b"kept")
    with pytest.raises(IsADirectoryError):
        writer(target, b"new", 0o600)
    assert (target / "inside").read_bytes() == b"kept"
    assert _names(tmp_path) == ["d"]


def test_an_error_in_the_writer_body_propagates_unchanged(tmp_path: Path) -> None:
    target = tmp_path / "bundle.tar"
    target.write_bytes(b"old")
    boom = ValueError("producer failed")
    with pytest.raises(ValueError) as info, replacing(target, 0o644) as fh:
        fh.write(b"partial")
        raise boom
    assert info.value is boom
    assert target.read_bytes() == b"old"
    assert _names(tmp_path) == ["bundle.tar"]


# --- durability: what is synced, and when ---------------------------------------------------


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(f"fsync {kind}")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    return events


def test_durable_order_data_rename_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: Writer
) -> None:
    """The data is on disk before the name points at it; the directory entry after."""
    events = _record_syncs(monkeypatch)
    writer(tmp_path / "f", b"x", 0o600)
    assert events == ["fsync file", "rename", "fsync dir"]


def test_fsync_false_is_atomic_but_syncs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _record_syncs(monkeypatch)
    replace_file(tmp_path / "status.json", b"x", 0o644, fsync=False)
    assert events == ["rename"]
    assert _mode(tmp_path / "status.json") == 0o644


def test_fsync_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events = _record_syncs(monkeypatch)
    fsync_dir(tmp_path)
    assert events == ["fsync dir"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


# --- concurrency: readers never see a torn file, writers never share a temp file -------------


def test_concurrent_writers_and_a_reader(tmp_path: Path) -> None:
    target = tmp_path / "f"
    size = 256 * 1024
    replace_file(target, b"0" * size)
    versions = {bytes([c]) * size for c in b"0abcdefgh"}
    torn: list[bytes] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def write(char: bytes) -> None:
        try:
            for _ in range(20):
                replace_file(target, char * size, fsync=False)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def read() -> None:
        while not done.is_set():
            data = target.read_bytes()
            if data not in versions:
                torn.append(data[:16])

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(bytes([c]),)) for c in b"abcdefgh"]
    reader.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    done.set()
    reader.join()
    assert errors == []
    assert torn == []
    assert target.read_bytes() in versions
    assert _names(tmp_path) == ["f"]

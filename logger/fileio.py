"""Atomic, durable file replacement: the one way the logger rewrites a file in place.

A logger lives on an SD card or eMMC and loses power without warning. Every file it rewrites
(the identity and certificates in the state directory, the device key, the saved cloud layer,
the update state, the per-tick status file) must read back afterwards as either the old or
the new version, never as a truncated or empty one. Writing the file in place cannot give
that: a power cut between ``open(..., "w")`` and the last ``write`` leaves a torn file, and
on ext4 with delayed allocation even a completed write may come back as zero bytes.

The recipe, in order, and why each step is there:

1. **Write a temporary file in the same directory.** ``rename(2)`` is atomic only within one
   file system, so the temporary file must live next to the target. Its name is unique
   (``mkstemp``: ``O_CREAT|O_EXCL|O_NOFOLLOW``), so two writers never share one, and a
   symlink planted under a guessed name cannot redirect the write. It is a dotfile ending in
   ``.tmp``: a leftover from a power cut is never picked up by a ``*.pem`` or ``*.json`` glob.
2. **Set the final mode before the first byte.** The file is created 0600 and ``fchmod``-ed
   to ``mode`` (independent of the umask) before any data is written, so a secret is never
   readable by others, not even for a moment.
3. **fsync the file.** Without it, the rename may reach the disk before the data does, and a
   power cut leaves the *new name* pointing at an empty file: worse than no update at all.
4. **rename over the target** (``os.replace``). Readers see the old inode or the new one.
5. **fsync the directory.** The rename is a change to the directory; until the directory is
   synced a power cut can bring back the old entry (or, for a new file, no entry at all).

``fsync=False`` keeps steps 1, 2 and 4 only: still atomic for readers, not durable across a
power cut. That is for files that are rewritten often and describe only the running process
(the status file, on tmpfs in production), where a sync per write would cost SD card wear
and latency for nothing a restart would not rebuild anyway.

On any failure the temporary file is removed and the target is left as it was; the
:class:`OSError` raised names the file it was about (the target, when the failing call did
not name one itself, e.g. ``write`` on a full disk).

Standard library only; not for ``logger/mbus`` (the MicroPython codec has no ``os``). The
update guard (``logger/update.py``, installed and run as a single stdlib-only file) keeps its own
copy, ``write_file_atomic``; ``tests/test_fileio.py`` holds both to the same contract.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

StrPath = str | os.PathLike[str]


def fsync_dir(path: StrPath) -> None:
    """Make the entries of directory ``path`` durable (a rename, a new or removed file).

    ``fsync`` of a file covers its data and inode, not the directory entry naming it; after a
    rename or the creation of a file (a new SQLite database, a release directory renamed into
    place) the directory itself must be synced, or a power cut can undo the rename.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: StrPath, mode: int = 0o600, *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Write the new content of ``path`` to the yielded file; it replaces ``path`` on exit.

    For content produced as a stream (a tar archive); :func:`replace_file` is the form for
    bytes already in memory. If the ``with`` body raises, ``path`` is untouched and the
    temporary file removed. See the module documentation for the steps and ``fsync``.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            yield fh
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # write()/fsync() on a full or failing disk name no file: name the target.
            raise OSError(exc.errno, exc.strerror, str(target)) from exc
        raise
    if fsync:
        fsync_dir(target.parent)


def replace_file(path: StrPath, data: bytes, mode: int = 0o600, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and (unless ``fsync=False``) durably.

    ``mode`` is the file's exact permission bits from its first byte, whatever the umask;
    the default 0600 suits the state directory, where most files are nobody else's business.
    The directory must exist (callers decide its mode, e.g. 0700 for private directories).
    """
    with replacing(path, mode, fsync=fsync) as fh:
        fh.write(data)


__all__ = ["fsync_dir", "replace_file", "replacing"]

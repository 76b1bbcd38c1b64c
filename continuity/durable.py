"""Durable file writes: the one place that turns bytes into a file that survives a crash.

A file is written under a temporary name in the same directory, fsync'ed, moved
into place (``link`` when the name must not be overwritten, ``rename`` when it
may), and the directory is fsync'ed so the new entry itself is on disk. This
module imports nothing of ours (see DESIGN.md).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: str) -> None:
    """fsync a directory so that entries created or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The most buffers one ``writev`` takes (Linux: 1024; at least POSIX's 16 when the system does not say).
_IOV_MAX = min(max(os.sysconf("SC_IOV_MAX"), 16), 1024)
#: Octets gathered for one ``writev`` at most: a message read from a file in chunks is never all in memory.
_WRITEV_OCTETS = 1 << 20


def write_chunks(fd: int, chunks: Iterable[bytes]) -> int:
    """Write every chunk fully to ``fd``; return the byte count.

    Chunks go to ``writev`` together, up to :data:`_IOV_MAX` of them or
    about a MiB: each system call of an I/O thread gives the GIL back and
    takes it again, a hand-off with the reactor when it is busy.
    """
    total = 0
    batch: list[memoryview] = []
    octets = 0
    for chunk in chunks:
        if not chunk:
            continue
        batch.append(memoryview(chunk))
        octets += batch[-1].nbytes
        if len(batch) >= _IOV_MAX or octets >= _WRITEV_OCTETS:
            total += _write_all(fd, batch)
            batch, octets = [], 0
    if batch:
        total += _write_all(fd, batch)
    return total


def _write_all(fd: int, views: list[memoryview]) -> int:
    total = 0
    first = 0
    while first < len(views):
        written = os.writev(fd, views[first:])
        total += written
        while written:  # past the buffers written in full, into the one written in part
            length = views[first].nbytes
            if written < length:
                views[first] = views[first][written:]
                break
            written -= length
            first += 1
    return total


def write_file(
    path: str,
    chunks: Iterable[bytes],
    *,
    tmp_path: str | None = None,
    overwrite: bool = True,
    mode: int = 0o600,
    sync_dir: bool = True,
    mtime: float | None = None,
    directory_fd: int | None = None,
) -> int:
    """Write ``chunks`` durably to ``path``; return the size written.

    :param tmp_path: where to write first (default ``path + ".tmp.<pid>"``); must be
        on the same file system. Maildir delivery passes its ``tmp/`` name here.
    :param overwrite: ``False`` publishes with ``link`` so an existing ``path`` is
        never replaced (``FileExistsError`` is raised instead).
    :param sync_dir: fsync the target directory. The temporary's directory is not
        synced: that its entry is gone need not survive a crash (a stale temporary
        is never read, and the spool and Maildir ``tmp/`` are cleaned of them).
    :param mtime: the file's modification time (Unix seconds), set before the fsync;
        for readers that notice a change by mtime alone.
    :param directory_fd: the target directory, kept open by a caller that writes there often (the
        spool): fsync'ed instead of opening it each time.
    """
    tmp = tmp_path if tmp_path is not None else f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, _TMP_FLAGS, mode)
    try:
        try:
            size = write_chunks(fd, chunks)
            if mtime is not None:
                os.utime(fd, (mtime, mtime))
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if directory_fd is not None:
        os.fsync(directory_fd)
    elif sync_dir:
        fsync_dir(os.path.dirname(path) or ".")
    return size


def remove_file(path: str, *, sync_dir: bool = True) -> bool:
    """Unlink ``path`` durably; return ``False`` when it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")
    return True


def make_dirs(path: str, mode: int = 0o700) -> None:
    """Create ``path`` and its missing parents, fsync'ing each new entry's parent."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(directory))

"""Durable file writes: the one place that turns bytes into a file that survives a crash.

:func:`write_file`: the file is written under a temporary name, fsync'ed, moved
into place (``link`` when the name must not be overwritten, ``rename`` when it
may), and the directory is fsync'ed so the new entry itself is on disk.
:func:`write_new`: a new file is written in place, marked complete by its
mode, for directories whose readers can skip unfinished files. This module
imports nothing of ours (see DESIGN.md).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
#: The mode of a file :func:`write_new` has not finished: without its owner's read bit.
PARTIAL_MODE = 0o200


def fsync_dir(path: str) -> None:
    """fsync a directory so that entries created or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_chunks(fd: int, chunks: Iterable[bytes]) -> int:
    """Write every chunk fully to ``fd``; return the byte count."""
    total = 0
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            written = os.write(fd, view)
            view = view[written:]
            total += written
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
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")
    return size


def write_new(path: str, chunks: Iterable[bytes], *, mode: int = 0o600, directory_fd: int | None = None) -> int:
    """Create ``path`` (``FileExistsError`` if it exists) and write ``chunks`` to it durably; return the size.

    No temporary name: the file is created in :data:`PARTIAL_MODE`, written,
    given ``mode`` (the mark that it is complete) and fsync'ed, then the
    directory is fsync'ed. That is one journal commit where a temporary and a
    link take two: the file's fsync commits its new directory entry with it,
    and the directory's fsync then finds nothing left to write (ext4, XFS; it
    stays for file systems where it would). A crash before the fsync can leave
    a file still partial (:func:`is_partial`); whoever owns the directory
    removes those while no writer can be running, and every reader skips them.

    :param directory_fd: the directory, kept open by a caller that writes there often (one open and close
        less per file).
    """
    fd = os.open(path, _TMP_FLAGS, PARTIAL_MODE)
    try:
        try:
            size = write_chunks(fd, chunks)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        raise
    if directory_fd is None:
        fsync_dir(os.path.dirname(path) or ".")
    else:
        os.fsync(directory_fd)
    return size


def is_partial(status: os.stat_result) -> bool:
    """Whether a file written by :func:`write_new` is unfinished (being written, or left by a crash)."""
    return not status.st_mode & stat.S_IRUSR


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

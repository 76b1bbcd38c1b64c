"""Durable file writes: the one place that turns bytes into a file that survives a crash.

A file is written under a temporary name in the same directory, fsync'ed, moved
into place (``link`` when the name must not be overwritten, ``rename`` when it
may), and the directory is fsync'ed so the new entry itself is on disk. This
module imports nothing of ours (see DESIGN.md).

Where the name must not be overwritten (a spool file, a Maildir message), the
file is written without a name at all where the system allows it
(:func:`write_unnamed`: Linux's ``O_TMPFILE``), fsync'ed, and then given its
one name (:func:`link_unnamed`). Nothing shows under the temporary directory,
no temporary name is removed afterwards, and the fsync has no new directory
entry to write: on this project's benchmark machine (ext4) a message cost six
disk writes instead of seven, and a third less system time. A crash before the
name is given leaves an orphan inode that the file system reclaims, never a
partial file under a real name.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterable

_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_directory(path: str) -> int:
    """A descriptor of the directory ``path``, for its fsyncs and for naming files in it."""
    return os.open(path, _DIRECTORY_FLAGS)


def fsync_dir(path: str) -> None:
    """fsync a directory so that entries created or removed in it are durable."""
    fd = open_directory(path)
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


#: Where an unnamed file is given a name: ``linkat`` of its ``/proc/self/fd`` entry with ``AT_SYMLINK_FOLLOW``
#: (open(2) on ``O_TMPFILE``), which needs no privilege, unlike ``AT_EMPTY_PATH``.
_PROC_FD = "/proc/self/fd"
_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
#: What ``open`` answers where a file system or kernel cannot make unnamed files (old kernels: EISDIR).
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EISDIR, errno.EINVAL}
#: Whether this process can name unnamed files at all (no ``/proc`` in a chroot, say): tried once, at the first
#: :func:`write_unnamed`, with a throwaway file (None: not tried yet).
_naming_works: bool | None = None if _O_TMPFILE and os.path.isdir(_PROC_FD) else False


def write_unnamed(directory: str, chunks: Iterable[bytes], *, mode: int = 0o600,
                  mtime: float | None = None) -> tuple[int, int] | None:
    """Write ``chunks`` to a new file without a name on ``directory``'s file system, fsync'ed.

    Returns the open descriptor (the caller names it with :func:`link_unnamed`, then closes it) and the
    size written; None, having consumed nothing of ``chunks``, where this system or file system cannot
    make such a file: the caller writes under a temporary name instead.
    """
    fd = open_unnamed(directory, mode)
    if fd is None:
        return None
    return fd, fill_unnamed(fd, chunks, mtime=mtime)


def open_unnamed(directory: str, mode: int = 0o600) -> int | None:
    """The open descriptor of a new, empty file without a name on ``directory``'s file system (``O_TMPFILE``),
    or None where there can be none (see :func:`write_unnamed`). A missing ``directory`` raises
    ``FileNotFoundError`` before anything else happens."""
    global _naming_works
    if _naming_works is False:
        return None
    flags = os.O_RDWR | _O_TMPFILE | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(directory, flags, mode)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None  # this file system (another may say yes)
        raise
    if _naming_works is None:
        # A throwaway file: one that had a name and lost it cannot be named again (ENOENT).
        probe = os.open(directory, flags, mode)
        try:
            _naming_works = _try_naming(directory, probe)
        finally:
            os.close(probe)
        if not _naming_works:
            os.close(fd)
            return None
    return fd


def fill_unnamed(fd: int, chunks: Iterable[bytes], *, mtime: float | None = None) -> int:
    """Write ``chunks`` to the unnamed file ``fd`` (:func:`open_unnamed`) and fsync it; return the size.
    On an error ``fd`` is closed, which removes the file."""
    try:
        return _fill(fd, chunks, mtime)
    except BaseException:
        os.close(fd)  # the file had no name: closing it is removing it
        raise


def _fill(fd: int, chunks: Iterable[bytes], mtime: float | None) -> int:
    """Write ``chunks`` to ``fd``, set its ``mtime`` when given, and fsync it; return the size."""
    size = write_chunks(fd, chunks)
    if mtime is not None:
        os.utime(fd, (mtime, mtime))
    os.fsync(fd)
    return size


def link_unnamed(fd: int, directory_fd: int, name: str) -> None:
    """Give the unnamed file ``fd`` (:func:`write_unnamed`) the name ``name`` in the directory open as
    ``directory_fd``, on the same file system; never replacing a name (``FileExistsError``). The
    directory is not fsync'ed here."""
    # The directory descriptors make os.link call linkat (with follow_symlinks, AT_SYMLINK_FOLLOW); the
    # source path is absolute, so only the target is looked up in directory_fd.
    os.link(f"{_PROC_FD}/{fd}", name, src_dir_fd=directory_fd, dst_dir_fd=directory_fd, follow_symlinks=True)


def _try_naming(directory: str, fd: int) -> bool:
    """Whether the unnamed file ``fd`` in ``directory`` can be given a name: linked and removed again
    under a name nothing else uses."""
    name = f".unnamed-probe.{secrets.token_hex(8)}"
    try:
        directory_fd = open_directory(directory)
    except OSError:
        return False
    try:
        link_unnamed(fd, directory_fd, name)
    except OSError:
        return False
    else:
        os.unlink(name, dir_fd=directory_fd)
        return True
    finally:
        os.close(directory_fd)


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
    if not overwrite:
        unnamed = write_unnamed(os.path.dirname(tmp) or ".", chunks, mode=mode, mtime=mtime)
        if unnamed is not None:
            fd, size = unnamed
            _publish_unnamed(fd, path, directory_fd, sync_dir)
            return size
    fd = os.open(tmp, _TMP_FLAGS, mode)
    try:
        try:
            size = _fill(fd, chunks, mtime)
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


def _publish_unnamed(fd: int, path: str, directory_fd: int | None, sync_dir: bool) -> None:
    """Name the unnamed file ``fd`` ``path`` (never replacing), fsync its directory as :func:`write_file` does,
    and close it."""
    try:
        own_fd = directory_fd is None
        if own_fd:
            directory_fd = open_directory(os.path.dirname(path) or ".")
        try:
            link_unnamed(fd, directory_fd, os.path.basename(path))
            if sync_dir or not own_fd:
                os.fsync(directory_fd)
        finally:
            if own_fd:
                os.close(directory_fd)
    finally:
        os.close(fd)


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

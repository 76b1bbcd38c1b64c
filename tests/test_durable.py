"""Durable writes (continuity.durable): files published under a name that is never replaced, written without
a name where the system allows (O_TMPFILE), else under a temporary one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from continuity import durable


@pytest.fixture
def target(tmp_path: Path) -> tuple[Path, Path]:
    """A target directory and the temporary directory beside it (as the spool has)."""
    (tmp_path / "messages").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path / "messages", tmp_path / "tmp"


def _publish(target: tuple[Path, Path], name: str, data: bytes) -> int:
    messages, tmp = target
    return durable.write_file(str(messages / name), [data[:3], data[3:]], tmp_path=str(tmp / name), overwrite=False)


def test_a_file_written_without_a_name_never_shows_in_the_temporary_directory(target, monkeypatch) -> None:
    """Published without replacing: the bytes are fsync'ed while nothing names them (the temporary directory
    stays empty throughout), then the name appears with the exact bytes."""
    messages, tmp = target
    seen_in_tmp: list[list[str]] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (seen_in_tmp.append(os.listdir(tmp)), real_fsync(fd)))
    assert _publish(target, "0001", b"envelope\nmessage") == len(b"envelope\nmessage")
    assert (messages / "0001").read_bytes() == b"envelope\nmessage"
    assert seen_in_tmp and all(listing == [] for listing in seen_in_tmp)
    assert durable._naming_works is True


def test_an_existing_name_is_never_replaced(target) -> None:
    """The name is given with link: a name already there stays as it was, and nothing is left behind."""
    messages, tmp = target
    (messages / "0002").write_bytes(b"first")
    with pytest.raises(FileExistsError):
        _publish(target, "0002", b"second")
    assert (messages / "0002").read_bytes() == b"first"
    assert os.listdir(tmp) == [] and os.listdir(messages) == ["0002"]


def test_a_file_system_without_unnamed_files_gets_a_temporary_name(target, monkeypatch) -> None:
    """Where O_TMPFILE is refused (EOPNOTSUPP: NFS, say), the file goes through a temporary name as before,
    and the next write asks again (another file system may allow it)."""
    messages, tmp = target
    real_open = os.open
    refused: list[str] = []

    def open_(path, flags, *args, **kwargs):
        if flags & durable._O_TMPFILE == durable._O_TMPFILE:
            refused.append(path)
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)
    _publish(target, "0003", b"one")
    _publish(target, "0004", b"two")
    assert refused == [str(tmp), str(tmp)]
    assert (messages / "0003").read_bytes() == b"one" and (messages / "0004").read_bytes() == b"two"
    assert os.listdir(tmp) == []


def test_a_process_that_cannot_name_unnamed_files_stops_trying(target, monkeypatch, tmp_path) -> None:
    """Without a usable /proc/self/fd (a chroot, say) the first write finds out with a throwaway file and
    writes under a temporary name; the later ones do not ask again."""
    messages, tmp = target
    monkeypatch.setattr(durable, "_PROC_FD", str(tmp_path / "no-proc"))
    monkeypatch.setattr(durable, "_naming_works", None)
    _publish(target, "0005", b"five")
    assert durable._naming_works is False
    assert durable.write_unnamed(str(tmp), [b"x"]) is None
    assert (messages / "0005").read_bytes() == b"five"
    assert os.listdir(tmp) == [] and os.listdir(messages) == ["0005"]


def test_a_write_that_fails_leaves_no_file(target) -> None:
    """When the bytes cannot all be had, the unnamed file is dropped: no name, nothing in the temporary
    directory."""
    messages, tmp = target

    def chunks():
        yield b"partial"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        durable.write_file(str(messages / "0006"), chunks(), tmp_path=str(tmp / "0006"), overwrite=False)
    assert os.listdir(tmp) == [] and os.listdir(messages) == []


def test_a_name_given_once_cannot_be_given_again_after_removal(target) -> None:
    """Why the probe uses a throwaway file: an unnamed file that was named and lost its name again is no
    longer linkable (the kernel's I_LINKABLE), so probing with the real file would lose it."""
    messages, tmp = target
    fd, size = durable.write_unnamed(str(tmp), [b"bytes"])
    directory_fd = os.open(messages, os.O_RDONLY | os.O_DIRECTORY)
    try:
        durable.link_unnamed(fd, directory_fd, "probe")
        os.unlink(messages / "probe")
        with pytest.raises(FileNotFoundError):
            durable.link_unnamed(fd, directory_fd, "again")
    finally:
        os.close(directory_fd)
        os.close(fd)
    assert size == 5 and os.listdir(messages) == []

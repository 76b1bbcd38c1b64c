"""One Maildir folder: delivery, listing with persistent UIDs, flags, expunge.

Maildir (https://cr.yp.to/proto/maildir.html): a message is written and
fsync'ed in ``tmp/``, then linked into ``new/`` (or ``cur/`` with ``:2,FLAGS``)
without ever replacing an existing name; flags live in the name and change by
``rename`` within ``cur/``. Any other Maildir tool may add, rename or remove
files at any time, so a listing reconciles the directories with the uid list
(:mod:`continuity.mailstore.uidlist`) under the folder's lock, and a cheap stat
of ``new/``, ``cur/`` and the uid list tells when the last listing still holds.

IMAP semantics served here: UIDs and UIDVALIDITY (RFC 3501 2.3.1.1), \\Recent as
"still in ``new/``" (RFC 3501 2.3.2), keywords as letters ``a``-``z`` named in
``dovecot-keywords`` (RFC 3501 2.3.2, :mod:`continuity.mailstore.keywords`),
modseqs for CONDSTORE (RFC 7162 3.1).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from typing import BinaryIO

import attrs
from twisted.logger import Logger

from continuity.durable import fill_unnamed, link_unnamed, make_dirs, open_directory, open_unnamed, write_chunks
from continuity.envelope import Address
from continuity.mailstore.errors import MailboxNotFound, MessageExpunged
from continuity.mailstore.filenames import (
    MaildirFilename,
    UniqueNames,
    base_size,
    base_time,
    info_name,
    normalise_flags,
    sized_base,
)
from continuity.mailstore.keywords import KEYWORDS_NAME, KeywordList, file_identity
from continuity.mailstore.locks import exclusive_lock
from continuity.mailstore.names import FolderName
from continuity.mailstore.records import FolderSnapshot, FolderStatus, MessageRef
from continuity.mailstore.transaction import FlagChange, FolderTransaction, MessageFile
from continuity.mailstore.uidlist import LOCK_NAME, UIDLIST_NAME, UidList, UidListCorrupt, UidValidityClock

# A directory mtime this close to the scan time may hide a second change made in
# the same timestamp tick, so such a scan is not trusted as a cache (Dovecot's
# MAILDIR_SYNC_SECS idea).
SYNC_SLACK = 2.0
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
# The first read of a message asks for its listed size plus one octet, so a message whose
# ``,S=`` size is right is read in one call and its end is seen without a second one; a
# size that lies (another tool's file) costs a bounded buffer, then reads to the end.
_FIRST_READ_LIMIT = 1 << 24
_READ_CHUNK = 1 << 20
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


@attrs.frozen
class Stamp:
    """What a cheap stat says about a folder: (inode, mtime) of new/ and cur/, the uid list's and
    the keyword file's identity."""

    new: tuple[int, int]
    cur: tuple[int, int]
    uidlist: tuple[int, int, int] | None
    keywords: tuple[int, int, int] | None

    @property
    def newest_ns(self) -> int:
        return max(self.new[1], self.cur[1])


@attrs.frozen
class _State:
    stamp: Stamp
    trusted: bool
    uidlist: UidList = attrs.field(eq=False)
    files: Mapping[str, MessageFile] = attrs.field(eq=False)
    keywords: KeywordList = attrs.field(eq=False)
    snapshot: FolderSnapshot = attrs.field(eq=False)


class MailFolder:
    """One Maildir folder of one user (INBOX is the user's root).

    Safe to share between threads; other processes and Maildir tools may work
    on the same directories. Listing results are cached in this object and
    reused while ``new/``, ``cur/`` and the uid list are unchanged.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        name: FolderName,
        address: Address,
        names: UniqueNames,
        uidvalidities: UidValidityClock,
    ):
        self.path = path
        self.name = name
        self.address = address
        self.names = names
        self._uidvalidities = uidvalidities
        self._uidlist_path = os.path.join(path, UIDLIST_NAME)
        self.keywords_path = os.path.join(path, KEYWORDS_NAME)
        self._state: _State | None = None

    def __repr__(self) -> str:
        return f"<MailFolder {self.address} {self.name}>"

    # -- reconciling the directories with the uid list ---------------------------

    def _stamp(self) -> Stamp:
        try:
            new = os.stat(os.path.join(self.path, "new"))
            cur = os.stat(os.path.join(self.path, "cur"))
        except FileNotFoundError:
            raise MailboxNotFound(f"no such mailbox: {self.name}") from None
        return Stamp(
            (new.st_ino, new.st_mtime_ns),
            (cur.st_ino, cur.st_mtime_ns),
            _identity(self._uidlist_path),
            _identity(self.keywords_path),
        )

    def _scan(self) -> dict[str, MessageFile]:
        """Every message file by base: names only, no per-file stat.

        ``new/`` is read before ``cur/``: files only move from new/ to cur/, so
        one moved meanwhile is still seen. A base in both keeps its cur/ file.
        """
        files: dict[str, MessageFile] = {}
        for subdir in ("new", "cur"):
            try:
                entries = os.scandir(os.path.join(self.path, subdir))
            except FileNotFoundError:
                raise MailboxNotFound(f"no such mailbox: {self.name}") from None
            with entries:
                for entry in entries:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    parsed = MaildirFilename.parse(entry.name)
                    if parsed is None:
                        continue
                    known = files.get(parsed.base)
                    if known is not None and known.subdir == subdir and known.name < parsed.name:
                        continue  # a duplicate left by another tool: keep one, deterministically
                    files[parsed.base] = MessageFile(subdir, parsed.name, parsed.flags)
        return files

    def locate(self, base: str) -> MessageFile | None:
        """Where the message ``base`` is now (after a rename by someone else), or None."""
        try:
            return self._scan().get(base)
        except MailboxNotFound:
            return None

    def _load_uidlist(self) -> UidList:
        try:
            uidlist = UidList.load(self._uidlist_path)
        except UidListCorrupt as exc:
            previous = exc.uidvalidity or 0
            uidlist = UidList(self._uidvalidities(at_least=previous + 1))
            self.log.warn(
                "corrupt uid list of {address} {folder} ({problem}); new UIDVALIDITY {uidvalidity}",
                address=str(self.address), folder=str(self.name), problem=str(exc), uidvalidity=uidlist.uidvalidity,
            )
            uidlist.changed = True
            return uidlist
        if uidlist is None:
            uidlist = UidList(self._uidvalidities())
            uidlist.changed = True
        return uidlist

    def _merge(self, uidlist: UidList, files: dict[str, MessageFile]) -> None:
        """Drop vanished messages, note flag changes, give new files UIDs in a stable order."""
        for entry in list(uidlist):
            file = files.get(entry.base)
            if file is None:
                uidlist.drop(entry.uid)
            elif file.flags != entry.flags:
                uidlist.set_flags(entry.uid, file.flags)
        fresh = []
        for base, file in list(files.items()):
            if uidlist.find(base) is not None:
                continue
            date, size = base_time(base), base_size(base)
            if date is None or size is None:  # not one of ours: ask the file itself, once
                try:
                    info = os.stat(os.path.join(self.path, file.subdir, file.name), follow_symlinks=False)
                except FileNotFoundError:
                    del files[base]
                    continue
                date = int(info.st_mtime) if date is None else date
                size = info.st_size if size is None else size
            fresh.append((date, base, size, file.flags))
        for date, base, size, flags in sorted(fresh):
            uidlist.assign(base, date, size, flags)

    def _begin(self) -> FolderTransaction:
        started = time.time()  # compared with file system mtimes, so the real clock
        stamp = self._stamp()
        state = self._state
        if state is not None and state.trusted and state.stamp == stamp:
            return FolderTransaction(
                self, state.uidlist.copy(), dict(state.files), stamp, started, state.keywords, stamp.keywords
            )
        uidlist = self._load_uidlist()
        keywords, keywords_stamp = KeywordList.load(self.keywords_path)
        files = self._scan()
        if any(entry.base not in files for entry in uidlist):
            files = self._scan()  # a rename by another tool may have hidden a file from readdir
        self._merge(uidlist, files)
        return FolderTransaction(self, uidlist, files, stamp, started, keywords, keywords_stamp)

    def _commit(self, txn: FolderTransaction) -> None:
        txn.flush()
        if txn.uidlist.changed:
            txn.uidlist.save(self._uidlist_path)
        stamp = self._stamp()
        if not txn.touched:
            stamp = attrs.evolve(stamp, new=txn.stamp.new, cur=txn.stamp.cur)  # describe what was scanned
        stamp = attrs.evolve(stamp, keywords=txn.keywords_stamp)  # the keywords read or written, not a later file
        trusted = stamp.newest_ns < (txn.started - SYNC_SLACK) * 1e9
        txn.snapshot = txn.build_snapshot()
        self._state = _State(stamp, trusted, txn.uidlist.copy(), dict(txn.files), txn.keywords, txn.snapshot)

    @contextmanager
    def transaction(self) -> Iterator[FolderTransaction]:
        """Hold the folder's lock with its uid list synced; save the changes at the end.

        :raises MailboxNotFound: when the folder does not exist (any more).
        """
        with ExitStack() as stack:
            try:
                stack.enter_context(exclusive_lock(os.path.join(self.path, LOCK_NAME)))
            except FileNotFoundError:
                raise MailboxNotFound(f"no such mailbox: {self.name}") from None
            txn = self._begin()
            try:
                yield txn
            except BaseException:
                # What was done on disk is recorded; the cache is rebuilt on next use.
                self._state = None
                try:
                    txn.flush()
                    if txn.uidlist.changed:
                        txn.uidlist.save(self._uidlist_path)
                except OSError:
                    pass  # the next transaction rescans and reconciles
                raise
            self._commit(txn)

    # -- reading ---------------------------------------------------------------------

    def snapshot(self) -> FolderSnapshot:
        """The folder now; from the cache while nothing changed on disk."""
        state = self._state
        if state is not None and state.trusted and state.stamp == self._stamp():
            return state.snapshot
        with self.transaction() as txn:
            pass
        assert txn.snapshot is not None
        return txn.snapshot

    def uidvalidity(self) -> int:
        """The folder's UIDVALIDITY, from the cache when there is one (it only changes with a lost uid list)."""
        state = self._state
        if state is not None:
            return state.uidlist.uidvalidity
        return self.snapshot().uidvalidity

    def status(self) -> FolderStatus:
        snapshot = self.snapshot()
        messages = snapshot.messages
        return FolderStatus(
            messages=len(messages),
            recent=sum(1 for message in messages if message.recent),
            unseen=sum(1 for message in messages if "S" not in message.flags),
            uid_next=snapshot.uid_next,
            uidvalidity=snapshot.uidvalidity,
            highest_modseq=snapshot.highest_modseq,
            size=sum(message.size for message in messages),
        )

    def open(self, ref: MessageRef) -> BinaryIO:
        """Open the message for reading, following a rename by another session.

        :raises MessageExpunged: when its file is gone.
        """
        path: str | None = ref.path
        for attempt in range(2):
            if path is not None:
                try:
                    return os.fdopen(os.open(path, _OPEN_FLAGS), "rb")
                except FileNotFoundError:
                    pass
            if attempt == 0:
                found = self.locate(ref.base)
                path = None if found is None else os.path.join(self.path, found.subdir, found.name)
        raise MessageExpunged(f"message {ref.uid or ref.base} of {self.name} was expunged")

    def read_renamed(self, refs: Sequence[MessageRef], missing: Iterable[int], out: list[bytes | None]) -> None:
        """Fill in ``out[index]`` for each message ``refs[index]`` of ``missing`` (all of this folder)
        that another session renamed since it was listed (a flag change): one rescan for all of them.
        One removed stays None.
        """
        try:
            files = self._scan()
        except MailboxNotFound:
            return
        for index in missing:
            ref = refs[index]
            found = files.get(ref.base)
            if found is None:
                continue
            try:
                fd = os.open(os.path.join(self.path, found.subdir, found.name), _OPEN_FLAGS)
            except FileNotFoundError:
                continue  # renamed or removed again since the scan: counted as gone
            try:
                out[index] = _read_to_end(fd, ref.size)
            finally:
                os.close(fd)

    # -- writing ---------------------------------------------------------------------

    def _write_temp(self, chunks: Iterable[bytes], internal_date: int | None) -> tuple[str, str, int]:
        """Write and fsync the message in ``tmp/``; return its path, base name (with ``,S=``) and size."""
        tmp_dir = os.path.join(self.path, "tmp")
        while True:
            base = self.names.next_base()
            tmp_path = os.path.join(tmp_dir, base)
            try:
                fd = os.open(tmp_path, _TMP_FLAGS, 0o600)
                break
            except FileExistsError:
                continue
            except (FileNotFoundError, NotADirectoryError):
                self._check_exists()  # a folder that is gone, or its tmp/ alone
                make_dirs(tmp_dir)
        try:
            try:
                size = write_chunks(fd, chunks)
                os.fsync(fd)
            finally:
                os.close(fd)
            if internal_date is not None:
                os.utime(tmp_path, (internal_date, internal_date))
        except BaseException:
            _unlink_quietly(tmp_path)
            raise
        return tmp_path, sized_base(base, size), size

    def deliver(
        self,
        chunks: Iterable[bytes],
        flags: str,
        internal_date: int | None,
        assign_uid: bool,
        keywords: tuple[str, ...] = (),
    ) -> MessageRef:
        """Write a message durably into ``new/`` (``cur/`` when ``flags``); never overwrite a file.

        With ``assign_uid`` (or an ``internal_date``, which must be recorded, or
        ``keywords``, which need the folder's letters) the message gets its UID
        under the folder's lock at once (IMAP APPEND, RFC 4315 APPENDUID);
        otherwise at the next listing, which keeps SMTP delivery cheap.

        :raises KeywordLimit: when a new keyword does not fit (nothing is stored).
        """
        if not (assign_uid or internal_date is not None or keywords):
            return self._deliver_unlisted(chunks, flags)
        tmp_path, base, size = self._write_temp(chunks, internal_date)
        try:
            date = internal_date if internal_date is not None else base_time(base) or int(time.time())
            with self.transaction() as txn:
                if keywords:
                    flags = normalise_flags(flags + txn.keyword_letters(keywords, create=True))
                entry = txn.publish(tmp_path, base, flags, date, size)
                txn.flush()
                return txn.ref(entry)
        except FileNotFoundError:
            self._check_exists()  # removed since the write
            raise
        finally:
            _unlink_quietly(tmp_path)

    def _deliver_unlisted(self, chunks: Iterable[bytes], flags: str) -> MessageRef:
        """:meth:`deliver` without a UID yet: written without a name where the system allows
        (:func:`~continuity.durable.write_unnamed`), else in ``tmp/``; linked in; the directory fsync'ed."""
        subdir = "cur" if flags else "new"
        try:
            directory_fd = open_directory(os.path.join(self.path, subdir))
        except (FileNotFoundError, NotADirectoryError):
            self._check_exists()
            raise
        try:
            unnamed = self._write_unnamed(chunks)
            if unnamed is not None:
                fd, size = unnamed
                try:
                    base, name = self._link_new(partial(link_unnamed, fd, directory_fd), None, flags, size)
                finally:
                    os.close(fd)
            else:
                tmp_path, base, size = self._write_temp(chunks, None)
                try:
                    link = partial(os.link, tmp_path, dst_dir_fd=directory_fd)
                    base, name = self._link_new(link, base, flags, size)
                finally:
                    _unlink_quietly(tmp_path)
            os.fsync(directory_fd)
        finally:
            os.close(directory_fd)
        return MessageRef(
            address=self.address,
            folder=self.name,
            uid=None,
            base=base,
            path=os.path.join(self.path, subdir, name),
            flags=flags,
            size=size,
            internal_date=base_time(base) or int(time.time()),
            modseq=None,
            recent=subdir == "new",
        )

    def _link_new(self, link: Callable[[str], None], base: str | None, flags: str, size: int) -> tuple[str, str]:
        """Call ``link(name)`` with the file name of ``base`` and ``flags`` (a fresh base when None or taken):
        the base and name it took."""
        while True:
            if base is None:
                base = sized_base(self.names.next_base(), size)
            name = info_name(base, flags) if flags else base
            try:
                link(name)
                return base, name
            except FileExistsError:
                base = None

    def _write_unnamed(self, chunks: Iterable[bytes]) -> tuple[int, int] | None:
        """:func:`~continuity.durable.write_unnamed` on this folder's file system (re-making a missing ``tmp/``)."""
        tmp_dir = os.path.join(self.path, "tmp")
        try:
            fd = open_unnamed(tmp_dir)
        except (FileNotFoundError, NotADirectoryError):
            self._check_exists()  # a folder that is gone, or its tmp/ alone
            make_dirs(tmp_dir)
            fd = open_unnamed(tmp_dir)
        return None if fd is None else (fd, fill_unnamed(fd, chunks))

    def _check_exists(self) -> None:
        """Raise :class:`MailboxNotFound` when this folder is gone (or half of one: no ``cur/``).

        Looked at only when a write finds a directory missing, not before each delivery."""
        if not os.path.isdir(os.path.join(self.path, "cur")):
            raise MailboxNotFound(f"no such mailbox: {self.name}") from None

    def change_flags(self, uids: Iterable[int], change: FlagChange) -> tuple[MessageRef, ...]:
        """Apply ``change`` to each existing message of ``uids``; return them as they are now.

        New keywords get their letters first (only when a message is there to carry them).

        :raises KeywordLimit: when a new keyword does not fit (nothing is changed).
        """
        refs = []
        with self.transaction() as txn:
            entries = [entry for entry in (txn.uidlist.get(uid) for uid in sorted(set(uids))) if entry is not None]
            if not entries:
                return ()
            letters = txn.keyword_letters(change.keywords, create=change.mode != "remove")
            function = change.function(letters, txn.keywords.named_letters())
            for entry in entries:
                changed = txn.change_flags(entry, function)
                if changed is not None:
                    refs.append(txn.ref(changed))
        return tuple(refs)

    def claim_recent(self) -> tuple[int, ...]:
        with self.transaction() as txn:
            return tuple(txn.claim_recent())

    def expunge(self, uids: Iterable[int]) -> tuple[int, ...]:
        """Remove the messages of ``uids`` durably; return the UIDs that were there."""
        gone = []
        with self.transaction() as txn:
            for uid in sorted(set(uids)):
                entry = txn.uidlist.get(uid)
                if entry is not None:
                    txn.unlink(entry)
                    gone.append(uid)
        return tuple(gone)

    def remove(self, base: str) -> bool:
        """Remove the message whose base name is ``base``; False when it is not here."""
        return base in self.remove_many([base])

    def remove_many(self, bases: Iterable[str]) -> set[str]:
        """Remove the messages with these base names in one transaction (one uid list write).

        :returns: the base names that were here and are removed now.
        """
        removed = set()
        with self.transaction() as txn:
            for base in bases:
                entry = txn.uidlist.find(base)
                if entry is not None:
                    txn.unlink(entry)
                    removed.add(base)
        return removed


def read_listed(refs: Sequence[MessageRef]) -> tuple[list[bytes | None], list[int]]:
    """The bytes of listed messages where their listing saw them, and the indexes of those not there.

    A message costs ``open``, ``read`` and ``close``: its listed size says how
    much to read, so there is no ``stat`` and no file object, and it is opened
    by name relative to its directory, opened once for the batch (the kernel
    walks the path down to ``cur/`` once, not for every message). A file not
    found is None, for :meth:`MailFolder.read_renamed` to look for.
    """
    out: list[bytes | None] = []
    append = out.append
    missing = []
    directories: dict[str, int] = {}  # path -> open descriptor, or -1 when it is gone
    open_, read, close = os.open, os.read, os.close
    try:
        for ref in refs:
            directory, _, name = ref.path.rpartition("/")
            dir_fd = directories.get(directory)
            if dir_fd is None:
                try:
                    dir_fd = open_(directory, _DIR_FLAGS)
                except (FileNotFoundError, NotADirectoryError):
                    dir_fd = -1
                directories[directory] = dir_fd
            try:
                if dir_fd < 0:
                    raise FileNotFoundError
                fd = open_(name, _OPEN_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                missing.append(len(out))
                append(None)
                continue
            try:
                data = _read_to_end(fd, ref.size)
            finally:
                close(fd)
            append(data)
    finally:
        for dir_fd in directories.values():
            if dir_fd >= 0:
                close(dir_fd)
    return out, missing


def _read_to_end(fd: int, size: int) -> bytes:
    """Everything in the open file ``fd``, expected to hold ``size`` octets.

    A regular file reads short only at its end, so a read that returns less
    than asked for is the whole rest of the file.
    """
    want = min(size, _FIRST_READ_LIMIT) + 1
    data = os.read(fd, want)
    return data if len(data) < want else data + _read_rest(fd)


def _read_rest(fd: int) -> bytes:
    chunks = []
    while True:
        data = os.read(fd, _READ_CHUNK)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _identity(path: str) -> tuple[int, int, int] | None:
    try:
        return file_identity(os.stat(path))
    except FileNotFoundError:
        return None


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

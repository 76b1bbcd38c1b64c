"""Changes to one Maildir folder made under its lock: flags, expunge, delivery and copy.

A :class:`FolderTransaction` holds the folder's uid list and the files found in
``new/`` and ``cur/``; each method changes the disk first (rename, link,
unlink: https://cr.yp.to/proto/maildir.html) and then the uid list, so the two
agree whenever the transaction ends. A file that another session or tool
renamed meanwhile is looked up again once; a file that is gone was expunged.
Keywords (:mod:`continuity.mailstore.keywords`) are resolved to the folder's
letters here, under the lock, and a new one is written to ``dovecot-keywords``
before any file carries its letter.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import attrs

from continuity.durable import fsync_dir, write_file
from continuity.mailstore.filenames import SYSTEM_FLAGS, info_name, sized_base
from continuity.mailstore.keywords import KeywordList, check_keywords
from continuity.mailstore.records import FolderSnapshot, MessageRef
from continuity.mailstore.uidlist import UidEntry, UidList

if TYPE_CHECKING:
    from continuity.mailstore.folder import MailFolder, Stamp

# Hard links refused by the file system (or by protected_hardlinks): copy the bytes instead.
_NO_HARDLINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, getattr(errno, "EOPNOTSUPP", errno.ENOTSUP)}


@attrs.frozen
class FlagChange:
    """What STORE asks (RFC 3501 6.4.6): replace (``set``), ``add`` or ``remove`` flags.

    ``letters`` are Maildir info letters, ``keywords`` keyword names (validated,
    unique ignoring case), resolved to letters in the folder at hand.
    """

    mode: str  # "set", "add" or "remove"
    letters: str
    keywords: tuple[str, ...] = ()

    def function(self, keyword_letters: str, named_letters: str) -> Callable[[str], str]:
        """The change of a message's letters, once the keywords are ``keyword_letters`` here.

        Replacing keeps the letters nobody can name: other tools' uppercase flags
        and orphan keyword letters (``named_letters`` are the ones with a name).
        """
        wanted = set(self.letters) | set(keyword_letters)
        if self.mode == "add":
            return lambda current: "".join(sorted(set(current) | wanted))
        if self.mode == "remove":
            return lambda current: "".join(sorted(set(current) - wanted))
        replaced = set(SYSTEM_FLAGS) | set(named_letters)
        return lambda current: "".join(sorted(wanted | (set(current) - replaced)))


@attrs.frozen
class MessageFile:
    """A message file as found on disk: ``new/`` or ``cur/``, its name, its info flags."""

    subdir: str  # "new" or "cur"
    name: str
    flags: str


class FolderTransaction:
    """A folder under its exclusive lock, its uid list reconciled with ``new/`` and ``cur/``.

    Obtained from :meth:`MailFolder.transaction`; every change goes to disk at
    once and into the uid list, which is saved when the transaction ends.
    """

    def __init__(
        self,
        folder: MailFolder,
        uidlist: UidList,
        files: dict[str, MessageFile],
        stamp: Stamp,
        started: float,
        keywords: KeywordList,
        keywords_stamp: tuple[int, int, int] | None,
    ):
        self.folder = folder
        self.uidlist = uidlist
        self.files = files
        self.stamp = stamp
        self.started = started
        self.keywords = keywords
        self.keywords_stamp = keywords_stamp
        self.touched = False
        self.snapshot: FolderSnapshot | None = None
        self._dirty: set[str] = set()

    def path(self, file: MessageFile) -> str:
        return os.path.join(self.folder.path, file.subdir, file.name)

    def ref(self, entry: UidEntry) -> MessageRef:
        file = self.files[entry.base]
        return MessageRef(
            address=self.folder.address,
            folder=self.folder.name,
            uid=entry.uid,
            base=entry.base,
            path=self.path(file),
            flags=file.flags,
            size=entry.size,
            internal_date=entry.date,
            modseq=entry.modseq,
            recent=file.subdir == "new",
            keywords=self.keywords.names_of(file.flags),
        )

    def build_snapshot(self) -> FolderSnapshot:
        return FolderSnapshot(
            folder=self.folder.name,
            uidvalidity=self.uidlist.uidvalidity,
            uid_next=self.uidlist.next_uid,
            highest_modseq=self.uidlist.highest_modseq,
            messages=tuple(self.ref(entry) for entry in self.uidlist),
            keywords=self.keywords.defined,
            keywords_full=self.keywords.full,
        )

    # -- keywords --------------------------------------------------------------------------

    def keyword_letters(self, names: Iterable[str], create: bool) -> str:
        """The letters of keywords ``names`` here; with ``create`` the missing ones get a slot first.

        A new keyword is in ``dovecot-keywords`` (durably) before this returns, so no
        file carries a letter whose name could be lost.

        :raises InvalidKeyword: for a name that is no atom (or too long to create).
        :raises KeywordLimit: when the new ones do not all fit (then none is created).
        """
        names = check_keywords(names)
        if create and any(self.keywords.letter(name) is None for name in names):
            named = set(self.keywords.named_letters())
            orphans = {letter for file in self.files.values() for letter in file.flags
                       if "a" <= letter <= "z" and letter not in named}
            extended = self.keywords.extended(names, orphans)
            self.keywords_stamp = extended.save(self.folder.keywords_path, self.keywords_stamp)
            added = [name for name in extended.defined if self.keywords.letter(name) is None]
            self.keywords = extended
            self.folder.log.info(
                "new keywords {keywords} in {folder} of {address}",
                keywords=" ".join(added), folder=str(self.folder.name), address=str(self.folder.address),
            )
        letters = (self.keywords.letter(name) for name in names)
        return "".join(sorted({letter for letter in letters if letter is not None}))

    def adopt_keywords(self, source: FolderTransaction, entries: Iterable[UidEntry]) -> None:
        """Give this folder every keyword the ``entries`` of ``source`` carry (COPY, MOVE), all or none.

        :raises KeywordLimit: before anything is copied, when they do not fit here.
        """
        if source is self:
            return
        names: list[str] = []
        for entry in entries:
            file = source.files.get(entry.base)
            if file is not None:
                names.extend(source.keywords.names_of(file.flags))
        if names:
            self.keyword_letters(names, create=True)

    def _translate(self, source: FolderTransaction, flags: str) -> str:
        """``flags`` of a message of ``source`` with its keyword letters turned into this folder's."""
        if source is self or not any("a" <= letter <= "z" for letter in flags):
            return flags
        kept = [letter for letter in flags if not "a" <= letter <= "z"]
        mapped = self.keyword_letters(source.keywords.names_of(flags), create=True)
        return "".join(sorted(set(kept) | set(mapped)))

    def _touch(self, *subdirs: str) -> None:
        self.touched = True
        self._dirty.update(os.path.join(self.folder.path, subdir) for subdir in subdirs)

    def flush(self) -> None:
        """fsync every directory changed so far (entries created, renamed or removed)."""
        for directory in sorted(self._dirty):
            fsync_dir(directory)
        self._dirty.clear()

    def _relocate(self, entry: UidEntry) -> MessageFile | None:
        """Find a file another session renamed; forget the message when it is gone (expunged)."""
        file = self.folder.locate(entry.base)
        if file is None:
            self.files.pop(entry.base, None)
            self.uidlist.drop(entry.uid)
            self.touched = True
            return None
        self.files[entry.base] = file
        self.uidlist.set_flags(entry.uid, file.flags)
        return file

    def change_flags(self, entry: UidEntry, change: Callable[[str], str]) -> UidEntry | None:
        """Give a message ``change(current_flags)`` by renaming it into ``cur/``; None if it vanished."""
        file = self.files[entry.base]
        for attempt in range(2):
            wanted = change(file.flags)
            if wanted == file.flags:
                return self.uidlist.get(entry.uid)
            target = MessageFile("cur", info_name(entry.base, wanted), wanted)
            try:
                os.rename(self.path(file), self.path(target))
            except FileNotFoundError:
                # Renamed or removed by another session or tool: rescan, retry once.
                relocated = self._relocate(entry) if attempt == 0 else None
                if relocated is None:
                    return None
                file = relocated
                continue
            self._touch(file.subdir, "cur")
            self.files[entry.base] = target
            return self.uidlist.set_flags(entry.uid, wanted)
        return None

    def claim_recent(self) -> list[int]:
        """Move every message out of ``new/`` into ``cur/``: it is no longer \\Recent (RFC 3501 2.3.2)."""
        claimed = []
        for entry in list(self.uidlist):
            file = self.files[entry.base]
            if file.subdir != "new":
                continue
            target = MessageFile("cur", info_name(entry.base, file.flags), file.flags)
            try:
                os.rename(self.path(file), self.path(target))
            except FileNotFoundError:
                continue  # another session claimed it first; the next scan sees where it went
            self._touch("new", "cur")
            self.files[entry.base] = target
            claimed.append(entry.uid)
        return claimed

    def unlink(self, entry: UidEntry) -> None:
        """Remove a message's file (wherever it went meanwhile) and forget its UID."""
        file: MessageFile | None = self.files[entry.base]
        for attempt in range(2):
            if file is None:
                return
            try:
                os.unlink(self.path(file))
                break
            except FileNotFoundError:
                file = self._relocate(entry) if attempt == 0 else None
        self._touch("new", "cur")
        self.files.pop(entry.base, None)
        self.uidlist.drop(entry.uid)

    def _link_unique(self, source: str, base: str, subdir: str, flags: str, size: int) -> tuple[str, MessageFile]:
        """Hard-link ``source`` into ``subdir`` under ``base`` (or a fresh base when taken); never overwrite."""
        while True:
            name = info_name(base, flags) if subdir == "cur" else base
            if base not in self.files:
                try:
                    os.link(source, os.path.join(self.folder.path, subdir, name))
                    return base, MessageFile(subdir, name, flags)
                except FileExistsError:
                    pass
            base = sized_base(self.folder.names.next_base(), size)

    def publish(self, tmp_path: str, base: str, flags: str, date: int, size: int) -> UidEntry:
        """Link a written ``tmp/`` file into ``new/`` (``cur/`` when flagged) and give it a UID."""
        subdir = "cur" if flags else "new"
        base, file = self._link_unique(tmp_path, base, subdir, flags, size)
        self._touch(subdir)
        self.files[base] = file
        return self.uidlist.assign(base, date, size, flags)

    def link_from(self, source: FolderTransaction, entry: UidEntry) -> UidEntry | None:
        """Copy a message of ``source`` in here, keeping its base name when free; None if it vanished.

        A hard link shares the (immutable) file; where the file system refuses
        one, the content is copied durably through ``tmp/``. Flags and internal
        date are kept (RFC 3501 6.4.7), keywords by name: their letters are this
        folder's (see :meth:`adopt_keywords`).
        """
        file = source.files.get(entry.base)
        for attempt in range(2):
            if file is None:
                return None
            flags = self._translate(source, file.flags)
            subdir = "cur" if flags else file.subdir  # info flags never go into new/
            try:
                base, linked = self._link_unique(source.path(file), entry.base, subdir, flags, entry.size)
                break
            except FileNotFoundError:
                file = source._relocate(entry) if attempt == 0 else None
            except OSError as exc:
                if exc.errno not in _NO_HARDLINK:
                    raise
                base, linked = self._copy_in(source.path(file), entry, subdir, flags)
                break
        else:
            return None
        self._touch(linked.subdir)
        self.files[base] = linked
        return self.uidlist.assign(base, entry.date, entry.size, linked.flags)

    def _copy_in(self, source: str, entry: UidEntry, subdir: str, flags: str) -> tuple[str, MessageFile]:
        """Copy the bytes through ``tmp/`` (fsync'ed) and link them in: for file systems without hard links."""
        tmp_dir = os.path.join(self.folder.path, "tmp")
        copy_path = os.path.join(tmp_dir, self.folder.names.next_base())
        with open(source, "rb") as handle:
            write_file(copy_path, iter(lambda: handle.read(65536), b""), tmp_path=copy_path + ".part", sync_dir=False)
        try:
            os.utime(copy_path, (entry.date, entry.date))
            return self._link_unique(copy_path, entry.base, subdir, flags, entry.size)
        finally:
            os.unlink(copy_path)

"""The mail store: continuity mailboxes as Maildir++ trees under ``mail_root/DOMAIN/LOCALPART/``.

:class:`MaildirStore` is what SMTP delivery, recovery, IMAP and POP3 call. It
is synchronous and blocking: callers run it on a thread pool
(``deferToThreadPool``), never on the reactor thread. One instance per process
is meant to be shared by all of them; it is thread-safe, and other processes or
Maildir tools may use the same directories at the same time.

Folder arguments are Unicode names with ``/`` between levels (``"INBOX"``,
``"Archive/2024"``), a sequence of parts, or a :class:`FolderName`; see
:mod:`continuity.mailstore.names` for what is refused. Flags are Maildir info
letters (:data:`continuity.mailstore.filenames.IMAP_FLAGS` maps IMAP's);
keywords are names (``$Forwarded``), which each folder maps to its letters
``a``-``z`` (:mod:`continuity.mailstore.keywords`). Messages are stored byte
for byte as given.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import BinaryIO

from twisted.logger import Logger

from continuity.envelope import Address, normalise_domain
from continuity.errors import InvalidAddress
from continuity.mailstore.errors import MailstoreError, MessageExpunged, storage_error
from continuity.mailstore.filenames import UniqueNames, normalise_flags
from continuity.mailstore.folder import MailFolder, read_listed
from continuity.mailstore.keywords import check_keywords
from continuity.mailstore.mailbox import DEFAULT_SPECIAL_USE, STAGING_PREFIX, UserMailbox
from continuity.mailstore.names import INBOX_NAME, FolderName
from continuity.mailstore.records import CopyResult, FolderInfo, FolderSnapshot, FolderStatus, MessageRef
from continuity.mailstore.transaction import FlagChange, FolderTransaction
from continuity.mailstore.uidlist import UidValidityClock

FolderArg = str | Sequence[str] | FolderName
FlagsArg = str | Iterable[str]  # Maildir info letters
MessageBody = bytes | bytearray | memoryview | Iterable[bytes]


def _check_component(value: str, what: str) -> None:
    if not value or value in (".", "..") or "/" in value or "\x00" in value or value.startswith("."):
        raise InvalidAddress(f"unsafe {what} for a mailbox path: {value!r}")


def user_root(mail_root: str, address: Address) -> str:
    """The Maildir++ root of ``address``: ``mail_root/DOMAIN/LOCALPART``.

    The address is validated already (:func:`continuity.envelope.parse_address`);
    this still checks that the path stays inside ``mail_root``.

    :raises InvalidAddress: when it would not.
    """
    if not isinstance(address, Address):
        raise TypeError(f"expected an Address, got {type(address).__name__}")
    _check_component(address.domain, "domain")
    _check_component(address.local, "local part")
    root = os.path.abspath(mail_root)
    path = os.path.normpath(os.path.join(root, address.domain, address.local))
    if os.path.dirname(os.path.dirname(path)) != root:
        raise InvalidAddress(f"mailbox of {address} would be outside the mail root")
    return path


def _count_maildir(path: str) -> int:
    count = 0
    for subdir in ("new", "cur"):
        try:
            with os.scandir(os.path.join(path, subdir)) as entries:
                count += sum(1 for entry in entries if not entry.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return count


def count_messages(mail_root: str, domain: str) -> int:
    """How many messages the continuity mailboxes of ``domain`` hold, in any folder.

    Used to refuse ``domain remove`` while mail is stored (CONTRACT section 3).
    """
    domain = normalise_domain(domain)
    _check_component(domain, "domain")
    domain_root = os.path.join(os.path.abspath(mail_root), domain)
    total = 0
    try:
        with os.scandir(domain_root) as entries:
            users = [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return 0
    for root in users:
        total += _count_maildir(root)
        with os.scandir(root) as entries:
            folders = [
                entry.path
                for entry in entries
                if entry.name.startswith(".")
                and not entry.name.startswith(STAGING_PREFIX)
                and entry.is_dir(follow_symlinks=False)
            ]
        total += sum(_count_maildir(folder) for folder in folders)
    return total


@contextmanager
def _on_disk(action: str) -> Iterator[None]:
    """Report an ``OSError`` as a (temporary) :class:`MailstoreError` naming ``action``."""
    try:
        yield
    except MailstoreError:
        raise
    except OSError as exc:
        raise storage_error(exc, action) from exc


class MaildirStore:
    """All continuity mailboxes under ``mail_root`` (``data_dir/mail``).

    :param hostname: for unique Maildir names; default ``socket.gethostname()``,
        read when the store is built (never at import).
    :param clock: time for names and UIDVALIDITY values.
    :param special_use: top-level default folders and their RFC 6154 attributes.
    :param names: the source of unique Maildir names (built from ``hostname`` and
        ``clock`` when not given).
    """

    log = Logger()

    def __init__(
        self,
        mail_root: str,
        *,
        hostname: str | None = None,
        clock: Callable[[], float] = time.time,
        special_use: Mapping[str, str] = DEFAULT_SPECIAL_USE,
        names: UniqueNames | None = None,
    ):
        self.mail_root = os.path.abspath(mail_root)
        if names is None:
            names = UniqueNames(hostname if hostname is not None else socket.gethostname(), clock)
        self._names = names
        self._uidvalidities = UidValidityClock(clock)
        self._special_use = dict(special_use)
        self._mailboxes: dict[Address, UserMailbox] = {}
        self._lock = threading.Lock()

    # -- mailboxes -----------------------------------------------------------------

    def user_root(self, address: Address) -> str:
        """The Maildir++ root of ``address`` (see :func:`user_root`)."""
        return user_root(self.mail_root, address)

    def mailbox(self, address: Address) -> UserMailbox:
        """The (cached) tree of ``address``, created or not."""
        with self._lock:
            mailbox = self._mailboxes.get(address)
            if mailbox is None:
                root = user_root(self.mail_root, address)
                mailbox = UserMailbox(root, address, self._names, self._uidvalidities, self._special_use)
                self._mailboxes[address] = mailbox
            return mailbox

    def ensure_mailbox(self, address: Address) -> None:
        """Create the mailbox of ``address`` with its default folders if missing."""
        with _on_disk(f"creating the mailbox of {address}"):
            self.mailbox(address).ensure()

    def _folder(self, address: Address, folder: FolderArg) -> MailFolder:
        mailbox = self.mailbox(address)
        mailbox.ensure()
        return mailbox.folder(FolderName.parse(folder))

    # -- delivery --------------------------------------------------------------------

    def deliver(
        self,
        address: Address,
        message: MessageBody,
        folder: FolderArg = "INBOX",
        flags: str | Iterable[str] = "",
        *,
        internal_date: float | None = None,
        assign_uid: bool = False,
        keywords: Iterable[str] = (),
    ) -> MessageRef:
        """Store a message durably in a folder of ``address``; on return it survives a crash.

        Written and fsync'ed in ``tmp/``, linked into ``new/`` (into ``cur/`` with
        ``:2,FLAGS`` when ``flags`` are given), the directory fsync'ed; no file is
        ever replaced.

        :param message: the bytes, or an iterable of byte chunks.
        :param internal_date: IMAP APPEND's date-time (Unix seconds); kept as mtime
            and in the uid list.
        :param assign_uid: give the message its UID now (APPENDUID, RFC 4315 3);
            implied by ``internal_date`` and ``keywords``. Without it the UID comes
            with the next listing.
        :param keywords: IMAP keywords to give the message (APPEND, RFC 3501 6.3.11);
            new ones are added to the folder's keyword list.
        :raises MailboxNotFound: for a folder that does not exist (APPEND: TRYCREATE).
        :raises InvalidKeyword: for a keyword that is no IMAP atom.
        :raises KeywordLimit: when a new keyword does not fit in the folder (nothing is stored).
        :raises MailstoreError: on disk trouble (452 4.3.1 when the disk is full).
        """
        name = FolderName.parse(folder)
        letters = normalise_flags(flags)
        names = check_keywords(keywords)
        chunks = [message] if isinstance(message, (bytes, bytearray, memoryview)) else message
        date = None if internal_date is None else int(internal_date)
        with _on_disk(f"delivering to {address} {name}"):
            return self._folder(address, name).deliver(chunks, letters, date, assign_uid, names)

    # -- listing and reading -------------------------------------------------------------

    def snapshot(self, address: Address, folder: FolderArg = "INBOX") -> FolderSnapshot:
        """UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and the messages of a folder, consistently."""
        with _on_disk(f"listing {address} {folder}"):
            return self._folder(address, folder).snapshot()

    def get_messages(self, address: Address, folder: FolderArg = "INBOX") -> tuple[MessageRef, ...]:
        """The messages of a folder in UID order."""
        return self.snapshot(address, folder).messages

    def inbox_messages(self, address: Address) -> tuple[MessageRef, ...]:
        """What is in INBOX (``new/`` and ``cur/``) now, whoever put it there; () without a mailbox.

        Recovery relays these, then removes each with :meth:`remove_message`.
        """
        with _on_disk(f"listing the INBOX of {address}"):
            mailbox = self.mailbox(address)
            if not mailbox.exists():
                return ()
            return mailbox.folder(INBOX_NAME).snapshot().messages

    def folder_status(self, address: Address, folder: FolderArg) -> FolderStatus:
        """MESSAGES, RECENT, UNSEEN, UIDNEXT, UIDVALIDITY, HIGHESTMODSEQ, SIZE of a folder."""
        with _on_disk(f"status of {address} {folder}"):
            return self._folder(address, folder).status()

    def uidvalidity(self, address: Address, folder: FolderArg) -> int:
        """The UIDVALIDITY of a folder without listing it again (APPENDUID after :meth:`deliver`)."""
        with _on_disk(f"reading the UIDVALIDITY of {address} {folder}"):
            return self._folder(address, folder).uidvalidity()

    def find_message(self, address: Address, base: str) -> MessageRef | None:
        """The message with base name ``base`` in any folder (INBOX first), or None.

        A move keeps the base name when it can, so recovery tells a message the
        user moved (``moved``) from one deleted (``deleted``).
        """
        with _on_disk(f"searching the mailbox of {address}"):
            mailbox = self.mailbox(address)
            if not mailbox.exists():
                return None
            for name in [INBOX_NAME, *mailbox.folder_names()]:
                folder = mailbox.folder(name)
                if folder.locate(base) is None:
                    continue
                for message in folder.snapshot().messages:
                    if message.base == base:
                        return message
            return None

    def open_message(self, ref: MessageRef) -> BinaryIO:
        """Open a listed message for reading (binary; the caller closes it).

        :raises MessageExpunged: when it was removed meanwhile.
        """
        with _on_disk(f"reading a message of {ref.address}"):
            return self.mailbox(ref.address).folder(ref.folder).open(ref)

    def read_message(self, ref: MessageRef) -> bytes:
        """The bytes of a listed message.

        :raises MessageExpunged: when it was removed meanwhile.
        """
        (data,) = self.read_messages([ref])
        if data is None:
            raise MessageExpunged(f"message {ref.uid or ref.base} of {ref.folder} was expunged")
        return data

    def read_messages(self, refs: Sequence[MessageRef]) -> list[bytes | None]:
        """The bytes of listed messages, in order; None for each one removed meanwhile.

        IMAP FETCH reads its messages in batches through this: three system
        calls a message (:func:`~continuity.mailstore.folder.read_listed`), and one
        rescan per folder for the messages renamed since they were listed.
        """
        if not refs:
            return []
        with _on_disk(f"reading messages of {refs[0].address}"):
            out, missing = read_listed(refs)
            if missing:
                by_folder: dict[tuple[Address, FolderName], list[int]] = {}
                for index in missing:
                    ref = refs[index]
                    by_folder.setdefault((ref.address, ref.folder), []).append(index)
                for (address, folder), indexes in by_folder.items():
                    self.mailbox(address).folder(folder).read_renamed(refs, indexes, out)
        return out

    # -- flags ---------------------------------------------------------------------------

    def _change_flags(
        self, address: Address, folder: FolderArg, uids: Iterable[int], change: FlagChange
    ) -> tuple[MessageRef, ...]:
        with _on_disk(f"changing flags in {address} {folder}"):
            return self._folder(address, folder).change_flags(uids, change)

    def set_flags(
        self, address: Address, folder: FolderArg, uids: Iterable[int], flags: FlagsArg, keywords: Iterable[str] = ()
    ) -> tuple[MessageRef, ...]:
        """Replace the flags and keywords of messages (IMAP ``STORE FLAGS``); return them as they are now.

        Letters nobody can name are kept: other tools' uppercase flags, and keyword
        letters without an entry in the folder's keyword list.

        :raises InvalidKeyword: for a keyword that is no IMAP atom.
        :raises KeywordLimit: when a new keyword does not fit in the folder (nothing is changed).
        """
        change = FlagChange("set", normalise_flags(flags), check_keywords(keywords))
        return self._change_flags(address, folder, uids, change)

    def add_flags(
        self, address: Address, folder: FolderArg, uids: Iterable[int], flags: FlagsArg, keywords: Iterable[str] = ()
    ) -> tuple[MessageRef, ...]:
        """Add flags and keywords to messages (IMAP ``STORE +FLAGS``); raises as :meth:`set_flags`."""
        change = FlagChange("add", normalise_flags(flags), check_keywords(keywords))
        return self._change_flags(address, folder, uids, change)

    def remove_flags(
        self, address: Address, folder: FolderArg, uids: Iterable[int], flags: FlagsArg, keywords: Iterable[str] = ()
    ) -> tuple[MessageRef, ...]:
        """Remove flags and keywords from messages (IMAP ``STORE -FLAGS``); an unknown keyword is no error."""
        change = FlagChange("remove", normalise_flags(flags), check_keywords(keywords))
        return self._change_flags(address, folder, uids, change)

    def claim_recent(self, address: Address, folder: FolderArg) -> tuple[int, ...]:
        """Move the folder's ``new/`` messages to ``cur/`` and return their UIDs.

        The session that does this is the one that reports them ``\\Recent`` (RFC 3501 2.3.2).
        """
        with _on_disk(f"claiming recent messages of {address} {folder}"):
            return self._folder(address, folder).claim_recent()

    # -- removing, copying, moving ---------------------------------------------------------

    def expunge(self, address: Address, folder: FolderArg, uids: Iterable[int]) -> tuple[int, ...]:
        """Remove messages durably; return the UIDs that existed (for EXPUNGE/VANISHED)."""
        with _on_disk(f"expunging in {address} {folder}"):
            return self._folder(address, folder).expunge(uids)

    def remove_message(self, ref: MessageRef) -> bool:
        """Remove exactly the message ``ref`` names (by base name, not UID); False if it is gone."""
        with _on_disk(f"removing a message of {ref.address}"):
            return self.mailbox(ref.address).folder(ref.folder).remove(ref.base)

    def remove_messages(self, refs: Iterable[MessageRef]) -> set[str]:
        """Remove the messages ``refs`` name, one transaction per folder; return the base names removed.

        Recovery removes thousands of redelivered messages: one uid list write per
        folder, not one per message.
        """
        by_folder: dict[tuple[Address, FolderName], list[str]] = {}
        for ref in refs:
            by_folder.setdefault((ref.address, ref.folder), []).append(ref.base)
        removed: set[str] = set()
        for (address, folder), bases in by_folder.items():
            with _on_disk(f"removing messages of {address}"):
                removed |= self.mailbox(address).folder(folder).remove_many(bases)
        return removed

    def copy(self, address: Address, source: FolderArg, uids: Iterable[int], destination: FolderArg) -> CopyResult:
        """Copy messages to another folder (IMAP COPY, RFC 3501 6.4.7) keeping flags, keywords and dates.

        :raises KeywordLimit: when their keywords do not fit in the destination (nothing is copied).
        """
        return self._transfer(address, source, uids, destination, remove=False)

    def move(self, address: Address, source: FolderArg, uids: Iterable[int], destination: FolderArg) -> CopyResult:
        """Move messages to another folder (IMAP MOVE, RFC 6851): link there, then unlink here.

        The copies are durable before any original is removed: a crash in between
        leaves a duplicate, never a loss. Keywords go along as :meth:`copy` takes them.
        """
        return self._transfer(address, source, uids, destination, remove=True)

    def _transfer(
        self, address: Address, source: FolderArg, uids: Iterable[int], destination: FolderArg, remove: bool
    ) -> CopyResult:
        with _on_disk(f"{'moving' if remove else 'copying'} messages of {address}"):
            src = self._folder(address, source)
            dst = self._folder(address, destination)
            with ExitStack() as stack:
                # Two folder locks are always taken in path order, so two opposite moves cannot deadlock.
                txns: dict[str, FolderTransaction] = {}
                for folder in sorted({src.path: src, dst.path: dst}.values(), key=lambda item: item.path):
                    txns[folder.path] = stack.enter_context(folder.transaction())
                src_txn, dst_txn = txns[src.path], txns[dst.path]
                found = (src_txn.uidlist.get(uid) for uid in sorted(set(uids)))
                entries = [entry for entry in found if entry is not None]
                dst_txn.adopt_keywords(src_txn, entries)
                mapping = []
                for entry in entries:
                    copied = dst_txn.link_from(src_txn, entry)
                    if copied is not None:
                        mapping.append((entry.uid, copied.uid))
                if remove:
                    dst_txn.flush()
                    for uid, _ in mapping:
                        entry = src_txn.uidlist.get(uid)
                        if entry is not None:
                            src_txn.unlink(entry)
                return CopyResult(dst_txn.uidlist.uidvalidity, tuple(mapping))

    # -- folders -----------------------------------------------------------------------------

    def list_folders(self, address: Address) -> tuple[FolderInfo, ...]:
        """Every folder name with its attributes (LIST), INBOX first."""
        with _on_disk(f"listing folders of {address}"):
            mailbox = self.mailbox(address)
            mailbox.ensure()
            return mailbox.list_folders()

    def create_folder(self, address: Address, folder: FolderArg) -> FolderName:
        """Create a folder (IMAP CREATE); return its validated name."""
        name = FolderName.parse(folder)
        with _on_disk(f"creating {address} {name}"):
            self.mailbox(address).create_folder(name)
        return name

    def delete_folder(self, address: Address, folder: FolderArg) -> None:
        """Delete a folder and its messages (IMAP DELETE); INBOX is refused."""
        name = FolderName.parse(folder)
        with _on_disk(f"deleting {address} {name}"):
            mailbox = self.mailbox(address)
            mailbox.ensure()
            mailbox.delete_folder(name)

    def rename_folder(self, address: Address, old: FolderArg, new: FolderArg) -> None:
        """Rename a folder with its sub-folders (IMAP RENAME).

        Renaming INBOX moves all its messages into a new folder ``new`` and leaves
        INBOX empty (RFC 3501 6.3.5).
        """
        old_name, new_name = FolderName.parse(old), FolderName.parse(new)
        with _on_disk(f"renaming {address} {old_name}"):
            mailbox = self.mailbox(address)
            mailbox.ensure()
            if not old_name.is_inbox:
                mailbox.rename_folder(old_name, new_name)
                return
            mailbox.create_folder(new_name)
            inbox = mailbox.folder(INBOX_NAME)
            self.move(address, INBOX_NAME, inbox.snapshot().uids, new_name)

    def subscribe(self, address: Address, folder: FolderArg) -> None:
        """Subscribe to a folder name (IMAP SUBSCRIBE); it need not exist."""
        name = FolderName.parse(folder)
        with _on_disk(f"subscribing {address} to {name}"):
            self.mailbox(address).subscribe(name)

    def unsubscribe(self, address: Address, folder: FolderArg) -> None:
        """Unsubscribe from a folder name (IMAP UNSUBSCRIBE)."""
        name = FolderName.parse(folder)
        with _on_disk(f"unsubscribing {address} from {name}"):
            self.mailbox(address).unsubscribe(name)

    def subscriptions(self, address: Address) -> tuple[FolderName, ...]:
        """The subscribed folder names (IMAP LSUB / LIST (SUBSCRIBED))."""
        with _on_disk(f"reading subscriptions of {address}"):
            mailbox = self.mailbox(address)
            mailbox.ensure()
            return tuple(mailbox.subscriptions())

    def count_messages(self, domain: str) -> int:
        """Messages stored for ``domain`` in any folder (see :func:`count_messages`)."""
        with _on_disk(f"counting messages of {domain}"):
            return count_messages(self.mail_root, domain)

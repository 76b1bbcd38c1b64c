"""A user's INBOX as one POP3 session sees it: numbered messages, deletion marks, the lock.

RFC 1939 4: after login the session locks the maildrop and works on the
messages as they were then, numbered from 1; ``DELE`` only marks a message,
``RSET`` unmarks all, and only ``QUIT`` (the UPDATE state) removes the marked
ones. Messages delivered meanwhile wait for the next session.

Like Dovecot (``pop3_uidl_format = %08Xu%08Xv``), a message's unique-id is
its IMAP UID and the folder's UIDVALIDITY in hex: stable across sessions and
restarts, as the mail store keeps both (RFC 1939 7: UIDL). Like Dovecot's
default, a message retrieved with ``RETR`` gets the Maildir ``S`` (seen) flag
at ``QUIT``, so IMAP clients show it read; ``TOP`` does not mark it, ``RSET``
forgets the marks, and a session that ends without ``QUIT`` changes nothing.

The methods named *blocking* touch the disk and run on the worker pool; the
others only change this object's state and run on the reactor.
"""

from __future__ import annotations

import collections
import re
import threading
from typing import BinaryIO

import attrs
from zope.interface import Interface

from continuity.envelope import Address, parse_address
from continuity.mailstore import INBOX_NAME, MaildirStore, MessageRef
from continuity.mailstore.sessionlock import SessionLock, lock_mailbox_session
from continuity.pop3.wire import survey

#: How many message sizes a :class:`SizeCache` remembers.
SIZE_CACHE_ENTRIES = 200_000
_VIRTUAL_SIZE = re.compile(r",W=([0-9]{1,15})(?:,|$)")


class IMaildrop(Interface):
    """The avatar a POP3 login asks the realm for: a :class:`Maildrop`, not yet opened."""


class MaildropInUse(Exception):
    """Another POP3 session holds the maildrop (RFC 2449 8.1.1 ``[IN-USE]``)."""


class NoSuchMessage(Exception):
    """A message number outside the maildrop."""


class MessageDeleted(Exception):
    """A message number marked deleted in this session (RFC 1939 5: may not be referred to)."""


class SizeCache:
    """The RFC 1939 sizes of message files, by Maildir base name (thread-safe, bounded).

    A Maildir message never changes its content under one base name, so a size
    measured once holds for as long as the message lives. Dovecot's ``,W=``
    field (the size with CRLF line ends) is used when a name carries it. A
    measured message also leaves whether it is plain (:func:`~continuity.pop3.wire.survey`),
    so that reading it ahead needs no encoding; one known by its ``,W=`` is not taken to be.
    """

    def __init__(self, entries: int = SIZE_CACHE_ENTRIES):
        self._entries = entries
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()  # size * 2 + plain
        self._lock = threading.Lock()

    def lookup(self, store: MaildirStore, ref: MessageRef) -> tuple[int, bool]:
        """The wire size of ``ref`` and whether it is plain (blocking: reads the file when it is not known)."""
        known = self._known(ref.base)
        if known is not None:
            return known
        with store.open_message(ref) as handle:
            size, plain = survey(handle)
        with self._lock:
            self._sizes[ref.base] = size * 2 + plain
            while len(self._sizes) > self._entries:
                self._sizes.popitem(last=False)
        return size, plain

    def _known(self, base: str) -> tuple[int, bool] | None:
        with self._lock:
            packed = self._sizes.get(base)
            if packed is not None:
                self._sizes.move_to_end(base)
                return packed >> 1, bool(packed & 1)
        size = _virtual_size(base)
        return None if size is None else (size, False)


def _virtual_size(base: str) -> int | None:
    """Dovecot's ``,W=<size>`` field of a base name (the size with CRLF line ends), or None."""
    match = _VIRTUAL_SIZE.search(base)
    return int(match.group(1)) if match else None


@attrs.frozen
class MaildropMessage:
    """One message of the session: its number, the store's reference, size and unique-id.

    ``plain``: the file is its own wire form (:func:`~continuity.pop3.wire.survey`).
    """

    number: int
    ref: MessageRef
    size: int
    uidl: str
    plain: bool = False


class Maildrop:
    """The INBOX of ``address`` for one POP3 session (see the module docstring)."""

    def __init__(self, store: MaildirStore, address: Address | str):
        self.store = store
        self.address = address if isinstance(address, Address) else parse_address(address)
        self.messages: tuple[MaildropMessage, ...] = ()
        self._lock: SessionLock | None = None
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()

    # -- blocking -----------------------------------------------------------

    def open(self, sizes: SizeCache) -> None:
        """Lock the maildrop and list INBOX (blocking).

        :raises MaildropInUse: when another session holds it.
        :raises MailstoreError: on disk trouble (the lock is not kept then).
        """
        lock = lock_mailbox_session(self.store, self.address, "pop3")
        if lock is None:
            raise MaildropInUse(str(self.address))
        try:
            snapshot = self.store.snapshot(self.address, INBOX_NAME)
            messages = []
            for number, ref in enumerate(snapshot.messages, start=1):
                uidl = f"{ref.uid:08X}{snapshot.uidvalidity:08X}"
                size, plain = sizes.lookup(self.store, ref)
                messages.append(MaildropMessage(number, ref, size, uidl, plain))
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        self.messages = tuple(messages)

    def open_message(self, message: MaildropMessage) -> BinaryIO:
        """Open a message's file for reading (blocking; the caller closes it).

        :raises MessageExpunged: when another tool removed it meanwhile.
        """
        return self.store.open_message(message.ref)

    def commit(self) -> int:
        """The UPDATE state (RFC 1939 6): remove the marked messages, flag the retrieved ones seen.

        Returns how many messages were removed. Blocking; the lock is kept (see :meth:`release`).

        :raises MailstoreError: when the store fails; nothing is promised then.
        """
        deleted = [message.ref.uid for message in self.messages if message.number in self._deleted]
        seen = [
            message.ref.uid
            for message in self.messages
            if message.number in self._retrieved and message.number not in self._deleted
            and not message.ref.has_flag("S")
        ]
        if seen:
            self.store.add_flags(self.address, INBOX_NAME, seen, "S")
        removed = self.store.expunge(self.address, INBOX_NAME, deleted) if deleted else ()
        return len(removed)

    def release(self) -> None:
        """Give the maildrop lock back (idempotent; also the avatar's ``logout``)."""
        lock, self._lock = self._lock, None
        if lock is not None:
            lock.release()

    logout = release

    # -- session state (reactor) ---------------------------------------------

    @property
    def locked(self) -> bool:
        return self._lock is not None

    def get(self, number: int) -> MaildropMessage:
        """The message numbered ``number``.

        :raises NoSuchMessage: outside ``1..len(messages)``.
        :raises MessageDeleted: marked deleted.
        """
        if not 1 <= number <= len(self.messages):
            raise NoSuchMessage(number)
        if number in self._deleted:
            raise MessageDeleted(number)
        return self.messages[number - 1]

    @property
    def deletions(self) -> int:
        """How many messages are marked deleted in this session."""
        return len(self._deleted)

    def is_deleted(self, number: int) -> bool:
        """Whether message ``number`` is marked deleted in this session."""
        return number in self._deleted

    def present(self) -> list[MaildropMessage]:
        """The messages not marked deleted, in order."""
        return [message for message in self.messages if message.number not in self._deleted]

    def stat(self) -> tuple[int, int]:
        """Count and total size of the messages not marked deleted (RFC 1939 5 STAT)."""
        present = self.present()
        return len(present), sum(message.size for message in present)

    def delete(self, number: int) -> None:
        """Mark a message deleted (``DELE``); raises like :meth:`get`."""
        self.get(number)
        self._deleted.add(number)

    def retrieved(self, number: int) -> None:
        """Note that ``RETR`` sent the message (it becomes seen at ``QUIT``)."""
        self._retrieved.add(number)

    def reset(self) -> None:
        """``RSET``: unmark every deleted message and forget what was retrieved (as Dovecot does)."""
        self._deleted.clear()
        self._retrieved.clear()

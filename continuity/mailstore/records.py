"""The immutable records the mail store hands out: messages, folder views, folder listings.

Callers (SMTP delivery, recovery, IMAP, POP3) only ever see these frozen
values; they hold no open files or locks.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from continuity.envelope import Address
from continuity.mailstore.names import FolderName


@attrs.frozen
class MessageRef:
    """A message as listed: where it is now and what IMAP, POP3 and recovery need to know.

    ``uid`` and ``modseq`` are None only for a fresh delivery that did not ask for
    a UID (it gets one at the next listing). ``path`` may go stale when another
    session renames the file; :meth:`MailFolder.open` then finds it again by ``base``.
    ``flags`` are the Maildir info letters; ``keywords`` the names the folder's
    ``dovecot-keywords`` gives its letters ``a``-``z`` (orphan letters give none).
    """

    address: Address
    folder: FolderName
    uid: int | None
    base: str
    path: str
    flags: str
    size: int
    internal_date: int
    modseq: int | None
    recent: bool
    keywords: tuple[str, ...] = ()

    def has_flag(self, letter: str) -> bool:
        return letter in self.flags


@attrs.frozen
class FolderSnapshot:
    """A consistent view of a folder: UIDVALIDITY, UIDNEXT and messages in UID order.

    ``keywords`` are the folder's defined keywords (RFC 3501 7.2.6 FLAGS);
    ``keywords_full`` says that all 26 keyword slots are named, so no new keyword
    fits (no ``\\*`` in PERMANENTFLAGS).
    """

    folder: FolderName
    uidvalidity: int
    uid_next: int
    highest_modseq: int
    messages: tuple[MessageRef, ...]
    keywords: tuple[str, ...] = ()
    keywords_full: bool = False
    _by_uid: Mapping[int, MessageRef] = attrs.field(init=False, repr=False, eq=False)
    #: Whether a message is still in ``new/``: known once, for every session that looks again.
    has_recent: bool = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_by_uid", {message.uid: message for message in self.messages})
        object.__setattr__(self, "has_recent", any(message.recent for message in self.messages))

    @property
    def uids(self) -> tuple[int, ...]:
        return tuple(message.uid for message in self.messages)  # type: ignore[misc]

    def get(self, uid: int) -> MessageRef | None:
        """The message with ``uid``, or None."""
        return self._by_uid.get(uid)


@attrs.frozen
class FolderStatus:
    """The numbers of IMAP STATUS (RFC 3501 6.3.10, RFC 7162 3.1.2, RFC 8438 SIZE)."""

    messages: int
    recent: int
    unseen: int
    uid_next: int
    uidvalidity: int
    highest_modseq: int
    size: int


@attrs.frozen
class FolderInfo:
    """One name of a user's folder tree, as LIST needs it (RFC 3501 6.3.8, RFC 6154, RFC 5258).

    ``exists`` is False for a parent that only exists because a sub-folder does
    (Maildir++ keeps no directory for it): IMAP shows it ``\\Noselect``.
    ``special_use`` is ``"\\Sent"``, ``"\\Drafts"``, ``"\\Trash"``, ``"\\Junk"`` or None.
    """

    name: FolderName
    exists: bool
    has_children: bool
    special_use: str | None
    subscribed: bool


@attrs.frozen
class CopyResult:
    """Where COPY or MOVE put the messages, for UIDPLUS ``COPYUID`` (RFC 4315 3).

    ``uidvalidity`` is the destination's; ``mapping`` pairs each source UID that
    still existed with its new UID in the destination, in ascending source order.
    """

    uidvalidity: int
    mapping: tuple[tuple[int, int], ...]

    @property
    def source_uids(self) -> tuple[int, ...]:
        return tuple(source for source, _ in self.mapping)

    @property
    def destination_uids(self) -> tuple[int, ...]:
        return tuple(destination for _, destination in self.mapping)

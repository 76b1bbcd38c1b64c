"""IMAP's view of a continuity mailbox: the avatar, flags, and the selected folder's session state.

The mail store (:mod:`continuity.mailstore`) knows UIDs, Maildir flags and
modseqs; this module adds what only an IMAP session has (RFC 3501 2.3.1.2):
message sequence numbers, the session's ``\\Recent`` set, the keywords it has
announced, and which changes made by other sessions or tools it has not
announced yet. :meth:`FolderView.update` turns a fresh
:class:`~continuity.mailstore.FolderSnapshot` into the untagged ``FLAGS``,
``EXPUNGE``, ``EXISTS``, ``RECENT`` and ``FETCH (FLAGS ...)`` responses
(RFC 3501 7.2.6, 7.3.1, 7.4.1, 7.4.2; RFC 7162 3.2 for ``MODSEQ``).
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable

import attrs
from zope.interface import Interface, implementer

from continuity.envelope import Address
from continuity.imap.parser import ParseError, SequenceSet
from continuity.mailstore import MAX_KEYWORDS, FolderName, FolderSnapshot, MessageRef, is_valid_keyword

#: Maildir info letters <-> IMAP system flags (RFC 3501 2.3.2), as Dovecot maps them.
LETTER_TO_FLAG = {"D": b"\\Draft", "F": b"\\Flagged", "R": b"\\Answered", "S": b"\\Seen", "T": b"\\Deleted"}
FLAG_TO_LETTER = {flag.decode().upper(): letter for letter, flag in LETTER_TO_FLAG.items()}
SYSTEM_FLAGS = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"


class IMAPAccount(Interface):
    """The avatar of an IMAP login: the user's continuity mailbox."""


@implementer(IMAPAccount)
@attrs.frozen
class Account:
    """A logged-in user's mailbox: the address the store knows it by."""

    address: Address

    def logout(self) -> None:
        """Nothing to release: sessions hold no locks between commands."""


def parse_flags(flags: Iterable[bytes]) -> tuple[str, tuple[str, ...]]:
    """IMAP flags as (Maildir letters of the system flags, keyword names); ``\\Recent`` is not stored.

    :raises ParseError: for an unknown system flag or a keyword that is no atom (RFC 3501 9).
    """
    letters = set()
    keywords: dict[str, str] = {}
    for flag in flags:
        text = flag.decode("latin-1")
        name = text.upper()
        if name.startswith("\\"):
            letter = FLAG_TO_LETTER.get(name)
            if letter is None and name != "\\RECENT":
                raise ParseError(f"unknown system flag {text[:40]}")
            if letter:
                letters.add(letter)
        elif is_valid_keyword(text):
            keywords.setdefault(text.lower(), text)  # RFC 3501 2.3.2: keywords are case-insensitive
        else:
            raise ParseError(f"invalid keyword {text[:40]!r}")
    return "".join(sorted(letters)), tuple(keywords.values())


def format_flags(letters: str, keywords: Iterable[str] = (), recent: bool = False) -> bytes:
    """``(\\Seen \\Flagged $Forwarded)`` for Maildir letters and keyword names."""
    names = [LETTER_TO_FLAG[letter] for letter in letters if letter in LETTER_TO_FLAG]
    names.extend(keyword.encode("ascii") for keyword in keywords)
    if recent:
        names.append(b"\\Recent")
    return b"(" + b" ".join(names) + b")"


@functools.lru_cache(maxsize=1024)
def _session_flags(letters: str, keywords: tuple[str, ...], recent: bool) -> bytes:
    """:func:`format_flags`, remembered: a folder's messages share a handful of flag sets,
    and FETCH FLAGS of 10,000 messages formats each of them."""
    return format_flags(letters, keywords, recent)


def flags_responses(keywords: Iterable[str], readonly: bool, full: bool) -> list[bytes]:
    """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` of a folder (RFC 3501 7.2.6, 7.1).

    ``\\*`` says new keywords may be created: not read-only, and room left in the folder.
    """
    defined = SYSTEM_FLAGS + b"".join(b" " + keyword.encode("ascii") for keyword in keywords)
    permanent = b"" if readonly else defined + (b"" if full else b" \\*")
    return [b"* FLAGS (" + defined + b")", b"* OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted"]


@attrs.define
class FolderView:
    """The selected folder as this session has announced it to its client.

    ``uids[seq - 1]`` is the UID of message ``seq``. Messages expunged on disk
    stay listed (``gone``) until an EXPUNGE response may be sent, so sequence
    numbers never change behind the client's back (RFC 3501 7.4.1).
    """

    name: FolderName
    readonly: bool
    uidvalidity: int
    uids: list[int]
    refs: dict[int, MessageRef]
    recent: set[int]
    uid_next: int
    highest_modseq: int
    snapshot: FolderSnapshot
    keywords: list[str]
    keywords_full: bool
    gone: set[int] = attrs.Factory(set)

    @classmethod
    def open(cls, snapshot: FolderSnapshot, readonly: bool, claimed: Iterable[int]) -> FolderView:
        refs = {message.uid: message for message in snapshot.messages}
        return cls(
            name=snapshot.folder,
            readonly=readonly,
            uidvalidity=snapshot.uidvalidity,
            uids=list(refs),
            refs=refs,
            recent=set(claimed) | {m.uid for m in snapshot.messages if m.recent},
            uid_next=snapshot.uid_next,
            highest_modseq=snapshot.highest_modseq,
            snapshot=snapshot,
            keywords=list(snapshot.keywords),
            keywords_full=snapshot.keywords_full,
        )

    @property
    def exists(self) -> int:
        return len(self.uids)

    def seq(self, uid: int) -> int:
        """The sequence number of ``uid`` (which must be listed)."""
        return bisect.bisect_left(self.uids, uid) + 1

    def unseen_first(self) -> int | None:
        """The sequence number of the first message without ``\\Seen`` (RFC 3501 6.3.1 UNSEEN)."""
        for index, uid in enumerate(self.uids):
            if "S" not in self.refs[uid].flags:
                return index + 1
        return None

    def flags(self, uid: int) -> bytes:
        ref = self.refs[uid]
        return _session_flags(ref.flags, ref.keywords, uid in self.recent)

    def flags_responses(self) -> list[bytes]:
        """``FLAGS`` and ``PERMANENTFLAGS`` as SELECT sends them, with the keywords known now."""
        return flags_responses(self.keywords, self.readonly, self.keywords_full)

    def learn_keywords(self, refs: Iterable[MessageRef]) -> list[bytes]:
        """Take in keywords ``refs`` carry; new ones are announced with ``FLAGS`` (RFC 3501 7.2.6)
        before any ``FETCH`` shows them."""
        known = {keyword.lower() for keyword in self.keywords}
        fresh: list[str] = []
        for ref in refs:
            for keyword in ref.keywords:
                if keyword.lower() not in known:
                    known.add(keyword.lower())
                    fresh.append(keyword)
        if not fresh:
            return []
        self.keywords.extend(fresh)
        self.keywords_full = self.keywords_full or len(self.keywords) >= MAX_KEYWORDS
        return self.flags_responses()

    def resolve(self, sequence: SequenceSet, by_uid: bool) -> list[tuple[int, int]]:
        """(seq, uid) of the messages a set names, ascending.

        :raises ParseError: for a sequence number beyond the folder (RFC 3501 6.4.5 says BAD).
        """
        seqs, uids = self.select(sequence, by_uid)
        return list(zip(seqs, uids))

    def select(self, sequence: SequenceSet, by_uid: bool) -> tuple[list[int], list[int]]:
        """The sequence numbers and the UIDs of the messages a set names, ascending, as two lists.

        No tuple per message: FETCH of 10,000 messages allocates nothing the cyclic
        garbage collector counts (each burst of such objects could set off a full pass).

        :raises ParseError: for a sequence number beyond the folder (RFC 3501 6.4.5 says BAD).
        """
        uids = self.uids
        spans: list[tuple[int, int]] = []  # [start, end) indexes into uids
        if by_uid:
            largest = uids[-1] if uids else 0
            for low, high in sequence.resolve(largest):
                spans.append((bisect.bisect_left(uids, low), bisect.bisect_right(uids, high)))
        else:
            if not uids:
                if any(low is not None for low, _ in sequence.ranges):
                    raise ParseError("no messages in this folder")
                return [], []
            for low, high in sequence.resolve(len(uids)):
                if high > len(uids):
                    raise ParseError(f"message {high} does not exist")
                spans.append((low - 1, high))
        # Overlapping spans merged, each taken as a slice: 1:* of 10,000 is one slice, not a set and a sort.
        seqs: list[int] = []
        chosen: list[int] = []
        taken = 0
        for start, end in sorted(spans):
            start = max(start, taken)
            if start < end:
                seqs.extend(range(start + 1, end + 1))
                chosen.extend(uids[start:end])
                taken = end
        return seqs, chosen

    def update(self, snapshot: FolderSnapshot, announce_expunges: bool, condstore: bool,
               claimed: Iterable[int] = ()) -> list[bytes]:
        """Take in the folder as it is now; return the untagged responses that tell the client."""
        self.recent.update(claimed)
        lines: list[bytes] = []
        if snapshot is not self.snapshot:
            known = {keyword.lower() for keyword in self.keywords}
            self.keywords_full = snapshot.keywords_full
            if any(keyword.lower() not in known for keyword in snapshot.keywords):
                self.keywords = list(snapshot.keywords)
                lines.extend(self.flags_responses())
            self._merge(snapshot, condstore, lines)
        if announce_expunges and self.gone:
            gone = self.gone
            for seq in sorted((self.seq(uid) for uid in gone), reverse=True):
                lines.append(b"* %d EXPUNGE" % seq)
            self.uids = [uid for uid in self.uids if uid not in gone]
            for uid in gone:
                self.refs.pop(uid, None)
                self.recent.discard(uid)
            self.gone = set()
        return lines

    def _merge(self, snapshot: FolderSnapshot, condstore: bool, lines: list[bytes]) -> None:
        refs = self.refs
        for uid in self.uids:
            if uid not in self.gone and snapshot.get(uid) is None:
                self.gone.add(uid)
        last = self.uids[-1] if self.uids else 0
        fresh = []
        for message in snapshot.messages:
            uid = message.uid
            known = refs.get(uid)
            if known is None:
                if uid > last:
                    fresh.append(message)
                continue
            refs[uid] = message
            if (known.flags != message.flags or known.keywords != message.keywords) and uid not in self.gone:
                modseq = b" MODSEQ (%d)" % message.modseq if condstore and message.modseq else b""
                lines.append(b"* %d FETCH (UID %d FLAGS %s%s)" % (self.seq(uid), uid, self.flags(uid), modseq))
        if fresh:
            for message in fresh:
                refs[message.uid] = message
                self.uids.append(message.uid)
                if message.recent and not self.readonly:
                    self.recent.add(message.uid)
            lines.append(b"* %d EXISTS" % len(self.uids))
            lines.append(b"* %d RECENT" % len(self.recent))
        self.uid_next = snapshot.uid_next
        self.highest_modseq = snapshot.highest_modseq
        self.snapshot = snapshot

    def note_flags(self, refs: Iterable[MessageRef]) -> None:
        """Record flags this session just stored (the next update then announces nothing for them)."""
        for ref in refs:
            if ref.uid in self.refs:
                self.refs[ref.uid] = ref

    def forget(self, uids: Iterable[int]) -> list[int]:
        """Drop messages this session expunged itself; return their sequence numbers, descending."""
        doomed = {uid for uid in uids if uid in self.refs}
        seqs = sorted((self.seq(uid) for uid in doomed), reverse=True)
        self.uids = [uid for uid in self.uids if uid not in doomed]
        for uid in doomed:
            del self.refs[uid]
            self.recent.discard(uid)
            self.gone.discard(uid)
        return seqs

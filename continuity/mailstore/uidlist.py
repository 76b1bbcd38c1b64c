"""Persistent IMAP UIDs of one folder: the ``continuity-uidlist`` file.

In the spirit of Dovecot's ``dovecot-uidlist`` (but its own name, so Dovecot
never misreads it). UTF-8 text, one header line then one line per message in
UID order::

    1 V1700000000 N43 M97
    41 M95 T1700000123 S2048 F :1700000123.M000123P77Q1Rdeadbeef.mx,S=2048
    42 M97 T1700000200 S512 FRS :1700000200.M004711P77Q2Rcafe0042.mx,S=512

Header: format version ``1``, ``V`` UIDVALIDITY, ``N`` the next UID to assign
(UIDNEXT), ``M`` HIGHESTMODSEQ. Message lines: the UID, ``M`` its modseq (RFC
7162, bumped on every flag change), ``T`` its internal date (Unix seconds),
``S`` its size in octets, ``F`` its Maildir flags as last seen (so a flag
change by another tool is noticed and gets a new modseq), and after `` :``
the file's base name (the name without ``:2,`` info) up to the end of line.
Unknown ``X...`` fields are ignored, so later versions can add some.

RFC 3501 2.3.1.1: UIDs strictly ascend and are never reused within one
UIDVALIDITY; when they cannot be kept (a lost or corrupt list) UIDVALIDITY must
grow, which :class:`UidValidityClock` guarantees within a process. The file is
replaced atomically (:func:`continuity.durable.write_file`) and only by a holder
of the folder's lock.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator

import attrs

from continuity.durable import write_file

UIDLIST_NAME = "continuity-uidlist"
LOCK_NAME = "continuity-uidlist.lock"
FORMAT_VERSION = "1"
MAX_UID = 2**32 - 1  # RFC 3501 9: nz-number is 32 bits


class UidListCorrupt(ValueError):
    """A uid list that cannot be parsed; ``uidvalidity`` is kept when the header was readable."""

    def __init__(self, message: str, uidvalidity: int | None = None):
        super().__init__(message)
        self.uidvalidity = uidvalidity


class UidValidityClock:
    """UIDVALIDITY values: the current Unix time, strictly increasing within the process.

    Two folders created in the same second (or a folder deleted and re-created)
    still get different values (RFC 3501 2.3.1.1).
    """

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def __call__(self, at_least: int = 0) -> int:
        with self._lock:
            value = max(int(self._clock()), self._last + 1, at_least, 1)
            self._last = value
            return value


@attrs.frozen
class UidEntry:
    """One message of the uid list."""

    uid: int
    base: str
    modseq: int
    date: int
    size: int
    flags: str


@attrs.define
class UidList:
    """The UIDs of one folder, loaded from and saved to its ``continuity-uidlist``.

    Mutable, held only while the folder's lock is held; :attr:`changed` says
    whether :meth:`save` has anything to write.
    """

    uidvalidity: int
    next_uid: int = 1
    highest_modseq: int = 1
    changed: bool = False
    _entries: dict[int, UidEntry] = attrs.field(factory=dict)
    _by_base: dict[str, int] = attrs.field(factory=dict)

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[UidEntry]:
        """Entries in ascending UID order."""
        return iter(self._entries.values())

    def get(self, uid: int) -> UidEntry | None:
        return self._entries.get(uid)

    def find(self, base: str) -> UidEntry | None:
        uid = self._by_base.get(base)
        return None if uid is None else self._entries[uid]

    def copy(self) -> UidList:
        return UidList(
            self.uidvalidity, self.next_uid, self.highest_modseq, self.changed, dict(self._entries), dict(self._by_base)
        )

    # -- changing ----------------------------------------------------------------

    def _bump(self) -> int:
        self.highest_modseq += 1
        self.changed = True
        return self.highest_modseq

    def assign(self, base: str, date: int, size: int, flags: str) -> UidEntry:
        """Give ``base`` the next UID (it must not have one yet)."""
        if base in self._by_base:
            raise ValueError(f"{base!r} already has UID {self._by_base[base]}")
        if self.next_uid > MAX_UID:
            raise OverflowError("UID space of this UIDVALIDITY is exhausted")
        entry = UidEntry(self.next_uid, base, self._bump(), date, size, flags)
        self._entries[entry.uid] = entry
        self._by_base[base] = entry.uid
        self.next_uid += 1
        return entry

    def set_flags(self, uid: int, flags: str) -> UidEntry:
        """Record new flags for ``uid``, with a new modseq when they differ (RFC 7162 3.1.1)."""
        entry = self._entries[uid]
        if entry.flags == flags:
            return entry
        entry = attrs.evolve(entry, flags=flags, modseq=self._bump())
        self._entries[uid] = entry
        return entry

    def drop(self, uid: int) -> UidEntry | None:
        """Forget an expunged message; HIGHESTMODSEQ grows (RFC 7162 3.2.10)."""
        entry = self._entries.pop(uid, None)
        if entry is not None:
            del self._by_base[entry.base]
            self._bump()
        return entry

    # -- the file ------------------------------------------------------------------

    def serialise(self) -> bytes:
        lines = [f"{FORMAT_VERSION} V{self.uidvalidity} N{self.next_uid} M{self.highest_modseq}"]
        for entry in self._entries.values():
            lines.append(f"{entry.uid} M{entry.modseq} T{entry.date} S{entry.size} F{entry.flags} :{entry.base}")
        return ("\n".join(lines) + "\n").encode("utf-8")

    @classmethod
    def parse(cls, data: bytes) -> UidList:
        """Parse a uid list file.

        :raises UidListCorrupt: when anything is malformed (with the UIDVALIDITY if
            the header could be read, so a replacement can choose a greater one).
        """
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UidListCorrupt("not UTF-8") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise UidListCorrupt("empty file")
        header = _fields(lines[0].split(" "), "header")
        version = lines[0].split(" ", 1)[0]
        uidvalidity = header.get("V")
        if version != FORMAT_VERSION or uidvalidity is None or "N" not in header or "M" not in header:
            raise UidListCorrupt(f"bad header {lines[0]!r}", uidvalidity)
        uidlist = cls(uidvalidity, header["N"], header["M"])
        previous = 0
        for line in lines[1:]:
            head, sep, base = line.partition(" :")
            tokens = head.split(" ")
            try:
                uid = int(tokens[0])
                fields = _fields(tokens, "message")
                flags = next((token[1:] for token in tokens[1:] if token.startswith("F")), "")
                entry = UidEntry(uid, base, fields["M"], fields["T"], fields["S"], flags)
            except (ValueError, KeyError):
                raise UidListCorrupt(f"bad line {line!r}", uidvalidity) from None
            if not sep or not base or uid <= previous or uid >= uidlist.next_uid or base in uidlist._by_base:
                raise UidListCorrupt(f"bad line {line!r}", uidvalidity)
            uidlist._entries[uid] = entry
            uidlist._by_base[base] = uid
            uidlist.highest_modseq = max(uidlist.highest_modseq, entry.modseq)
            previous = uid
        return uidlist

    @classmethod
    def load(cls, path: str) -> UidList | None:
        """The uid list at ``path``, or None when there is none yet."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return cls.parse(data)

    def save(self, path: str) -> None:
        """Replace the file at ``path`` durably and atomically (write, fsync, rename, fsync dir)."""
        tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        write_file(path, [self.serialise()], tmp_path=tmp, overwrite=True)
        self.changed = False


def _fields(tokens: list[str], what: str) -> dict[str, int]:
    """The numeric ``<letter><digits>`` fields among ``tokens[1:]`` (``F`` and unknown ones skipped)."""
    fields: dict[str, int] = {}
    for token in tokens[1:]:
        if not token:
            raise UidListCorrupt(f"empty field in {what}")
        key, value = token[0], token[1:]
        if key in "VNMTS":
            if not value.isdigit():
                raise UidListCorrupt(f"bad {key} field in {what}: {token!r}")
            fields[key] = int(value)
    return fields

"""IMAP keywords of one folder: the ``dovecot-keywords`` file and the letters ``a``-``z``.

A Maildir info suffix has room for 26 keywords, the letters ``a``-``z``
(``BASE:2,Sa``); which keyword a letter means is kept per folder in a file
named and written as Dovecot does (``maildir-keywords.c``), so a tree served
by Dovecot and by us means the same thing. One line per keyword::

    0 $Forwarded
    1 $Junk
    3 $label1

The number is the slot (0 -> ``a`` ... 25 -> ``z``); slots may have holes and
are never renumbered. Lines without a space, with a slot outside 0..25 or with
an empty name are skipped. Names match case-insensitively (RFC 3501 2.3.2), the
stored spelling wins. A letter with no name in the file (the file lost, or
written by a tool that keeps no list) is an *orphan*: it stays on the message
but is not served, and its slot is not given to a new keyword while a message
still carries it, so it never turns into another keyword by accident.

The file is only extended, under the folder's lock, and replaced atomically
and durably (:func:`continuity.durable.write_file`); its mtime grows at each
write in whole seconds, because Dovecot rereads it only when ``st_mtime``
changes.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterable, Mapping

import attrs

from continuity.durable import write_file
from continuity.mailstore.errors import InvalidKeyword, KeywordLimit
from continuity.mailstore.filenames import KEYWORD_FLAGS

KEYWORDS_NAME = "dovecot-keywords"
MAX_KEYWORDS = len(KEYWORD_FLAGS)  # 26: the letters a-z
MAX_KEYWORD_LENGTH = 50  # Dovecot's mail_max_keyword_length; checked when a keyword is created
# RFC 3501 9: atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_SPECIALS = frozenset('(){ %*"\\]')


def is_valid_keyword(name: str) -> bool:
    """Whether ``name`` is a flag-keyword: an RFC 3501 atom (ASCII, no CTL, no atom-specials)."""
    return bool(name) and all(" " < char < "\x7f" and char not in _ATOM_SPECIALS for char in name)


def check_keywords(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` validated, duplicates (ignoring case) dropped, first spelling kept.

    :raises InvalidKeyword: for a name that is not an atom.
    """
    unique: dict[str, str] = {}
    for name in names:
        if not is_valid_keyword(name):
            raise InvalidKeyword(f"invalid keyword {name[:60]!r}: keywords are IMAP atoms (RFC 3501 9)")
        unique.setdefault(name.lower(), name)
    return tuple(unique.values())


@attrs.frozen
class KeywordList:
    """The 26 keyword slots of a folder; ``names[i]`` is the keyword of letter ``chr(ord('a') + i)``."""

    names: tuple[str | None, ...] = (None,) * MAX_KEYWORDS
    _slots: Mapping[str, int] = attrs.field(init=False, repr=False, eq=False)
    _served: tuple[str | None, ...] = attrs.field(init=False, repr=False, eq=False)
    _resolved: dict[str, tuple[str, ...]] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if len(self.names) != MAX_KEYWORDS:
            raise ValueError(f"a keyword list has {MAX_KEYWORDS} slots")
        slots: dict[str, int] = {}
        for slot, name in enumerate(self.names):
            if name is not None:
                slots.setdefault(name.lower(), slot)
        # A name another tool wrote that is no atom would break the FLAGS syntax: it holds its slot, unserved.
        served = tuple(name if name is not None and is_valid_keyword(name) else None for name in self.names)
        object.__setattr__(self, "_slots", slots)
        object.__setattr__(self, "_served", served)
        object.__setattr__(self, "_resolved", {})

    # -- reading ---------------------------------------------------------------------

    @property
    def defined(self) -> tuple[str, ...]:
        """The keywords that can be served, in slot order (for FLAGS and PERMANENTFLAGS)."""
        return tuple(name for name in self._served if name is not None)

    @property
    def full(self) -> bool:
        """Whether every slot has a name (no new keyword fits: no ``\\*`` in PERMANENTFLAGS)."""
        return None not in self.names

    def letter(self, name: str) -> str | None:
        """The letter of keyword ``name`` (any case), or None when it has none here."""
        slot = self._slots.get(name.lower())
        return None if slot is None else KEYWORD_FLAGS[slot]

    def names_of(self, flags: str) -> tuple[str, ...]:
        """The keywords the letters of ``flags`` stand for, in slot order; orphan letters give none."""
        resolved = self._resolved.get(flags)
        if resolved is None:
            names = []
            for letter in flags:
                if "a" <= letter <= "z":
                    name = self._served[ord(letter) - ord("a")]
                    if name is not None and name not in names:
                        names.append(name)
            resolved = tuple(names)
            if len(self._resolved) < 4096:  # a folder uses few combinations; bound it anyway
                self._resolved[flags] = resolved
        return resolved

    def named_letters(self) -> str:
        """The letters that have a name."""
        return "".join(KEYWORD_FLAGS[slot] for slot, name in enumerate(self.names) if name is not None)

    # -- extending -------------------------------------------------------------------------

    def extended(self, names: Iterable[str], taken: Iterable[str] = ()) -> KeywordList:
        """This list with each of ``names`` it lacks in the first free slot.

        :param taken: letters still on messages although they have no name (orphans):
            their slots are not reused.
        :raises InvalidKeyword: for a name that is no atom or longer than :data:`MAX_KEYWORD_LENGTH`.
        :raises KeywordLimit: when they do not all fit (then none is added).
        """
        missing = [name for name in check_keywords(names) if self.letter(name) is None]
        if not missing:
            return self
        for name in missing:
            if len(name) > MAX_KEYWORD_LENGTH:
                raise InvalidKeyword(f"keyword {name[:60]!r} is longer than {MAX_KEYWORD_LENGTH} characters")
        blocked = set(taken)
        free = [slot for slot, name in enumerate(self.names)
                if name is None and KEYWORD_FLAGS[slot] not in blocked]
        if len(free) < len(missing):
            raise KeywordLimit(f"no room for {len(missing)} more keyword(s) in this folder "
                               f"(at most {MAX_KEYWORDS} per folder)")
        slots = list(self.names)
        for slot, name in zip(free, missing):
            slots[slot] = name
        return KeywordList(tuple(slots))

    # -- the file ------------------------------------------------------------------------------

    def serialise(self) -> bytes:
        lines = "".join(f"{slot} {name}\n" for slot, name in enumerate(self.names) if name is not None)
        return lines.encode("utf-8", "surrogateescape")

    @classmethod
    def parse(cls, data: bytes) -> KeywordList:
        """Read a ``dovecot-keywords`` file; malformed lines are skipped as Dovecot skips them."""
        slots: list[str | None] = [None] * MAX_KEYWORDS
        for line in data.decode("utf-8", "surrogateescape").split("\n"):
            number, space, name = line.rstrip("\r").partition(" ")
            if not space or not name or not number.isdigit():
                continue
            slot = int(number)
            if slot < MAX_KEYWORDS:
                slots[slot] = name
        return cls(tuple(slots))

    @classmethod
    def load(cls, path: str) -> tuple[KeywordList, tuple[int, int, int] | None]:
        """The list at ``path`` (empty when there is no file) and the identity of what was read."""
        try:
            with open(path, "rb") as handle:
                info = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            return cls(), None
        return cls.parse(data), file_identity(info)

    def save(self, path: str, previous: tuple[int, int, int] | None) -> tuple[int, int, int]:
        """Replace the file at ``path`` durably and atomically; return the new file's identity.

        The new mtime is at least a whole second past the ``previous`` file's.
        """
        mtime = time.time()
        if previous is not None:
            mtime = max(mtime, previous[1] // 1_000_000_000 + 1)
        tmp = f"{path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        write_file(path, [self.serialise()], tmp_path=tmp, overwrite=True, mtime=mtime)
        return file_identity(os.stat(path))


def file_identity(info: os.stat_result) -> tuple[int, int, int]:
    """(inode, mtime in ns, size): changes whenever the file is replaced or rewritten."""
    return info.st_ino, info.st_mtime_ns, info.st_size

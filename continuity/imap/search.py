"""SEARCH (RFC 3501 6.4.4) and ``MODSEQ`` search (RFC 7162 3.1.5): keys compiled to a predicate.

:func:`compile_search` parses the keys (iteratively where they nest, with the
parser's depth bound) into a function of a :class:`Candidate`; keys that need
the message (headers, body, sent date) read it lazily, so a flag-only search
never opens a file. Matching is case-insensitive substring on RFC 2047-decoded
headers and on the raw body, like most servers.
"""

from __future__ import annotations

import datetime
import email.utils
from collections.abc import Callable, Sequence

import attrs

from continuity.imap.mime import Part
from continuity.imap.parser import Atom, ParseError, SequenceSet, astring, number, parse_date
from continuity.mailstore import MessageExpunged, MessageRef

Predicate = Callable[["Candidate"], bool]
_FLAG_KEYS = {
    "ANSWERED": ("R", True), "UNANSWERED": ("R", False),
    "DELETED": ("T", True), "UNDELETED": ("T", False),
    "DRAFT": ("D", True), "UNDRAFT": ("D", False),
    "FLAGGED": ("F", True), "UNFLAGGED": ("F", False),
    "SEEN": ("S", True), "UNSEEN": ("S", False),
}
_HEADER_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
CHARSETS = ("US-ASCII", "UTF-8")
MAX_KEY_DEPTH = 64  # NOT/OR chains and lists: bounded, so no recursion error


class BadCharset(ValueError):
    """``NO [BADCHARSET (US-ASCII UTF-8)]`` (RFC 3501 6.4.4)."""


@attrs.define
class Candidate:
    """One message as SEARCH sees it; the file is read at most once, when a key needs it."""

    seq: int
    uid: int
    ref: MessageRef
    recent: bool
    read: Callable[[MessageRef], bytes] | None
    largest_seq: int
    largest_uid: int
    _part: Part | None = None

    @property
    def part(self) -> Part:
        if self._part is None:
            assert self.read is not None
            self._part = Part.from_bytes(self.read(self.ref))
        return self._part


@attrs.frozen
class Search:
    """A compiled SEARCH program."""

    predicate: Predicate
    needs_file: bool
    wants_modseq: bool


def _contains(haystack: str, needle: str) -> bool:
    return needle.casefold() in haystack.casefold()


def _date_of(seconds: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).date()


def _sent_date(candidate: Candidate) -> datetime.date | None:
    value = candidate.part.get("date")
    if value is None:
        return None
    parsed = email.utils.parsedate_tz(value.decode("latin-1"))
    if parsed is None:
        return None
    try:
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except ValueError:
        return None


class _Compiler:
    def __init__(self, tokens: Sequence[object], charset: str):
        self.tokens = list(tokens)
        self.charset = charset
        self.needs_file = False
        self.wants_modseq = False
        self.depth = 0

    def text(self, token: object) -> str:
        return astring(token).decode("utf-8" if self.charset == "UTF-8" else "latin-1", "replace")

    def compile(self) -> Predicate:
        position = [0]
        predicates = []
        while position[0] < len(self.tokens):
            predicates.append(self.key(position))
        if not predicates:
            raise ParseError("SEARCH needs a key")
        return _all(predicates)

    def next(self, position: list[int]) -> object:
        if position[0] >= len(self.tokens):
            raise ParseError("missing SEARCH argument")
        token = self.tokens[position[0]]
        position[0] += 1
        return token

    def key(self, position: list[int]) -> Predicate:
        self.depth += 1
        if self.depth > MAX_KEY_DEPTH:
            raise ParseError("SEARCH keys nested too deeply")
        try:
            return self._key(position)
        finally:
            self.depth -= 1

    def _key(self, position: list[int]) -> Predicate:
        token = self.next(position)
        if isinstance(token, list):
            inner = _Compiler(token, self.charset)
            inner.depth = self.depth
            predicate = inner.compile()
            self.needs_file |= inner.needs_file
            self.wants_modseq |= inner.wants_modseq
            return predicate
        if not isinstance(token, Atom):
            raise ParseError("bad SEARCH key")
        name = token.upper()
        if name[:1].isdigit() or name[:1] == "*":
            sequence = SequenceSet.parse(token)
            return lambda c: sequence.contains(c.seq, c.largest_seq)
        if name == "ALL":
            return lambda c: True
        if name in _FLAG_KEYS:
            letter, wanted = _FLAG_KEYS[name]
            return lambda c: (letter in c.ref.flags) == wanted
        if name == "RECENT":
            return lambda c: c.recent
        if name == "NEW":
            return lambda c: c.recent and "S" not in c.ref.flags
        if name == "OLD":
            return lambda c: not c.recent
        if name in ("KEYWORD", "UNKEYWORD"):
            keyword = astring(self.next(position)).decode("latin-1").lower()  # RFC 3501 2.3.2: any case
            wanted = name == "KEYWORD"
            return lambda c: any(k.lower() == keyword for k in c.ref.keywords) == wanted
        if name in ("LARGER", "SMALLER"):
            size = number(self.next(position))
            return (lambda c: c.ref.size > size) if name == "LARGER" else (lambda c: c.ref.size < size)
        if name in ("BEFORE", "ON", "SINCE"):
            day = datetime.date(*parse_date(self.next(position)))
            return _compare_date(name, lambda c: _date_of(c.ref.internal_date), day)
        if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            day = datetime.date(*parse_date(self.next(position)))
            self.needs_file = True
            return _compare_date(name[4:], _sent_date, day)
        if name == "UID":
            sequence = SequenceSet.parse(self.next(position))
            return lambda c: sequence.contains(c.uid, c.largest_uid)
        if name == "NOT":
            inner = self.key(position)
            return lambda c: not inner(c)
        if name == "OR":
            left, right = self.key(position), self.key(position)
            return lambda c: left(c) or right(c)
        if name in _HEADER_KEYS:
            needle = self.text(self.next(position))
            self.needs_file = True
            field = name.lower()
            return lambda c: _contains(c.part.decoded_header(field), needle)
        if name == "HEADER":
            field = astring(self.next(position)).decode("latin-1").lower()
            needle = self.text(self.next(position))
            self.needs_file = True
            return lambda c: c.part.get(field) is not None and _contains(c.part.decoded_header(field), needle)
        if name == "BODY":
            needle = self.text(self.next(position))
            self.needs_file = True
            return lambda c: _contains(c.part.text(), needle)
        if name == "TEXT":
            needle = self.text(self.next(position))
            self.needs_file = True
            return lambda c: _contains(c.part.header.decode("latin-1"), needle) or _contains(c.part.text(), needle)
        if name == "MODSEQ":  # RFC 7162 3.1.5: MODSEQ [entry-name entry-type] mod-sequence-value
            value = self.next(position)
            if isinstance(value, bytes) and not isinstance(value, Atom):
                self.next(position)  # entry type (priv/shared/all): flags are not kept per entry
                value = self.next(position)
            modseq = number(value, bits=63)
            self.wants_modseq = True
            return lambda c: (c.ref.modseq or 0) >= modseq
        raise ParseError(f"unknown SEARCH key {name[:30]}")


def _all(predicates: list[Predicate]) -> Predicate:
    if len(predicates) == 1:
        return predicates[0]
    return lambda c: all(predicate(c) for predicate in predicates)


def _compare_date(how: str, date_of: Callable[[Candidate], datetime.date | None], day: datetime.date) -> Predicate:
    def check(candidate: Candidate) -> bool:
        value = date_of(candidate)
        if value is None:
            return False
        if how == "BEFORE":
            return value < day
        if how == "ON":
            return value == day
        return value >= day

    return check


def compile_search(tokens: Sequence[object]) -> Search:
    """Compile ``[CHARSET name] keys...``.

    :raises ParseError: for bad syntax (``BAD``).
    :raises BadCharset: for a charset other than US-ASCII and UTF-8.
    """
    tokens = list(tokens)
    charset = "US-ASCII"
    if tokens and isinstance(tokens[0], Atom) and tokens[0].upper() == "CHARSET":
        if len(tokens) < 2:
            raise ParseError("CHARSET needs a name")
        charset = astring(tokens[1]).decode("latin-1").upper()
        if charset not in CHARSETS:
            raise BadCharset(charset)
        tokens = tokens[2:]
    compiler = _Compiler(tokens, charset)
    predicate = compiler.compile()
    return Search(predicate, compiler.needs_file, compiler.wants_modseq)


def run_search(search: Search, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates that match (in the worker pool when the search reads files)."""
    matched = []
    for candidate in candidates:
        try:
            if search.predicate(candidate):
                matched.append(candidate)
        except MessageExpunged:
            continue
    return matched

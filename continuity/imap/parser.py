"""IMAP command syntax: tokens, strings, sequence sets, dates (RFC 3501 9, RFC 7888).

A command arrives as its lines and literals (the server collects them, with
the size checks that must happen before the ``+`` continuation); this module
turns them into tokens without recursion and with a bound on nesting, so
``((((...`` is a ``BAD``, never a crash. Tokens are:

- :class:`Atom`: a ``str`` (ASCII); an atom with ``[...]`` keeps the bracketed
  part whole (``BODY.PEEK[HEADER.FIELDS (FROM TO)]<0.100>``, RFC 3501 6.4.5)
- ``bytes``: a quoted string or a literal (RFC 3501 4.3)
- ``list``: a parenthesised list
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Sequence

MAX_DEPTH = 16  # parenthesis nesting accepted in one command (Dovecot's limit is similar)
MAX_TOKENS = 100_000  # bounds the work of one command line
LITERAL_AT_END = re.compile(rb"\{(\d{1,10})(\+?)\}\Z")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DATE = re.compile(r"\A(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
_DATE_TIME = re.compile(r"\A ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")
_ATOM_SPECIALS = b'(){ %*"\\]'


class ParseError(ValueError):
    """Malformed command syntax: answered ``BAD`` (RFC 3501 7.1.3)."""


class Atom(str):
    """An atom token (RFC 3501 9 ``atom``), as opposed to a quoted string."""


class Literal(bytes):
    """The octets of a literal, as the server collected them."""


def tokenize(pieces: Sequence[bytes]) -> list:
    """Tokens of one command: ``pieces`` alternate text (a line without CRLF, ending in
    ``{n}`` when a literal follows) and :class:`Literal` octets.

    :raises ParseError: for bad syntax, unbalanced or too deep parentheses.
    """
    root: list = []
    stack = [root]
    count = 0
    for piece in pieces:
        if isinstance(piece, Literal):
            stack[-1].append(bytes(piece))
            count += 1
            continue
        text = piece
        length = len(text)
        i = 0
        while i < length:
            char = text[i]
            if char == 0x20:
                i += 1
                continue
            count += 1
            if count > MAX_TOKENS:
                raise ParseError("too many arguments")
            if char == 0x28:  # (
                if len(stack) > MAX_DEPTH:
                    raise ParseError("too deeply nested parentheses")
                child: list = []
                stack[-1].append(child)
                stack.append(child)
                i += 1
            elif char == 0x29:  # )
                if len(stack) == 1:
                    raise ParseError("unbalanced ')'")
                stack.pop()
                i += 1
            elif char == 0x22:  # "
                value, i = _quoted(text, i + 1)
                stack[-1].append(value)
            elif char == 0x7B:  # {
                match = LITERAL_AT_END.match(text, i)
                if match is None:
                    raise ParseError("malformed literal")
                i = length  # the literal itself is the next piece
            else:
                atom, i = _atom(text, i)
                stack[-1].append(atom)
    if len(stack) != 1:
        raise ParseError("unbalanced '('")
    return root


def _quoted(text: bytes, i: int) -> tuple[bytes, int]:
    out = bytearray()
    length = len(text)
    while i < length:
        char = text[i]
        if char == 0x22:
            return bytes(out), i + 1
        if char == 0x5C:  # backslash: only \\ and \" (RFC 3501 9 quoted-specials)
            if i + 1 >= length or text[i + 1] not in b'"\\':
                raise ParseError("bad escape in quoted string")
            out.append(text[i + 1])
            i += 2
            continue
        out.append(char)
        i += 1
    raise ParseError("unterminated quoted string")


def _atom(text: bytes, i: int) -> tuple[Atom, int]:
    start = i
    length = len(text)
    while i < length:
        char = text[i]
        if char == 0x5B:  # [ ... ] may hold spaces and parentheses (fetch sections)
            end = text.find(b"]", i)
            if end < 0:
                raise ParseError("unbalanced '['")
            if text.count(b"(", i, end) > MAX_DEPTH:
                raise ParseError("too deeply nested parentheses")
            i = end + 1
            continue
        if char in b' ()"{' or char < 0x20 or char == 0x7F:
            break
        i += 1
    if i == start:
        raise ParseError(f"unexpected character {chr(text[i])!r}")
    return Atom(text[start:i].decode("latin-1")), i


def command_words(line: bytes) -> tuple[bytes, bytes]:
    """The tag and upper-cased command name of a command's first line (``b""`` when missing)."""
    parts = line.split(b" ", 2)
    tag = parts[0]
    name = parts[1].upper() if len(parts) > 1 else b""
    if name == b"UID" and len(parts) > 2:
        name = b"UID " + parts[2].split(b" ", 1)[0].upper()
    return tag, name


def valid_tag(tag: bytes) -> bool:
    """RFC 3501 9: a tag is one or more ASTRING-CHARs except ``+``."""
    return bool(tag) and not any(c in _ATOM_SPECIALS or c == 0x2B or c < 0x21 or c > 0x7E for c in tag if c != 0x5D)


# -- typed arguments -------------------------------------------------------


def astring(token: object) -> bytes:
    """An atom or string as bytes."""
    if isinstance(token, Atom):
        return token.encode("latin-1")
    if isinstance(token, bytes):
        return token
    raise ParseError("expected a string")


def atom(token: object) -> str:
    """An atom, upper-cased."""
    if not isinstance(token, Atom):
        raise ParseError("expected an atom")
    return token.upper()


def number(token: object, *, allow_zero: bool = True, bits: int = 32) -> int:
    """A ``number`` (RFC 3501 9; ``mod-sequence-value`` is 63 bits, RFC 7162)."""
    if not isinstance(token, Atom) or not token.isdigit() or not token.isascii() or len(token) > 20:
        raise ParseError("expected a number")
    value = int(token)
    if value >= 2**bits or (value == 0 and not allow_zero):
        raise ParseError("number out of range")
    return value


def take(args: list, count: int, what: str) -> list:
    """Exactly ``count`` arguments, else BAD."""
    if len(args) != count:
        raise ParseError(f"{what} takes {count} argument(s)")
    return args


# -- sequence sets (RFC 3501 9 sequence-set) -------------------------------


class SequenceSet:
    """A parsed sequence set; ``*`` stays open until :meth:`resolve` knows the largest number."""

    _RANGE = re.compile(r"\A(\d+|\*)(?::(\d+|\*))?\Z")

    def __init__(self, ranges: Sequence[tuple[int | None, int | None]], text: str):
        self.ranges = tuple(ranges)
        self.text = text

    @classmethod
    def parse(cls, token: object) -> SequenceSet:
        """Parse ``1:4,7,9:*``; ``$`` (SEARCHRES) is not supported.

        :raises ParseError: when malformed or a number is 0 or beyond 32 bits.
        """
        if not isinstance(token, Atom) or not token:
            raise ParseError("expected a sequence set")
        ranges: list[tuple[int | None, int | None]] = []
        for part in token.split(","):
            match = cls._RANGE.match(part)
            if match is None:
                raise ParseError(f"bad sequence set {token!r}")
            low = cls._value(match.group(1))
            high = low if match.group(2) is None else cls._value(match.group(2))
            ranges.append((low, high))
        return cls(ranges, str(token))

    @staticmethod
    def _value(text: str) -> int | None:
        if text == "*":
            return None
        value = int(text)
        if not 0 < value < 2**32:
            raise ParseError(f"bad message number {text}")
        return value

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Inclusive ranges with ``*`` as ``largest``, each ordered low to high."""
        out = []
        for low, high in self.ranges:
            low = largest if low is None else low
            high = largest if high is None else high
            out.append((min(low, high), max(low, high)))
        return out

    def contains(self, value: int, largest: int) -> bool:
        return any(low <= value <= high for low, high in self.resolve(largest))


def compress(numbers: Iterable[int]) -> str:
    """``1:3,5,7:8`` for sorted numbers (COPYUID, APPENDUID, SEARCH results of ESEARCH)."""
    out: list[str] = []
    start = previous = None
    for value in numbers:
        if start is None:
            start = previous = value
        elif value == previous + 1:
            previous = value
        else:
            out.append(str(start) if start == previous else f"{start}:{previous}")
            start = previous = value
    if start is not None:
        out.append(str(start) if start == previous else f"{start}:{previous}")
    return ",".join(out)


# -- dates (RFC 3501 9 date, date-time) --------------------------------------


def parse_date(token: object) -> tuple[int, int, int]:
    """``1-Feb-1994`` (atom or quoted) as (year, month, day)."""
    text = astring(token).decode("ascii", "replace")
    match = _DATE.match(text)
    if match is None or match.group(2).lower() not in _MONTHS:
        raise ParseError(f"bad date {text!r}")
    day, month, year = int(match.group(1)), _MONTHS.index(match.group(2).lower()) + 1, int(match.group(3))
    if not 1 <= day <= 31:
        raise ParseError(f"bad date {text!r}")
    return year, month, day


def parse_date_time(token: object) -> int:
    """``"17-Jul-1996 02:44:25 -0700"`` as Unix seconds (APPEND, RFC 3501 6.3.11)."""
    if not isinstance(token, bytes) or isinstance(token, Atom):
        raise ParseError("date-time must be a quoted string")
    text = token.decode("ascii", "replace")
    match = _DATE_TIME.match(text)
    if match is None or match.group(2).lower() not in _MONTHS:
        raise ParseError(f"bad date-time {text!r}")
    day, year = int(match.group(1)), int(match.group(3))
    month = _MONTHS.index(match.group(2).lower()) + 1
    hour, minute, second = int(match.group(4)), int(match.group(5)), int(match.group(6))
    if not (1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ParseError(f"bad date-time {text!r}")
    offset = (int(match.group(8)) * 60 + int(match.group(9))) * 60
    if match.group(7) == "-":
        offset = -offset
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset


def format_date_time(seconds: int) -> bytes:
    """INTERNALDATE as ``"17-Jul-1996 09:44:25 +0000"`` (UTC)."""
    parts = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        parts.tm_mday, _MONTHS[parts.tm_mon - 1].capitalize().encode(), parts.tm_year,
        parts.tm_hour, parts.tm_min, parts.tm_sec,
    )


# -- output ------------------------------------------------------------------------

_QUOTE_SAFE = re.compile(rb'\A[\x20\x21\x23-\x5b\x5d-\x7e]*\Z')


def nstring(value: bytes | None) -> bytes:
    """NIL, a quoted string, or a literal when the value holds octets a quoted string cannot."""
    if value is None:
        return b"NIL"
    if _QUOTE_SAFE.match(value):
        return b'"' + value + b'"'
    if b"\r" not in value and b"\n" not in value and b"\x00" not in value and value.isascii():
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def quote(value: str) -> bytes:
    """A quoted string of ASCII text (mailbox names are modified UTF-7, hence ASCII)."""
    return nstring(value.encode("utf-8"))

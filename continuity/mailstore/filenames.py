"""Maildir message file names: unique base names, the ``,S=`` size and the ``:2,`` flags.

A message file is named ``BASE`` in ``new/`` and ``BASE:2,FLAGS`` in ``cur/``
(https://cr.yp.to/proto/maildir.html). BASE is unique per folder and never
changes while the message lives; ours is
``<sec>.M<usec>P<pid>Q<counter>R<random>.<host>,S=<size>`` (the Maildir
recommendation plus Dovecot's ``,S=`` size field, so listing needs no stat).
FLAGS are the info letters in ASCII order: ``D`` draft, ``F`` flagged, ``P``
passed, ``R`` replied, ``S`` seen, ``T`` trashed, and keywords ``a``-``z``.
"""

from __future__ import annotations

import itertools
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable

import attrs

from continuity.mailstore.errors import InvalidFlags

INFO_SEPARATOR = ":"
INFO_PREFIX = "2,"  # Maildir info semantics version 2
SYSTEM_FLAGS = "DFPRST"
KEYWORD_FLAGS = "abcdefghijklmnopqrstuvwxyz"

# RFC 3501 2.3.2 system flags <-> Maildir info letters, as Dovecot and Courier map them.
IMAP_FLAGS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}

_TIME = re.compile(r"^(\d{1,12})\.")
_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/]")
# Maildir: "/" -> "\057" and ":" -> "\072" in the host part; "," too, so ",S=" stays unambiguous.
_HOST_ESCAPES = {"/": "\\057", ":": "\\072", ",": "\\054"}


def normalise_flags(flags: str | Iterable[str]) -> str:
    """Validate Maildir flag letters and return them unique, in ASCII order.

    :raises InvalidFlags: for anything but ``DFPRST`` and ``a``-``z``.
    """
    letters = set("".join(flags))
    unknown = letters.difference(SYSTEM_FLAGS, KEYWORD_FLAGS)
    if unknown:
        raise InvalidFlags(f"invalid Maildir flags {''.join(sorted(unknown))!r}: use DFPRST and keywords a-z")
    return "".join(sorted(letters))


def sorted_flags(flags: str) -> str:
    """Flags found on disk, unique and in ASCII order (unknown letters kept)."""
    return "".join(sorted(set(char for char in flags if char.isascii() and char.isalpha())))


def sanitise_hostname(hostname: str) -> str:
    """The host part of a Maildir name: ``/ : ,`` escaped, other odd characters dropped."""
    cleaned = "".join(_HOST_ESCAPES.get(char, char) for char in hostname if char.isprintable() and not char.isspace())
    return cleaned or "localhost"


@attrs.frozen
class MaildirFilename:
    """A message file name parsed into its unique BASE and its info FLAGS."""

    name: str
    base: str
    flags: str

    @classmethod
    def parse(cls, name: str) -> MaildirFilename | None:
        """Parse a directory entry of ``new/`` or ``cur/``; None when it is no message file.

        Hidden names (``.``-prefixed, e.g. temporary files of other tools) and names
        with control characters or ``/`` are ignored.
        """
        if not name or name.startswith(".") or _UNSAFE_NAME.search(name):
            return None
        base, sep, info = name.partition(INFO_SEPARATOR)
        if not base:
            return None
        flags = sorted_flags(info[len(INFO_PREFIX) :]) if sep and info.startswith(INFO_PREFIX) else ""
        return cls(name, base, flags)

    @property
    def size(self) -> int | None:
        """The ``,S=<size>`` field of the base, if any (Dovecot convention)."""
        return base_size(self.base)

    @property
    def time(self) -> int | None:
        """The delivery time at the start of the base, if it has one."""
        return base_time(self.base)


def base_size(base: str) -> int | None:
    """The ``,S=<size>`` field of a base name, or None."""
    for field in base.split(",")[1:]:
        if field.startswith("S=") and field[2:].isdigit():
            return int(field[2:])
    return None


def base_time(base: str) -> int | None:
    """The leading Unix time of a base name (``1700000000.M...``), or None."""
    match = _TIME.match(base)
    return int(match.group(1)) if match else None


def info_name(base: str, flags: str) -> str:
    """The name of a message in ``cur/``: ``BASE:2,FLAGS``."""
    return f"{base}{INFO_SEPARATOR}{INFO_PREFIX}{flags}"


def sized_base(base: str, size: int) -> str:
    """``base`` with the Dovecot-style ``,S=<size>`` field appended."""
    return f"{base},S={size}"


_pid: int | None = None  # this process's, read at the first name (not at import) and after a fork


def _forked() -> None:
    global _pid
    _pid = None


os.register_at_fork(after_in_child=_forked)


class UniqueNames:
    """Source of collision-proof Maildir base names for one process.

    Time with microseconds, pid, a per-process counter and random bits make a
    name unique across processes, hosts and quick successive deliveries. The
    pid is kept from the last fork (a system call less per delivery), so a
    forked process stays unique too; the random bits need not be secret, only
    unlikely to repeat (no ``getrandom`` call per name).
    """

    def __init__(self, hostname: str, clock: Callable[[], float] = time.time):
        self.hostname = sanitise_hostname(hostname)
        self._clock = clock
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def next_base(self) -> str:
        """A fresh base name (without ``,S=``, which is added once the size is known)."""
        now = self._clock()
        seconds = int(now)
        micros = min(int((now - seconds) * 1_000_000), 999_999)
        with self._lock:
            counter = next(self._counter)
        global _pid
        if _pid is None:
            _pid = os.getpid()
        return f"{seconds}.M{micros:06d}P{_pid}Q{counter}R{random.getrandbits(32):08x}.{self.hostname}"

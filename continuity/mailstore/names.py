"""Folder names: modified UTF-7 (RFC 3501 5.1.3) and the safe mapping to Maildir++ directories.

The store's API speaks Unicode folder names with ``/`` as the hierarchy
separator (``"Archive/2024"``, ``"Entwürfe"``), or a sequence of name parts
(``("Archive", "2024")``). ``INBOX`` (any case, RFC 3501 5.1) is the Maildir
root itself. On disk a folder is a Maildir++ directory under the user's root:
each part encoded in modified UTF-7, joined with ``.`` and prefixed with ``.``
(``.Archive.2024``, ``.Entw&APw-rfe``), the encoding Dovecot and Courier use.

Because ``.`` separates levels on disk, a part may not contain ``.``; because a
name must never leave the user's tree, a part may not be empty, contain ``/``,
``~``, control characters or the IMAP LIST wildcards ``*`` and ``%``. Every
:class:`FolderName` is validated when built, so an unsafe one cannot exist.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from collections.abc import Sequence

import attrs

from continuity.mailstore.errors import InvalidMailboxName

INBOX = "INBOX"
SEPARATOR = "/"  # hierarchy separator of the store API (and the one IMAP will present)
DISK_SEPARATOR = "."  # Maildir++ hierarchy separator on disk
MAX_DISK_NAME = 255  # NAME_MAX of common file systems, in bytes

_BASE64_CHARS = re.compile(r"[A-Za-z0-9+,]+")
_FORBIDDEN = {
    "/": "'/' inside a name part",
    "~": "'~' (home directory shorthand)",
    "*": "'*' (an IMAP LIST wildcard, RFC 3501 6.3.8)",
    "%": "'%' (an IMAP LIST wildcard, RFC 3501 6.3.8)",
}


# -- modified UTF-7 (RFC 3501 5.1.3) ------------------------------------------


def _is_printable_ascii(char: str) -> bool:
    return 0x20 <= ord(char) <= 0x7E


def encode_mutf7(text: str) -> str:
    """Encode Unicode ``text`` in modified UTF-7 (RFC 3501 5.1.3).

    Printable ASCII other than ``&`` stands for itself, ``&`` becomes ``&-``,
    runs of anything else are UTF-16BE in modified base64 (``,`` for ``/``, no
    padding) between ``&`` and ``-``.

    :raises InvalidMailboxName: for a lone surrogate, which UTF-16 cannot carry.
    """
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        try:
            raw = "".join(pending).encode("utf-16-be")
        except UnicodeEncodeError:
            raise InvalidMailboxName(f"invalid mailbox name {text!r}: lone surrogate") from None
        encoded = base64.b64encode(raw).rstrip(b"=").replace(b"/", b",").decode("ascii")
        out.append(f"&{encoded}-")
        pending.clear()

    for char in text:
        if _is_printable_ascii(char):
            flush()
            out.append("&-" if char == "&" else char)
        else:
            pending.append(char)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str:
    """Decode modified UTF-7 ``text`` (RFC 3501 5.1.3) into Unicode.

    Only the canonical form is accepted, so that a name has exactly one
    spelling: printable ASCII must not be base64-encoded, consecutive encoded
    runs must be one run, padding bits must be zero.

    :raises InvalidMailboxName: for anything that is not valid modified UTF-7.
    """
    if not isinstance(text, str):
        raise InvalidMailboxName("mailbox name must be text")
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char != "&":
            if not _is_printable_ascii(char):
                raise InvalidMailboxName(
                    f"invalid modified UTF-7 in {text!r}: {char!r} must be base64-encoded (RFC 3501 5.1.3)"
                )
            out.append(char)
            index += 1
            continue
        end = text.find("-", index + 1)
        if end < 0:
            raise InvalidMailboxName(f"invalid modified UTF-7 in {text!r}: '&' without a closing '-' (RFC 3501 5.1.3)")
        chunk = text[index + 1 : end]
        index = end + 1
        if not chunk:
            out.append("&")
            continue
        if not _BASE64_CHARS.fullmatch(chunk) or len(chunk) % 4 == 1:
            raise InvalidMailboxName(f"invalid modified UTF-7 in {text!r}: bad base64 run {chunk!r}")
        try:
            raw = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4), validate=True)
            if len(raw) % 2:
                raise ValueError("odd number of octets")
            out.append(raw.decode("utf-16-be"))
        except (binascii.Error, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise InvalidMailboxName(f"invalid modified UTF-7 in {text!r}: {exc}") from None
    decoded = "".join(out)
    if encode_mutf7(decoded) != text:
        raise InvalidMailboxName(f"invalid modified UTF-7 in {text!r}: not in canonical form (RFC 3501 5.1.3)")
    return decoded


def is_valid_mutf7(text: str) -> bool:
    """Whether ``text`` is canonical modified UTF-7 (RFC 3501 5.1.3)."""
    try:
        decode_mutf7(text)
    except InvalidMailboxName:
        return False
    return True


# -- folder names --------------------------------------------------------------


def _check_part(part: object, whole: object) -> None:
    """Refuse a name part that could leave the user's tree or confuse Maildir++."""
    if not isinstance(part, str):
        raise InvalidMailboxName(f"invalid mailbox name {whole!r}: parts must be text")
    if not part:
        raise InvalidMailboxName(f"invalid mailbox name {whole!r}: empty name part")
    if part in (".", ".."):
        raise InvalidMailboxName(f"invalid mailbox name {whole!r}: {part!r} is not a folder name")
    if part.startswith("."):
        raise InvalidMailboxName(f"invalid mailbox name {whole!r}: a name part must not start with '.'")
    if "." in part:
        raise InvalidMailboxName(
            f"invalid mailbox name {whole!r}: '.' separates Maildir++ levels on disk; use '/' for sub-folders"
        )
    for char in part:
        if char in _FORBIDDEN:
            raise InvalidMailboxName(f"invalid mailbox name {whole!r}: {_FORBIDDEN[char]} is not allowed")
        category = unicodedata.category(char)
        if category == "Cc":
            raise InvalidMailboxName(f"invalid mailbox name {whole!r}: control character {char!r}")
        if category == "Cs":
            raise InvalidMailboxName(f"invalid mailbox name {whole!r}: lone surrogate")


def _check_parts(instance: FolderName, attribute: attrs.Attribute, parts: tuple[str, ...]) -> None:
    for part in parts:
        _check_part(part, SEPARATOR.join(map(str, parts)))
    if parts and parts[0].upper() == INBOX:
        raise InvalidMailboxName(
            f"invalid mailbox name {SEPARATOR.join(parts)!r}: INBOX has no sub-folders in this store"
        )
    disk = DISK_SEPARATOR + DISK_SEPARATOR.join(encode_mutf7(part) for part in parts)
    if len(disk.encode("utf-8")) > MAX_DISK_NAME:
        raise InvalidMailboxName(f"invalid mailbox name {SEPARATOR.join(parts)!r}: name too long")


@attrs.frozen(order=True)
class FolderName:
    """A validated folder of a user's mailbox; ``parts == ()`` is INBOX.

    ``str(name)`` is the API spelling (``"Archive/2024"``, ``"INBOX"``);
    :attr:`disk_name` the Maildir++ directory under the user's root.
    """

    parts: tuple[str, ...] = attrs.field(converter=tuple, validator=_check_parts)

    @classmethod
    def parse(cls, name: str | Sequence[str] | FolderName, separator: str = SEPARATOR) -> FolderName:
        """Validate ``name``: text split on ``separator``, a sequence of parts, or a FolderName.

        :raises InvalidMailboxName: with a message saying which rule the name breaks.
        """
        if isinstance(name, FolderName):
            return name
        if isinstance(name, str):
            if not name:
                raise InvalidMailboxName("invalid mailbox name '': empty name")
            if name.startswith(separator):
                raise InvalidMailboxName(f"invalid mailbox name {name!r}: absolute paths are not folder names")
            parts: Sequence[str] = name.split(separator)
        elif isinstance(name, Sequence) and not isinstance(name, (bytes, bytearray)):
            parts = name
            if not parts:
                raise InvalidMailboxName("invalid mailbox name: no name parts")
        else:
            raise InvalidMailboxName(f"invalid mailbox name {name!r}: must be text or a sequence of parts")
        if len(parts) == 1 and isinstance(parts[0], str) and parts[0].upper() == INBOX:
            return cls(())
        return cls(tuple(parts))

    @classmethod
    def from_mutf7(cls, wire: str, separator: str = SEPARATOR) -> FolderName:
        """A name as IMAP sends it: modified UTF-7 (RFC 3501 5.1.3) with ``separator`` between levels."""
        return cls.parse(decode_mutf7(wire), separator)

    @classmethod
    def from_disk(cls, directory: str) -> FolderName:
        """The folder a Maildir++ directory name (``.A.B``) stands for.

        :raises InvalidMailboxName: when the directory is not a valid folder of ours
            (e.g. a name in raw UTF-8 written by another tool).
        """
        if not directory.startswith(DISK_SEPARATOR) or len(directory) < 2:
            raise InvalidMailboxName(f"{directory!r} is not a Maildir++ folder directory")
        return cls(tuple(decode_mutf7(part) for part in directory[1:].split(DISK_SEPARATOR)))

    @property
    def is_inbox(self) -> bool:
        return not self.parts

    @property
    def disk_name(self) -> str:
        """Directory under the user's root: ``""`` for INBOX, else ``.Part.Part`` in modified UTF-7."""
        if not self.parts:
            return ""
        return DISK_SEPARATOR + DISK_SEPARATOR.join(encode_mutf7(part) for part in self.parts)

    @property
    def parent(self) -> FolderName | None:
        """The folder one level up, or None for INBOX and top-level folders."""
        return FolderName(self.parts[:-1]) if len(self.parts) > 1 else None

    def is_within(self, other: FolderName) -> bool:
        """Whether this folder is ``other`` itself or one of its descendants."""
        return not other.is_inbox and self.parts[: len(other.parts)] == other.parts

    def rebase(self, old: FolderName, new: FolderName) -> FolderName:
        """This name with the leading ``old`` replaced by ``new`` (for RENAME of children)."""
        return FolderName(new.parts + self.parts[len(old.parts) :])

    def to_mutf7(self, separator: str = SEPARATOR) -> str:
        """The name as IMAP sends it (RFC 3501 5.1.3)."""
        return encode_mutf7(str(self).replace(SEPARATOR, separator))

    def __str__(self) -> str:
        return SEPARATOR.join(self.parts) if self.parts else INBOX


INBOX_NAME = FolderName(())

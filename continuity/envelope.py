"""Mail addresses: parsing, normalisation and validation (RFC 5321 4.1.2, RFC 6531).

Every address that reaches the store, a path on disk or a routing decision goes
through :func:`parse_address`. It accepts a dot-atom local part (UTF-8 allowed,
RFC 6531) at a domain that is normalised to lower-case IDNA A-labels, and refuses
what could smuggle a path or a relay: CR, LF, NUL, ``/``, ``..``, quoted local
parts, source routes and the ``%`` / ``!`` relay hacks.

Also a message's header section and its ``Message-ID`` (:func:`message_id_of`),
read by the intake, submission, DSNs and CS-SENT copies.
"""

from __future__ import annotations

import functools
import re

import attrs
import idna

from continuity.errors import InvalidAddress

# RFC 5322 3.2.3 atext, minus "/" (paths), "%" and "!" (relay hacks, CONTRACT 4).
_LOCAL_ATOM = re.compile(r"^[A-Za-z0-9#$&'*+\-=?^_`{|}~\u0080-\U0010ffff]+$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_FORBIDDEN = set("\r\n\x00/\\%!\"@ \t<>()[],;:")

MAX_LOCAL = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 253  # RFC 1035 2.3.4 (255 octets on the wire)


@attrs.frozen(order=True)
class Address:
    """A normalised mailbox address: ``local@domain``, both lower-case."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def normalise_domain(text: str) -> str:
    """Return ``text`` as a lower-case ASCII (IDNA A-label) domain or raise InvalidAddress."""
    if not isinstance(text, str) or not text:
        raise InvalidAddress("empty domain")
    return _normalise_domain(text)


# UTS 46 mapping costs tens of microseconds, and the same few hosted and
# upstream domains come by for every recipient and every directory row.
@functools.lru_cache(maxsize=4096)
def _normalise_domain(text: str) -> str:
    if any(c in text for c in "\r\n\x00/\\ \t[]@"):
        raise InvalidAddress(f"invalid domain {text!r}")
    text = text.rstrip(".") if text.endswith(".") and not text.endswith("..") else text
    try:
        ascii_domain = idna.encode(text.lower(), uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidAddress(f"invalid domain {text!r}: {exc}") from None
    if len(ascii_domain) > MAX_DOMAIN:
        raise InvalidAddress(f"domain too long: {text!r}")
    labels = ascii_domain.split(".")
    if len(labels) < 2:
        raise InvalidAddress(f"domain needs at least two labels: {text!r}")
    for label in labels:
        if not _LABEL.match(label):
            raise InvalidAddress(f"invalid domain label {label!r} in {text!r}")
    if labels[-1].isdigit():
        raise InvalidAddress(f"domain must not end in a numeric label: {text!r}")
    return ascii_domain


def normalise_local(text: str) -> str:
    """Return a validated, lower-cased local part or raise InvalidAddress."""
    if not text:
        raise InvalidAddress("empty local part")
    bad = _FORBIDDEN.intersection(text)
    if bad:
        shown = "".join(sorted(repr(c)[1:-1] for c in bad))
        raise InvalidAddress(f"local part contains forbidden characters ({shown}): {text!r}")
    if text.startswith(".") or text.endswith(".") or ".." in text:
        raise InvalidAddress(f"local part has a misplaced dot: {text!r}")
    for atom in text.split("."):
        if not _LOCAL_ATOM.match(atom):
            raise InvalidAddress(f"invalid local part {text!r}")
    if len(text.encode("utf-8")) > MAX_LOCAL:
        raise InvalidAddress(f"local part longer than {MAX_LOCAL} octets: {text!r}")
    return text.lower()


def parse_address(text: str) -> Address:
    """Parse ``local@domain`` (optionally in angle brackets) into a normalised Address.

    Refuses source routes (``@a,@b:x@c``, RFC 5321 4.1.2 / C), several ``@``,
    quoted local parts and the relay hacks of CONTRACT section 4.
    """
    if not isinstance(text, str):
        raise InvalidAddress("address must be text")
    stripped = text.strip()
    if stripped.startswith("<") and stripped.endswith(">"):
        stripped = stripped[1:-1]
    if not stripped:
        raise InvalidAddress("empty address")
    if stripped.startswith("@") or ":" in stripped:
        raise InvalidAddress(f"source routes are not accepted: {text!r}")
    if '"' in stripped:
        raise InvalidAddress(f"quoted local parts are not accepted: {text!r}")
    if stripped.count("@") != 1:
        raise InvalidAddress(f"address needs exactly one @: {text!r}")
    local, domain = stripped.split("@")
    return Address(normalise_local(local), normalise_domain(domain))


@attrs.frozen
class Envelope:
    """The SMTP envelope of one message (RFC 5321 2.3.1): from whom, to whom, how.

    ``sender`` is ``None`` for the null reverse-path ``<>`` of bounces (RFC 5321
    4.5.5). ``body`` is ``"7BIT"`` or ``"8BITMIME"`` when the client declared it
    (RFC 6152), ``smtputf8`` whether it asked for SMTPUTF8 (RFC 6531),
    ``declared_size`` its SIZE= (RFC 1870), ``mail_parameters`` every MAIL
    parameter as ``(KEYWORD, value or None)`` pairs.
    """

    sender: Address | None
    recipients: tuple[Address, ...] = attrs.field(converter=tuple)
    body: str | None = None
    smtputf8: bool = False
    declared_size: int | None = None
    mail_parameters: tuple[tuple[str, str | None], ...] = attrs.field(default=(), converter=tuple)


# -- message ids -------------------------------------------------------------------

HEADER_LIMIT = 65536
_MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(.*?)\r?$", re.IGNORECASE | re.MULTILINE)


def header_section(message: bytes, limit: int = HEADER_LIMIT) -> bytes:
    """The header section of ``message`` (up to the first empty line, at most ``limit`` bytes)."""
    head = message[:limit]
    for separator in (b"\r\n\r\n", b"\n\n"):
        end = head.find(separator)
        if end != -1:
            return head[:end + len(separator) // 2]
    return head


def message_id_of(message: bytes) -> str | None:
    match = _MESSAGE_ID.search(header_section(message))
    if not match:
        return None
    return match.group(1).strip().decode("utf-8", "replace")[:200] or None

"""Arguments of MAIL and RCPT: the path and the ESMTP parameters (RFC 5321 4.1.1.2-3, 4.1.2).

Only splitting happens here; whether an address is acceptable is
:func:`continuity.envelope.parse_address`'s decision (it refuses source
routes, ``%`` and ``!`` relay hacks, quoted local parts and several ``@``).
Like Postfix, a path without angle brackets is tolerated, because people type
``MAIL FROM: me@example.com`` into telnet.
"""

from __future__ import annotations

import re

import attrs

from continuity.smtp import codes

_PATH = r"\s*(?P<path><[^<>]*>|[^\s<>]+)(?P<parameters>(?:\s+\S+)*)\s*$"
_MAIL = re.compile(r"^FROM:" + _PATH, re.IGNORECASE)
_RCPT = re.compile(r"^TO:" + _PATH, re.IGNORECASE)
_KEYWORD = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")  # RFC 5321 4.1.2 esmtp-keyword
# RFC 5321 4.1.2 esmtp-value: no "=", no SP, no controls; RFC 6531 3.3 adds UTF-8.
_VALUE = re.compile(r"^[^\x00-\x20=\x7f]+$")


@attrs.frozen
class PathArgument:
    """A MAIL or RCPT argument: the path between the brackets and the parameters."""

    path: str
    bracketed: bool
    parameters: tuple[tuple[str, str | None], ...]

    @property
    def parameter_dict(self) -> dict[str, str | None]:
        return dict(self.parameters)


def parse_mail(rest: str) -> PathArgument | None:
    """Split ``FROM:<path> [parameters]``; ``None`` if it is not that shape."""
    return _split(_MAIL.match(rest))


def parse_rcpt(rest: str) -> PathArgument | None:
    """Split ``TO:<path> [parameters]``; ``None`` if it is not that shape."""
    return _split(_RCPT.match(rest))


def _split(match: re.Match[str] | None) -> PathArgument | None:
    if match is None:
        return None
    path = match.group("path")
    bracketed = path.startswith("<")
    if bracketed:
        path = path[1:-1]
    return PathArgument(path, bracketed, parse_parameters(match.group("parameters")))


def parse_parameters(text: str) -> tuple[tuple[str, str | None], ...]:
    """``KEY=value`` and ``KEY`` words as upper-case keys with their values.

    :raises codes.SMTPReply: ``501 5.5.4`` for a malformed or repeated parameter.
    """
    seen: dict[str, str | None] = {}
    for word in text.split():
        keyword, equals, value = word.partition("=")
        if not _KEYWORD.match(keyword) or (equals and not _VALUE.match(value)):
            raise codes.SMTPReply.from_reply(codes.BAD_PARAMETER_SYNTAX.format(parameter=word))
        keyword = keyword.upper()
        if keyword in seen:
            raise codes.SMTPReply.from_reply(codes.BAD_PARAMETER_SYNTAX.format(parameter=word))
        seen[keyword] = value if equals else None
    return tuple(seen.items())

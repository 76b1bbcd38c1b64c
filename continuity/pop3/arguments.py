"""Arguments of POP3 commands: message numbers, TOP's line count, SASL PLAIN responses; client errors as :class:`Refusal`.

RFC 1939 5 and 7: a message number is a positive decimal integer, TOP's
line count a non-negative one. RFC 5034 4: a SASL response is base64 (``=``
for an empty one); RFC 4616 2: a PLAIN message is
``authzid NUL authcid NUL passwd``. Anything else is a :class:`Refusal`,
which the server answers ``-ERR`` and counts towards ``max_errors``.
"""

from __future__ import annotations

import base64
import binascii
import re

from continuity.pop3 import replies

#: Message numbers and line counts are at most this many digits (more is never a message of ours).
_NUMBER = re.compile(r"[0-9]{1,10}")


class Refusal(Exception):
    """A client error: answered ``-ERR text`` and counted towards ``max_errors``."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def parse_number(argument: str) -> int:
    """A message number argument: digits only, at least 1 (RFC 1939 5).

    :raises Refusal: for ``0``, signs, non-digits and absurdly long numbers.
    """
    if not _NUMBER.fullmatch(argument) or int(argument) < 1:
        raise Refusal(replies.BAD_NUMBER.format(argument=replies.printable(argument, 40)))
    return int(argument)


def parse_line_count(argument: str) -> int:
    """TOP's number of body lines: digits only, 0 allowed (RFC 1939 7).

    :raises Refusal: for signs, non-digits and absurdly long numbers.
    """
    if not _NUMBER.fullmatch(argument):
        raise Refusal(replies.BAD_LINES.format(argument=replies.printable(argument, 40)))
    return int(argument)


def decode_plain(response: bytes) -> tuple[str, str]:
    """The (username, password) of a SASL PLAIN message ``authzid NUL authcid NUL passwd`` (RFC 4616 2).

    An authorisation identity other than empty or the user's own is refused:
    acting as another user is not offered.

    :raises Refusal: for a malformed message (``[AUTH]``, as a failed login).
    """
    fields = response.split(b"\x00")
    if len(fields) != 3 or not fields[1]:
        raise Refusal(replies.AUTH_FAILED)
    try:
        authzid, authcid, password = (field.decode("utf-8") for field in fields)
    except UnicodeDecodeError:
        raise Refusal(replies.AUTH_FAILED) from None
    if authzid and authzid != authcid:
        raise Refusal(replies.AUTH_FAILED)
    return authcid, password


def decode_base64(text: str) -> bytes:
    """A client's SASL response (RFC 5034 4): base64, ``=`` for an empty one."""
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise Refusal(replies.AUTH_BAD_BASE64) from None

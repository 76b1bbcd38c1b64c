"""Every reply the SMTP server sends, and the exceptions that carry one.

Replies are decided here and nowhere else: the basic code (RFC 5321 4.2),
the enhanced status code (RFC 3463, sent because ENHANCEDSTATUSCODES is
announced, RFC 2034) and a human text in Postfix's words, because mail
administrators test servers with telnet and know those texts. 4xx is
temporary, 5xx permanent (RFC 5321 4.2.1).

A policy refuses something by raising :class:`SMTPReply` (or one of its two
shorthands :class:`TemporaryFailure` and :class:`PermanentFailure`); the
server sends that reply as it is. A ``421`` reply also closes the connection
(RFC 5321 3.8).
"""

from __future__ import annotations

import functools
import re

import attrs

_ENHANCED = re.compile(r"^[245]\.[0-9]{1,3}\.[0-9]{1,3}$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
MAX_TEXT = 400  # keeps a reply line far below RFC 5321 4.5.3.1.5's 512 octets


def printable(text: object, limit: int = MAX_TEXT) -> str:
    """``text`` made safe to put in a reply or a log line: printable ASCII, bounded.

    Anything else (CR, LF, NUL, non-ASCII) is escaped, so that no text taken
    from a client or a policy can ever start a new reply line.
    """
    text = str(text)
    text = _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@attrs.frozen
class Reply:
    """One SMTP reply: ``code``, RFC 3463 ``enhanced`` code (or ``None``) and text."""

    code: int
    enhanced: str | None
    text: str

    def __attrs_post_init__(self) -> None:
        if not 200 <= self.code <= 599:
            raise ValueError(f"SMTP reply code out of range: {self.code}")
        if self.enhanced is not None:
            if not _ENHANCED.match(self.enhanced) or self.enhanced[0] != str(self.code)[0]:
                raise ValueError(f"enhanced status code {self.enhanced!r} does not fit {self.code}")

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def closes(self) -> bool:
        """``421``: the server closes the transmission channel after it (RFC 5321 3.8)."""
        return self.code == 421

    def lines(self) -> list[bytes]:
        """The reply on the wire: one line per text line, ``-`` on all but the last (RFC 5321 4.2.1)."""
        texts = self.text.split("\n") or [""]
        prefix = f"{self.enhanced} " if self.enhanced else ""
        out = []
        for index, text in enumerate(texts):
            separator = " " if index == len(texts) - 1 else "-"
            out.append(f"{self.code}{separator}{prefix}{printable(text)}".encode("ascii"))
        return out

    def wire(self) -> bytes:
        """:meth:`lines` as sent, each ended by CRLF (made once for the replies sent over and over)."""
        return _wire(self)

    def format(self, **values: object) -> Reply:
        """A copy whose text has ``{name}`` fields filled with printable ``values``."""
        return attrs.evolve(self, text=self.text.format(**{k: printable(v) for k, v in values.items()}))


@functools.lru_cache(maxsize=256)
def _wire(reply: Reply) -> bytes:
    return b"".join(line + b"\r\n" for line in reply.lines())


class SMTPReply(Exception):
    """Raised by a policy (or the server itself) to answer with ``code enhanced text``."""

    default_code = 550
    default_enhanced = "5.0.0"
    default_text = "Error: refused"

    def __init__(self, code: int | None = None, enhanced: str | None = None, text: str | None = None):
        self.reply = Reply(
            code if code is not None else self.default_code,
            enhanced if enhanced is not None else self.default_enhanced,
            text if text is not None else self.default_text,
        )
        super().__init__(f"{self.reply.code} {self.reply.enhanced} {self.reply.text}")

    @classmethod
    def from_reply(cls, reply: Reply) -> SMTPReply:
        """The exception that answers with ``reply``."""
        return SMTPReply(reply.code, reply.enhanced, reply.text)

    @property
    def code(self) -> int:
        return self.reply.code

    @property
    def enhanced(self) -> str | None:
        return self.reply.enhanced

    @property
    def text(self) -> str:
        return self.reply.text

    @property
    def temporary(self) -> bool:
        return self.reply.temporary


class TemporaryFailure(SMTPReply):
    """A 4xx refusal: the client should try again later (default ``451 4.3.0``)."""

    default_code = 451
    default_enhanced = "4.3.0"
    default_text = "Error: temporary failure, please try again later"

    def __init__(self, text: str | None = None, code: int | None = None, enhanced: str | None = None):
        super().__init__(code, enhanced, text)
        if not self.reply.temporary:
            raise ValueError(f"a temporary failure needs a 4xx code, not {self.reply.code}")


class PermanentFailure(SMTPReply):
    """A 5xx refusal: the client must not retry (default ``554 5.0.0``)."""

    default_code = 554
    default_enhanced = "5.0.0"
    default_text = "Error: transaction failed"

    def __init__(self, text: str | None = None, code: int | None = None, enhanced: str | None = None):
        super().__init__(code, enhanced, text)
        if not 500 <= self.reply.code < 600:
            raise ValueError(f"a permanent failure needs a 5xx code, not {self.reply.code}")


# -- Connection --------------------------------------------------------------
# The greeting and the EHLO reply carry no enhanced code (RFC 2034 3).
GREETING = Reply(220, None, "{hostname} ESMTP continuity")
CLOSING = Reply(221, "2.0.0", "Bye")
TIMEOUT = Reply(421, "4.4.2", "{hostname} Error: timeout exceeded")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "{hostname} Error: too many errors")
CONNECTION_REFUSED = Reply(421, "4.3.0", "{hostname} Error: service temporarily unavailable")
LINE_TOO_LONG_CLOSING = Reply(421, "4.7.0", "{hostname} Error: line too long, closing connection")
PIPELINE_OVERFLOW = Reply(421, "4.7.0", "{hostname} Error: too much pipelined input")

# -- Plain commands ----------------------------------------------------------
OK = Reply(250, "2.0.0", "Ok")
SENDER_OK = Reply(250, "2.1.0", "Ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Ok")
QUEUED = Reply(250, "2.0.0", "Ok: queued as {queue_id}")
START_DATA = Reply(354, None, "End data with <CR><LF>.<CR><LF>")
CANNOT_VRFY = Reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(
    214,
    "2.0.0",
    "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH\n"
    "See RFC 5321 for their syntax",
)

# -- Syntax and sequence (RFC 5321 4.2.4, 4.3.2) -------------------------------
BAD_SYNTAX = Reply(500, "5.5.2", "Error: bad syntax")
BAD_UTF8 = Reply(500, "5.5.2", "Error: bad UTF-8 syntax")
LINE_TOO_LONG = Reply(500, "5.5.2", "Error: line too long")
UNKNOWN_COMMAND = Reply(502, "5.5.2", "Error: command not recognized")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
SYNTAX_HELO = Reply(501, "5.5.4", "Syntax: {verb} hostname")
SYNTAX_MAIL = Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>")
SYNTAX_RCPT = Reply(501, "5.5.4", "Syntax: RCPT TO:<address>")
SYNTAX_NO_ARGUMENT = Reply(501, "5.5.4", "Syntax: {verb}")
SYNTAX_VRFY = Reply(501, "5.5.4", "Syntax: VRFY address")
SYNTAX_AUTH = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
NEED_HELO = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
NEED_RCPT = Reply(503, "5.5.1", "Error: need RCPT command")
NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")

# -- MAIL and RCPT parameters (RFC 5321 4.1.1.11, RFC 1870, RFC 6152, RFC 6531) --
BAD_PARAMETER_SYNTAX = Reply(501, "5.5.4", "Error: bad parameter syntax: {parameter}")
UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Error: unsupported parameter: {parameter}")
BAD_SIZE = Reply(501, "5.5.4", "Syntax: SIZE=<number of octets>")
BAD_BODY = Reply(501, "5.5.4", "Syntax: BODY=7BIT or BODY=8BITMIME")
SIZE_EXCEEDS_LIMIT = Reply(552, "5.3.4", "Error: message size exceeds fixed limit")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
# RFC 6531 3.7.4.1: a non-ASCII address without the SMTPUTF8 parameter.
NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Error: non-ASCII address needs the SMTPUTF8 parameter")
# Postfix answers "501 5.1.7 Bad sender address syntax" / "501 5.1.3 Bad recipient
# address syntax" for addresses it cannot parse. We answer a path we cannot even
# tokenise with 501 (SYNTAX_MAIL / SYNTAX_RCPT above), and an address that parses but
# is refused by continuity.envelope.parse_address (source route, "%", "!", quoted
# local part, several "@", bad domain) with 553, RFC 5321 4.2.2's "mailbox name not
# allowed": the command was well formed, the mailbox name is what we refuse.
BAD_SENDER_ADDRESS = Reply(553, "5.1.7", "<{address}>: Sender address rejected: {reason}")
BAD_RECIPIENT_ADDRESS = Reply(553, "5.1.3", "<{address}>: Recipient address rejected: {reason}")

# -- End of data -------------------------------------------------------------
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Error: message file too big")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Error: too many hops")
BARE_LF = Reply(550, "5.5.2", "Error: bare <LF> received")
BARE_CR = Reply(550, "5.5.2", "Error: bare <CR> received")
NUL_IN_DATA = Reply(550, "5.6.0", "Error: NUL character received")
DATA_LINE_TOO_LONG = Reply(554, "5.6.0", "Error: message has a line longer than 2048 octets")
INTERNAL_ERROR = Reply(451, "4.3.0", "Error: internal error, please try again later")

# -- STARTTLS (RFC 3207) -----------------------------------------------------
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
TLS_ALREADY_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
TLS_NOT_AVAILABLE = Reply(502, "5.5.1", "Error: command not implemented")

# -- AUTH (RFC 4954) ---------------------------------------------------------
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Error: authentication failed")
AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
AUTH_ALREADY_DONE = Reply(503, "5.5.1", "Error: already authenticated")
AUTH_NEEDS_ENCRYPTION = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ABORTED = Reply(501, "5.7.0", "Authentication aborted")
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Error: cannot decode response")
AUTH_TEMPORARY_FAILURE = Reply(454, "4.7.0", "Temporary authentication failure")
AUTH_CHALLENGE = Reply(334, None, "{challenge}")

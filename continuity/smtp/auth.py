"""SMTP AUTH (RFC 4954) with PLAIN (RFC 4616) and LOGIN, for the submission listeners.

The exchanges (:class:`PlainExchange`, :class:`LoginExchange`) are sans-I/O:
they take the client's decoded responses and answer with the next challenge
or, when complete, the :class:`Credentials`. :class:`AuthCommands` is the
server's AUTH command around them; checking the credentials is the policy's
business (:meth:`continuity.smtp.server.ISMTPPolicy.authenticate`). LOGIN is
not standardised (draft-murchison-sasl-login) but Outlook and many devices
speak only it; its prompts are the usual ``Username:`` and ``Password:``.

AUTH state is kept here rather than in twisted.cred challengers: the stock
ESMTP.state_AUTH answers 451 to any unexpected error and needs a portal.
Passwords are never logged; usernames are, escaped.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import attrs
from twisted.internet import defer
from twisted.python.failure import Failure

from continuity.smtp import codes
from continuity.smtp.pipeline import AUTH, COMMAND, TOO_LONG, _TooLong

MECHANISMS = ("PLAIN", "LOGIN")


@attrs.frozen
class Credentials:
    """What the client sent: ``username`` and ``password`` (never logged)."""

    mechanism: str
    username: str
    password: str = attrs.field(repr=False)


def decode_response(text: str) -> bytes:
    """Decode one client response (RFC 4954 4); ``=`` is an empty response.

    :raises codes.SMTPReply: ``501 5.5.2`` for anything that is not base64.
    """
    text = text.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise codes.SMTPReply.from_reply(codes.AUTH_BAD_BASE64) from None


def encode_challenge(challenge: bytes) -> str:
    return base64.b64encode(challenge).decode("ascii")


def _text(octets: bytes) -> str:
    """Credentials are UTF-8 (RFC 4616 2); anything else fails the login."""
    try:
        return octets.decode("utf-8")
    except UnicodeDecodeError:
        raise codes.SMTPReply.from_reply(codes.AUTH_FAILED) from None


class PlainExchange:
    """``AUTH PLAIN``: one response ``authzid NUL authcid NUL passwd`` (RFC 4616 2)."""

    mechanism = "PLAIN"

    def step(self, response: bytes | None) -> bytes | Credentials:
        """Answer ``None`` (no initial response) with an empty challenge, else decode."""
        if response is None:
            return b""
        parts = response.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            raise codes.SMTPReply.from_reply(codes.AUTH_FAILED)
        authzid, authcid, password = (_text(part) for part in parts)
        # Acting as another user (a different authorisation identity) is not offered.
        if authzid and authzid != authcid:
            raise codes.SMTPReply.from_reply(codes.AUTH_FAILED)
        return Credentials(self.mechanism, authcid, password)


class LoginExchange:
    """``AUTH LOGIN``: a username, then a password, each after its prompt."""

    mechanism = "LOGIN"

    def __init__(self) -> None:
        self._username: str | None = None

    def step(self, response: bytes | None) -> bytes | Credentials:
        if response is None:
            return b"Username:"
        if self._username is None:
            self._username = _text(response)
            if not self._username:
                raise codes.SMTPReply.from_reply(codes.AUTH_FAILED)
            return b"Password:"
        return Credentials(self.mechanism, self._username, _text(response))


def exchange_for(mechanism: str) -> PlainExchange | LoginExchange | None:
    """A new exchange for ``mechanism`` (case-insensitive), or ``None`` if unknown."""
    mechanism = mechanism.upper()
    if mechanism == "PLAIN":
        return PlainExchange()
    if mechanism == "LOGIN":
        return LoginExchange()
    return None


class AuthCommands:
    """The AUTH command of :class:`continuity.smtp.server.SMTPServer` (a mixin).

    The server provides ``policy``, ``session``, ``auth_enabled``,
    ``require_tls_for_auth``, ``_transaction``, ``_send``, ``_error`` and
    ``_reply_for``.
    """

    policy: Any
    session: Any
    log: Any
    auth_enabled: bool
    require_tls_for_auth: bool
    _exchange: PlainExchange | LoginExchange | None = None

    def do_AUTH(self, rest: str) -> object:
        if not self.auth_enabled:
            raise codes.SMTPReply.from_reply(codes.AUTH_NOT_ENABLED)
        if self.session.helo is None:
            raise codes.SMTPReply.from_reply(codes.NEED_HELO)
        if self.session.user is not None:
            raise codes.SMTPReply.from_reply(codes.AUTH_ALREADY_DONE)
        if self._transaction is not None:
            raise codes.SMTPReply.from_reply(codes.IN_TRANSACTION)  # RFC 4954 4
        if self.require_tls_for_auth and not self.session.tls:
            raise codes.SMTPReply.from_reply(codes.AUTH_NEEDS_ENCRYPTION)
        words = rest.split()
        if not 1 <= len(words) <= 2:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_AUTH)
        exchange = exchange_for(words[0])
        if exchange is None:
            raise codes.SMTPReply.from_reply(codes.AUTH_UNKNOWN_MECHANISM)
        initial = decode_response(words[1]) if len(words) == 2 else None
        self._exchange = exchange
        return self._auth_step(initial)

    def _auth_response(self, line: bytes | _TooLong) -> object:
        """A line sent in answer to a 334 challenge."""
        self.mode = COMMAND
        if line is TOO_LONG:
            self._exchange = None
            return self._error(codes.LINE_TOO_LONG)
        text = line.decode("ascii", "replace").strip()
        if text == "*":  # RFC 4954 4: the client cancels
            self._exchange = None
            self._send(codes.AUTH_ABORTED)
            return None
        try:
            response = decode_response(text)
        except codes.SMTPReply as refusal:
            self._exchange = None
            return self._error(refusal.reply)
        return self._auth_step(response)

    def _auth_step(self, response: bytes | None) -> object:
        exchange = self._exchange
        try:
            outcome = exchange.step(response)
        except codes.SMTPReply as refusal:
            self._exchange = None
            return self._auth_failed(refusal.reply, exchange.mechanism, "")
        if isinstance(outcome, bytes):
            self.mode = AUTH
            self._send(codes.AUTH_CHALLENGE.format(challenge=encode_challenge(outcome)))
            return None
        self._exchange = None
        checked = defer.maybeDeferred(
            self.policy.authenticate, self.session, outcome.mechanism, outcome.username, outcome.password
        )
        checked.addCallbacks(self._auth_checked, self._auth_error, callbackArgs=(outcome,), errbackArgs=(outcome,))
        return checked

    def _auth_checked(self, user: object, credentials: Credentials) -> None:
        if user is None:
            self._auth_failed(codes.AUTH_FAILED, credentials.mechanism, credentials.username)
            return
        self.session.user = user
        self.session.auth_mechanism = credentials.mechanism
        self.authenticated = True
        self.log.info(
            "{session_id} authenticated {username} ({mechanism})",
            session_id=self.session.session_id,
            username=codes.printable(credentials.username),
            mechanism=credentials.mechanism,
        )
        self._send(codes.AUTH_OK)

    def _auth_error(self, failure: Failure, credentials: Credentials) -> None:
        reply = self._reply_for(failure, "AUTH", codes.AUTH_TEMPORARY_FAILURE)
        self._auth_failed(reply, credentials.mechanism, credentials.username)

    def _auth_failed(self, reply: codes.Reply, mechanism: str, username: str) -> None:
        self.log.info(
            "{session_id} authentication failed for {username} ({mechanism}): {code}",
            session_id=self.session.session_id,
            username=codes.printable(username),
            mechanism=mechanism,
            code=reply.code,
        )
        if reply.temporary:
            self._send(reply)
        else:
            self._error(reply)

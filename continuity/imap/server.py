"""The IMAP server: Twisted's ``IMAP4Server`` hardened, over continuity mailboxes (RFC 3501).

``twisted.mail.imap4.IMAP4Server`` gives the line protocol, timeouts and the
state names; its argument parsing and commands are replaced, because the
stock ones recurse on nested parentheses, send ``+`` before knowing a literal's
size is acceptable, answer tracebacks, and render FETCH with a Deferred per
message. What this module does itself:

- reads a whole command first (lines and literals, RFC 3501 4.3, LITERAL+
  RFC 7888), refusing an oversized APPEND literal *before* the ``+``
  continuation (``NO [TOOBIG]``, RFC 7889 APPENDLIMIT), then tokenizes it with
  a nesting bound (:mod:`continuity.imap.parser`);
- runs one command at a time (later pipelined lines wait in the buffer);
- STARTTLS (RFC 3501 6.2.1) drops whatever was pipelined after it; LOGIN and
  AUTHENTICATE PLAIN (RFC 4616, SASL-IR RFC 4959) are refused before TLS with
  ``require_tls_for_auth`` (``LOGINDISABLED``, RFC 3501 7.2.1) on every listener;
- limits: connections per IP and per user+IP, idle timeouts (``[limits]
  idle_timeout`` before login, 30 minutes after, RFC 3501 5.4), ``max_errors``
  BADs; an unexpected error is logged with the session id and answered
  ``NO [SERVERBUG]``, never with its text.

The mailbox commands are in :mod:`continuity.imap.commands`.
"""

from __future__ import annotations

import base64
import binascii
import weakref
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail.imap4 import IMAP4Server
from twisted.python.failure import Failure

from continuity.config import LimitsConfig
from continuity.directory.cred import LoginFailed, LoginThrottled
from continuity.imap.commands import MailboxCommands, Refusal
from continuity.envelope import parse_address
from continuity.imap.idle import FolderWatcher
from continuity.imap.mailbox import Account, IMAPAccount
from continuity.imap.parser import (
    LITERAL_AT_END,
    Literal,
    ParseError,
    astring,
    command_words,
    tokenize,
    valid_tag,
)
from continuity.mailstore import InvalidFlags, InvalidMailboxName, MailboxExists, MailboxNotFound, MailstoreError
from continuity.mailstore import KeywordLimit, MailboxRefused, MessageExpunged
from continuity.counters import ConnectionCounter
from continuity.transport import new_session_id

POSTAUTH_TIMEOUT = 30 * 60  # RFC 3501 5.4: at least 30 minutes once logged in
MAX_LINE = 64 * 1024  # one line of a command
MAX_ARGUMENT_LITERAL = 64 * 1024  # a literal that is not an APPEND message
MAX_COMMAND = 256 * 1024  # all lines and small literals of one command
MAX_PENDING = 1 << 20  # octets a client may pipeline while a command runs
MAX_USER_IP_CONNECTIONS = 10  # like Dovecot's mail_max_userip_connections
ALWAYS = ("IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE", "NAMESPACE")
AFTER_LOGIN = ("UIDPLUS", "MOVE", "SPECIAL-USE", "CHILDREN", "UNSELECT", "CONDSTORE")

#: Mail store errors and the response code of their ``NO`` (RFC 5530).
_STORE_CODES: list[tuple[type[MailstoreError], bytes]] = [
    (InvalidMailboxName, b"[CANNOT]"),
    (MailboxNotFound, b"[NONEXISTENT]"),
    (MailboxExists, b"[ALREADYEXISTS]"),
    (MailboxRefused, b"[CANNOT]"),
    (MessageExpunged, b"[EXPUNGEISSUED]"),
    (KeywordLimit, b"[LIMIT]"),  # a 27th keyword in a folder (RFC 5530 3); nothing was changed
]


class IMAPServer(MailboxCommands, IMAP4Server):
    """One IMAP connection; built by :class:`IMAPServerFactory`."""

    log = Logger()
    MAX_LENGTH = MAX_LINE

    def __init__(self, factory: IMAPServerFactory):
        super().__init__(chal={}, contextFactory=factory.tls_context)
        self.factory = factory
        self.store = factory.store
        self.run = factory.run
        self.limits: LimitsConfig = factory.limits
        self.session_id = new_session_id()
        self.peer_ip = ""
        self.tls = False
        self.account = None
        self._address_key: tuple | None = None
        self._counted_ip = False
        self._lost = False
        self._errors = 0
        self._pieces: list[bytes] = []
        self._command_size = 0
        self._literal: list[bytes] | None = None
        self._literal_left = 0
        self._drain_left = 0
        self._after_drain: Callable[[], None] | None = None
        self._continuation: Callable[[bytes], None] | None = None
        self._init_mailbox_state()

    # -- connection -------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        self.peer_ip = str(getattr(peer, "host", peer))
        self.tls = self.factory.implicit_tls or ISSLTransport.providedBy(self.transport)
        self.startedTLS = self.tls
        self.canStartTLS = (self.ctx is not None and ITLSTransport.providedBy(self.transport) and not self.tls)
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:
                pass  # not a TCP socket
        self.log.info("{session_id} imap connect from {peer_ip}", session_id=self.session_id, peer_ip=self.peer_ip)
        if not self.factory.connections.acquire(self.peer_ip):
            self.log.warn("{session_id} too many connections from {peer_ip}", session_id=self.session_id,
                          peer_ip=self.peer_ip)
            self._send(b"* BYE [UNAVAILABLE] Too many connections from your IP address")
            self.transport.loseConnection()
            return
        self._counted_ip = True
        self.setTimeout(self.limits.idle_timeout)
        self._send(b"* OK [CAPABILITY " + self._capability_list() + b"] "
                   + self.factory.hostname.encode("ascii", "replace") + b" continuity IMAP4rev1 ready")

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self.setTimeout(None)
        self._close_mailbox()
        if self._counted_ip:
            self._counted_ip = False
            self.factory.connections.release(self.peer_ip)
        if self._address_key is not None:
            self.factory.user_connections.release(self._address_key)
            self._address_key = None
        if self.account is not None:
            self.account.logout()
        self.log.info("{session_id} imap disconnect from {peer_ip}", session_id=self.session_id,
                      peer_ip=self.peer_ip)

    def timeoutConnection(self) -> None:
        self.log.info("{session_id} imap idle timeout", session_id=self.session_id)
        self._send(b"* BYE Autologout; idle for too long")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._send(b"* BYE Line too long")
        self.transport.loseConnection()

    def _send(self, *lines: bytes) -> None:
        if not self._lost:
            self.transport.write(b"".join(line + b"\r\n" for line in lines))

    def _send_raw(self, data: bytes) -> None:
        if not self._lost and data:
            self.transport.write(data)

    # -- capabilities -----------------------------------------------------------------

    @property
    def _auth_allowed(self) -> bool:
        return self.tls or not self.factory.require_tls_for_auth

    def _capability_list(self) -> bytes:
        caps = list(ALWAYS)
        if self.state == "unauth":
            if self.canStartTLS:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self._auth_allowed else "LOGINDISABLED")
        else:
            caps += AFTER_LOGIN
            caps.append(f"APPENDLIMIT={self.limits.max_message_size}")
        return " ".join(caps).encode("ascii")

    # -- reading commands: lines and literals -------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.paused and len(self._buffer) + len(data) > MAX_PENDING:
            self._send(b"* BYE Too much pipelined data")
            self.transport.loseConnection()
            return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        self.resetTimeout()
        try:
            if self._continuation is not None:
                self._continuation(line)
            else:
                self._command_line(line)
        except Exception:  # noqa: BLE001 - never a traceback on the wire
            self.log.failure("{session_id} unexpected error reading a command", session_id=self.session_id)
            self._reset_command()
            self._send(b"* BAD [SERVERBUG] Internal error")

    def _reset_command(self) -> None:
        self._pieces = []
        self._command_size = 0
        self._literal = None

    def _command_line(self, line: bytes) -> None:
        self._pieces.append(line)
        self._command_size += len(line)
        tag, name = command_words(self._pieces[0])
        match = LITERAL_AT_END.search(line)
        if match is None:
            pieces = self._pieces
            self._reset_command()
            self._execute(tag, name, pieces)
            return
        size, synchronising = int(match.group(1)), not match.group(2)
        is_message = name == b"APPEND" and self._is_append_message()
        limit = self.limits.max_message_size if is_message else MAX_ARGUMENT_LITERAL
        if not valid_tag(tag):
            self._refuse_literal(size, synchronising, b"* BAD Invalid tag")
        elif size > limit or (not is_message and self._command_size + size > MAX_COMMAND):
            if is_message:
                reply = tag + b" NO [TOOBIG] Message too big (APPENDLIMIT=%d)" % self.limits.max_message_size
            else:
                reply = tag + b" BAD Literal too big"
            self.log.info("{session_id} refused a literal of {size} octets", session_id=self.session_id, size=size)
            self._refuse_literal(size, synchronising, reply)
        else:
            if not is_message:
                self._command_size += size
            if synchronising:
                self._send(b"+ Ready for literal data")
            self._literal = []
            self._literal_left = size
            self.setRawMode()
            if size == 0:
                self._literal_done(b"")

    def _is_append_message(self) -> bool:
        """Whether the literal that follows is APPEND's message, not its mailbox name:
        the mailbox is the third token, so a literal after it is the message."""
        try:
            return len(tokenize(self._pieces)) >= 3
        except ParseError:
            return False

    def _refuse_literal(self, size: int, synchronising: bool, reply: bytes) -> None:
        self._reset_command()
        self._count_error()
        if synchronising:
            self._send(reply)  # RFC 3501 7.5: no '+', so the client sends no literal
            return
        # RFC 7888 4: the octets of a non-synchronising literal come anyway; skip them.
        self._drain_left = size
        self._after_drain = lambda: self._send(reply)
        self.setRawMode()

    def rawDataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self._drain_left:
            used = min(len(data), self._drain_left)
            self._drain_left -= used
            if self._drain_left == 0:
                # The rest of that command line goes too; then the refusal is sent.
                after, self._after_drain = self._after_drain, None
                self._continuation = lambda line: self._end_drain(after)
                self.setLineMode(data[used:])
            return
        used = min(len(data), self._literal_left)
        assert self._literal is not None
        self._literal.append(data[:used])
        self._literal_left -= used
        if self._literal_left == 0:
            self._literal_done(data[used:])

    def _end_drain(self, after: Callable[[], None] | None) -> None:
        self._continuation = None
        if after is not None:
            after()

    def _literal_done(self, rest: bytes) -> None:
        assert self._literal is not None
        self._pieces.append(Literal(b"".join(self._literal)))
        self._literal = None
        self.setLineMode(rest)

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors >= self.limits.max_errors:
            self.log.info("{session_id} too many invalid commands", session_id=self.session_id)
            self._send(b"* BYE Too many invalid commands")
            self.transport.loseConnection()

    # -- running commands ----------------------------------------------------------------

    def _execute(self, tag: bytes, name: bytes, pieces: list[bytes]) -> None:
        if not pieces[0].strip():
            self._bad(b"*", b"Empty command")
            return
        if not valid_tag(tag):
            self._bad(b"*", b"Invalid tag")
            return
        if not name:
            self._bad(tag, b"Missing command")
            return
        self.pauseLineProcessing()
        d = defer.Deferred.fromCoroutine(self._run_command(tag, name, pieces))
        d.addErrback(self._unexpected, tag)
        d.addBoth(lambda _: self.resumeLineProcessing())

    def pauseLineProcessing(self) -> None:
        """Hold later pipelined lines in the buffer until this command is answered."""
        self.paused = True

    def resumeLineProcessing(self) -> None:
        if self._lost or not self.paused:
            return
        self.paused = False
        if self._buffer:
            self.dataReceived(b"")

    def _read_during_command(self) -> None:
        """Let lines in (AUTHENTICATE's response, IDLE's DONE) while the command still runs;
        :attr:`_continuation` takes them."""
        self.paused = False
        if self._buffer:
            self.dataReceived(b"")

    def _bad(self, tag: bytes, text: bytes) -> None:
        self._send(tag + b" BAD " + text)
        self._count_error()

    async def _run_command(self, tag: bytes, name: bytes, pieces: list[bytes]) -> None:
        try:
            tokens = tokenize(pieces)
            args = tokens[2:]
            command = name.decode("latin-1")
            by_uid = False
            if command.startswith("UID "):
                by_uid, command, args = True, command[4:], tokens[3:]
            handler = self._handler(command, by_uid)
            if handler is None:
                self._bad(tag, b"Unknown command or not allowed now")
                return
            await handler(tag, args, by_uid) if by_uid else await handler(tag, args)
        except ParseError as exc:
            self._bad(tag, b"Syntax error: " + str(exc).encode("ascii", "replace"))
        except Refusal as refusal:
            await self._sync_after(refusal.allow_expunge)
            self._send(tag + b" NO " + refusal.text)
        except InvalidFlags as exc:
            self._bad(tag, str(exc).encode("ascii", "replace"))
        except MailstoreError as exc:
            await self._sync_after(False)
            self._send(tag + b" NO " + self._store_code(exc) + b" " + _safe_text(exc))

    def _store_code(self, exc: MailstoreError) -> bytes:
        for kind, code in _STORE_CODES:
            if isinstance(exc, kind):
                return code
        self.log.warn("{session_id} mail store error: {error}", session_id=self.session_id, error=str(exc))
        return b"[UNAVAILABLE]"

    def _unexpected(self, failure: Failure, tag: bytes) -> None:
        self.log.failure("{session_id} unexpected error", failure, session_id=self.session_id)
        self._send(tag + b" NO [SERVERBUG] Internal error, session " + self.session_id.encode())

    _COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
        "CAPABILITY": ("_cmd_capability", ("unauth", "auth", "select")),
        "NOOP": ("_cmd_noop", ("unauth", "auth", "select")),
        "LOGOUT": ("_cmd_logout", ("unauth", "auth", "select")),
        "ID": ("_cmd_id", ("unauth", "auth", "select")),
        "STARTTLS": ("_cmd_starttls", ("unauth",)),
        "LOGIN": ("_cmd_login", ("unauth",)),
        "AUTHENTICATE": ("_cmd_authenticate", ("unauth",)),
    }

    def _handler(self, command: str, by_uid: bool) -> Any:
        table = self._MAILBOX_UID_COMMANDS if by_uid else {**self._COMMANDS, **self._MAILBOX_COMMANDS}
        entry = table.get(command)
        if entry is None or self.state not in entry[1]:
            return None
        return getattr(self, entry[0])

    # -- any state ------------------------------------------------------------------------

    async def _cmd_capability(self, tag: bytes, args: list) -> None:
        self._send(b"* CAPABILITY " + self._capability_list())
        await self._ok(tag, b"CAPABILITY completed")

    async def _cmd_noop(self, tag: bytes, args: list) -> None:
        await self._ok(tag, b"NOOP completed")

    async def _cmd_logout(self, tag: bytes, args: list) -> None:
        self._send(b"* BYE Logging out", tag + b" OK LOGOUT completed")
        self.transport.loseConnection()

    async def _cmd_id(self, tag: bytes, args: list) -> None:
        # RFC 2971: the client's values are only logged; we tell our name.
        self._send(b'* ID ("name" "continuity")')
        await self._ok(tag, b"ID completed")

    # -- authentication ----------------------------------------------------------------------

    async def _cmd_starttls(self, tag: bytes, args: list) -> None:
        if args:
            raise ParseError("STARTTLS takes no arguments")
        if not self.canStartTLS:
            self._send(tag + b" NO TLS not available" if not self.tls else tag + b" BAD TLS is active already")
            return
        self._send(tag + b" OK Begin TLS negotiation now")
        # RFC 3501 6.2.1 / CVE-2011-0411: what was pipelined after STARTTLS came in clear; drop it.
        dropped = len(self.clearLineBuffer())
        if dropped:
            self.log.warn("{session_id} discarded {count} octets pipelined after STARTTLS",
                          session_id=self.session_id, count=dropped)
        self.transport.startTLS(self.ctx)
        self.tls = self.startedTLS = True
        self.canStartTLS = False

    async def _cmd_login(self, tag: bytes, args: list) -> None:
        if len(args) != 2:
            raise ParseError("LOGIN takes a user name and a password")
        if not self._auth_allowed:
            self._send(tag + b" NO [PRIVACYREQUIRED] Plaintext login is disabled before STARTTLS")
            return
        await self._login(tag, _utf8(astring(args[0])), _utf8(astring(args[1])))

    async def _cmd_authenticate(self, tag: bytes, args: list) -> None:
        if not 1 <= len(args) <= 2:
            raise ParseError("AUTHENTICATE takes a mechanism and an optional initial response")
        if not self._auth_allowed:
            self._send(tag + b" NO [PRIVACYREQUIRED] Authentication is disabled before STARTTLS")
            return
        if astring(args[0]).upper() != b"PLAIN":
            self._send(tag + b" NO Unsupported authentication mechanism")
            return
        if len(args) == 2:
            response = astring(args[1])
            if response == b"=":
                response = b""  # RFC 4959: an empty initial response
        else:
            waiting: defer.Deferred = defer.Deferred()

            def answered(line: bytes) -> None:
                self._continuation = None
                waiting.callback(line)

            self._continuation = answered
            self._send(b"+ ")
            self._read_during_command()
            response = await waiting
            self.paused = True
        if response.strip() == b"*":
            self._bad(tag, b"AUTHENTICATE cancelled")
            return
        try:
            authzid, user, password = base64.b64decode(response.strip(), validate=True).split(b"\0")
        except (binascii.Error, ValueError):
            self._bad(tag, b"Malformed PLAIN response")
            return
        if authzid and authzid != user:
            self._send(tag + b" NO [AUTHORIZATIONFAILED] Cannot act as another user")
            return
        await self._login(tag, _utf8(user), _utf8(password))

    async def _login(self, tag: bytes, user: str | None, password: str | None) -> None:
        if user is None or password is None:
            self._send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed")
            return
        try:
            login = await self.factory.authenticator.login(user, password, self.peer_ip, IMAPAccount, "imap")
        except LoginThrottled:
            self._send(tag + b" NO [UNAVAILABLE] Too many failed logins, try again later")
            return
        except LoginFailed:
            self._send(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed")
            return
        if self._lost:
            login.logout()
            return
        key = (login.address, self.peer_ip)
        if not self.factory.user_connections.acquire(key):
            login.logout()
            self.log.warn("{session_id} too many connections for {address} from {peer_ip}",
                          session_id=self.session_id, address=login.address, peer_ip=self.peer_ip)
            self._send(tag + b" NO [LIMIT] Too many connections for this user from your IP address")
            return
        self._address_key = key
        self.account = login.avatar
        self.state = "auth"
        self.setTimeout(POSTAUTH_TIMEOUT)
        self._send(tag + b" OK [CAPABILITY " + self._capability_list() + b"] Logged in")


def _utf8(value: bytes) -> str | None:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _safe_text(exc: Exception) -> bytes:
    text = str(exc).replace("\r", " ").replace("\n", " ")
    return text.encode("ascii", "replace")[:200]


@attrs.frozen
class SharedState:
    """What the ``imap`` and ``imaps`` listeners share: the IDLE watcher and user+IP counts."""

    watcher: FolderWatcher
    user_connections: ConnectionCounter  # by (address, client IP), like Dovecot's mail_max_userip_connections

    @classmethod
    def new(cls, clock: IReactorTime, run: Callable[..., defer.Deferred], store: Any) -> "SharedState":
        return cls(FolderWatcher(clock, run, store), ConnectionCounter(MAX_USER_IP_CONNECTIONS))


_SHARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def shared_state(realm: Any, store: Any, run: Callable[..., defer.Deferred], clock: IReactorTime) -> SharedState:
    """The service's one :class:`SharedState` (made with the first listener, which also
    registers the IMAP avatar: an :class:`Account`, its default folders created on first login)."""
    shared = _SHARED.get(realm)
    if shared is None:

        def account(user: Any) -> defer.Deferred:
            address = parse_address(user.address)
            return run(store.ensure_mailbox, address).addCallback(lambda _: Account(address))

        realm.register(IMAPAccount, account)
        shared = _SHARED[realm] = SharedState.new(clock, run, store)
    return shared


class IMAPServerFactory(protocol.ServerFactory):
    """Builds :class:`IMAPServer` connections for one listener.

    :param run: runs a blocking call on the worker pool, returning a Deferred.
    :param shared: the watcher and user+IP counts (one per service, see :func:`shared_state`).
    :param implicit_tls: the listener wraps connections in TLS (``imaps``).
    """

    protocol = IMAPServer

    def __init__(self, *, store: Any, run: Callable[..., defer.Deferred], authenticator: Any, hostname: str,
                 limits: LimitsConfig, require_tls_for_auth: bool, tls_context: Any, clock: IReactorTime,
                 shared: SharedState | None = None, implicit_tls: bool = False):
        self.store = store
        self.run = run
        self.authenticator = authenticator
        self.hostname = hostname
        self.limits = limits
        self.require_tls_for_auth = require_tls_for_auth
        self.tls_context = tls_context
        self.clock = clock
        if shared is None:
            shared = SharedState.new(clock, run, store)
        self.watcher = shared.watcher
        self.user_connections = shared.user_connections
        self.implicit_tls = implicit_tls
        self.connections = ConnectionCounter(limits.connections_per_ip)

    def buildProtocol(self, addr: object) -> IMAPServer:
        server = self.protocol(self)
        server.callLater = self.clock.callLater
        return server

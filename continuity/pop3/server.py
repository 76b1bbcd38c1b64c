"""The hardened POP3 server protocol: parsing, sequencing and limits over a :class:`Maildrop`.

Implements RFC 1939 (POP3: USER/PASS, STAT, LIST, RETR, DELE, NOOP, RSET,
QUIT, TOP, UIDL), RFC 2449 (CAPA, response codes, PIPELINING,
IMPLEMENTATION, the 255-octet command line), RFC 2595 4 (STLS), RFC 5034
(AUTH, with PLAIN of RFC 4616 and an initial response) and RFC 3206
(``[SYS/TEMP]``, ``[AUTH]``). APOP is not offered: it needs the plaintext
password on the server, and ours are Argon2 hashes.

It subclasses :class:`twisted.mail.pop3.POP3` for the connection plumbing and
the idle timer, and replaces the rest, which is unsafe there: the stock
``state_COMMAND`` answers exceptions with their text and ``DELE 0`` crashes
it, ``LineOnlyReceiver`` keeps answering lines read ahead of STLS, its
byte-stuffing misses a dot at the start of a message or of a chunk, and its
``FileSender`` reads message files on the reactor thread. Here:

- input is split by :class:`~continuity.pop3.lines.LineBuffer` (255 octets,
  RFC 2449 4) and commands run one at a time, in order: a command whose work
  is a Deferred holds the rest (pipelining, RFC 2449 6.6);
- octets received after STLS, before the handshake, are discarded;
- logins go through the shared :class:`~continuity.directory.cred.Authenticator`
  (throttling, one answer for unknown users and wrong passwords), then the
  maildrop is locked: a second session gets ``-ERR [IN-USE]``;
- messages are streamed from the worker pool chunk by chunk with back-pressure
  (:class:`~continuity.pop3.transfer.MessageTransfer`), never read whole;
  small ones that a client retrieves in order are read ahead in one worker
  call (:class:`~continuity.pop3.readahead.ReadAhead`, bounded per session)
  and answered from memory in one write, with back-pressure too
  (:class:`~continuity.transport.WriteGate`);
- every error is a ``-ERR`` reply and the session goes on; bad commands are
  counted and the connection closed after ``max_errors``; an unexpected
  exception is logged with the session id, never shown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import pop3 as twisted_pop3
from twisted.python.failure import Failure

from continuity.config import LimitsConfig
from continuity.counters import ConnectionCounter
from continuity.directory.cred import Authenticator, Login, LoginFailed, LoginThrottled
from continuity.errors import StockPathReached
from continuity.mailstore import MailstoreError, MessageExpunged
from continuity.pop3 import replies
from continuity.pop3.arguments import Refusal, decode_base64, decode_plain, parse_line_count, parse_number
from continuity.pop3.lines import RUNAWAY, TOO_LONG, LineBuffer
from continuity.pop3.maildrop import IMaildrop, Maildrop, MaildropInUse, MessageDeleted, NoSuchMessage, SizeCache
from continuity.pop3.readahead import READ_AHEAD_BYTES, ReadAhead
from continuity.pop3.transfer import MessageTransfer, TransferFailed
from continuity.transport import WriteGate, new_session_id, write_now

AUTHORIZATION, TRANSACTION, UPDATE = "AUTHORIZATION", "TRANSACTION", "UPDATE"
#: RFC 1939 3: the autologout timer is at least 10 minutes.
MIN_IDLE_TIMEOUT = 600
#: While a command is being answered the client may only pipeline; beyond this it is closed.
PIPELINE_LIMIT = 256 * 1024

RunBlocking = Callable[..., Awaitable[Any]]

# Command -> (handler, states it is valid in). Nothing else is reachable by name.
_ANY = (AUTHORIZATION, TRANSACTION)
_COMMANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CAPA": ("do_CAPA", _ANY),
    "QUIT": ("do_QUIT", _ANY),
    "NOOP": ("do_NOOP", (TRANSACTION,)),
    "STLS": ("do_STLS", (AUTHORIZATION,)),
    "USER": ("do_USER", (AUTHORIZATION,)),
    "PASS": ("do_PASS", (AUTHORIZATION,)),
    "AUTH": ("do_AUTH", (AUTHORIZATION,)),
    "STAT": ("do_STAT", (TRANSACTION,)),
    "LIST": ("do_LIST", (TRANSACTION,)),
    "UIDL": ("do_UIDL", (TRANSACTION,)),
    "RETR": ("do_RETR", (TRANSACTION,)),
    "TOP": ("do_TOP", (TRANSACTION,)),
    "DELE": ("do_DELE", (TRANSACTION,)),
    "RSET": ("do_RSET", (TRANSACTION,)),
}


class POP3Server(twisted_pop3.POP3):
    """One POP3 connection; see the module docstring. Built by :class:`POP3ServerFactory`."""

    log = Logger()
    factory: POP3ServerFactory

    def __init__(self, factory: POP3ServerFactory):
        self.factory = factory
        self.timeOut = max(factory.limits.idle_timeout, MIN_IDLE_TIMEOUT)
        self.session_id = new_session_id()
        self.peer_ip = ""
        self.tls = False
        self.state = AUTHORIZATION
        self.maildrop: Maildrop | None = None
        self._login: Login | None = None
        self._username: str | None = None
        self._sasl_pending = False
        self._input = LineBuffer()
        self._busy = False
        self._closing = False
        self._lost = False
        self._admitted = False
        self._errors = 0
        self._transfer: MessageTransfer | None = None
        self._ahead: ReadAhead | None = None
        self._gate = WriteGate()
        self._gated = False  # the gate is the transport's producer

    # -- connection -----------------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer_ip = str(getattr(address, "host", address))
        self.tls = self.factory.implicit_tls or ISSLTransport.providedBy(self.transport)
        try:
            self.transport.setTcpNoDelay(True)  # replies are small and answer the client's wait
        except (AttributeError, OSError):
            pass  # not a TCP connection (a test transport, a UNIX socket)
        self.log.info("{session_id} pop3 connect from {ip}{tls}", session_id=self.session_id, ip=self.peer_ip,
                      tls=" (TLS)" if self.tls else "")
        if not self.factory.connections.acquire(self.peer_ip):
            self.log.info("{session_id} refused: too many connections from {ip}", session_id=self.session_id,
                          ip=self.peer_ip)
            self._fail(replies.TOO_MANY_CONNECTIONS.format(ip=self.peer_ip))
            self._close()
            return
        self._admitted = True
        self.setTimeout(self.timeOut)
        self._ok(replies.GREETING.format(hostname=self.factory.hostname))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self.setTimeout(None)
        if self._transfer is not None:
            self._transfer.stopProducing()
        self._gated = False  # the transport forgets its producer
        if self._ahead is not None:
            self._ahead.close()
        if self._admitted:
            self._admitted = False
            self.factory.connections.release(self.peer_ip)
        if self._login is not None:
            login, self._login = self._login, None
            login.logout()  # releases the maildrop lock; nothing is removed without QUIT (RFC 1939 6)
        self.log.info("{session_id} pop3 disconnect from {ip}", session_id=self.session_id, ip=self.peer_ip)

    def timeoutConnection(self) -> None:
        self.log.info("{session_id} idle timeout", session_id=self.session_id)
        self._fail(replies.TIMEOUT)
        self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self._ungate()  # a transport with a producer would wait for it before closing
            self.transport.loseConnection()

    def _ungate(self) -> None:
        if self._gated:
            self._gated = False
            self.transport.unregisterProducer()

    # -- replies --------------------------------------------------------------

    def _write(self, lines: list[str]) -> None:
        if self._lost or self._closing:
            return
        self.transport.writeSequence([line.encode("utf-8") + b"\r\n" for line in lines])

    def _ok(self, text: str = "") -> None:
        self._write([f"+OK {text}" if text else "+OK"])

    def _fail(self, text: str) -> None:
        self._write([f"-ERR {text}"])

    def _multiline(self, first: str, lines: list[str]) -> None:
        """``+OK first``, the lines (dot-stuffed, RFC 1939 3) and the terminating ``.``."""
        self._write([f"+OK {first}", *("." + line if line.startswith(".") else line for line in lines), "."])

    def _refuse(self, text: str) -> None:
        """Answer a client error and count it; past ``max_errors`` close instead (as Dovecot does)."""
        self._errors += 1
        if self._errors >= self.factory.limits.max_errors:
            self.log.info("{session_id} too many bad commands", session_id=self.session_id)
            self._fail(replies.TOO_MANY_ERRORS)
            self._close()
            return
        self._fail(text)

    def _unexpected(self, failure: Failure, what: str) -> None:
        self.log.failure("{session_id} unexpected error in {what}", failure, session_id=self.session_id, what=what)
        self._fail(replies.INTERNAL_ERROR)

    # -- input ----------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing or self._lost:
            return
        self.resetTimeout()
        if not (self._busy or self._sasl_pending):
            line = self._input.whole_line(data)
            if line is not None:  # one command, nothing pending: no buffering
                self._run(self._line(line))
                return
        self._input.feed(data)
        if self._busy and len(self._input) > PIPELINE_LIMIT:
            self.log.info("{session_id} pipelined input overflow", session_id=self.session_id)
            self._fail(replies.PIPELINE_OVERFLOW)
            self._close()
            return
        self._process()

    def _process(self) -> None:
        """Take command lines while nothing is pending (one command at a time, in order)."""
        while not (self._busy or self._closing or self._lost):
            line = self._input.next_line(sasl=self._sasl_pending)
            if line is None:
                return
            if line is RUNAWAY:
                self._fail(replies.RUNAWAY_LINE)
                self._close()
                return
            self._run(self._line(line))

    def _run(self, result: object) -> None:
        """Hold further input until ``result`` (a Deferred of a command's work) has fired."""
        if not isinstance(result, defer.Deferred):
            return
        if result.called:  # done at once: nothing to wait for
            result.addErrback(self._unexpected, "a command")
            return
        self._busy = True
        self.setTimeout(None)  # the client waits for us: no idle timeout while we work
        result.addBoth(self._resume)

    def _resume(self, outcome: object) -> None:
        """The pending command is answered: go on with the input read meanwhile."""
        self._busy = False
        if isinstance(outcome, Failure):  # a bug of ours: the handlers answer their errors
            self._unexpected(outcome, "a command")
        if not (self._lost or self._closing):
            self.setTimeout(self.timeOut)
            self._process()

    def _line(self, line: bytes | object) -> object:
        """One line: a SASL response while AUTH waits for one, else a command."""
        sasl, self._sasl_pending = self._sasl_pending, False
        try:
            if line is TOO_LONG:
                raise Refusal(replies.LINE_TOO_LONG)
            assert isinstance(line, bytes)
            if b"\x00" in line or b"\r" in line:
                raise Refusal(replies.BAD_SYNTAX)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                raise Refusal(replies.BAD_UTF8) from None
            if sasl:
                return self._sasl_response(text)
            return self._command(text)
        except Refusal as refusal:
            self._refuse(refusal.text)
        except Exception:
            self._unexpected(Failure(), "a command")
        return None

    def _command(self, text: str) -> object:
        verb, _, argument = text.partition(" ")
        entry = _COMMANDS.get(verb.upper())
        if entry is None:
            raise Refusal(replies.UNKNOWN_COMMAND)
        handler, states = entry
        if self.state not in states:
            template = replies.NOT_LOGGED_IN if self.state == AUTHORIZATION else replies.LOGGED_IN
            raise Refusal(template.format(command=verb.upper()))
        return getattr(self, handler)(argument)

    # -- the stock machinery we do not use ------------------------------------------
    # twisted.mail.pop3 would answer exceptions with their text, keep reading lines
    # after STLS and look commands up by name; every entry point is replaced above.

    def lineReceived(self, line: bytes) -> None:
        raise StockPathReached("input is read by POP3Server.dataReceived")

    def processCommand(self, command: bytes, *args: bytes) -> None:
        raise StockPathReached("commands are dispatched by POP3Server._command")

    def state_COMMAND(self, line: bytes) -> None:
        raise StockPathReached("commands are dispatched by POP3Server._command")

    state_AUTH = state_COMMAND

    # -- AUTHORIZATION state ----------------------------------------------------

    def capabilities(self) -> list[str]:
        """The CAPA list (RFC 2449 5, 6): the same in both states, as RFC 2449 5 asks."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING",
                "IMPLEMENTATION continuity"]
        if self._can_start_tls():
            caps.append("STLS")
        if self._plaintext_allowed():
            caps += ["USER", "SASL PLAIN"]
        return caps

    def _can_start_tls(self) -> bool:
        return not self.tls and self.factory.tls_context is not None and ITLSTransport.providedBy(self.transport)

    def _plaintext_allowed(self) -> bool:
        return self.tls or not self.factory.require_tls_for_auth

    def do_CAPA(self, argument: str) -> None:
        self._no_argument("CAPA", argument)
        self._multiline(replies.CAPA_OK, self.capabilities())

    def _no_argument(self, command: str, argument: str) -> None:
        if argument:
            raise Refusal(replies.NO_ARGUMENTS.format(command=command))

    def do_STLS(self, argument: str) -> None:
        self._no_argument("STLS", argument)
        if self.tls:
            raise Refusal(replies.TLS_ACTIVE)
        if not self._can_start_tls():
            raise Refusal(replies.TLS_UNAVAILABLE)
        self._ok(replies.STLS_OK)
        # Octets that came with or after STLS, before the handshake, were sent in clear
        # and must not be taken as commands protected by TLS (CVE-2011-0411): dropped.
        dropped = self._input.clear()
        if dropped:
            self.log.warn("{session_id} discarded {count} octets pipelined after STLS", session_id=self.session_id,
                          count=dropped)
        self.transport.startTLS(self.factory.tls_context)
        self.tls = True
        self._username = None  # RFC 2595 4: forget what was said in clear

    def do_USER(self, argument: str) -> None:
        if not self._plaintext_allowed():
            raise Refusal(replies.PLAINTEXT_DISALLOWED)
        if not argument.strip():
            raise Refusal(replies.NO_USERNAME)
        self._username = argument.strip()
        self._ok(replies.USER_OK)

    def do_PASS(self, argument: str) -> object:
        if not self._plaintext_allowed():
            raise Refusal(replies.PLAINTEXT_DISALLOWED)
        username, self._username = self._username, None
        if username is None:
            raise Refusal(replies.NEED_USER)
        # RFC 1939 7: the password is the rest of the line, spaces included.
        return self._start_login(username, argument)

    def do_AUTH(self, argument: str) -> object:
        if not self._plaintext_allowed():
            raise Refusal(replies.PLAINTEXT_DISALLOWED)
        mechanism, _, initial = argument.strip().partition(" ")
        if not mechanism:
            # The RFC 1734 listing, still sent by some clients before RFC 5034's CAPA.
            self._multiline(replies.AUTH_MECHANISMS, ["PLAIN"])
            return None
        if mechanism.upper() != "PLAIN":
            raise Refusal(replies.AUTH_UNSUPPORTED)
        if not initial:
            self._sasl_pending = True
            self._write(["+ "])  # RFC 5034 4: an empty challenge
            return None
        return self._plain(decode_base64(initial.strip()))

    def _sasl_response(self, text: str) -> object:
        if text.strip() == "*":
            raise Refusal(replies.AUTH_ABORTED)  # RFC 5034 4
        return self._plain(decode_base64(text.strip()))

    def _plain(self, response: bytes) -> object:
        username, password = decode_plain(response)
        return self._start_login(username, password)

    def _start_login(self, username: str, password: str) -> defer.Deferred:
        return defer.Deferred.fromCoroutine(self._login_and_lock(username, password))

    async def _login_and_lock(self, username: str, password: str) -> None:
        factory = self.factory
        try:
            login = await factory.authenticator.login(username, password, self.peer_ip, IMaildrop, "pop3")
        except LoginThrottled:
            self._fail(replies.AUTH_THROTTLED)
            return
        except LoginFailed:
            self._refuse(replies.AUTH_FAILED)
            return
        maildrop: Maildrop = login.avatar
        try:
            await factory.run_blocking(maildrop.open, factory.sizes)
        except MaildropInUse:
            login.logout()
            self.log.info("{session_id} {address}: maildrop in use", session_id=self.session_id,
                          address=str(login.address))
            self._fail(replies.IN_USE)
            return
        except MailstoreError as error:
            login.logout()
            self.log.error("{session_id} {address}: cannot open the maildrop: {error}",
                           session_id=self.session_id, address=str(login.address), error=str(error))
            self._fail(replies.MAILDROP_UNAVAILABLE)
            return
        except BaseException:
            login.logout()
            raise
        if self._lost:
            login.logout()
            return
        self._login, self.maildrop, self.state = login, maildrop, TRANSACTION
        self._ahead = ReadAhead(maildrop, factory.run_blocking, factory.read_ahead_bytes)
        count, size = maildrop.stat()
        self.log.info("{session_id} {address} opened the maildrop: {count} messages, {size} octets",
                      session_id=self.session_id, address=str(login.address), count=count, size=size)
        self._ok(replies.LOGGED_IN_OK)

    # -- TRANSACTION state (RFC 1939 5) ---------------------------------------------

    def _message(self, argument: str):
        """The message an argument names, or a Refusal for a bad, unknown or deleted number."""
        number = parse_number(argument)
        try:
            return self.maildrop.get(number)
        except NoSuchMessage:
            raise Refusal(replies.NO_SUCH_MESSAGE.format(number=number)) from None
        except MessageDeleted:
            raise Refusal(replies.MESSAGE_DELETED.format(number=number)) from None

    def do_STAT(self, argument: str) -> None:
        self._no_argument("STAT", argument)
        count, size = self.maildrop.stat()
        self._ok(replies.STAT_OK.format(count=count, size=size))

    def do_LIST(self, argument: str) -> None:
        if argument:
            message = self._message(argument.strip())
            self._ok(f"{message.number} {message.size}")
            return
        count, size = self.maildrop.stat()
        lines = [f"{message.number} {message.size}" for message in self.maildrop.present()]
        self._multiline(replies.LIST_OK.format(count=count, size=size), lines)

    def do_UIDL(self, argument: str) -> None:
        if argument:
            message = self._message(argument.strip())
            self._ok(f"{message.number} {message.uidl}")
            return
        lines = [f"{message.number} {message.uidl}" for message in self.maildrop.present()]
        self._multiline(replies.UIDL_OK, lines)

    def do_RETR(self, argument: str) -> defer.Deferred | None:
        return self._retrieve(self._message(argument.strip()), None)

    def do_TOP(self, argument: str) -> defer.Deferred | None:
        parts = argument.split()
        if len(parts) != 2:
            raise Refusal(replies.BAD_SYNTAX)
        message = self._message(parts[0])
        return self._retrieve(message, parse_line_count(parts[1]))

    def _retrieve(self, message, top_lines: int | None) -> defer.Deferred | None:
        """RETR (``top_lines`` None) or TOP: from memory when it was read ahead, else from disk."""
        reply = self._read_ahead(message, top_lines)
        if reply is not None:  # answered now, without a trip to the worker pool
            return self._answer_from_memory(message, reply, retrieved=top_lines is None)
        return defer.Deferred.fromCoroutine(self._send_message(message, top_lines))

    def _read_ahead(self, message, top_lines: int | None) -> bytes | None:
        """The reply to RETR or TOP of ``message`` if it was read ahead."""
        return self._ahead.retr(message.number) if top_lines is None else self._ahead.top(message.number, top_lines)

    def _answer_from_memory(self, message, reply: bytes, retrieved: bool) -> defer.Deferred | None:
        """RETR (``retrieved``) or TOP of a message read ahead, with its whole reply: one write.

        Returns a Deferred that holds the next commands while the transport's
        buffer is full (the client is not reading), else None.
        """
        if self._lost or self._closing:
            return None
        transport = self.transport
        if not self._gated:
            transport.registerProducer(self._gate, True)
            self._gated = True
        write_now(transport, reply)
        if retrieved:
            self.maildrop.retrieved(message.number)
        self._ahead.served(message.number)  # after the write: the reply goes out first
        return self._gate.drained() if self._gate.paused else None

    async def _send_message(self, message, top_lines: int | None) -> None:
        maildrop = self.maildrop
        ahead = self._ahead
        landing = ahead.wait_for(message.number)
        if landing is not None:  # being read ahead right now: wait for it rather than read it twice
            await landing
            reply = self._read_ahead(message, top_lines)
            if reply is not None:
                drained = self._answer_from_memory(message, reply, retrieved=top_lines is None)
                if drained is not None:
                    await drained
                return
            # Not read after all (removed by another tool, too large, a store error): from disk, as ever.
        transfer = MessageTransfer(self.transport, self.factory.run_blocking, top_lines)
        try:
            await transfer.open(maildrop.open_message, message)
        except MessageExpunged:
            self._fail(replies.MESSAGE_GONE.format(number=message.number))
            return
        except MailstoreError as error:
            self.log.error("{session_id} cannot read message {number}: {error}", session_id=self.session_id,
                           number=message.number, error=str(error))
            self._fail(replies.BACKEND_ERROR)
            return
        finally:
            ahead.served(message.number)  # once this message is read: the read-ahead does not delay it
        if self._gate.paused:  # a reply before filled the transport: let it drain first
            await self._gate.drained()
        self._ungate()  # the transfer is the transport's producer while it streams
        if self._lost or self._closing:
            await transfer.close()
            return
        text = replies.TOP_OK if top_lines is not None else replies.RETR_OK.format(size=message.size)
        self._transfer = transfer
        try:
            await transfer.send(f"+OK {text}\r\n".encode("utf-8"))
        except TransferFailed as failure:
            # The +OK is out: a -ERR now would be read as message text. Close instead.
            self.log.error("{session_id} reading message {number} failed mid-way: {error}",
                           session_id=self.session_id, number=message.number, error=str(failure))
            self._close()
            return
        finally:
            self._transfer = None
        if top_lines is None and not self._lost:
            maildrop.retrieved(message.number)

    def do_DELE(self, argument: str) -> None:
        message = self._message(argument.strip())
        self.maildrop.delete(message.number)
        self._ahead.forget(message.number)
        self._ok(replies.DELE_OK)

    def do_NOOP(self, argument: str) -> None:
        self._no_argument("NOOP", argument)
        self._ok()

    def do_RSET(self, argument: str) -> None:
        self._no_argument("RSET", argument)
        self.maildrop.reset()
        count, size = self.maildrop.stat()
        self._ok(replies.RSET_OK.format(count=count, size=size))

    # -- QUIT and the UPDATE state (RFC 1939 6) -----------------------------------------

    def do_QUIT(self, argument: str) -> object:
        if self.state == AUTHORIZATION:
            self._ok(replies.LOGOUT)
            self._close()
            return None
        self.state = UPDATE
        self._ahead.close()
        return defer.Deferred.fromCoroutine(self._update())

    async def _update(self) -> None:
        maildrop = self.maildrop
        try:
            removed = await self.factory.run_blocking(_commit_and_release, maildrop)
        except MailstoreError as error:
            self.log.error("{session_id} update failed: {error}", session_id=self.session_id, error=str(error))
            self._fail(replies.UPDATE_FAILED)
        else:
            self.log.info("{session_id} {address} logged out, {removed} messages deleted",
                          session_id=self.session_id, address=str(maildrop.address), removed=removed)
            self._ok(replies.LOGOUT_UPDATED.format(removed=removed) if removed else replies.LOGOUT)
        self._close()


def _commit_and_release(maildrop: Maildrop) -> int:
    """The UPDATE state on the worker pool; the lock is released before ``+OK`` goes out."""
    try:
        return maildrop.commit()
    finally:
        maildrop.release()


class POP3ServerFactory(protocol.ServerFactory):
    """Builds :class:`POP3Server` connections for one listener (``pop3`` or ``pop3s``).

    :param authenticator: the service's :class:`Authenticator` (the realm serves :class:`IMaildrop`).
    :param run_blocking: runs a blocking function on the worker pool, returning a Deferred.
    :param hostname: our name, for the greeting.
    :param limits: ``[limits]`` (``max_errors``, ``idle_timeout``, ``connections_per_ip``).
    :param tls_context: for STLS, or None for no STLS.
    :param require_tls_for_auth: USER, PASS and AUTH only over TLS.
    :param implicit_tls: the listener wraps connections in TLS (``pop3s``).
    :param clock: the ``IReactorTime`` of the idle timer (default: the global reactor).
    :param sizes: the RFC 1939 sizes of message files, shared by the sessions.
    :param read_ahead_bytes: octets of read-ahead one session may hold (:mod:`~continuity.pop3.readahead`).
    """

    def __init__(self, authenticator: Authenticator, run_blocking: RunBlocking, hostname: str,
                 limits: LimitsConfig, tls_context: Any = None, require_tls_for_auth: bool = True,
                 implicit_tls: bool = False, clock: IReactorTime | None = None, sizes: SizeCache | None = None,
                 read_ahead_bytes: int = READ_AHEAD_BYTES):
        self.authenticator = authenticator
        self.run_blocking = run_blocking
        self.hostname = hostname
        self.limits = limits
        self.tls_context = tls_context
        self.require_tls_for_auth = require_tls_for_auth
        self.implicit_tls = implicit_tls
        self.clock = clock
        self.sizes = sizes if sizes is not None else SizeCache()
        self.read_ahead_bytes = read_ahead_bytes
        self.connections = ConnectionCounter(limits.connections_per_ip)

    def buildProtocol(self, addr: object) -> POP3Server:
        server = POP3Server(self)
        if self.clock is not None:
            server.callLater = self.clock.callLater
        return server

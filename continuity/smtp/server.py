"""The hardened ESMTP server protocol: parsing, sequencing and limits, nothing else.

Both the inbound MX listener and the submission listener are built on
:class:`SMTPServerFactory`; what differs between them (who may send what,
where a message goes, how a login is checked) is an injected
:class:`ISMTPPolicy`. The protocol knows no storage, routing or ports.

It subclasses :class:`twisted.mail.smtp.ESMTP` and overrides everything that
is unsafe there: its own byte-level input loop (:mod:`continuity.smtp.pipeline`:
commands one at a time, in order, even when a policy answers later), its own DATA reader
(:mod:`continuity.smtp.data`: end of data only at ``<CRLF>.<CRLF>``), its own
end-of-data replies (the stock ``_messageHandled`` answers 550 to a temporary
failure), its own AUTH (:mod:`continuity.smtp.auth`), and a STARTTLS that
drops read-ahead and forgets the session.

Implements RFC 5321 (SMTP), RFC 1870 (SIZE), RFC 2034 (ENHANCEDSTATUSCODES),
RFC 2920 (PIPELINING), RFC 3207 (STARTTLS), RFC 4954 (AUTH), RFC 6152
(8BITMIME), RFC 6531 (SMTPUTF8) and RFC 3848's ``with`` names.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import attrs
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IReactorTime, ISSLTransport, ITLSTransport
from twisted.logger import Logger
from twisted.mail import smtp as twisted_smtp
from twisted.python.failure import Failure
from zope.interface import Interface

from continuity.config import LimitsConfig
from continuity.envelope import Address, Envelope, normalise_domain, parse_address
from continuity.errors import ContinuityError, InvalidAddress, StockPathReached
from continuity.smtp import codes
from continuity.smtp.auth import MECHANISMS, AuthCommands, LoginExchange, PlainExchange
from continuity.smtp.arguments import PathArgument, parse_mail, parse_rcpt
from continuity.smtp.data import DataReader
from continuity.smtp.pipeline import COMMAND, DATA, TOO_LONG, CommandPipeline, _TooLong
from continuity.transport import new_session_id, write_now

_SIZE = re.compile(r"^[0-9]{1,20}$")
_COMMANDS = {
    verb: "do_" + verb
    for verb in ("HELO", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP", "QUIT", "VRFY", "EXPN", "HELP")
} | {"STARTTLS": "do_STARTTLS", "AUTH": "do_AUTH"}


@functools.lru_cache(maxsize=16)
def _greeting(hostname: str) -> codes.Reply:
    return codes.GREETING.format(hostname=hostname)


class ISMTPPolicy(Interface):
    """What the SMTP server asks of a listener's policy.

    Every method may return a value or a :class:`~twisted.internet.defer.Deferred`.
    To refuse, raise (or fail with) :class:`continuity.smtp.codes.SMTPReply`
    (or :class:`~continuity.smtp.codes.TemporaryFailure` /
    :class:`~continuity.smtp.codes.PermanentFailure`): its reply is sent as it
    is, and a ``421`` closes the connection. A
    :class:`continuity.errors.ContinuityError` is answered with its code,
    enhanced code and message. Any other exception is logged with the session
    id and answered ``451 4.3.0`` (``454 4.7.0`` during AUTH), never with its
    text. The :class:`Session` passed in is the server's: read it, don't
    change it.
    """

    def connection_made(session):
        """A client connected; refuse it (e.g. ``421 4.7.0`` for too many connections
        from its IP) by raising. The greeting is sent only once this succeeds."""

    def connection_lost(session):
        """The connection whose ``connection_made`` succeeded is gone (to release counters)."""

    def check_sender(session, sender, parameters):
        """``MAIL FROM``: ``sender`` is an :class:`~continuity.envelope.Address` or
        ``None`` for the null sender ``<>``; ``parameters`` maps upper-case keywords
        (``SIZE``, ``BODY``, ``SMTPUTF8``, ``AUTH``) to their value or ``None``.
        The server has already refused bad syntax and relay tricks."""

    def check_recipient(session, recipient, raw, parameters):
        """``RCPT TO``: ``recipient`` is the normalised Address, ``raw`` the path as the
        client wrote it (without brackets), ``parameters`` as for check_sender."""

    def accept_message(session, envelope, data):
        """End of data: make the message durable and return (a Deferred of) its queue id.

        Called only after the real end of data, and only when the server refused
        nothing (size, bare CR/LF, NUL, hops). ``envelope`` is a
        :class:`continuity.envelope.Envelope`, ``data`` the message as received
        (dot-unstuffed, CRLF line ends) without a Received field: adding one is the
        policy's job, from the session. ``250 2.0.0 Ok: queued as <id>`` is sent
        only when this has succeeded."""

    def authenticate(session, mechanism, username, password):
        """AUTH (only on factories built with ``auth_enabled``): return (a Deferred
        of) the authenticated user, or ``None`` for wrong credentials (``535 5.7.8``).
        Raise :class:`~continuity.smtp.codes.TemporaryFailure` to throttle."""


@attrs.define
class Session:
    """One connection as the policy sees it; the server keeps it up to date.

    ``helo`` is the HELO/EHLO argument as sent (``None`` before, and again after
    STARTTLS), ``esmtp`` whether it came with EHLO, ``tls`` whether the
    connection is encrypted (STARTTLS or an implicit-TLS listener), ``user``
    what :meth:`ISMTPPolicy.authenticate` returned.
    """

    session_id: str
    hostname: str
    peer_ip: str
    peer_port: int | None = None
    tls: bool = False
    tls_protocol: str | None = None
    tls_cipher: str | None = None
    helo: str | None = None
    esmtp: bool = False
    user: Any = None
    auth_mechanism: str | None = None
    messages: int = 0

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    @property
    def with_protocol(self) -> str:
        """The ``with`` keyword for a Received field (RFC 3848): SMTP, ESMTP, ESMTPS, ESMTPSA..."""
        if not self.esmtp:
            return "SMTP"
        return "ESMTP" + ("S" if self.tls else "") + ("A" if self.authenticated else "")


@attrs.define
class _Transaction:
    """MAIL and RCPT so far (RFC 5321 3.3)."""

    sender: Address | None
    parameters: tuple[tuple[str, str | None], ...]
    body: str | None
    smtputf8: bool
    declared_size: int | None
    recipients: list[Address] = attrs.Factory(list)
    attempts: int = 0


def _is_tls(transport: object) -> bool:
    """Whether ``transport`` is already encrypted (an implicit-TLS listener).

    ``ssl:`` endpoints hand the protocol a TLSMemoryBIOProtocol, which provides
    INegotiated, an ISSLTransport; ``startTLS`` on a TCP transport makes it
    provide ISSLTransport too. A plain TCP transport provides neither.
    """
    return ISSLTransport.providedBy(transport)


class SMTPServer(CommandPipeline, AuthCommands, twisted_smtp.ESMTP):
    """One SMTP connection; see the module docstring. Built by :class:`SMTPServerFactory`."""

    log = Logger()

    def __init__(
        self,
        policy: ISMTPPolicy,
        hostname: str,
        limits: LimitsConfig,
        tls_context: Any = None,
        auth_enabled: bool = False,
        require_tls_for_auth: bool = True,
        implicit_tls: bool = False,
    ):
        super().__init__(chal={}, contextFactory=tls_context)
        self.implicit_tls = implicit_tls
        self.policy = policy
        self.hostname = hostname
        self.host = hostname
        self.limits = limits
        self.timeout = limits.idle_timeout
        self.auth_enabled = auth_enabled
        self.require_tls_for_auth = require_tls_for_auth
        self.session: Session | None = None
        self.mode = COMMAND
        self._start_pipeline()
        self._admitted = False
        self._errors = 0
        self._transaction: _Transaction | None = None
        self._reader: DataReader | None = None
        self._exchange: PlainExchange | LoginExchange | None = None

    # -- Connection ---------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        tls = self.implicit_tls or _is_tls(self.transport)
        self.session = Session(
            session_id=new_session_id(),
            hostname=self.hostname,
            peer_ip=str(getattr(peer, "host", peer)),
            peer_port=getattr(peer, "port", None),
            tls=tls,
        )
        self.startedTLS = tls
        self.canStartTLS = self.ctx is not None and ITLSTransport.providedBy(self.transport) and not tls
        no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if no_delay is not None:
            try:
                no_delay(True)
            except OSError:
                pass  # not a TCP socket (UNIX socket, test transport)
        self.setTimeout(self.timeout)
        self.log.info(
            "{session_id} connect from {peer_ip}", session_id=self.session.session_id, peer_ip=self.session.peer_ip
        )
        admission = defer.maybeDeferred(self.policy.connection_made, self.session)
        admission.addCallbacks(self._admit, self._refuse_connection)
        self._run(admission)

    def _admit(self, _: object) -> None:
        self._admitted = True
        self._send(_greeting(self.hostname))

    def _refuse_connection(self, failure: Failure) -> None:
        reply = self._reply_for(failure, "connect", codes.CONNECTION_REFUSED.format(hostname=self.hostname))
        self.log.info(
            "{session_id} connection refused: {reply}", session_id=self.session.session_id, reply=reply.text
        )
        self._send(reply)
        self._close()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self._lost = True
        self.setTimeout(None)
        if self._reader is not None:
            self.log.info("{session_id} connection lost during DATA", session_id=self.session.session_id)
        self._reader = self._transaction = self._exchange = None
        self._inbox.clear()
        self.log.info(
            "{session_id} disconnect from {peer_ip}", session_id=self.session.session_id, peer_ip=self.session.peer_ip
        )
        if self._admitted:
            self._admitted = False
            done = defer.maybeDeferred(self.policy.connection_lost, self.session)
            done.addErrback(self._reply_for, "disconnect")  # only logs: nobody to answer

    def timeoutConnection(self) -> None:
        self.log.info("{session_id} idle timeout", session_id=self.session.session_id)
        self._send(codes.TIMEOUT.format(hostname=self.hostname))
        self._close()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self.transport.loseConnection()

    # -- Replies ------------------------------------------------------------

    def _send(self, reply: codes.Reply) -> None:
        if self._lost or self._closing:
            return
        write_now(self.transport, reply.wire())
        if reply.closes:
            self._close()

    def sendCode(self, code: int, message: bytes = b"") -> None:
        """Twisted's reply helper, routed through :meth:`_send` (only used by inherited code)."""
        self._send(codes.Reply(code, None, message.decode("ascii", "replace")))

    def _error(self, reply: codes.Reply) -> None:
        """Answer a client error and count it (CONTRACT 2 ``max_errors``, Postfix's hard limit)."""
        self._send(reply)
        self._errors += 1
        if self._errors >= self.limits.max_errors:
            self.log.info("{session_id} too many errors", session_id=self.session.session_id)
            self._send(codes.TOO_MANY_ERRORS.format(hostname=self.hostname))

    def _reply_for(self, failure: Failure, stage: str, unexpected: codes.Reply = codes.INTERNAL_ERROR) -> codes.Reply:
        """The reply for a policy failure: its own reply if it is one, else ``unexpected``."""
        error = failure.value
        reply = None
        if isinstance(error, codes.SMTPReply):
            reply = error.reply
        elif isinstance(error, ContinuityError):
            try:
                reply = codes.Reply(error.code, error.enhanced, error.message)
            except ValueError:
                reply = None
        if reply is not None and 400 <= reply.code < 600:
            return reply
        self.log.failure(
            "{session_id} unexpected error at {stage}", failure, session_id=self.session.session_id, stage=stage
        )
        return unexpected

    # -- Commands in ----------------------------------------------------------

    def _command(self, line: bytes | _TooLong) -> object:
        if line is TOO_LONG:
            return self._error(codes.LINE_TOO_LONG)
        if b"\r" in line or b"\x00" in line:
            return self._error(codes.BAD_SYNTAX)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._error(codes.BAD_UTF8)
        self._note_tls()
        parts = text.split(None, 1)
        if not parts:
            return self._error(codes.BAD_SYNTAX)
        handler = self.lookupMethod(parts[0])
        if handler is None:
            return self._error(codes.UNKNOWN_COMMAND)
        try:
            return handler(parts[1].strip() if len(parts) > 1 else "")
        except codes.SMTPReply as refusal:
            return self._error(refusal.reply)

    def lookupMethod(self, command: str | bytes) -> Any:
        """Only the commands of :data:`_COMMANDS`; nothing inherited is reachable by name."""
        if isinstance(command, bytes):
            command = command.decode("ascii", "replace")
        name = _COMMANDS.get(command.upper())
        return getattr(self, name) if name else None

    def _note_tls(self) -> None:
        """Record the TLS version and cipher once the handshake is done (for Received)."""
        session = self.session
        if not session.tls or session.tls_cipher is not None:
            return
        try:
            handle = self.transport.getHandle()
            session.tls_cipher = handle.get_cipher_name()
            session.tls_protocol = handle.get_protocol_version_name()
        except Exception:  # not an OpenSSL connection (test transports) or no handshake yet
            pass

    # -- The stock machinery we do not use -----------------------------------
    # twisted.mail.smtp would read DATA line by line (losing bare-LF information),
    # answer 550 for temporary failures and validate addresses itself; every such
    # entry point is replaced above, and reaching one is a bug of ours.

    def state_COMMAND(self, line: bytes) -> None:
        self._run(self._command(line))

    def dataLineReceived(self, line: bytes) -> None:
        raise StockPathReached("DATA is read by continuity.smtp.data.DataReader")

    state_DATA = dataLineReceived

    def _messageHandled(self, resultList: object) -> None:
        raise StockPathReached("end of data is answered by SMTPServer._end_of_data")

    def lineLengthExceeded(self, line: bytes) -> None:
        self._error(codes.LINE_TOO_LONG)

    def receivedHeader(self, helo: object, origin: object, recipients: object) -> None:
        return None  # the policy adds Received, from the Session

    def validateFrom(self, helo: object, origin: object) -> None:
        raise StockPathReached("senders are checked by ISMTPPolicy.check_sender")

    def validateTo(self, user: object) -> None:
        raise StockPathReached("recipients are checked by ISMTPPolicy.check_recipient")

    # -- Commands -----------------------------------------------------------

    def do_HELO(self, rest: str) -> None:
        self._hello(rest, esmtp=False)

    def do_EHLO(self, rest: str) -> None:
        self._hello(rest, esmtp=True)

    def _hello(self, rest: str, esmtp: bool) -> None:
        if not rest:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_HELO.format(verb="EHLO" if esmtp else "HELO"))
        self._transaction = None  # RFC 5321 4.1.4: EHLO resets the transaction
        self.session.helo = rest
        self.session.esmtp = esmtp
        if not esmtp:
            self._send(codes.Reply(250, None, self.hostname))
            return
        self._send(codes.Reply(250, None, "\n".join([self.hostname, *self.ehlo_keywords()])))

    def ehlo_keywords(self) -> list[str]:
        """The EHLO keywords for the session as it is now (RFC 5321 4.1.1.1)."""
        keywords = ["PIPELINING", f"SIZE {self.limits.max_message_size}"]
        if self.canStartTLS and not self.session.tls:
            keywords.append("STARTTLS")
        if self._auth_offered():
            keywords.append("AUTH " + " ".join(MECHANISMS))
        keywords += ["ENHANCEDSTATUSCODES", "8BITMIME", "SMTPUTF8", "HELP"]
        return keywords

    def extensions(self) -> dict[bytes, list[bytes] | None]:
        """Twisted's view of :meth:`ehlo_keywords`."""
        result: dict[bytes, list[bytes] | None] = {}
        for keyword in self.ehlo_keywords():
            name, *arguments = keyword.encode("ascii").split()
            result[name] = arguments or None
        return result

    def _auth_offered(self) -> bool:
        return self.auth_enabled and self.session.user is None and (self.session.tls or not self.require_tls_for_auth)

    def do_MAIL(self, rest: str) -> object:
        if self.session.helo is None:
            raise codes.SMTPReply.from_reply(codes.NEED_HELO)
        if self._transaction is not None:
            raise codes.SMTPReply.from_reply(codes.NESTED_MAIL)
        argument = parse_mail(rest)
        if argument is None:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_MAIL)
        body, smtputf8, size = None, False, None
        for keyword, value in argument.parameters:
            if keyword == "SIZE":  # RFC 1870 6
                if value is None or not _SIZE.match(value):
                    raise codes.SMTPReply.from_reply(codes.BAD_SIZE)
                size = int(value)
            elif keyword == "BODY":  # RFC 6152 2
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise codes.SMTPReply.from_reply(codes.BAD_BODY)
                body = value.upper()
            elif keyword == "SMTPUTF8":  # RFC 6531 3.4: no value
                if value is not None:
                    raise codes.SMTPReply.from_reply(codes.BAD_PARAMETER_SYNTAX.format(parameter="SMTPUTF8=" + value))
                smtputf8 = True
            elif keyword == "AUTH" and self.auth_enabled:  # RFC 4954 5: accepted, passed on
                pass
            else:
                raise codes.SMTPReply.from_reply(codes.UNSUPPORTED_PARAMETER.format(parameter=keyword))
        if size is not None and size > self.limits.max_message_size:
            # RFC 1870 6.1: refuse early. Not a client error: not counted.
            self._send(codes.SIZE_EXCEEDS_LIMIT)
            return None
        sender = None if argument.path == "" else self._address(argument, smtputf8, True)
        transaction = _Transaction(sender, argument.parameters, body, smtputf8, size)
        checked = defer.maybeDeferred(self.policy.check_sender, self.session, sender, argument.parameter_dict)
        checked.addCallbacks(self._sender_ok, self._policy_refused, callbackArgs=(transaction,), errbackArgs=("MAIL",))
        return checked

    def _sender_ok(self, _: object, transaction: _Transaction) -> None:
        self._transaction = transaction
        self._send(codes.SENDER_OK)

    def _policy_refused(self, failure: Failure, stage: str) -> None:
        """A refused MAIL or RCPT; counted as an error, as Postfix counts rejects."""
        self._error(self._reply_for(failure, stage))

    def _address(self, argument: PathArgument, smtputf8: bool, sender: bool) -> Address:
        """Parse a MAIL or RCPT path; relay tricks and bad syntax become 553 (see codes)."""
        refusal = codes.BAD_SENDER_ADDRESS if sender else codes.BAD_RECIPIENT_ADDRESS
        if not argument.path.isascii() and not smtputf8:
            raise codes.SMTPReply.from_reply(codes.NEEDS_SMTPUTF8)
        try:
            return parse_address(argument.path)
        except InvalidAddress as error:
            reason = error.message.split(": ", 1)[0]
            raise codes.SMTPReply.from_reply(refusal.format(address=argument.path, reason=reason)) from None

    def do_RCPT(self, rest: str) -> object:
        transaction = self._transaction
        if transaction is None:
            raise codes.SMTPReply.from_reply(codes.NEED_MAIL)
        argument = parse_rcpt(rest)
        if argument is None:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_RCPT)
        for keyword, _ in argument.parameters:  # no RCPT parameters are announced
            raise codes.SMTPReply.from_reply(codes.UNSUPPORTED_PARAMETER.format(parameter=keyword))
        if len(transaction.recipients) >= self.limits.max_recipients:
            self._send(codes.TOO_MANY_RECIPIENTS)  # RFC 5321 4.5.3.1.10
            return None
        recipient = self._postmaster(argument.path) or self._address(argument, transaction.smtputf8, False)
        transaction.attempts += 1
        checked = defer.maybeDeferred(
            self.policy.check_recipient, self.session, recipient, argument.path, argument.parameter_dict
        )
        checked.addCallbacks(
            self._recipient_ok, self._policy_refused, callbackArgs=(transaction, recipient), errbackArgs=("RCPT",)
        )
        return checked

    def _postmaster(self, path: str) -> Address | None:
        """``RCPT TO:<Postmaster>`` without a domain is this server's (RFC 5321 4.1.1.3)."""
        if path.lower() != "postmaster":
            return None
        try:
            return Address("postmaster", normalise_domain(self.hostname))
        except InvalidAddress:
            return None

    def _recipient_ok(self, _: object, transaction: _Transaction, recipient: Address) -> None:
        if recipient not in transaction.recipients:
            transaction.recipients.append(recipient)
        self._send(codes.RECIPIENT_OK)

    def do_DATA(self, rest: str) -> None:
        if rest:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_NO_ARGUMENT.format(verb="DATA"))
        transaction = self._transaction
        if transaction is None:
            raise codes.SMTPReply.from_reply(codes.NEED_MAIL)
        if not transaction.recipients:
            # RFC 5321 3.3: 554 when every RCPT was refused, 503 when there was none.
            raise codes.SMTPReply.from_reply(codes.NO_VALID_RECIPIENTS if transaction.attempts else codes.NEED_RCPT)
        self.mode = DATA
        self._reader = DataReader(self.limits.max_message_size)
        self._send(codes.START_DATA)

    def _end_of_data(self) -> object:
        """The real ``<CRLF>.<CRLF>``: refuse what the reader found, else ask the policy."""
        reader, transaction = self._reader, self._transaction
        self._reader = self._transaction = None
        self.mode = COMMAND  # RFC 5321 4.1.1.4: the transaction ends, whatever the reply
        self.session.messages += 1
        if reader.too_big:
            refusal = codes.MESSAGE_TOO_BIG
        elif reader.bare_lf:
            refusal = codes.BARE_LF
        elif reader.bare_cr:
            refusal = codes.BARE_CR
        elif reader.nul:
            refusal = codes.NUL_IN_DATA
        elif reader.long_line:
            refusal = codes.DATA_LINE_TOO_LONG
        elif reader.received_headers > self.limits.max_hops:
            refusal = codes.TOO_MANY_HOPS  # RFC 5321 6.3: a mail loop
        else:
            refusal = None
        if refusal is not None:
            self._outcome(transaction, reader.size, refusal)
            self._send(refusal)
            return None
        envelope = Envelope(
            sender=transaction.sender,
            recipients=tuple(transaction.recipients),
            body=transaction.body,
            smtputf8=transaction.smtputf8,
            declared_size=transaction.declared_size,
            mail_parameters=transaction.parameters,
        )
        accepted = defer.maybeDeferred(self.policy.accept_message, self.session, envelope, reader.message())
        outcome_args = (transaction, reader.size)
        accepted.addCallbacks(self._queued, self._not_queued, callbackArgs=outcome_args, errbackArgs=outcome_args)
        return accepted

    def _queued(self, queue_id: object, transaction: _Transaction, size: int) -> None:
        reply = codes.QUEUED.format(queue_id=queue_id)
        self._outcome(transaction, size, reply)
        self._send(reply)

    def _not_queued(self, failure: Failure, transaction: _Transaction, size: int) -> None:
        reply = self._reply_for(failure, "end of data")
        self._outcome(transaction, size, reply)
        self._send(reply)

    def _outcome(self, transaction: _Transaction, size: int, reply: codes.Reply) -> None:
        """One log line per transaction (never the body)."""
        self.log.info(
            "{session_id} from=<{sender}> nrcpt={nrcpt} size={size}: {code} {enhanced} {text}",
            session_id=self.session.session_id,
            sender=transaction.sender or "",
            nrcpt=len(transaction.recipients),
            size=size,
            code=reply.code,
            enhanced=reply.enhanced,
            text=reply.text,
        )

    def do_RSET(self, rest: str) -> None:
        if rest:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_NO_ARGUMENT.format(verb="RSET"))
        self._transaction = None
        self._send(codes.OK)

    def do_NOOP(self, rest: str) -> None:
        self._send(codes.OK)  # RFC 5321 4.1.1.9: an argument is allowed and ignored

    def do_QUIT(self, rest: str) -> None:
        self._send(codes.CLOSING)
        self._close()

    def do_VRFY(self, rest: str) -> None:
        if not rest:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_VRFY)
        self._send(codes.CANNOT_VRFY)  # RFC 5321 3.5.3: 252, we disclose nobody

    def do_EXPN(self, rest: str) -> None:
        raise codes.SMTPReply.from_reply(codes.NOT_IMPLEMENTED)

    def do_HELP(self, rest: str) -> None:
        self._send(codes.HELP)

    # -- STARTTLS (RFC 3207) ------------------------------------------------

    def do_STARTTLS(self, rest: str) -> None:
        if self.session.tls:
            raise codes.SMTPReply.from_reply(codes.TLS_ALREADY_ACTIVE)
        if not self.canStartTLS:
            raise codes.SMTPReply.from_reply(codes.TLS_NOT_AVAILABLE)
        if rest:
            raise codes.SMTPReply.from_reply(codes.SYNTAX_NO_ARGUMENT.format(verb="STARTTLS"))
        if self._transaction is not None:
            raise codes.SMTPReply.from_reply(codes.IN_TRANSACTION)
        self._send(codes.READY_FOR_TLS)
        # CVE-2011-0411: octets sent after the STARTTLS line, before the handshake,
        # came in clear and must not be taken as commands protected by TLS. We
        # discard them (as Postfix does) rather than answer 554 and close: a
        # buggy-but-honest client then just waits, an attacker's injection is lost.
        dropped = self._drop_pipelined()
        if dropped:
            self.log.warn(
                "{session_id} discarded {count} octets pipelined after STARTTLS",
                session_id=self.session.session_id,
                count=dropped,
            )
        self.transport.startTLS(self.ctx)
        self.startedTLS = True
        # RFC 3207 4.2: forget everything the client told us before TLS.
        session = self.session
        session.tls = True
        session.helo = None
        session.esmtp = False
        session.user = session.auth_mechanism = None
        self.authenticated = False
        self._transaction = None

class SMTPServerFactory(protocol.ServerFactory):
    """Builds :class:`SMTPServer` connections for one listener.

    :param policy: the listener's :class:`ISMTPPolicy`.
    :param hostname: our name, for the banner and replies.
    :param limits: ``[limits]`` of the config (size, recipients, hops, errors, idle timeout).
    :param tls_context: an ``IOpenSSLServerConnectionCreator`` or ``CertificateOptions``
        for STARTTLS, or ``None`` for no STARTTLS. Implicit-TLS listeners wrap the
        factory in TLS instead (see ``implicit_tls``).
    :param auth_enabled: offer AUTH PLAIN and LOGIN (submission).
    :param require_tls_for_auth: offer and accept AUTH only over TLS.
    :param clock: the ``IReactorTime`` for idle timeouts (default: the global reactor).
    :param implicit_tls: the listener wraps connections in TLS (submissions, port 465).
        The server also notices a TLS transport by itself; this makes it certain.
    """

    protocol = SMTPServer

    def __init__(
        self,
        policy: ISMTPPolicy,
        hostname: str,
        limits: LimitsConfig,
        tls_context: Any = None,
        auth_enabled: bool = False,
        require_tls_for_auth: bool = True,
        clock: IReactorTime | None = None,
        implicit_tls: bool = False,
    ):
        self.policy = policy
        self.hostname = hostname
        self.limits = limits
        self.tls_context = tls_context
        self.auth_enabled = auth_enabled
        self.require_tls_for_auth = require_tls_for_auth
        self.clock = clock
        self.implicit_tls = implicit_tls

    def buildProtocol(self, addr: object) -> SMTPServer:
        server = self.protocol(
            self.policy,
            self.hostname,
            self.limits,
            tls_context=self.tls_context,
            auth_enabled=self.auth_enabled,
            require_tls_for_auth=self.require_tls_for_auth,
            implicit_tls=self.implicit_tls,
        )
        server.factory = self
        if self.clock is not None:
            server.callLater = self.clock.callLater
        return server

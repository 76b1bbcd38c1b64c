"""Our SMTP client: relays to a customer's upstream server, later outbound mail.

The queue runner calls :func:`deliver` (one message, one session),
:class:`continuity.smtp.pool.ConnectionPool` (several messages over one
session) or :func:`probe` (the recovery probe of CONTRACT section 4). Every
outcome is a value, never an exception: a :class:`DeliveryResult` holds one
:class:`RecipientResult` per recipient, ``2xx`` delivered, ``4xx`` temporary,
``5xx`` permanent. A failure before or after the recipients were answered
(greeting, EHLO, MAIL, DATA, end of data) applies to every recipient of the
transaction; so do a refused connection, a timeout and a lost connection,
which are temporary (``421 4.4.1`` / ``421 4.4.2``) with a clear text.

Implemented: RFC 5321 (EHLO with a HELO fallback 3.2, the transaction 3.3,
MAIL after a completed transaction without RSET 4.1.4, a timeout per reply
4.5.3.2, transparency 4.5.2), RFC 2920 PIPELINING (MAIL and every RCPT in one
write), RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531 SMTPUTF8, RFC 3207
STARTTLS (opportunistic by default, read-ahead discarded), RFC 3463 enhanced
status codes. Never used: ``twisted.mail.relaymanager`` and
``SMTPClient.sendmail``, which bounce on 4xx and lose per-recipient results.
"""

from __future__ import annotations

import enum
import functools
import os
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger

from continuity.smtp.client_protocol import (
    CHUNK,
    MessageInfo,
    SMTPClientProtocol,
    UpstreamFailure,
    UpstreamReply,
    measure,
    measure_file,
)
from continuity.smtp.results import DeliveryResult, ProbeResult, RecipientResult, UpstreamError

T = TypeVar("T")
#: Runs a blocking function off the reactor, e.g. ``partial(deferToThreadPool, reactor, pool)``.
RunInThread = Callable[..., Awaitable[Any]]
#: A message: its bytes, or the path of a file holding them.
Message = bytes | str | os.PathLike
#: Builds the endpoint of an upstream ``"host:port"`` with a connect timeout in seconds.
EndpointFactory = Callable[[str, float], IStreamClientEndpoint]

_FORBIDDEN_IN_PATH = set("\r\n\x00<> \t")
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.IPv]+\]")


class TLSMode(enum.Enum):
    """How the client uses STARTTLS (RFC 3207)."""

    #: Never, even when offered.
    NONE = "none"
    #: When offered, without verifying the certificate; plaintext when refused.
    OPPORTUNISTIC = "opportunistic"
    #: Always (unverified): deferred when the upstream offers no STARTTLS.
    REQUIRED = "required"


class _TLSHandshakeFailed(Exception):
    def __init__(self, error: UpstreamError):
        super().__init__(str(error))
        self.error = error


def _run_here(function: Callable[..., T], *args: Any) -> Deferred[T]:
    return succeed(function(*args))


@functools.cache
def _opportunistic_tls() -> CertificateOptions:
    # Opportunistic TLS (RFC 3207 4.1, RFC 7435): an MX-style peer rarely has a
    # certificate for the name we know it by, and refusing to encrypt because
    # of that would only force plaintext. optionsForClientTLS verifies, so it
    # is the wrong tool here; CertificateOptions() verifies nothing.
    return CertificateOptions(verify=False)


def parse_upstream(upstream: str, default_port: int = 25) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"``, or a bare host for port 25)."""
    host, port_text = upstream, str(default_port)
    if upstream.startswith("["):
        host, _, rest = upstream[1:].partition("]")
        if rest:
            port_text = rest[1:] if rest.startswith(":") else ""
    elif upstream.count(":") == 1:
        host, _, port_text = upstream.partition(":")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"invalid upstream {upstream!r}: expected host:port")
    return host, int(port_text)


def hostname_endpoint_factory(reactor: IReactorTCP) -> EndpointFactory:
    """An :data:`EndpointFactory` making ``HostnameEndpoint`` s (happy eyeballs, RFC 8305)."""

    def build(upstream: str, timeout: float) -> IStreamClientEndpoint:
        host, port = parse_upstream(upstream)
        return HostnameEndpoint(reactor, host, port, timeout=timeout)

    return build


def describe_endpoint(endpoint: IStreamClientEndpoint) -> str:
    """``host:port`` of a Twisted TCP endpoint, for messages; best effort."""
    # The endpoints do not expose their address; these are their (stable) attributes.
    host = getattr(endpoint, "_hostText", None) or getattr(endpoint, "_host", None)
    port = getattr(endpoint, "_port", None)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if host and port:
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "upstream"


def _path_ok(address: str) -> bool:
    return not _FORBIDDEN_IN_PATH.intersection(address)


class SMTPConnection:
    """One open session with an upstream, greeted and ready for MAIL.

    Made by :func:`connect`. :meth:`send` runs one transaction and may be
    called again for the next message (RFC 5321 4.1.4: MAIL may follow a
    completed transaction directly; a transaction that did not complete is
    ended with RSET). :meth:`quit` ends the session.
    """

    log = Logger()

    def __init__(
        self,
        protocol: SMTPClientProtocol,
        *,
        upstream: str,
        hostname: str,
        timeout: float,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        self.protocol = protocol
        self.upstream = upstream
        self.hostname = hostname
        self.timeout = timeout
        self.run_in_thread: RunInThread = run_in_thread or _run_here
        self.greeting: UpstreamReply | None = None
        self.esmtp = False
        #: EHLO keywords (upper case) and their parameters, e.g. ``{"SIZE": "10240000"}``.
        self.extensions: dict[str, str] = {}
        #: Transactions that reached the end of data on this connection.
        self.transactions = 0
        self._busy = False
        self._closed_waiters: list[Deferred[None]] = []
        protocol.connection_lost.addBoth(self._lost)

    @property
    def tls(self) -> bool:
        """The session runs over TLS."""
        return self.protocol.tls_established

    @property
    def usable(self) -> bool:
        """Connected, in step and between transactions: ready for :meth:`send`."""
        return self.protocol.failure is None and not self._busy

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires once the connection has closed."""
        waiter: Deferred[None] = Deferred()
        if self.protocol.lost_reason is not None:
            waiter.callback(None)
        else:
            self._closed_waiters.append(waiter)
        return waiter

    def _lost(self, _reason: object) -> None:
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- commands ---------------------------------------------------------

    async def _read(self, stage: str, what: str) -> UpstreamReply:
        try:
            reply = await self.protocol.read_reply(what, self.timeout)
        except UpstreamFailure as failure:
            raise UpstreamError.from_failure(stage, failure) from None
        if reply.code == 421:
            # RFC 5321 3.8: the server closes the channel after a 421.
            self.protocol.close()
        return reply

    async def _command(self, stage: str, command: bytes) -> UpstreamReply:
        self.protocol.send_command(command)
        return await self._read(stage, f"the reply to {stage}")

    async def _handshake(self, tls: TLSMode, strict: bool) -> None:
        """Greeting, EHLO (or HELO), STARTTLS and EHLO again; raise UpstreamError on failure."""
        self.greeting = await self._read("greeting", "the greeting")
        if not self.greeting.positive:
            raise UpstreamError.from_reply("greeting", self.greeting)
        await self._hello(strict)
        if tls is TLSMode.NONE:
            return
        if "STARTTLS" not in self.extensions:
            if tls is TLSMode.REQUIRED:
                raise UpstreamError("STARTTLS", "TLS is required, but was not offered", 421, "4.7.4")
            return
        self.protocol.send_starttls()
        reply = await self._read("STARTTLS", "the reply to STARTTLS")
        if not reply.positive:
            if tls is TLSMode.REQUIRED or reply.code == 421:
                raise UpstreamError.from_reply("STARTTLS", reply)
            self.log.info("{upstream} refused STARTTLS ({reply}); going on in plaintext",
                          upstream=self.upstream, reply=str(reply))
            return
        self.protocol.start_tls(_opportunistic_tls())
        try:
            await self._hello(strict=True)  # RFC 3207 4.2: forget what was known, EHLO again
        except UpstreamError as failure:
            if not self.protocol.tls_established:
                raise _TLSHandshakeFailed(failure) from None
            raise

    async def _hello(self, strict: bool) -> None:
        name = self.hostname.encode("ascii")
        reply = await self._command("EHLO", b"EHLO " + name)
        self.extensions = {}
        if reply.code == 250:
            self.esmtp = True
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params.strip()
            return
        if strict or not reply.permanent:
            raise UpstreamError.from_reply("EHLO", reply)
        # RFC 5321 3.2: a server that does not know EHLO answers 5xx; try HELO.
        self.esmtp = False
        reply = await self._command("HELO", b"HELO " + name)
        if not reply.positive:
            raise UpstreamError.from_reply("HELO", reply)

    async def reset(self) -> bool:
        """RSET: end an unfinished transaction; ``False`` (and closed) if that failed."""
        if self.protocol.failure is not None:
            return False
        try:
            reply = await self._command("RSET", b"RSET")
        except UpstreamError:
            return False
        if not reply.positive:
            self.protocol.close()
            return False
        return True

    async def quit(self) -> None:
        """QUIT, wait (at most ``timeout``) for the ``221``, close; return once closed (RFC 5321 4.1.1.10)."""
        if self.protocol.failure is None and not self._busy:
            self.protocol.send_command(b"QUIT")
            try:
                await self.protocol.read_reply("the reply to QUIT", self.timeout)
            except UpstreamFailure:
                pass
        self.protocol.close()
        closed = self.when_closed()
        timer = self.protocol.clock.callLater(self.timeout, closed.cancel)
        try:
            await closed
        except CancelledError:
            self.protocol.abort()  # the peer never finished the close
        finally:
            if timer.active():
                timer.cancel()

    def abort(self) -> None:
        """Drop the connection now."""
        self.protocol.abort()

    # -- the transaction --------------------------------------------------

    async def send(self, sender: str, recipients: Sequence[str], message: Message) -> DeliveryResult:
        """Run one mail transaction: MAIL, RCPT for each recipient, DATA, the message.

        :param sender: the reverse-path without angle brackets; ``""`` for bounces.
        :param recipients: forward-paths without angle brackets, each sent as given.
        :param message: the message bytes, or the path of a file holding them; sent
            with CRLF line endings and dot-stuffed (:class:`DataEncoder`).
        :raises OSError: if a message file can't be read (nothing was delivered;
            the connection is dropped if DATA had begun).
        """
        if self._busy:
            raise RuntimeError("a transaction is running on this connection already")
        self._busy = True
        try:
            return await self._transaction(sender, list(recipients), message)
        finally:
            self._busy = False

    async def _transaction(self, sender: str, recipients: list[str], message: Message) -> DeliveryResult:
        results: dict[int, RecipientResult] = {}
        upstream = self.upstream

        def finish(stage: str) -> DeliveryResult:
            # Not logged here: the caller logs each recipient's outcome (the queue
            # runner's relayed/deferred/bounced lines carry this reply), one line per change.
            return DeliveryResult(upstream, tuple(results[i] for i in range(len(recipients))), stage)

        def settle(indices: Sequence[int], error: UpstreamError) -> None:
            for i in indices:
                results.setdefault(i, error.result_for(recipients[i]))

        everyone = range(len(recipients))
        smtputf8 = "SMTPUTF8" in self.extensions
        if not _path_ok(sender) or (not sender.isascii() and not smtputf8):
            text = "invalid sender address" if not _path_ok(sender) else "the upstream does not support SMTPUTF8"
            settle(everyone, UpstreamError("envelope", text, 553, "5.6.7" if _path_ok(sender) else "5.1.7"))
            return finish("envelope")
        for i, recipient in enumerate(recipients):
            if not recipient or not _path_ok(recipient):
                results[i] = RecipientResult(recipient, 553, "5.1.3", "invalid recipient address", "envelope", False)
            elif not recipient.isascii() and not smtputf8:
                # RFC 6531 3.2: without SMTPUTF8 such an address can't be sent at all.
                results[i] = RecipientResult(
                    recipient, 553, "5.6.7", "the upstream does not support SMTPUTF8", "envelope", False
                )
        pending = [i for i in everyone if i not in results]
        if not pending:
            return finish("envelope")
        if self.protocol.failure is not None:
            settle(pending, UpstreamError.from_failure("MAIL", self.protocol.failure))
            return finish("MAIL")

        if isinstance(message, (bytes, bytearray, memoryview)):
            info = measure(bytes(message))
        else:
            info = await self.run_in_thread(measure_file, message)
        limit = self.extensions.get("SIZE", "")
        if limit.isdigit() and 0 < int(limit) < info.size:
            # RFC 1870 6: the server would refuse it; say so without sending it.
            settle(pending, UpstreamError(
                "envelope", f"message size {info.size} exceeds the upstream's limit of {limit}", 552, "5.3.4"
            ))
            return finish("envelope")

        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={info.size}")
        if info.eight_bit and "8BITMIME" in self.extensions:
            params.append("BODY=8BITMIME")  # RFC 6152 2
        needs_utf8 = not sender.isascii() or any(not recipients[i].isascii() for i in pending)
        if needs_utf8:
            params.append("SMTPUTF8")  # RFC 6531 3.4
        mail = (f"MAIL FROM:<{sender}>" + "".join(" " + param for param in params)).encode("utf-8")
        rcpts = [f"RCPT TO:<{recipients[i]}>".encode() for i in pending]

        accepted: list[int] = []
        closing: UpstreamReply | None = None  # a 421: the server is going away (RFC 5321 3.8)

        def record(i: int, reply: UpstreamReply) -> None:
            nonlocal closing
            if reply.positive:
                accepted.append(i)
            else:
                settle([i], UpstreamError.from_reply("RCPT", reply))
            if reply.code == 421:
                closing = reply

        try:
            if "PIPELINING" in self.extensions:
                # RFC 2920 3.1: MAIL and every RCPT in one write, replies in order.
                self.protocol.send_command(mail, *rcpts)
                mail_reply = await self._read("MAIL", "the reply to MAIL")
                if mail_reply.positive:
                    for i in pending:
                        record(i, await self._read("RCPT", "the reply to RCPT"))
                        if closing is not None:
                            break
                elif mail_reply.code != 421:
                    # Stay in step: read the RCPT replies (503s) that MAIL's refusal explains.
                    try:
                        for _ in rcpts:
                            await self._read("RCPT", "the reply to RCPT")
                    except UpstreamError:
                        pass
            else:
                mail_reply = await self._command("MAIL", mail)
                if mail_reply.positive:
                    for i, command in zip(pending, rcpts):
                        record(i, await self._command("RCPT", command))
                        if closing is not None:
                            break
            if not mail_reply.positive:
                settle(pending, UpstreamError.from_reply("MAIL", mail_reply))
                return finish("MAIL")
            if closing is not None:
                settle(pending, UpstreamError.from_reply("RCPT", closing))
                return finish("RCPT")
            if not accepted:
                await self.reset()
                return finish("RCPT")

            data_reply = await self._command("DATA", b"DATA")
            if not data_reply.intermediate:
                if data_reply.positive:
                    settle(accepted, UpstreamError("DATA", f"unexpected reply to DATA: {data_reply}", 451, "4.5.0"))
                    self.protocol.abort()
                else:
                    settle(accepted, UpstreamError.from_reply("DATA", data_reply))
                    await self.reset()
                return finish("DATA")
            try:
                await self.protocol.write_data(self._reader(message), self.timeout)
            except UpstreamFailure as failure:
                raise UpstreamError.from_failure("DATA", failure) from None
            except BaseException:
                self.protocol.abort()  # mid-DATA: the only way out is to drop the session
                raise
            final = await self._read("end of data", "the reply to the end of data")
            self.transactions += 1
            settle(accepted, UpstreamError.from_reply("end of data", final))
            return finish("end of data")
        except UpstreamError as failure:
            settle(pending, failure)
            return finish(failure.stage)

    async def _reader(self, message: Message):  # type: ignore[no-untyped-def]
        """The message in chunks; file reads run through ``run_in_thread``."""
        if isinstance(message, (bytes, bytearray, memoryview)):
            view = memoryview(message)
            for start in range(0, len(view), CHUNK):
                yield bytes(view[start:start + CHUNK])
            return
        file = await self.run_in_thread(open, message, "rb")
        try:
            while chunk := await self.run_in_thread(file.read, CHUNK):
                yield chunk
        finally:
            file.close()


class _ClientFactory(Factory):
    noisy = False  # one factory per session: its start/stop lines would double the log

    def __init__(self, clock: IReactorTime):
        self.clock = clock

    def buildProtocol(self, addr: object) -> SMTPClientProtocol:
        protocol = SMTPClientProtocol(self.clock)
        protocol.factory = self
        return protocol


async def _connect_endpoint(
    endpoint: IStreamClientEndpoint, clock: IReactorTime, timeout: float, upstream: str
) -> SMTPClientProtocol:
    attempt = endpoint.connect(_ClientFactory(clock))
    timed_out = []

    def give_up() -> None:
        timed_out.append(True)
        attempt.cancel()

    timer = clock.callLater(timeout, give_up)
    try:
        return await attempt
    except Exception as failure:
        if timed_out or isinstance(failure, error.TimeoutError):
            text = f"timeout after {timeout:g}s connecting to {upstream}"
        elif isinstance(failure, error.ConnectionRefusedError):
            text = f"connection refused by {upstream}"
        elif isinstance(failure, error.DNSLookupError):
            text = f"cannot resolve the address of {upstream}"
        else:
            text = f"cannot connect to {upstream}: {failure}"
        raise UpstreamError("connect", text, 421, "4.4.1") from None
    finally:
        if timer.active():
            timer.cancel()


async def _open(
    endpoint: IStreamClientEndpoint,
    hostname: str,
    *,
    clock: IReactorTime,
    timeout: float,
    tls: TLSMode,
    upstream: str,
    run_in_thread: RunInThread | None,
    strict: bool = False,
) -> SMTPConnection:
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError(f"not a name for EHLO: {hostname!r}")  # RFC 5321 4.1.1.1
    protocol = await _connect_endpoint(endpoint, clock, timeout, upstream)
    connection = SMTPConnection(
        protocol, upstream=upstream, hostname=hostname, timeout=timeout, run_in_thread=run_in_thread
    )
    try:
        await connection._handshake(tls, strict)
    except BaseException as failure:
        if isinstance(failure, UpstreamError) and failure.reply is not None and failure.code != 421:
            await connection.quit()  # RFC 5321 3.1 / 4.1.1.10: a polite end after a refusal
        connection.abort()
        raise
    SMTPConnection.log.info(
        "connected to {upstream} (esmtp={esmtp}, tls={tls})",
        upstream=upstream, esmtp=connection.esmtp, tls=connection.tls,
    )
    return connection


async def connect(
    endpoint: IStreamClientEndpoint,
    hostname: str,
    *,
    clock: IReactorTime,
    timeout: float = 30.0,
    tls: TLSMode = TLSMode.OPPORTUNISTIC,
    upstream: str = "",
    run_in_thread: RunInThread | None = None,
) -> SMTPConnection:
    """Open a session: connect, greeting, EHLO (HELO if EHLO gets 5xx), STARTTLS, EHLO.

    With :attr:`TLSMode.OPPORTUNISTIC` a refused STARTTLS means plaintext, and a
    failed handshake means one more connection in plaintext (as Postfix does:
    broken TLS on the upstream must not look like an outage).

    :param endpoint: where the upstream listens (see :func:`hostname_endpoint_factory`).
    :param hostname: our name for EHLO (CONTRACT ``[server] hostname``).
    :param clock: times the connect and every reply.
    :param timeout: seconds for the connect and for each reply (CONTRACT ``[relay] timeout``).
    :param upstream: ``host:port`` for messages and logs; guessed from the endpoint if empty.
    :param run_in_thread: runs blocking file reads of message files off the reactor.
    :raises UpstreamError: with the stage and reply (or text) that failed.
    """
    upstream = upstream or describe_endpoint(endpoint)
    options = dict(clock=clock, timeout=timeout, upstream=upstream, run_in_thread=run_in_thread)
    try:
        return await _open(endpoint, hostname, tls=tls, **options)  # type: ignore[arg-type]
    except _TLSHandshakeFailed as failure:
        if tls is not TLSMode.OPPORTUNISTIC:
            raise failure.error from None
        SMTPConnection.log.warn(
            "TLS handshake with {upstream} failed ({error}); trying again in plaintext",
            upstream=upstream, error=str(failure.error),
        )
        return await _open(endpoint, hostname, tls=TLSMode.NONE, **options)  # type: ignore[arg-type]


async def deliver(
    target: IStreamClientEndpoint | SMTPConnection,
    hostname: str,
    sender: str,
    recipients: Sequence[str],
    message: Message,
    *,
    clock: IReactorTime,
    timeout: float = 30.0,
    tls: TLSMode = TLSMode.OPPORTUNISTIC,
    upstream: str = "",
    run_in_thread: RunInThread | None = None,
) -> DeliveryResult:
    """Deliver one message and return each recipient's result; never raises for the upstream.

    With an endpoint: connect (see :func:`connect`), send, QUIT. With an open
    :class:`SMTPConnection`: send on it and leave it open (``hostname``,
    ``timeout``, ``tls`` and ``run_in_thread`` are the connection's then).

    :raises OSError: if a message file can't be read; nothing was delivered.
    """
    if isinstance(target, SMTPConnection):
        return await target.send(sender, recipients, message)
    upstream = upstream or describe_endpoint(target)
    try:
        connection = await connect(
            target, hostname, clock=clock, timeout=timeout, tls=tls, upstream=upstream, run_in_thread=run_in_thread
        )
    except UpstreamError as failure:
        result = failure.delivery_result(upstream, recipients)
        SMTPConnection.log.info("{upstream}: {summary}", upstream=upstream, summary=result.summary)
        return result
    try:
        return await connection.send(sender, recipients, message)
    finally:
        await connection.quit()


async def probe(
    endpoint: IStreamClientEndpoint,
    hostname: str,
    recipient: str,
    *,
    clock: IReactorTime,
    timeout: float = 30.0,
    upstream: str = "",
) -> ProbeResult:
    """The recovery probe of CONTRACT 4: is the upstream healthy again?

    Exactly: greeting 2xx, EHLO 250, ``MAIL FROM:<>`` 250, ``RCPT TO:<recipient>``
    250 (or 251, RFC 5321 4.2.2: also an acceptance), then RSET and QUIT; no
    STARTTLS, no DATA. ``ok`` only if every step got its reply in time.

    :raises ValueError: for a recipient that can't be written into RCPT.
    """
    upstream = upstream or describe_endpoint(endpoint)
    if not recipient or not _path_ok(recipient):
        raise ValueError(f"invalid probe recipient {recipient!r}")
    try:
        connection = await _open(
            endpoint, hostname, clock=clock, timeout=timeout, tls=TLSMode.NONE,
            upstream=upstream, run_in_thread=None, strict=True,
        )
    except UpstreamError as failure:
        return ProbeResult(False, str(failure))
    try:
        mail = await connection._command("MAIL", b"MAIL FROM:<>")
        if mail.code != 250:
            return ProbeResult(False, f"MAIL FROM:<> answered {mail}")
        rcpt = await connection._command("RCPT", f"RCPT TO:<{recipient}>".encode())
        if rcpt.code not in (250, 251):
            return ProbeResult(False, f"RCPT TO:<{recipient}> answered {rcpt}")
        return ProbeResult(True, f"RCPT TO:<{recipient}> answered {rcpt}")
    except UpstreamError as failure:
        return ProbeResult(False, str(failure))
    finally:
        await connection.reset()
        await connection.quit()


__all__ = [
    "DeliveryResult",
    "EndpointFactory",
    "Message",
    "MessageInfo",
    "ProbeResult",
    "RecipientResult",
    "SMTPConnection",
    "TLSMode",
    "UpstreamError",
    "connect",
    "deliver",
    "describe_endpoint",
    "hostname_endpoint_factory",
    "measure",
    "parse_upstream",
    "probe",
]

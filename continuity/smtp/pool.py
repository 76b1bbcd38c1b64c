"""Sessions to upstreams kept open between messages, for the queue runner.

Opening a session costs a TCP handshake, a greeting, EHLO, often a TLS
handshake and EHLO again; a queue of mail for one customer server should pay
that once. :class:`ConnectionPool` keeps each :class:`SMTPConnection` open
after its transaction (RFC 5321 4.1.4: MAIL may follow a completed
transaction directly; an unfinished one was ended with RSET), hands it to the
next message for the same upstream and closes it with QUIT after
``idle_timeout`` seconds without work, after ``max_transactions`` messages,
or at :meth:`ConnectionPool.close`.

At most ``max_sessions`` sessions to one upstream are open at once (Postfix's
``default_destination_concurrency_limit``, 20); a message that finds them all
busy waits for the first to finish and goes on it. Without that limit a burst
of mail (every message the SMTP listeners just spooled is delivered at once)
opened a session per message beyond the ones open, sent one message on it
and closed it again: 1,300 sessions for 2,000 messages, at a third of the
relay rate. When opening a session fails, the messages waiting for one get
that failure as their own at once, as Postfix's dead destination defers its
queue, instead of each trying and waiting out the same timeout in turn.

A server may close an idle session at any time (RFC 5321 4.5.3.2.7); if a
reused session turns out to be gone when MAIL is sent, the message is sent
once more on a fresh session, so that a normal idle close never looks like
an upstream failure (which would trigger failover, CONTRACT 4).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from continuity.smtp.client import (
    DeliveryResult,
    EndpointFactory,
    Message,
    RunInThread,
    SMTPConnection,
    TLSMode,
    UpstreamError,
    connect,
)

@attrs.define
class _Idle:
    connection: SMTPConnection
    timer: IDelayedCall


class ConnectionPool:
    """Delivers messages to upstreams over sessions it keeps open between them.

    Use::

        pool = ConnectionPool(clock=reactor, hostname=config.server.hostname,
                              endpoint_factory=hostname_endpoint_factory(reactor),
                              timeout=config.relay.timeout)
        result = await pool.deliver("mail.customer.example:25", sender, recipients, path)
        ...
        await pool.close()  # when the service stops

    Messages to one upstream may be delivered concurrently; each takes an
    idle session, opens one while fewer than ``max_sessions`` are open, or
    waits for a busy one.
    """

    log = Logger()

    def __init__(
        self,
        *,
        clock: IReactorTime,
        hostname: str,
        endpoint_factory: EndpointFactory,
        timeout: float = 30.0,
        tls: TLSMode = TLSMode.OPPORTUNISTIC,
        idle_timeout: float = 5.0,
        max_transactions: int = 100,
        max_sessions: int = 20,
        run_in_thread: RunInThread | None = None,
    ) -> None:
        """
        :param clock: times connects, replies and idle sessions.
        :param hostname: our name for EHLO.
        :param endpoint_factory: builds the endpoint of an upstream ``"host:port"``.
        :param timeout: seconds for the connect and each reply (CONTRACT ``[relay] timeout``).
        :param idle_timeout: seconds an unused session stays open.
        :param max_transactions: messages per session before it is closed.
        :param max_sessions: sessions open at once to one upstream, busy or idle (Postfix's default
            destination concurrency); more messages wait for one of them.
        :param run_in_thread: runs blocking reads of message files off the reactor.
        """
        self._clock = clock
        self._hostname = hostname
        self._endpoint_factory = endpoint_factory
        self._timeout = timeout
        self._tls = tls
        self._idle_timeout = idle_timeout
        self._max_transactions = max_transactions
        self._max_sessions = max_sessions
        self._run_in_thread = run_in_thread
        self._idle: dict[str, list[_Idle]] = {}
        #: Sessions of each upstream that a delivery holds (sending, or being opened for it).
        self._busy: dict[str, int] = {}
        #: Deliveries waiting for a session of each upstream, first come first served; each gets a
        #: session, None (a turn to open one) or the UpstreamError that opening one just met.
        self._waiting: dict[str, deque[Deferred[SMTPConnection | UpstreamError | None]]] = {}
        self._quitting: set[Deferred[None]] = set()
        self._closed = False
        #: Sessions opened so far (for tests and status).
        self.connections_opened = 0

    def idle(self, upstream: str) -> int:
        """How many idle sessions to ``upstream`` are open."""
        return len(self._idle.get(upstream, ()))

    async def deliver(
        self, upstream: str, sender: str, recipients: Sequence[str], message: Message
    ) -> DeliveryResult:
        """Deliver one message to ``upstream`` (``"host:port"``); see :func:`continuity.smtp.client.deliver`.

        :raises OSError: if a message file can't be read; nothing was delivered.
        """
        if self._closed:
            raise RuntimeError("the connection pool is closed")
        turn = await self._turn(upstream)
        if isinstance(turn, UpstreamError):
            return turn.delivery_result(upstream, recipients)
        connection = turn
        try:
            if connection is not None:
                result = await self._send(connection, sender, recipients, message)
                gone = result.stage == "MAIL" and not connection.usable
                if not gone or len(result.temporary) < len(result.recipients):
                    return result
                self.log.info("idle session to {upstream} had gone; sending on a new one", upstream=upstream)
                self._quit(connection)
                connection = None
            try:
                connection = await self._open(upstream)
            except UpstreamError as failure:
                for waiting in list(self._waiting.pop(upstream, ())):
                    waiting.callback(failure)
                return failure.delivery_result(upstream, recipients)
            return await self._send(connection, sender, recipients, message)
        finally:
            self._done(upstream, connection)

    def sessions(self, upstream: str) -> int:
        """How many sessions to ``upstream`` are open: busy, being opened or idle."""
        return self._busy.get(upstream, 0) + self.idle(upstream)

    def withdraw_waiting(self) -> int:
        """Cancel the deliveries waiting for a session (:class:`CancelledError`; nothing of theirs was sent);
        return how many. The runner's stop: what is in flight finishes, what waits stays queued."""
        waiting = [d for queue in self._waiting.values() for d in queue]
        self._waiting.clear()
        for d in waiting:
            d.errback(CancelledError("the connection pool withdrew it before a session was free"))
        return len(waiting)

    async def close(self) -> None:
        """QUIT every idle session and stop taking work; waits until they are closed.

        A delivery still running finishes; its session is closed after it.
        """
        self._closed = True
        self.withdraw_waiting()
        for idle in [idle for entries in self._idle.values() for idle in entries]:
            self._drop(idle)
        self._idle.clear()
        await DeferredList(list(self._quitting))

    # -- internals --------------------------------------------------------

    async def _open(self, upstream: str) -> SMTPConnection:
        endpoint = self._endpoint_factory(upstream, self._timeout)
        connection = await connect(
            endpoint, self._hostname, clock=self._clock, timeout=self._timeout, tls=self._tls,
            upstream=upstream, run_in_thread=self._run_in_thread,
        )
        self.connections_opened += 1
        connection.when_closed().addCallback(lambda _: self._forget(upstream, connection))
        return connection

    async def _send(self, connection: SMTPConnection, sender: str, recipients: Sequence[str],
                    message: Message) -> DeliveryResult:
        try:
            return await connection.send(sender, recipients, message)
        except BaseException:
            connection.abort()
            raise

    def _turn(self, upstream: str) -> Deferred[SMTPConnection | UpstreamError | None]:
        """An idle session, None (open one: fewer than ``max_sessions`` are), or wait for a busy one."""
        connection = self._take(upstream)
        busy = self._busy.get(upstream, 0)
        if connection is not None or busy < self._max_sessions:
            self._busy[upstream] = busy + 1
            return succeed(connection)
        queue = self._waiting.setdefault(upstream, deque())
        waiting: Deferred[SMTPConnection | UpstreamError | None] = Deferred(canceller=queue.remove)
        queue.append(waiting)
        return waiting

    def _take(self, upstream: str) -> SMTPConnection | None:
        entries = self._idle.get(upstream, [])
        while entries:
            idle = entries.pop()
            if idle.timer.active():
                idle.timer.cancel()
            if idle.connection.usable:
                return idle.connection
            self._quit(idle.connection)
        return None

    def _done(self, upstream: str, connection: SMTPConnection | None) -> None:
        """A delivery's turn is over: its session (if it can take more) goes to the first waiting delivery,
        else it idles; a waiting delivery gets the turn in any case (None: it opens a session)."""
        if connection is not None and (self._closed or not connection.usable
                                       or connection.transactions >= self._max_transactions):
            self._quit(connection)
            connection = None
        waiting = self._waiting.get(upstream)
        if waiting:
            next_in_line = waiting.popleft()
            if not waiting:
                del self._waiting[upstream]
            next_in_line.callback(connection)
            return
        busy = self._busy[upstream] - 1
        if busy:
            self._busy[upstream] = busy
        else:
            del self._busy[upstream]
        if connection is not None:
            timer = self._clock.callLater(self._idle_timeout, self._expire, upstream, connection)
            self._idle.setdefault(upstream, []).append(_Idle(connection, timer))

    def _expire(self, upstream: str, connection: SMTPConnection) -> None:
        entries = self._idle.get(upstream, [])
        for idle in list(entries):
            if idle.connection is connection:
                entries.remove(idle)
                self._quit(connection)

    def _forget(self, upstream: str, connection: SMTPConnection) -> None:
        """The connection closed (maybe by the server): it is idle no more."""
        entries = self._idle.get(upstream, [])
        for idle in list(entries):
            if idle.connection is connection:
                entries.remove(idle)
                if idle.timer.active():
                    idle.timer.cancel()

    def _drop(self, idle: _Idle) -> None:
        if idle.timer.active():
            idle.timer.cancel()
        self._quit(idle.connection)

    def _quit(self, connection: SMTPConnection) -> None:
        quitting = Deferred.fromCoroutine(connection.quit())
        self._quitting.add(quitting)

        def done(_: object) -> None:
            self._quitting.discard(quitting)

        quitting.addErrback(lambda failure: self.log.failure("closing a session failed", failure))
        quitting.addBoth(done)

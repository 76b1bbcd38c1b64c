"""What the protocol servers share about their connections: session ids, and small replies written at once.

:func:`new_session_id` ties one connection's log lines together (SMTP, IMAP, POP3).

:func:`write_now` writes small replies at once on a plain TCP connection, skipping Twisted's write-on-the-next-turn.

:class:`WriteGate` is the producer a server registers while it writes a long answer from memory (IMAP
FETCH batches, POP3 read-ahead), for back-pressure.

Twisted's ``transport.write`` only buffers: the socket is registered for
writing and the octets are sent on the next turn of the reactor, which then
unregisters it - two ``epoll_ctl`` calls and one more event to dispatch per
reply. An SMTP transaction is a dozen small replies each way, a POP3 RETR
answered from memory one; that overhead was a fifth of their CPU.
:func:`write_now` hands the octets to the connection's own ``writeSomeData``
when nothing is waiting before them; what the socket does not take, or any
error, goes through ``write`` as usual, so ordering, back-pressure and
connection loss work as ever. TLS connections and other transports always
take ``write``.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


def new_session_id() -> str:
    """A short random id that ties a session's log lines together (not a secret: no ``getrandom`` call each)."""
    return f"{random.getrandbits(40):010x}"


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, except that on a plain TCP connection with nothing unsent the octets go out now."""
    if (isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", True)
            and transport.connected and not transport.disconnecting
            and getattr(transport, "_tempDataLen", None) == 0 and transport.offset == len(transport.dataBuffer)):
        sent = transport.writeSomeData(data)
        if isinstance(sent, int):
            if sent == len(data):
                return
            data = data[sent:]
    transport.write(data)


@implementer(IPushProducer)
class WriteGate:
    """A push producer that holds the writer while the transport's buffer is full.

    A server that writes from memory never waits for the client by itself: a
    client that reads nothing would have the output pile up in the transport.
    Registered as the transport's producer, the gate is paused when its buffer
    is full; the writer waits for :meth:`drained` before writing more.
    """

    def __init__(self) -> None:
        self.paused = False
        #: The connection is going away (the transport stops its producer before the protocol hears).
        self.stopped = False
        self._waiters: list[defer.Deferred] = []

    def drained(self) -> defer.Deferred:
        """Fires when the transport asks for more (at once if it is not paused)."""
        if not self.paused:
            return defer.succeed(None)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        return waiter

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone: release whoever waits (it then sees that it is lost)."""
        self.stopped = True
        self.resumeProducing()

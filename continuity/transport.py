"""What the protocol servers share about their connections: session ids, and small replies written at once.

:func:`new_session_id` ties one connection's log lines together (SMTP, IMAP, POP3).

:func:`write_now` writes small replies at once, on a plain TCP connection and encrypted on a TLS one, skipping
Twisted's write-on-the-next-turn.

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
connection loss work as ever. On a TLS connection Twisted keeps each write
for the next turn, encrypts it then and sends the records a turn later:
:func:`write_now` encrypts at once and sends the records the same way, when
the TLS layer and the connection hold nothing unsent. Other transports
always take ``write``.
"""

from __future__ import annotations

import random
from typing import Any

from OpenSSL import SSL
from twisted.internet import abstract, defer, tcp
from twisted.internet.interfaces import IPushProducer
from twisted.protocols import tls
from zope.interface import implementer


def new_session_id() -> str:
    """A short random id that ties a session's log lines together (not a secret: no ``getrandom`` call each)."""
    return f"{random.getrandbits(40):010x}"


def _idle(connection: tcp.Connection) -> bool:
    """Whether ``connection`` is open and holds nothing unsent: octets may go to its socket now, in order."""
    return (connection.connected and not connection.disconnecting
            and getattr(connection, "_tempDataLen", None) == 0 and connection.offset == len(connection.dataBuffer))


def _send_now(connection: tcp.Connection, data: bytes) -> None:
    """Send ``data`` on an :func:`_idle` ``connection`` now; what the socket does not take goes to its buffer."""
    sent = connection.writeSomeData(data)
    if isinstance(sent, int):
        if sent == len(data):
            return
        data = data[sent:]
    abstract.FileDescriptor.write(connection, data)  # under the TLS layer of a STARTTLS connection too


def _tls_layers(transport: Any) -> tuple[Any, tcp.Connection] | None:
    """The TLS layer and the TCP connection under ``transport``: a STARTTLS connection (the TCP connection,
    its protocol the TLS layer) or an implicit-TLS one (the TLS layer, its transport the TCP connection)."""
    if isinstance(transport, tcp.Connection):
        layer = transport.protocol if getattr(transport, "TLS", False) else None
        connection = transport
    else:
        layer, connection = transport, getattr(transport, "transport", None)
    if isinstance(layer, tls.TLSMemoryBIOProtocol) and isinstance(connection, tcp.Connection):
        return layer, connection
    return None


def _encrypt_now(transport: Any, data: bytes) -> bool:
    """Encrypt ``data`` and send the records now, when the TLS layer holds nothing unsent before it.

    Twisted's TLS transport keeps small writes until the next turn of the reactor, encrypts them then, and
    the TCP connection sends the records a turn later again: two turns, a timer and two ``epoll_ctl`` per
    reply, as the plain connection had before :func:`write_now`. False (nothing done) when this is not a
    TLS connection as Twisted makes them, its handshake is not done, or anything waits.
    """
    layers = _tls_layers(transport)
    if layers is None or len(data) > 16384:
        return False
    layer, connection = layers
    aggregator = getattr(layer, "_aggregator", None)
    if (not getattr(layer, "_handshakeDone", False) or getattr(layer, "_lostTLSConnection", True)
            or layer.disconnecting or getattr(layer, "_appSendBuffer", True)
            or getattr(aggregator, "_buffer", True)):
        return False
    if not _idle(connection):
        return False
    session = layer._tlsConnection
    try:
        sent = session.send(data)
    except SSL.Error:
        return False  # nothing taken: Twisted's own write deals with it (a renegotiation, an error)
    records = []
    while True:
        try:
            records.append(session.bio_read(2**15))
        except SSL.WantReadError:
            break
    _send_now(connection, b"".join(records))
    if sent < len(data):
        # pyOpenSSL allows partial writes: one record at a time when the client asked for small ones (RFC 6066
        # max_fragment_length). The rest goes Twisted's way, behind the records just sent.
        tls.TLSMemoryBIOProtocol.write(layer, data[sent:])
    return True


def write_now(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, except that with nothing unsent the octets go out now: on a plain TCP
    connection, and encrypted on a TLS one (:func:`_encrypt_now`)."""
    if isinstance(transport, tcp.Connection) and not getattr(transport, "TLS", True):
        if _idle(transport):
            _send_now(transport, data)
            return
    elif _encrypt_now(transport, data):
        return
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

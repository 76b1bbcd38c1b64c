"""write_now: small replies go to a plain TCP socket at once, in order, with back-pressure and TLS kept."""

from __future__ import annotations

import socket

import pytest
from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor, StringTransport

from continuity.transport import write_now


class TLSProtocol(Protocol):
    """Stands in for the TLS layer that a connection's write goes through after startTLS."""

    def __init__(self):
        self.written = []

    def write(self, data):
        self.written.append(data)


def connection(protocol=None):
    """A Twisted TCP connection over one end of a socket pair (on a MemoryReactor), and the other end."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    reactor = MemoryReactor()
    conn = tcp.Connection(ours, protocol or Protocol(), reactor)
    conn.connected = True
    return conn, theirs, reactor


def test_write_now_sends_at_once_when_nothing_is_buffered():
    """On a plain TCP connection with nothing unsent, the octets reach the socket without a reactor turn."""
    conn, theirs, reactor = connection()
    write_now(conn, b"+OK 5 octets\r\nhello\r\n.\r\n")
    assert theirs.recv(100) == b"+OK 5 octets\r\nhello\r\n.\r\n"
    assert conn not in reactor.getWriters()


def test_write_now_keeps_the_order_behind_buffered_octets():
    """When earlier octets still wait in the transport, the new ones are queued behind them."""
    conn, theirs, reactor = connection()
    conn.write(b"first ")
    write_now(conn, b"second")
    assert conn in reactor.getWriters()
    conn.doWrite()
    assert theirs.recv(100) == b"first second"


def test_write_now_buffers_what_the_socket_does_not_take():
    """A reply larger than the socket takes is sent in part; the rest waits in the transport, in order."""
    conn, theirs, reactor = connection()
    data = bytes(range(256)) * 40000  # 10 MB: more than a socket buffer
    write_now(conn, data)
    assert conn in reactor.getWriters() and conn._tempDataLen > 0
    received = bytearray()
    while len(received) < len(data):
        conn.doWrite()
        received += theirs.recv(1 << 20)
    assert bytes(received) == data


def test_write_now_goes_through_tls_after_starttls():
    """Once TLS is started on the connection, octets always go through the TLS layer."""
    protocol = TLSProtocol()
    conn, theirs, reactor = connection(protocol)
    conn.TLS = True
    write_now(conn, b"secret")
    assert protocol.written == [b"secret"]
    theirs.setblocking(False)
    with pytest.raises(BlockingIOError):
        theirs.recv(100)


def test_write_now_on_other_transports_is_write():
    """Anything but a Twisted TCP connection gets an ordinary write."""
    transport = StringTransport()
    write_now(transport, b"data")
    assert transport.value() == b"data"

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


def tls_pair(tmp_path):
    """A Twisted TCP connection after a real STARTTLS (server side, on a MemoryReactor), and the client's end:
    a stdlib TLS socket whose handshake a thread ran while the test turned the connection by hand."""
    import ssl
    import threading

    from continuity.tls import context_factory, generate_self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("mx.example.test", str(cert), str(key))
    received = []

    class Receiving(Protocol):
        def dataReceived(self, data):
            received.append(data)

    conn, theirs, reactor = connection(Receiving())
    conn._tlsClientDefault = False  # as tcp.Server has it: the server side of the handshake
    conn.startTLS(context_factory(str(cert), str(key)))
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    client = client_context.wrap_socket(theirs, server_side=False, do_handshake_on_connect=False)
    handshake = threading.Thread(target=client.do_handshake)
    handshake.start()
    while handshake.is_alive():
        conn.doRead()
        if conn in reactor.getWriters():
            conn.doWrite()
        handshake.join(0.01)
    client.sendall(b"EHLO x\r\n")  # the server side's handshake ends when it reads the client's first record
    while not received:
        conn.doRead()
    while conn in reactor.getWriters():  # what the handshake left (TLS 1.3 session tickets)
        conn.doWrite()
    return conn, client, reactor


def test_write_now_encrypts_and_sends_at_once_after_starttls(tmp_path):
    """Over TLS too, a reply reaches the client without a reactor turn: Twisted would keep it for the next
    turn, encrypt it then, and send the records a turn later."""
    conn, client, reactor = tls_pair(tmp_path)
    write_now(conn, b"250 2.0.0 Ok\r\n")
    assert conn not in reactor.getWriters()
    assert client.recv(100) == b"250 2.0.0 Ok\r\n"
    write_now(conn, b"221 Bye\r\n")
    assert client.recv(100) == b"221 Bye\r\n"


def test_write_now_over_tls_keeps_the_order_behind_a_kept_write(tmp_path):
    """A write Twisted's TLS layer still keeps goes first: write_now queues behind it."""
    conn, client, reactor = tls_pair(tmp_path)
    conn.write(b"first ")  # kept by Twisted's TLS layer until the next turn
    write_now(conn, b"second")
    client.setblocking(False)
    with pytest.raises(ssl_want_read()):
        client.recv(100)
    conn.protocol._aggregator.flush()
    conn.doWrite()
    client.setblocking(True)
    client.settimeout(5)
    received = b""
    while len(received) < len(b"first second"):
        received += client.recv(100)
    assert received == b"first second"


def ssl_want_read():
    import ssl

    return ssl.SSLWantReadError


def test_write_now_over_tls_sends_all_of_a_reply_taken_in_part(tmp_path):
    """A TLS session may take a write one small record at a time (a client's max_fragment_length): the rest of
    the reply follows, in order, and nothing is lost."""
    conn, client, reactor = tls_pair(tmp_path)
    session = conn.protocol._tlsConnection
    whole_send = session.send

    def small_records(data, flags=0):
        return whole_send(bytes(data[:100]))

    session.send = small_records
    reply = b"".join(b"250-line %04d\r\n" % number for number in range(200)) + b"250 end\r\n"
    write_now(conn, reply)
    received = b""
    client.settimeout(5)
    while len(received) < len(reply):
        while conn in reactor.getWriters():
            conn.doWrite()
        received += client.recv(65536)
    assert received == reply


def test_write_now_encrypts_and_sends_at_once_on_an_implicit_tls_connection(tmp_path):
    """On an implicit-TLS listener (465, 993, 995) the protocol's transport is the TLS layer itself: a reply
    goes out at once there too, after the greeting Twisted still kept from before the handshake."""
    import ssl
    import threading

    from twisted.internet.protocol import Factory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from continuity.tls import context_factory, generate_self_signed

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    generate_self_signed("mx.example.test", str(cert), str(key))
    received = []

    class Greeting(Protocol):
        def connectionMade(self):
            self.transport.write(b"220 greeting\r\n")  # before the handshake: kept by Twisted's TLS layer

        def dataReceived(self, data):
            received.append(data)

    from twisted.internet.task import Clock

    reactor, clock = MemoryReactor(), Clock()
    factory = TLSMemoryBIOFactory(context_factory(str(cert), str(key)), False, Factory.forProtocol(Greeting),
                                  clock=clock)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.settimeout(5)
    layer = factory.buildProtocol(None)
    conn = tcp.Connection(ours, layer, reactor)
    conn.connected = True
    layer.makeConnection(conn)
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    client = client_context.wrap_socket(theirs, server_side=False, do_handshake_on_connect=False)
    handshake = threading.Thread(target=client.do_handshake)
    handshake.start()
    while handshake.is_alive():
        conn.doRead()
        if conn in reactor.getWriters():
            conn.doWrite()
        handshake.join(0.01)
    client.sendall(b"EHLO x\r\n")
    while not received:
        conn.doRead()
    clock.advance(0)  # Twisted's next turn, for what its TLS layer kept: the greeting
    while conn in reactor.getWriters():
        conn.doWrite()
    assert client.recv(100) == b"220 greeting\r\n"
    protocol = layer.wrappedProtocol
    write_now(protocol.transport, b"250 2.0.0 Ok\r\n")
    assert conn not in reactor.getWriters()
    assert client.recv(100) == b"250 2.0.0 Ok\r\n"

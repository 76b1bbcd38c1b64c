"""Our SMTP client: the DATA encoding, sessions in memory, and real upstreams on loopback."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLContextFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from continuity.smtp.client import (
    DeliveryResult,
    ProbeResult,
    TLSMode,
    _ClientFactory,
    connect,
    deliver,
    hostname_endpoint_factory,
    parse_upstream,
    probe,
)
from continuity.smtp.client_protocol import DataEncoder, encode_data
from continuity.smtp.pool import ConnectionPool
from continuity.testing.sink import as_dumped

HOSTNAME = "mx.example.test"
SENDER = "sender@example.test"


def result_of(d: Deferred):
    """The result of a Deferred that has fired (raises its failure)."""
    results: list = []

    def keep(result):
        results.append(result)
        return result

    d.addBoth(keep)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        d.addErrback(lambda _: None)
        results[0].raiseException()
    return results[0]


# -- DATA encoding ----------------------------------------------------------


def test_crlf_message_is_sent_unchanged():
    """A message with CRLF line endings goes out byte for byte, then .CRLF."""
    message = b"Subject: x\r\n\r\nline one\r\nline two\r\n"
    assert encode_data(message) == message + b".\r\n"


def test_bare_lf_becomes_crlf():
    """Each bare LF is sent as CRLF."""
    assert encode_data(b"a\nb\n\nc\n") == b"a\r\nb\r\n\r\nc\r\n.\r\n"


def test_cr_is_never_doubled():
    """CRLF stays CRLF and a CR run before LF collapses: never CR CR LF."""
    assert encode_data(b"a\r\nb\n") == b"a\r\nb\r\n.\r\n"
    assert encode_data(b"a\r\r\nb\r\n") == b"a\r\nb\r\n.\r\n"
    assert b"\r\r" not in encode_data(b"x\r\r\r\n\r\ny\r")


def test_bare_cr_becomes_a_line_ending():
    """A bare CR (RFC 5321 2.3.8 forbids it) is sent as one CRLF."""
    assert encode_data(b"a\rb\r\n") == b"a\r\nb\r\n.\r\n"


def test_lines_starting_with_a_dot_are_stuffed():
    """A leading dot is doubled on every line, the first one included."""
    message = b".first\r\nmid\r\n.\r\n..two\r\nnot.this\r\n"
    assert encode_data(message) == b"..first\r\nmid\r\n..\r\n...two\r\nnot.this\r\n.\r\n"


def test_dot_after_bare_lf_is_stuffed():
    """LF.LF in a message can't end the data: it becomes CRLF..CRLF."""
    assert encode_data(b"a\n.\nb\n") == b"a\r\n..\r\nb\r\n.\r\n"


def test_missing_final_line_ending_is_added():
    """A message not ending in a line ending gets a CRLF before the final dot."""
    assert encode_data(b"no newline") == b"no newline\r\n.\r\n"
    assert encode_data(b"cr at end\r") == b"cr at end\r\n.\r\n"


def test_empty_message_is_just_the_final_dot():
    """An empty message is sent as .CRLF alone."""
    assert encode_data(b"") == b".\r\n"


def _chunked(message: bytes, cuts: list[int]) -> bytes:
    encoder = DataEncoder()
    out, start = [], 0
    for cut in sorted(set(cuts)) + [len(message)]:
        out.append(encoder.encode(message[start:cut]))
        start = cut
    return b"".join(out) + encoder.finish()


def test_chunk_boundaries_do_not_change_the_stream():
    """Cutting a message anywhere (even between CR and LF) gives the same stream."""
    message = b".a\r\n\r\r\nb\n.c\rd\r\n..\r"
    for cut in range(len(message) + 1):
        assert _chunked(message, [cut]) == encode_data(message)


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_encoding_is_transparent(message, cuts):
    """Any message in any chunks: CRLF only, no premature end of data, unstuffing gives the lines back."""
    cuts = [cut for cut in cuts if cut <= len(message)]
    stream = _chunked(message, cuts)
    assert stream == encode_data(message)
    assert stream.endswith(b"\r\n.\r\n") or stream == b".\r\n"
    body = stream[: -len(b".\r\n")]
    assert body.replace(b"\r\n", b"").count(b"\r") == 0
    assert body.replace(b"\r\n", b"").count(b"\n") == 0
    lines = body.split(b"\r\n")[:-1] if body else []
    unstuffed = [line[1:] if line.startswith(b".") else line for line in lines]
    assert all(not line.startswith(b".") or line.startswith(b"..") for line in lines)
    assert b"\n".join(unstuffed) + (b"\n" if lines else b"") == as_dumped(message)


# -- sessions in memory -----------------------------------------------------


class FakeTransport(StringTransport):
    """A StringTransport that records writes, TCP_NODELAY and STARTTLS, and closes like TCP."""

    def __init__(self, clock: Clock):
        super().__init__()
        self.clock = clock
        self.writes: list[bytes] = []
        self.no_delay = False
        self.tls_options = None
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def startTLS(self, options) -> None:
        self.tls_options = options

    def loseConnection(self) -> None:
        super().loseConnection()
        self._close()

    def abortConnection(self) -> None:
        super().abortConnection()
        self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.clock.callLater(0, self.protocol.connectionLost, Failure(ConnectionDone()))


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """An endpoint whose connections are FakeTransports the test reads and answers."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.transports: list[FakeTransport] = []

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        transport = FakeTransport(self.clock)
        transport.protocol = protocol
        self.transports.append(transport)
        protocol.makeConnection(transport)
        return succeed(protocol)

    @property
    def transport(self) -> FakeTransport:
        return self.transports[-1]

    def sent(self, transport: FakeTransport | None = None) -> bytes:
        """What the client wrote since the last call (on ``transport``; default: the latest)."""
        transport = transport or self.transport
        value = transport.value()
        transport.clear()
        return value

    def reply(self, data: bytes, transport: FakeTransport | None = None) -> None:
        (transport or self.transport).protocol.dataReceived(data)

    def greet(self, ehlo: bytes = b"250-up.example.test\r\n250 PIPELINING\r\n",
              transport: FakeTransport | None = None) -> None:
        """Greeting and EHLO reply."""
        self.reply(b"220 up.example.test ESMTP\r\n", transport)
        assert self.sent(transport) == b"EHLO mx.example.test\r\n"
        self.reply(ehlo, transport)


def _deliver(endpoint, recipients=("a@example.test",), message=b"hi\r\n", **options) -> Deferred[DeliveryResult]:
    options.setdefault("clock", endpoint.clock)
    return Deferred.fromCoroutine(
        deliver(endpoint, HOSTNAME, SENDER, list(recipients), message, upstream="up.example.test:25", **options)
    )


def _drop(endpoint: ScriptedEndpoint, d: Deferred) -> None:
    """End a session the test is done with: the connection breaks, ``d`` fires."""
    endpoint.transport.protocol.connectionLost(Failure(ConnectionDone()))
    endpoint.clock.advance(0)
    assert d.called


def _finish(endpoint: ScriptedEndpoint) -> None:
    assert endpoint.sent() == b"QUIT\r\n"
    endpoint.reply(b"221 2.0.0 Bye\r\n")
    endpoint.clock.advance(0)


def test_pipelining_sends_mail_and_every_rcpt_in_one_write():
    """With PIPELINING, MAIL and all RCPTs go in one write; each recipient gets its own reply."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test", "c@example.test"])
    up.greet()
    pipelined = (
        b"MAIL FROM:<sender@example.test>\r\n"
        b"RCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n"
    )
    assert up.transport.writes[-1] == pipelined
    assert up.sent() == pipelined
    up.reply(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n450 4.2.1 Mailbox busy\r\n550 5.1.1 No such user\r\n")
    assert up.sent() == b"DATA\r\n"
    up.reply(b"354 Go ahead\r\n")
    assert up.sent() == b"hi\r\n.\r\n"
    up.reply(b"250 2.0.0 Ok: queued\r\n")
    _finish(up)
    result = result_of(d)
    assert [(r.code, r.enhanced, r.delivered, r.temporary, r.permanent) for r in result.recipients] == [
        (250, "2.0.0", True, False, False),
        (450, "4.2.1", False, True, False),
        (550, "5.1.1", False, False, True),
    ]
    assert result.result_for("b@example.test").text == "Mailbox busy"
    assert result.summary == (
        "1 delivered: 250 2.0.0 Ok: queued (in reply to end of data); "
        "1 deferred: 450 4.2.1 Mailbox busy (in reply to RCPT); "
        "1 bounced: 550 5.1.1 No such user (in reply to RCPT)"
    )


def test_without_pipelining_each_command_waits_for_its_reply():
    """Without PIPELINING, RCPT is only sent after MAIL's reply."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test"])
    up.greet(b"250 up.example.test\r\n")
    assert up.sent() == b"MAIL FROM:<sender@example.test>\r\n"
    up.reply(b"250 Ok\r\n")
    assert up.sent() == b"RCPT TO:<a@example.test>\r\n"
    up.reply(b"250 Ok\r\n")
    assert up.sent() == b"RCPT TO:<b@example.test>\r\n"
    up.reply(b"250 Ok\r\n")
    assert up.sent() == b"DATA\r\n"
    up.reply(b"354 Go\r\n")
    assert up.sent() == b"hi\r\n.\r\n"
    up.reply(b"250 Ok\r\n")
    _finish(up)
    assert len(result_of(d).delivered) == 2


def test_tcp_nodelay_is_set():
    """The client turns Nagle off on its connection."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up)
    assert up.transport.no_delay
    _drop(up, d)


def test_data_is_dot_stuffed_with_crlf_on_the_wire():
    """The message is sent dot-stuffed, with CRLF line endings and no doubled CR."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, message=b".start\n..two\r\nmixed\r\r\nend")
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n250 Ok\r\n")
    assert up.sent() == b"DATA\r\n"
    up.reply(b"354 Go\r\n")
    assert up.sent() == b"..start\r\n...two\r\nmixed\r\nend\r\n.\r\n"
    up.reply(b"250 Ok\r\n")
    _finish(up)
    assert result_of(d).delivered


def test_large_message_is_streamed_in_chunks():
    """A message bigger than a chunk is written in several writes, not one concatenation."""
    up = ScriptedEndpoint(Clock())
    message = (b"x" * 999 + b"\n") * 300
    d = _deliver(up, message=message)
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n250 Ok\r\n")
    up.sent()
    up.transport.writes.clear()
    up.reply(b"354 Go\r\n")
    assert len(up.transport.writes) > 4
    assert up.sent() == message.replace(b"\n", b"\r\n") + b".\r\n"
    up.reply(b"250 Ok\r\n")
    _finish(up)
    assert result_of(d).delivered


def test_data_waits_while_the_transport_is_full():
    """Message data is written only while the transport asks for more (streaming producer)."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, message=b"x" * 200_000)
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n250 Ok\r\n")
    up.sent()
    up.transport.protocol.pauseProducing()
    up.reply(b"354 Go\r\n")
    assert up.sent() == b""
    up.transport.protocol.resumeProducing()
    assert up.sent().endswith(b"\r\n.\r\n")
    up.reply(b"250 Ok\r\n")
    _finish(up)
    assert result_of(d).delivered


def test_data_blocked_for_the_timeout_defers():
    """A transport that stays full for the timeout: temporary, 'timeout after 30s sending the message data'."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, timeout=30)
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n250 Ok\r\n")
    up.sent()
    up.transport.protocol.pauseProducing()
    up.reply(b"354 Go\r\n")
    up.clock.advance(30)
    up.clock.advance(0)
    [result] = result_of(d).recipients
    assert (str(result), result.stage) == ("421 4.4.2 timeout after 30s sending the message data", "DATA")


def test_mail_parameters_follow_the_extensions():
    """SIZE= when SIZE is announced, BODY=8BITMIME for 8-bit content with 8BITMIME, SMTPUTF8 when needed."""
    up = ScriptedEndpoint(Clock())
    d = Deferred.fromCoroutine(
        deliver(up, HOSTNAME, "jörg@example.test", ["a@example.test"], b"caf\xc3\xa9\n", clock=up.clock)
    )
    up.greet(b"250-up\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
    assert up.sent() == "MAIL FROM:<jörg@example.test> SIZE=7 BODY=8BITMIME SMTPUTF8\r\n".encode()
    _drop(up, d)


def test_no_body_parameter_for_7bit_content():
    """A 7-bit message is sent without BODY=, even when 8BITMIME is announced."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, message=b"plain\r\n")
    up.greet(b"250-up\r\n250 8BITMIME\r\n")
    assert up.sent() == b"MAIL FROM:<sender@example.test>\r\n"
    _drop(up, d)


def test_message_bigger_than_the_announced_size_bounces_without_mail():
    """A message over the upstream's SIZE limit bounces locally (552 5.3.4) and MAIL is not sent."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, message=b"x" * 100)
    up.greet(b"250-up\r\n250 SIZE 50\r\n")
    assert up.sent() == b"QUIT\r\n"
    up.reply(b"221 Bye\r\n")
    up.clock.advance(0)
    [result] = result_of(d).recipients
    assert (result.code, result.enhanced, result.permanent) == (552, "5.3.4", True)


def test_utf8_address_without_smtputf8_bounces_only_that_recipient():
    """Without SMTPUTF8 a non-ASCII recipient bounces (553 5.6.7); the others are sent."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["jörg@example.test", "a@example.test"])
    up.greet()
    assert up.sent() == b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<a@example.test>\r\n"
    up.reply(b"250 Ok\r\n250 Ok\r\n")
    up.sent()
    up.reply(b"354 Go\r\n")
    up.sent()
    up.reply(b"250 Ok\r\n")
    _finish(up)
    result = result_of(d)
    assert result.result_for("jörg@example.test").enhanced == "5.6.7"
    assert result.result_for("a@example.test").delivered


def test_address_with_line_break_is_never_sent():
    """A recipient containing CR/LF is refused locally, so it can't inject a command."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test>\r\nDATA\r\n<b@example.test"])
    up.greet()
    assert up.sent() == b"QUIT\r\n"
    up.reply(b"221 Bye\r\n")
    up.clock.advance(0)
    assert result_of(d).recipients[0].permanent


def test_ehlo_permanent_failure_falls_back_to_helo():
    """EHLO answered 5xx: the client says HELO and sends without extensions."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up)
    up.reply(b"220 old.example.test SMTP\r\n")
    assert up.sent() == b"EHLO mx.example.test\r\n"
    up.reply(b"502 5.5.2 What?\r\n")
    assert up.sent() == b"HELO mx.example.test\r\n"
    up.reply(b"250 old.example.test\r\n")
    assert up.sent() == b"MAIL FROM:<sender@example.test>\r\n"
    up.reply(b"250 Ok\r\n")
    up.sent()
    up.reply(b"250 Ok\r\n")
    up.sent()
    up.reply(b"354 Go\r\n")
    up.sent()
    up.reply(b"250 Ok\r\n")
    _finish(up)
    assert result_of(d).delivered


def test_ehlo_temporary_failure_defers_everyone():
    """EHLO answered 4xx: no HELO, every recipient is deferred with that reply."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test"])
    up.reply(b"220 up\r\n")
    up.sent()
    up.reply(b"451 4.3.2 Try later\r\n")
    assert up.sent() == b"QUIT\r\n"
    up.reply(b"221 Bye\r\n")
    up.clock.advance(0)
    result = result_of(d)
    assert [str(r) for r in result.temporary] == ["451 4.3.2 Try later"] * 2
    assert result.stage == "EHLO"


def test_multiline_reply_keeps_every_line():
    """A multi-line refusal is one reply; its text joins the lines without the codes."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up)
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n550-5.7.1 Refused\r\n550 5.7.1 see https://example.test\r\n")
    assert up.sent() == b"RSET\r\n"
    up.reply(b"250 Ok\r\n")
    _finish(up)
    [result] = result_of(d).recipients
    assert (result.code, result.enhanced, result.text) == (550, "5.7.1", "Refused see https://example.test")


def test_reply_without_enhanced_code_gets_a_generic_one():
    """A reply without an RFC 3463 code is reported with X.0.0 of its class."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up)
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n452 Too many\r\n")
    up.sent()
    up.reply(b"250 Ok\r\n")
    _finish(up)
    assert str(result_of(d).recipients[0]) == "452 4.0.0 Too many"


def test_all_recipients_refused_sends_rset_not_data():
    """When no RCPT is accepted, the transaction is reset and DATA never sent."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test"])
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n550 5.1.1 No\r\n450 4.2.0 Later\r\n")
    assert up.sent() == b"RSET\r\n"
    up.reply(b"250 Ok\r\n")
    _finish(up)
    result = result_of(d)
    assert (len(result.permanent), len(result.temporary), result.stage) == (1, 1, "RCPT")


def test_mail_refused_with_pipelining_blames_mail_not_the_rcpt_replies():
    """A pipelined MAIL refused: every recipient gets MAIL's reply, not the 503s after it."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test"])
    up.greet()
    up.sent()
    up.reply(b"451 4.3.0 Queue full\r\n503 5.5.1 Need MAIL\r\n503 5.5.1 Need MAIL\r\n")
    _finish(up)
    result = result_of(d)
    assert [str(r) for r in result.recipients] == ["451 4.3.0 Queue full"] * 2
    assert result.summary == "2 deferred: 451 4.3.0 Queue full (in reply to MAIL)"


def test_421_at_rcpt_defers_everyone_and_closes():
    """A 421 reply ends the session: accepted and unanswered recipients get it too."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test", "c@example.test"])
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n250 Ok\r\n421 4.3.0 Shutting down\r\n")
    up.clock.advance(0)
    result = result_of(d)
    assert [str(r) for r in result.recipients] == ["421 4.3.0 Shutting down"] * 3
    assert b"DATA" not in up.sent()


def test_data_refused_defers_the_accepted_recipients():
    """DATA answered 4xx: the accepted recipients are deferred, the refused keep their reply."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, ["a@example.test", "b@example.test"])
    up.greet()
    up.sent()
    up.reply(b"250 Ok\r\n250 Ok\r\n550 5.1.1 No\r\n")
    up.sent()
    up.reply(b"451 4.3.0 Not now\r\n")
    assert up.sent() == b"RSET\r\n"
    up.reply(b"250 Ok\r\n")
    _finish(up)
    result = result_of(d)
    assert [r.code for r in result.recipients] == [451, 550]
    assert result.stage == "DATA"


def test_greeting_timeout_uses_the_clock():
    """No greeting within the timeout: temporary for all, 'timeout after 30s waiting for the greeting'."""
    clock = Clock()
    up = ScriptedEndpoint(clock)
    d = _deliver(up, ["a@example.test", "b@example.test"], timeout=30)
    clock.advance(29)
    assert not d.called
    clock.advance(1)
    clock.advance(0)
    result = result_of(d)
    assert [str(r) for r in result.recipients] == ["421 4.4.2 timeout after 30s waiting for the greeting"] * 2
    assert up.transport.closed


def test_each_reply_has_its_own_timeout():
    """Slow but steady replies never add up to a timeout; one silent stage does."""
    clock = Clock()
    up = ScriptedEndpoint(clock)
    d = _deliver(up, timeout=10)
    clock.advance(9)
    up.reply(b"220 up\r\n")
    clock.advance(9)
    up.reply(b"250 up\r\n")
    clock.advance(9)
    up.reply(b"250 Ok\r\n")
    clock.advance(10)
    clock.advance(0)
    [result] = result_of(d).recipients
    assert result.text == "timeout after 10s waiting for the reply to RCPT"
    assert (result.temporary, result.stage, result.remote) == (True, "RCPT", False)
    assert result_of(d).summary == "1 deferred: 421 4.4.2 timeout after 10s waiting for the reply to RCPT"


@implementer(IStreamClientEndpoint)
class HangingEndpoint:
    """An endpoint whose connection attempt never completes (cancellable)."""

    clock = None

    def connect(self, factory):
        return Deferred(lambda d: d.errback(Exception("cancelled")))


def test_connect_timeout_uses_the_clock():
    """A connect that never completes: temporary 421 4.4.1 'timeout after 30s connecting to ...'."""
    clock = Clock()
    d = Deferred.fromCoroutine(
        deliver(HangingEndpoint(), HOSTNAME, SENDER, ["a@example.test"], b"x", clock=clock, timeout=30,
                upstream="up.example.test:25")
    )
    clock.advance(30)
    [result] = result_of(d).recipients
    assert str(result) == "421 4.4.1 timeout after 30s connecting to up.example.test:25"
    assert result_of(d).stage == "connect"


def test_connection_lost_mid_session_defers_everyone():
    """The connection dropping after MAIL: every recipient is deferred with a clear text."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up)
    up.greet(b"250 up\r\n")
    up.sent()
    up.transport.protocol.connectionLost(Failure(ConnectionDone()))
    [result] = result_of(d).recipients
    assert str(result) == "421 4.4.2 connection lost while waiting for the reply to MAIL"


def test_malformed_reply_defers_and_closes():
    """A line that is not an SMTP reply defers the message and drops the connection."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up)
    up.reply(b"HTTP/1.1 400 Bad Request\r\n")
    up.clock.advance(0)
    [result] = result_of(d).recipients
    assert result.temporary and "malformed reply" in result.text
    assert up.transport.closed


def test_starttls_drops_plaintext_read_ahead():
    """Lines sent with the 220 to STARTTLS are discarded, never read as the EHLO reply after TLS."""
    up = ScriptedEndpoint(Clock())
    d = Deferred.fromCoroutine(connect(up, HOSTNAME, clock=up.clock, upstream="up:25"))
    up.greet(b"250-up\r\n250 STARTTLS\r\n")
    assert up.sent() == b"STARTTLS\r\n"
    up.reply(b"220 2.0.0 Go ahead\r\n250-injected\r\n250 FAKE-EXTENSION\r\n")
    assert up.transport.tls_options is not None
    assert up.sent() == b"EHLO mx.example.test\r\n"
    up.reply(b"250-up\r\n250 AFTER-TLS\r\n")
    connection = result_of(d)
    assert connection.extensions == {"AFTER-TLS": ""}


def test_starttls_plaintext_after_220_is_discarded():
    """Plaintext arriving after the 220 but before the handshake is discarded too."""
    up = ScriptedEndpoint(Clock())
    protocol = up.connect(_ClientFactory(up.clock))
    protocol = result_of(protocol)
    protocol.send_starttls()
    protocol.dataReceived(b"220 Go ahead\r\n")
    protocol.dataReceived(b"250 injected\r\n")
    assert result_of(protocol.read_reply("STARTTLS", 5)).code == 220
    protocol.start_tls(object())
    reader = protocol.read_reply("EHLO", 5)
    assert not reader.called


def test_starttls_refused_goes_on_in_plaintext():
    """STARTTLS answered 454: the session goes on in plaintext with the first EHLO's extensions."""
    up = ScriptedEndpoint(Clock())
    d = Deferred.fromCoroutine(connect(up, HOSTNAME, clock=up.clock, upstream="up:25"))
    up.greet(b"250-up\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
    assert up.sent() == b"STARTTLS\r\n"
    up.reply(b"454 4.7.0 TLS not available\r\n")
    connection = result_of(d)
    assert up.transport.tls_options is None
    assert not connection.tls and "PIPELINING" in connection.extensions


def test_tls_none_never_starts_tls():
    """With TLSMode.NONE, STARTTLS is not used even when offered."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, tls=TLSMode.NONE)
    up.greet(b"250-up\r\n250 STARTTLS\r\n")
    assert up.sent() == b"MAIL FROM:<sender@example.test>\r\n"
    _drop(up, d)


def test_tls_required_defers_when_not_offered():
    """With TLSMode.REQUIRED and no STARTTLS offered, everyone is deferred (4.7.4)."""
    up = ScriptedEndpoint(Clock())
    d = _deliver(up, tls=TLSMode.REQUIRED)
    up.greet(b"250 up\r\n")
    up.clock.advance(0)
    [result] = result_of(d).recipients
    assert (result.code, result.enhanced, result.temporary) == (421, "4.7.4", True)


def test_unsolicited_reply_closes_the_connection():
    """A reply with no command outstanding (an idle server's 421) makes the session unusable."""
    up = ScriptedEndpoint(Clock())
    d = Deferred.fromCoroutine(connect(up, HOSTNAME, clock=up.clock, upstream="up:25"))
    up.greet(b"250 up\r\n")
    connection = result_of(d)
    assert connection.usable
    up.reply(b"421 4.4.2 Idle too long\r\n")
    assert not connection.usable
    assert up.transport.closed


# -- the pool, in memory ----------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [("mail.example.test:2525", ("mail.example.test", 2525)), ("mail.example.test", ("mail.example.test", 25)),
     ("[::1]:26", ("::1", 26)), ("192.0.2.1:25", ("192.0.2.1", 25))],
)
def test_parse_upstream_reads_host_and_port(text, expected):
    """host:port, a bare host (port 25) and [IPv6]:port are understood."""
    assert parse_upstream(text) == expected


@pytest.mark.parametrize("text", ["", ":25", "host:", "host:http", "host:70000", "[::1]x"])
def test_parse_upstream_refuses_garbage(text):
    """A malformed upstream is a ValueError naming it."""
    with pytest.raises(ValueError, match="invalid upstream"):
        parse_upstream(text)



def _pool(up: ScriptedEndpoint, **options) -> ConnectionPool:
    return ConnectionPool(
        clock=up.clock, hostname=HOSTNAME, endpoint_factory=lambda upstream, timeout: up, **options
    )


def _send_one(up: ScriptedEndpoint) -> None:
    up.reply(b"250 Ok\r\n250 Ok\r\n")
    assert up.sent() == b"DATA\r\n"
    up.reply(b"354 Go\r\n")
    up.sent()
    up.reply(b"250 Ok\r\n")


def test_pool_sends_the_next_message_on_the_same_connection():
    """A second message to the same upstream reuses the session: MAIL directly, no RSET."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up)
    first = Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["a@example.test"], b"one\r\n"))
    up.greet()
    up.sent()
    _send_one(up)
    assert result_of(first).delivered
    assert pool.idle("up:25") == 1
    second = Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["b@example.test"], b"two\r\n"))
    assert up.sent() == b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<b@example.test>\r\n"
    _send_one(up)
    assert result_of(second).delivered
    assert (len(up.transports), pool.connections_opened) == (1, 1)


def test_pool_closes_idle_connections_with_quit():
    """An idle session is closed with QUIT after idle_timeout seconds."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up, idle_timeout=5)
    Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["a@example.test"], b"one\r\n"))
    up.greet()
    up.sent()
    _send_one(up)
    up.clock.advance(4.9)
    assert up.sent() == b""
    up.clock.advance(0.1)
    assert up.sent() == b"QUIT\r\n"
    up.reply(b"221 Bye\r\n")
    up.clock.advance(0)
    assert up.transport.closed and pool.idle("up:25") == 0


def test_pool_forgets_a_connection_the_server_closed():
    """A session the server closes while idle leaves the pool."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up)
    Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["a@example.test"], b"one\r\n"))
    up.greet()
    up.sent()
    _send_one(up)
    up.transport.protocol.connectionLost(Failure(ConnectionDone()))
    assert pool.idle("up:25") == 0


def test_pool_retries_on_a_new_connection_when_the_idle_one_died():
    """A reused session lost at MAIL is not an upstream failure: the message goes on a new one."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up)
    Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["a@example.test"], b"one\r\n"))
    up.greet()
    up.sent()
    _send_one(up)
    second = Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["b@example.test"], b"two\r\n"))
    up.sent()
    up.reply(b"421 4.4.2 Timeout, closing\r\n")
    up.clock.advance(0)
    assert len(up.transports) == 2
    up.greet()
    up.sent()
    _send_one(up)
    assert result_of(second).delivered


def test_pool_close_quits_idle_connections():
    """close() sends QUIT on each idle session and waits for it to close."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up)
    Deferred.fromCoroutine(pool.deliver("up:25", SENDER, ["a@example.test"], b"one\r\n"))
    up.greet()
    up.sent()
    _send_one(up)
    closed = Deferred.fromCoroutine(pool.close())
    assert up.sent() == b"QUIT\r\n"
    up.reply(b"221 Bye\r\n")
    assert not closed.called
    up.clock.advance(0)
    assert closed.called


def _transaction(up: ScriptedEndpoint, transport: FakeTransport, recipient: bytes) -> None:
    """Answer one pipelined transaction to ``recipient`` on ``transport`` (one of the pool's sessions)."""
    assert up.sent(transport) == b"MAIL FROM:<sender@example.test>\r\nRCPT TO:<" + recipient + b">\r\n"
    up.reply(b"250 Ok\r\n250 Ok\r\n", transport)
    assert up.sent(transport) == b"DATA\r\n"
    up.reply(b"354 Go\r\n", transport)
    up.sent(transport)
    up.reply(b"250 Ok\r\n", transport)


def _pool_deliveries(pool: ConnectionPool, count: int) -> list[Deferred[DeliveryResult]]:
    return [Deferred.fromCoroutine(pool.deliver("up:25", SENDER, [f"{n}@example.test"], b"x\r\n"))
            for n in range(count)]


def test_pool_opens_at_most_max_sessions_and_the_next_message_waits_for_one():
    """A burst beyond max_sessions opens no more sessions: the extra message goes on the first one freed."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up, max_sessions=2)
    first, second, third = _pool_deliveries(pool, 3)
    assert len(up.transports) == 2 and pool.sessions("up:25") == 2
    one, two = up.transports
    up.greet(transport=one)
    up.greet(transport=two)
    _transaction(up, two, b"1@example.test")
    assert result_of(second).delivered and not third.called
    _transaction(up, two, b"2@example.test")  # the waiting message took the session at once
    assert result_of(third).delivered
    _transaction(up, one, b"0@example.test")
    assert result_of(first).delivered
    assert (len(up.transports), pool.connections_opened, pool.sessions("up:25"), pool.idle("up:25")) == (2, 2, 2, 2)


def test_pool_gives_the_waiting_messages_the_failure_of_opening_a_session():
    """Opening a session fails: the messages waiting for one get that failure, no other session is tried."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up, max_sessions=1)
    first, second, third = _pool_deliveries(pool, 3)
    up.reply(b"421 4.3.2 Too busy, try later\r\n")
    up.clock.advance(0)
    for delivery in (first, second, third):
        [result] = result_of(delivery).recipients
        assert (result.code, result.stage, result.temporary) == (421, "greeting", True)
    assert len(up.transports) == 1 and pool.sessions("up:25") == 0


def test_a_waiting_message_opens_a_session_when_the_busy_one_is_closed():
    """A session closed after max_transactions hands its turn on: the waiting message opens a new one."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up, max_sessions=1, max_transactions=1)
    first, second = _pool_deliveries(pool, 2)
    up.greet(transport=up.transports[0])
    _transaction(up, up.transports[0], b"0@example.test")
    assert result_of(first).delivered
    assert up.sent(up.transports[0]) == b"QUIT\r\n"
    assert len(up.transports) == 2
    up.greet(transport=up.transports[1])
    _transaction(up, up.transports[1], b"1@example.test")
    assert result_of(second).delivered


def test_pool_close_withdraws_the_messages_waiting_for_a_session():
    """close() while a message waits for a session: that delivery is cancelled (nothing was sent), the busy
    one ends."""
    up = ScriptedEndpoint(Clock())
    pool = _pool(up, max_sessions=1)
    first, second = _pool_deliveries(pool, 2)
    second.addErrback(lambda failure: failure.trap(CancelledError) and "withdrawn")
    Deferred.fromCoroutine(pool.close())
    assert result_of(second) == "withdrawn"
    up.greet()
    _transaction(up, up.transport, b"0@example.test")
    assert result_of(first).delivered
    assert up.sent() == b"QUIT\r\n"


def test_probe_requires_ehlo_250_without_helo_fallback():
    """The probe fails on an EHLO refusal instead of trying HELO."""
    up = ScriptedEndpoint(Clock())
    d = Deferred.fromCoroutine(probe(up, HOSTNAME, "user@example.test", clock=up.clock, upstream="up:25"))
    up.reply(b"220 up\r\n")
    up.sent()
    up.reply(b"502 5.5.2 No EHLO\r\n")
    assert up.sent() == b"QUIT\r\n"
    up.reply(b"221 Bye\r\n")
    up.clock.advance(0)
    assert result_of(d) == ProbeResult(False, "EHLO answered 502 5.5.2 No EHLO")


def test_probe_sends_exactly_the_contract_commands():
    """Probe: EHLO, MAIL FROM:<>, RCPT TO, RSET, QUIT; no STARTTLS, no DATA."""
    up = ScriptedEndpoint(Clock())
    d = Deferred.fromCoroutine(probe(up, HOSTNAME, "user@example.test", clock=up.clock, upstream="up:25"))
    up.greet(b"250-up\r\n250-STARTTLS\r\n250 PIPELINING\r\n")
    assert up.sent() == b"MAIL FROM:<>\r\n"
    up.reply(b"250 2.1.0 Ok\r\n")
    assert up.sent() == b"RCPT TO:<user@example.test>\r\n"
    up.reply(b"250 2.1.5 Ok\r\n")
    assert up.sent() == b"RSET\r\n"
    up.reply(b"250 2.0.0 Ok\r\n")
    _finish(up)
    assert result_of(d) == ProbeResult(True, "RCPT TO:<user@example.test> answered 250 2.1.5 Ok")


# -- real upstreams on loopback (Postfix's smtp-sink, in-process servers) ---


def _endpoint(port: int, timeout: float = 5):
    from twisted.internet import reactor

    return TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)


async def _deliver_to(port: int, recipients, message: bytes = b"Subject: t\r\n\r\nbody\r\n", sender=SENDER,
                      timeout: float = 5, **options) -> DeliveryResult:
    from twisted.internet import reactor

    return await deliver(_endpoint(port, timeout), HOSTNAME, sender, list(recipients), message, clock=reactor,
                         timeout=timeout, upstream=f"127.0.0.1:{port}", **options)


MESSAGES = {
    "dot lines": b"Subject: dots\r\n\r\n.\r\n.leading dot\r\n..two dots\r\nend\r\n",
    "bare LF": b"Subject: bare LF\n\nline one\n.dot after LF\nline three\n",
    "CRLF": b"Subject: CRLF\r\nX-Test: yes\r\n\r\nline\r\n\r\nlast line without ending",
    "8-bit": "Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nCafé, naïve, 日本語\r\n".encode(),
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
@pytest_twisted.ensureDeferred
async def test_sink_receives_the_message_intact(smtp_sink, name):
    """smtp-sink receives the envelope and, after unstuffing, exactly the message's lines."""
    sink = smtp_sink()
    message = MESSAGES[name]
    result = await _deliver_to(sink.port, ["a@example.test", "b@example.test"], message)
    assert [r.code for r in result.recipients] == [250, 250]
    [received] = sink.messages(1)
    assert received.content == as_dumped(message)
    assert (received.sender, received.recipients) == (SENDER, ("a@example.test", "b@example.test"))
    assert received.helo == HOSTNAME
    assert ("BODY=8BITMIME" in received.mail_params) == (name == "8-bit")


@pytest_twisted.ensureDeferred
async def test_sink_receives_a_bounce_with_the_null_sender(smtp_sink):
    """A DSN goes out with MAIL FROM:<>."""
    sink = smtp_sink()
    result = await _deliver_to(sink.port, ["a@example.test"], sender="")
    assert result.delivered
    assert sink.messages(1)[0].mail_args == "<>"


@pytest_twisted.ensureDeferred
async def test_message_from_a_file_is_streamed(smtp_sink, tmp_path):
    """A message given as a file path is read in chunks and arrives intact."""
    sink = smtp_sink()
    message = b"Subject: big\r\n\r\n" + b"".join(b".%06d line of text\n" % i for i in range(20000))
    path = tmp_path / "message"
    path.write_bytes(message)
    result = await _deliver_to(sink.port, ["a@example.test"], path)
    assert result.delivered
    assert sink.messages(1)[0].content == as_dumped(message)


@pytest.mark.parametrize(
    "option, code",
    [("-r", 450), ("-f", 500)],
    ids=["soft", "hard"],
)
@pytest_twisted.ensureDeferred
async def test_sink_rejecting_rcpt_gives_per_recipient_results(smtp_sink, option, code):
    """RCPT rejected with 4xx is temporary, with 5xx permanent, for each recipient; no DATA."""
    sink = smtp_sink(option, "RCPT")
    result = await _deliver_to(sink.port, ["a@example.test", "b@example.test"])
    assert [(r.code, r.temporary, r.permanent, r.stage) for r in result.recipients] == [
        (code, code < 500, code >= 500, "RCPT")
    ] * 2
    assert sink.wait_counters(sessions=1)["messages"] == 0


@pytest.mark.parametrize(
    "command, stage",
    [("CONNECT", "greeting"), ("MAIL", "MAIL"), ("DATA", "DATA"), (".", "end of data")],
)
@pytest_twisted.ensureDeferred
async def test_sink_soft_rejecting_a_stage_defers_every_recipient(smtp_sink, command, stage):
    """A 4xx at greeting, MAIL, DATA or end of data makes every recipient temporary."""
    sink = smtp_sink("-r", command)
    result = await _deliver_to(sink.port, ["a@example.test", "b@example.test"])
    assert [(r.code, r.enhanced, r.temporary) for r in result.recipients] == [(450, "4.3.0", True)] * 2
    assert result.stage == stage
    assert result.summary == f"2 deferred: 450 4.3.0 Error: command failed (in reply to {stage})"


@pytest_twisted.ensureDeferred
async def test_sink_hard_rejecting_mail_bounces_every_recipient(smtp_sink):
    """A 5xx to MAIL makes every recipient permanent."""
    sink = smtp_sink("-f", "MAIL")
    result = await _deliver_to(sink.port, ["a@example.test", "b@example.test"])
    assert [(r.code, r.permanent) for r in result.recipients] == [(500, True)] * 2


@pytest_twisted.ensureDeferred
async def test_sink_closing_with_421_defers_every_recipient(smtp_sink):
    """A 421 and a disconnect at MAIL defers every recipient with that reply."""
    sink = smtp_sink("-Q", "MAIL")
    result = await _deliver_to(sink.port, ["a@example.test", "b@example.test"])
    assert [r.code for r in result.temporary] == [421, 421]


@pytest_twisted.ensureDeferred
async def test_sink_disconnecting_without_reply_defers_every_recipient(smtp_sink):
    """A disconnect without reply after RCPT: temporary for all, 'connection lost ...'."""
    sink = smtp_sink("-q", "RCPT")
    result = await _deliver_to(sink.port, ["a@example.test", "b@example.test"])
    assert [r.text for r in result.temporary] == ["connection lost while waiting for the reply to RCPT"] * 2


@pytest_twisted.ensureDeferred
async def test_sink_refusing_ehlo_gets_helo(smtp_sink):
    """An upstream that refuses EHLO still gets the message after HELO."""
    sink = smtp_sink("-f", "EHLO")
    result = await _deliver_to(sink.port, ["a@example.test"])
    assert result.delivered
    assert sink.messages(1)[0].helo == HOSTNAME


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_temporary(dead_port):
    """Nothing listening: temporary for all, 'connection refused by 127.0.0.1:PORT'."""
    result = await _deliver_to(dead_port.port, ["a@example.test", "b@example.test"])
    assert [str(r) for r in result.recipients] == [f"421 4.4.1 connection refused by {dead_port.address}"] * 2
    assert result.stage == "connect"


@pytest_twisted.ensureDeferred
async def test_black_hole_times_out_waiting_for_the_greeting(black_hole):
    """A server that never speaks: temporary for all after the timeout, with the stage in the text."""
    result = await _deliver_to(black_hole.port, ["a@example.test"], timeout=1)
    [recipient] = result.recipients
    assert recipient.temporary
    assert recipient.text == "timeout after 1s waiting for the greeting"


@pytest_twisted.ensureDeferred
async def test_pool_sends_two_messages_over_one_connection(smtp_sink):
    """Two messages to one upstream through the pool use one TCP session and QUIT at close."""
    from twisted.internet import reactor

    sink = smtp_sink()
    pool = ConnectionPool(clock=reactor, hostname=HOSTNAME, timeout=5,
                          endpoint_factory=lambda upstream, timeout: _endpoint(sink.port, timeout))
    first = await pool.deliver(sink.address, SENDER, ["a@example.test"], b"Subject: 1\r\n\r\none\r\n")
    second = await pool.deliver(sink.address, SENDER, ["b@example.test"], b"Subject: 2\r\n\r\ntwo\r\n")
    await pool.close()
    assert first.delivered and second.delivered
    assert pool.connections_opened == 1
    assert sink.wait_counters(sessions=1, messages=2) == {"sessions": 1, "quits": 1, "messages": 2}
    assert sorted(m.recipients for m in sink.messages(2)) == [("a@example.test",), ("b@example.test",)]


@pytest_twisted.ensureDeferred
async def test_pool_sends_a_burst_over_at_most_max_sessions(smtp_sink):
    """Thirty messages at once to a real sink travel over the five sessions the pool may open."""
    from twisted.internet import reactor

    sink = smtp_sink()
    pool = ConnectionPool(clock=reactor, hostname=HOSTNAME, timeout=5, max_sessions=5,
                          endpoint_factory=lambda upstream, timeout: _endpoint(sink.port, timeout))
    results = await DeferredList([
        Deferred.fromCoroutine(pool.deliver(sink.address, SENDER, [f"{n}@example.test"], b"Subject: x\r\n\r\nx\r\n"))
        for n in range(30)])
    await pool.close()
    assert all(ok and result.delivered for ok, result in results)
    assert pool.connections_opened == 5
    assert sink.wait_counters(messages=30, sessions=5) == {"sessions": 5, "quits": 5, "messages": 30}


@pytest_twisted.ensureDeferred
async def test_pool_with_hostname_endpoints_delivers_and_reports_refusals(smtp_sink, dead_port):
    """The production endpoint factory reaches a sink by name, and names a dead upstream in the text."""
    from twisted.internet import reactor

    sink = smtp_sink()
    pool = ConnectionPool(clock=reactor, hostname=HOSTNAME, timeout=5,
                          endpoint_factory=hostname_endpoint_factory(reactor))
    delivered = await pool.deliver(f"localhost:{sink.port}", SENDER, ["a@example.test"], b"x\r\n")
    refused = await pool.deliver(dead_port.address, SENDER, ["a@example.test"], b"x\r\n")
    await pool.close()
    assert delivered.delivered
    assert refused.summary == f"1 deferred: 421 4.4.1 connection refused by {dead_port.address}"


@pytest_twisted.ensureDeferred
async def test_probe_ok_against_a_healthy_sink(smtp_sink):
    """The probe succeeds on a healthy upstream, which receives no message."""
    from twisted.internet import reactor

    sink = smtp_sink()
    result = await probe(_endpoint(sink.port), HOSTNAME, "user@example.test", clock=reactor, timeout=5)
    assert result.ok
    assert sink.wait_counters(sessions=1) == {"sessions": 1, "quits": 1, "messages": 0}


@pytest.mark.parametrize("command", ["MAIL", "RCPT"])
@pytest_twisted.ensureDeferred
async def test_probe_fails_when_the_sink_soft_rejects(smtp_sink, command):
    """The probe fails when MAIL or RCPT gets a 4xx, and says which."""
    from twisted.internet import reactor

    sink = smtp_sink("-r", command)
    result = await probe(_endpoint(sink.port), HOSTNAME, "user@example.test", clock=reactor, timeout=5)
    assert not result.ok
    assert command in result.detail and "450 4.3.0" in result.detail


@pytest_twisted.ensureDeferred
async def test_probe_fails_on_a_dead_port(dead_port):
    """The probe fails when nothing listens."""
    from twisted.internet import reactor

    result = await probe(_endpoint(dead_port.port), HOSTNAME, "user@example.test", clock=reactor, timeout=5,
                         upstream=dead_port.address)
    assert result == ProbeResult(False, f"connection refused by {dead_port.address}")


# -- an in-process upstream with STARTTLS -----------------------------------


@implementer(IOpenSSLContextFactory)
@attrs.frozen
class ServerTLS:
    """A server context factory from ``cryptography`` objects (no deprecated pyOpenSSL X509/PKey)."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def getContext(self) -> SSL.Context:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_privatekey(self.key)
        context.use_certificate(self.certificate)
        return context


def _self_signed() -> ServerTLS:
    """A fresh self-signed certificate, as a stranger's upstream would have."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "upstream.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return ServerTLS(key, certificate)


@attrs.define
class Script:
    """How the in-process upstream behaves, and what it saw."""

    tls: ServerTLS | None = None
    starttls_reply: bytes = b"220 2.0.0 Ready to start TLS\r\n"
    read_ahead: bytes = b""  # sent in the same write as the STARTTLS reply
    break_tls: bool = False  # answer the TLS ClientHello with plaintext
    rcpt: Callable[[bytes], bytes] = lambda address: b"250 2.1.5 Ok\r\n"
    commands: list[tuple[bool, bytes]] = attrs.Factory(list)  # (under TLS, line)
    messages: list[bytes] = attrs.Factory(list)
    connections: int = 0


class ScriptedUpstream(LineReceiver):
    """A small ESMTP server for what smtp-sink can't do: STARTTLS, per-address replies."""

    delimiter = b"\r\n"

    def __init__(self, script: Script):
        self.script = script
        self.secure = False
        self.broken = False
        self.data: list[bytes] | None = None

    def dataReceived(self, data: bytes):
        if self.broken:
            self.transport.write(b"500 5.5.1 This is not TLS\r\n")
            self.transport.loseConnection()
            return
        super().dataReceived(data)

    def connectionMade(self):
        self.script.connections += 1
        self.transport.write(b"220 upstream.example.test ESMTP\r\n")

    def lineReceived(self, line: bytes):
        if self.data is not None:
            if line == b".":
                self.script.messages.append(b"".join(self.data))
                self.data = None
                self.transport.write(b"250 2.0.0 Ok: queued\r\n")
            else:
                self.data.append(line + b"\r\n")
            return
        self.script.commands.append((self.secure, line))
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"EHLO":
            offer = b"250-STARTTLS\r\n" if self.script.tls and not self.secure else b""
            after = b"250-X-AFTER-TLS\r\n" if self.secure else b""
            self.transport.write(b"250-upstream.example.test\r\n" + offer + after + b"250 PIPELINING\r\n")
        elif verb == b"STARTTLS":
            self.transport.write(self.script.starttls_reply + self.script.read_ahead)
            if self.script.break_tls:
                self.broken = True
            elif self.script.starttls_reply.startswith(b"2"):
                self.secure = True
                self.transport.startTLS(self.script.tls)
        elif verb == b"RCPT":
            self.transport.write(self.script.rcpt(line[len(b"RCPT TO:"):]))
        elif verb == b"DATA":
            self.data = []
            self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
        elif verb == b"QUIT":
            self.transport.write(b"221 2.0.0 Bye\r\n")
            self.transport.loseConnection()
        else:
            self.transport.write(b"250 2.0.0 Ok\r\n")


@pytest.fixture
def scripted_upstream():
    """A function ``start(Script) -> port`` running a ScriptedUpstream on 127.0.0.1."""
    from twisted.internet import reactor

    ports = []

    def start(script: Script) -> int:
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: ScriptedUpstream(script)), interface="127.0.0.1")
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_starttls_is_used_when_offered(scripted_upstream):
    """Offered STARTTLS is used (self-signed certificate accepted); EHLO and the mail go encrypted."""
    from twisted.internet import reactor

    script = Script(tls=_self_signed())
    port = scripted_upstream(script)
    connection = await connect(_endpoint(port), HOSTNAME, clock=reactor, timeout=5)
    result = await deliver(connection, HOSTNAME, SENDER, ["a@example.test"], b"Subject: tls\r\n\r\nsecret\r\n",
                           clock=reactor)
    assert connection.tls and "X-AFTER-TLS" in connection.extensions
    await connection.quit()
    assert result.delivered
    assert script.messages == [b"Subject: tls\r\n\r\nsecret\r\n"]
    assert [(secure, line.split(b" ")[0]) for secure, line in script.commands] == [
        (False, b"EHLO"), (False, b"STARTTLS"), (True, b"EHLO"), (True, b"MAIL"), (True, b"RCPT"),
        (True, b"DATA"), (True, b"QUIT"),
    ]


@pytest_twisted.ensureDeferred
async def test_starttls_read_ahead_is_ignored_over_a_real_handshake(scripted_upstream):
    """Replies injected in plaintext with the STARTTLS 220 are ignored; the EHLO reply comes over TLS."""
    from twisted.internet import reactor

    script = Script(tls=_self_signed(), read_ahead=b"250-injected\r\n250 X-INJECTED\r\n")
    port = scripted_upstream(script)
    connection = await connect(_endpoint(port), HOSTNAME, clock=reactor, timeout=5)
    result = await deliver(connection, HOSTNAME, SENDER, ["a@example.test"], b"x\r\n", clock=reactor)
    await connection.quit()
    assert connection.tls
    assert "X-INJECTED" not in connection.extensions and "X-AFTER-TLS" in connection.extensions
    assert result.delivered


@pytest_twisted.ensureDeferred
async def test_starttls_refused_over_the_network_delivers_in_plaintext(scripted_upstream):
    """STARTTLS answered 454: the message is delivered in plaintext on the same connection."""
    script = Script(tls=_self_signed(), starttls_reply=b"454 4.7.0 TLS not available\r\n")
    port = scripted_upstream(script)
    result = await _deliver_to(port, ["a@example.test"])
    assert result.delivered
    assert script.connections == 1 and not any(secure for secure, _ in script.commands)


@pytest_twisted.ensureDeferred
async def test_failed_tls_handshake_falls_back_to_plaintext(scripted_upstream):
    """220 to STARTTLS and then no TLS: the message goes on one more connection, in plaintext."""
    script = Script(tls=_self_signed(), break_tls=True)
    port = scripted_upstream(script)
    result = await _deliver_to(port, ["a@example.test"])
    assert result.delivered
    assert script.connections == 2
    assert script.messages == [b"Subject: t\r\n\r\nbody\r\n"]


@pytest_twisted.ensureDeferred
async def test_mixed_recipient_replies_over_the_network(scripted_upstream):
    """Each recipient gets its own upstream reply: 250 delivered, 450 temporary, 550 permanent."""

    def rcpt(address: bytes) -> bytes:
        if address.startswith(b"<busy"):
            return b"450 4.2.1 Mailbox busy\r\n"
        if address.startswith(b"<nobody"):
            return b"550 5.1.1 No such user\r\n"
        return b"250 2.1.5 Ok\r\n"

    script = Script(rcpt=rcpt)
    port = scripted_upstream(script)
    result = await _deliver_to(port, ["ok@example.test", "busy@example.test", "nobody@example.test"])
    assert [r.recipient for r in result.delivered] == ["ok@example.test"]
    assert [str(r) for r in result.temporary] == ["450 4.2.1 Mailbox busy"]
    assert [str(r) for r in result.permanent] == ["550 5.1.1 No such user"]
    assert len(script.messages) == 1

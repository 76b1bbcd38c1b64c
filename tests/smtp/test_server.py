"""The hardened ESMTP server protocol: one test per rule (CONTRACT 2 [limits], 4 "Bad input")."""

from __future__ import annotations

import base64
import datetime

import attrs
import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, protocol, ssl, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.basic import LineReceiver
from zope.interface import directlyProvides, implementer
from zope.interface.verify import verifyObject

from continuity.config import LimitsConfig
from continuity.envelope import Address
from continuity.errors import DeliveryError
from continuity.smtp import codes
from continuity.smtp.server import ISMTPPolicy, Session, SMTPServer, SMTPServerFactory

HOST = "mx.example.test"
LIMITS = LimitsConfig(
    max_message_size=10_000,
    max_recipients=3,
    max_hops=5,
    max_errors=5,
    idle_timeout=300,
    connections_per_ip=50,
    auth_failures=10,
    messages_per_hour=300,
)
PEER = IPv4Address("TCP", "192.0.2.7", 40000)


@implementer(ISMTPPolicy)
class FakePolicy:
    """Records what the server asks; answers from simple rules."""

    def __init__(self) -> None:
        self.sessions: list[Session] = []
        self.lost: list[Session] = []
        self.senders: list[tuple[Address | None, dict]] = []
        self.recipients: list[tuple[Address, str, dict]] = []
        self.messages: list[tuple[object, bytes]] = []
        self.logins: list[tuple[str, str, str]] = []
        self.refuse_connection: Exception | None = None
        self.accept = lambda envelope, data: f"Q{len(self.messages) - 1}"

    def connection_made(self, session):
        self.sessions.append(session)
        if self.refuse_connection is not None:
            raise self.refuse_connection

    def connection_lost(self, session):
        self.lost.append(session)

    def check_sender(self, session, sender, parameters):
        self.senders.append((sender, parameters))

    def check_recipient(self, session, recipient, raw, parameters):
        self.recipients.append((recipient, raw, parameters))
        if recipient.local == "unknown":
            raise codes.PermanentFailure("<unknown@example.test>: Recipient address rejected", 550, "5.1.1")

    def accept_message(self, session, envelope, data):
        self.messages.append((envelope, data))
        return self.accept(envelope, data)

    def authenticate(self, session, mechanism, username, password):
        self.logins.append((mechanism, username, password))
        return username if (username, password) == ("alice@example.test", "Secret 1") else None


@implementer(ITLSTransport)
class TLSCapableTransport(StringTransport):
    """A StringTransport on which STARTTLS can be started (it only records the context)."""

    tls_context = None

    def startTLS(self, context, normal=True):
        self.tls_context = context


@attrs.define
class Client:
    server: SMTPServer
    transport: StringTransport
    clock: task.Clock
    policy: FakePolicy

    def send(self, data: bytes) -> list[str]:
        """Feed ``data`` to the server; the reply lines it wrote in answer."""
        self.transport.clear()
        self.server.dataReceived(data)
        return self.replies()

    def replies(self) -> list[str]:
        return self.transport.value().decode("ascii").split("\r\n")[:-1]

    def ehlo(self) -> list[str]:
        return self.send(b"EHLO client.example.org\r\n")

    def transaction(self, body: bytes = b"Subject: hi\r\n\r\nhello\r\n") -> list[str]:
        self.ehlo()
        return self.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + body + b".\r\n")


def connect(
    policy: FakePolicy | None = None,
    limits: LimitsConfig = LIMITS,
    transport: StringTransport | None = None,
    tls_context: object = None,
    auth_enabled: bool = False,
    require_tls_for_auth: bool = True,
    implicit_tls: bool = False,
) -> Client:
    policy = policy or FakePolicy()
    clock = task.Clock()
    factory = SMTPServerFactory(
        policy,
        HOST,
        limits,
        tls_context=tls_context,
        auth_enabled=auth_enabled,
        require_tls_for_auth=require_tls_for_auth,
        clock=clock,
        implicit_tls=implicit_tls,
    )
    server = factory.buildProtocol(PEER)
    transport = transport if transport is not None else StringTransport(peerAddress=PEER)
    server.makeConnection(transport)
    return Client(server, transport, clock, policy)


def tls_client(**kwargs) -> Client:
    """A client over a transport that is already TLS (an implicit-TLS listener)."""
    transport = StringTransport(peerAddress=PEER)
    directlyProvides(transport, ISSLTransport)
    return connect(transport=transport, **kwargs)


def b64(text: str | bytes) -> bytes:
    return base64.b64encode(text.encode() if isinstance(text, str) else text)


# -- Greeting, EHLO and the simple commands ------------------------------------


def test_fake_policy_provides_the_interface():
    """The test policy implements every ISMTPPolicy method (the seam is complete)."""
    assert verifyObject(ISMTPPolicy, FakePolicy())


def test_greeting_names_the_host():
    """The banner is `220 <hostname> ESMTP continuity`."""
    client = connect()
    assert client.replies() == [f"220 {HOST} ESMTP continuity"]


def test_ehlo_lists_the_keywords():
    """EHLO announces PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8, HELP; no STARTTLS/AUTH unless set up."""
    client = connect()
    assert client.ehlo() == [
        f"250-{HOST}",
        "250-PIPELINING",
        "250-SIZE 10000",
        "250-ENHANCEDSTATUSCODES",
        "250-8BITMIME",
        "250-SMTPUTF8",
        "250 HELP",
    ]


def test_ehlo_offers_starttls_with_a_context():
    """STARTTLS is announced when a TLS context is given and the transport can start TLS."""
    client = connect(transport=TLSCapableTransport(peerAddress=PEER), tls_context=object())
    assert "250-STARTTLS" in client.ehlo()


def test_helo_works():
    """HELO gets a plain `250 <hostname>` and allows a transaction."""
    client = connect()
    assert client.send(b"HELO client.example.org\r\n") == [f"250 {HOST}"]
    assert client.send(b"MAIL FROM:<bob@example.org>\r\n") == ["250 2.1.0 Ok"]
    assert client.server.session.with_protocol == "SMTP"


def test_helo_needs_a_hostname():
    """HELO/EHLO without an argument is a syntax error."""
    client = connect()
    assert client.send(b"EHLO\r\n") == ["501 5.5.4 Syntax: EHLO hostname"]


def test_help_lists_the_commands():
    """HELP answers 214 with the commands."""
    client = connect()
    replies = client.send(b"HELP\r\n")
    assert replies[0].startswith("214-2.0.0 Commands: HELO EHLO MAIL RCPT DATA")
    assert replies[-1].startswith("214 2.0.0 ")


def test_vrfy_discloses_nobody():
    """VRFY answers 252 without saying whether the user exists."""
    client = connect()
    assert client.send(b"VRFY alice\r\n")[0].startswith("252 2.0.0 ")


def test_noop_rset_quit():
    """NOOP and RSET answer 250 2.0.0 Ok, QUIT 221 and closes."""
    client = connect()
    assert client.send(b"NOOP\r\nRSET\r\nQUIT\r\n") == ["250 2.0.0 Ok", "250 2.0.0 Ok", "221 2.0.0 Bye"]
    assert client.transport.disconnecting


def test_commands_are_case_insensitive_and_accept_bare_lf():
    """`ehlo` in lower case and a command ended by bare LF (nc) are understood."""
    client = connect()
    assert client.send(b"ehlo x.example\n")[0] == f"250-{HOST}"


# -- Sequencing and syntax ---------------------------------------------------


def test_unknown_command_is_not_recognized():
    """An unknown verb gets `502 5.5.2 Error: command not recognized`."""
    client = connect()
    assert client.send(b"BDAT 10 LAST\r\n") == ["502 5.5.2 Error: command not recognized"]


def test_mail_needs_helo_first():
    """MAIL before HELO/EHLO is out of sequence."""
    client = connect()
    assert client.send(b"MAIL FROM:<bob@example.org>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"]


def test_rcpt_needs_mail_first():
    """RCPT without MAIL gets `503 5.5.1 Error: need MAIL command`."""
    client = connect()
    client.ehlo()
    assert client.send(b"RCPT TO:<alice@example.test>\r\n") == ["503 5.5.1 Error: need MAIL command"]


def test_data_needs_rcpt_first():
    """DATA without RCPT is out of sequence and does not enter DATA mode."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    assert client.send(b"DATA\r\n") == ["503 5.5.1 Error: need RCPT command"]
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_data_after_only_refused_recipients_is_554():
    """DATA when every RCPT was refused gets `554 5.5.1 Error: no valid recipients`."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<unknown@example.test>\r\n")
    assert client.send(b"DATA\r\n") == ["554 5.5.1 Error: no valid recipients"]


def test_nested_mail_is_refused():
    """A second MAIL inside a transaction is refused."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    assert client.send(b"MAIL FROM:<carol@example.org>\r\n") == ["503 5.5.1 Error: nested MAIL command"]


def test_mail_syntax_error_shows_the_syntax():
    """A MAIL without FROM: answers `501 5.5.4 Syntax: MAIL FROM:<address>`."""
    client = connect()
    client.ehlo()
    assert client.send(b"MAIL bob@example.org\r\n") == ["501 5.5.4 Syntax: MAIL FROM:<address>"]


def test_rset_forgets_the_transaction():
    """After RSET, RCPT needs a new MAIL."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRSET\r\n")
    assert client.send(b"RCPT TO:<alice@example.test>\r\n") == ["503 5.5.1 Error: need MAIL command"]


@pytest.mark.parametrize(
    "path",
    [
        "<@relay.example,@other.example:victim@target.example>",  # source route
        "<victim%target.example@example.test>",  # percent hack
        "<target.example!victim@example.test>",  # bang path
        '<"victim@target.example"@example.test>',  # quoted local part with @
        "<victim@target.example@example.test>",  # several @
    ],
    ids=["source-route", "percent-hack", "bang-path", "quoted-local-part", "several-at"],
)
def test_relay_tricks_in_rcpt_are_refused(path):
    """Address tricks that could open a relay get 553 5.1.3 and never reach the policy."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    reply = client.send(f"RCPT TO:{path}\r\n".encode())
    assert len(reply) == 1 and reply[0].startswith("553 5.1.3 ")
    assert client.policy.recipients == []


def test_relay_tricks_in_mail_are_refused():
    """The sender address goes through the same checks (553 5.1.7)."""
    client = connect()
    client.ehlo()
    reply = client.send(b"MAIL FROM:<bob%evil.example@example.org>\r\n")
    assert reply[0].startswith("553 5.1.7 ") and client.policy.senders == []


def test_null_sender_is_accepted():
    """`MAIL FROM:<>` (bounces) reaches the policy as None."""
    client = connect()
    client.ehlo()
    assert client.send(b"MAIL FROM:<>\r\n") == ["250 2.1.0 Ok"]
    assert client.policy.senders == [(None, {})]


def test_postmaster_without_domain_is_this_server():
    """`RCPT TO:<Postmaster>` is accepted as postmaster@<hostname> (RFC 5321 4.1.1.3)."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<>\r\n")
    assert client.send(b"RCPT TO:<Postmaster>\r\n") == ["250 2.1.5 Ok"]
    assert client.policy.recipients[0][0] == Address("postmaster", HOST)


def test_policy_refusal_is_sent_as_is():
    """A PermanentFailure from the policy is the reply."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    assert client.send(b"RCPT TO:<unknown@example.test>\r\n") == [
        "550 5.1.1 <unknown@example.test>: Recipient address rejected"
    ]


def test_unknown_mail_parameter_is_555():
    """An unannounced MAIL parameter gets 555 5.5.4."""
    client = connect()
    client.ehlo()
    assert client.send(b"MAIL FROM:<bob@example.org> RET=HDRS\r\n") == ["555 5.5.4 Error: unsupported parameter: RET"]


def test_mail_parameters_reach_the_policy_and_envelope():
    """SIZE, BODY and SMTPUTF8 are parsed, passed to check_sender and kept in the Envelope."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org> SIZE=100 body=8bitmime SMTPUTF8\r\n")
    assert client.policy.senders[0][1] == {"SIZE": "100", "BODY": "8bitmime", "SMTPUTF8": None}
    client.send(b"RCPT TO:<alice@example.test>\r\nDATA\r\nhello\r\n.\r\n")
    envelope = client.policy.messages[0][0]
    assert (envelope.declared_size, envelope.body, envelope.smtputf8) == (100, "8BITMIME", True)


def test_non_ascii_address_needs_smtputf8():
    """A UTF-8 address without the SMTPUTF8 parameter gets 553 5.6.7; with it, it is accepted."""
    client = connect()
    client.ehlo()
    assert client.send("MAIL FROM:<jörg@example.org>\r\n".encode())[0].startswith("553 5.6.7 ")
    assert client.send("MAIL FROM:<jörg@example.org> SMTPUTF8\r\n".encode()) == ["250 2.1.0 Ok"]


# -- Limits ------------------------------------------------------------------


def test_size_parameter_over_the_limit_is_552_at_mail():
    """SIZE= larger than max_message_size is refused at MAIL with 552 5.3.4."""
    client = connect()
    client.ehlo()
    assert client.send(b"MAIL FROM:<bob@example.org> SIZE=10001\r\n") == [
        "552 5.3.4 Error: message size exceeds fixed limit"
    ]
    assert client.policy.senders == []


def test_max_recipients_is_452():
    """Beyond max_recipients, RCPT gets 452 4.5.3 Error: too many recipients."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    for number in range(3):
        assert client.send(f"RCPT TO:<user{number}@example.test>\r\n".encode()) == ["250 2.1.5 Ok"]
    assert client.send(b"RCPT TO:<user9@example.test>\r\n") == ["452 4.5.3 Error: too many recipients"]


def test_oversized_message_is_read_to_the_end_then_552_and_the_session_goes_on():
    """Without SIZE=, a too big message is read to its real end, refused 552 5.3.4, not kept; the next one works."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    line = b"x" * 98 + b"\r\n"
    for _ in range(200):  # 20000 octets, twice the limit, with a command-looking line inside
        assert client.send(line) == []
    assert client.server._reader.message() == b""  # nothing kept once over the limit
    assert client.send(b"QUIT\r\n") == []  # still data
    assert client.send(b".\r\n") == ["552 5.3.4 Error: message file too big"]
    assert client.policy.messages == []
    assert client.transaction()[-1] == "250 2.0.0 Ok: queued as Q0"


def test_too_many_hops_is_554():
    """More Received: fields than max_hops is a mail loop: 554 5.4.6 after the end of data."""
    client = connect()
    headers = b"".join(b"Received: from hop%d.example by relay\r\n" % n for n in range(6))
    assert client.transaction(headers + b"Subject: loop\r\n\r\nbody\r\n")[-1] == "554 5.4.6 Error: too many hops"
    assert client.policy.messages == []


def test_hops_at_the_limit_are_accepted():
    """Exactly max_hops Received: fields (folded ones counted once) pass."""
    client = connect()
    headers = b"".join(b"Received: from hop%d.example\r\n\tby relay\r\n" % n for n in range(5))
    assert client.transaction(headers + b"\r\nReceived: in the body, not counted\r\n")[-1].startswith("250 2.0.0")


def test_command_line_too_long_is_500_and_the_session_stays_sane():
    """A command line over 2048 octets gets 500 5.5.2 Error: line too long; the next command works."""
    client = connect()
    assert client.send(b"NOOP " + b"a" * 3000 + b"\r\nNOOP\r\n") == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]


def test_overlong_line_arriving_in_pieces_is_discarded_to_its_end():
    """An overlong line sent in pieces is thrown away up to its line end, then answered once."""
    client = connect()
    assert client.send(b"MAIL FROM:<" + b"a" * 3000) == []
    assert client.send(b"b" * 3000) == []
    assert client.send(b">\r\nNOOP\r\n") == ["500 5.5.2 Error: line too long", "250 2.0.0 Ok"]


def test_endless_line_closes_the_connection():
    """A line still without end after 64 KiB gets 421 and the connection is closed."""
    client = connect()
    client.send(b"x" * 70_000)
    assert client.replies() == [f"421 4.7.0 {HOST} Error: line too long, closing connection"]
    assert client.transport.disconnecting


def test_max_errors_closes_with_421():
    """After max_errors bad commands the server answers 421 4.7.0 too many errors and closes."""
    client = connect()
    replies = client.send(b"FOO\r\n" * 6)
    assert replies == ["502 5.5.2 Error: command not recognized"] * 5 + [f"421 4.7.0 {HOST} Error: too many errors"]
    assert client.transport.disconnecting


def test_idle_timeout_is_421():
    """A client silent for idle_timeout gets 421 4.4.2 timeout exceeded and is closed."""
    client = connect()
    client.ehlo()
    client.transport.clear()
    client.clock.advance(299)
    assert not client.transport.disconnecting
    client.clock.advance(2)
    assert client.replies() == [f"421 4.4.2 {HOST} Error: timeout exceeded"]
    assert client.transport.disconnecting


def test_idle_timeout_is_reset_by_traffic():
    """Any octet from the client restarts the idle timer."""
    client = connect()
    client.clock.advance(200)
    client.send(b"NOOP\r\n")
    client.clock.advance(200)
    assert not client.transport.disconnecting


def test_idle_timeout_during_data_is_421_and_nothing_is_accepted():
    """A client silent mid-DATA is closed after idle_timeout with 421; the partial message is not passed on."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: half\r\n")
    client.transport.clear()
    client.clock.advance(301)
    assert client.replies() == [f"421 4.4.2 {HOST} Error: timeout exceeded"]
    assert client.transport.disconnecting
    client.server.connectionLost(protocol.connectionDone)
    assert client.policy.messages == []


def test_connection_lost_during_data_accepts_nothing():
    """A client that disconnects before <CRLF>.<CRLF> has sent no message: nothing reaches the policy."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: half\r\n\r\nbo")
    client.server.connectionLost(protocol.connectionDone)
    assert client.policy.messages == []
    assert client.policy.lost == [client.server.session]


def test_policy_may_refuse_the_connection():
    """connection_made raising 421 4.7.0 sends that instead of the banner and closes."""
    policy = FakePolicy()
    policy.refuse_connection = codes.TemporaryFailure(f"{HOST} Error: too many connections from 192.0.2.7", 421, "4.7.0")
    client = connect(policy)
    assert client.replies() == [f"421 4.7.0 {HOST} Error: too many connections from 192.0.2.7"]
    assert client.transport.disconnecting


def test_connection_lost_is_reported_to_the_policy():
    """An admitted connection is reported to connection_lost when it ends."""
    client = connect()
    client.server.connectionLost(protocol.connectionDone)
    assert client.policy.lost == [client.server.session]


def test_session_knows_the_peer():
    """The session carries the peer IP and a session id."""
    client = connect()
    session = client.policy.sessions[0]
    assert session.peer_ip == "192.0.2.7" and len(session.session_id) == 10 and not session.tls


# -- DATA ----------------------------------------------------------------------


def test_dot_unstuffing():
    """A leading dot is removed from each line (RFC 5321 4.5.2); `..` becomes `.`."""
    client = connect()
    client.transaction(b"Subject: dots\r\n\r\n..\r\n...leading\r\nmiddle . dot\r\n")
    assert client.policy.messages[0][1] == b"Subject: dots\r\n\r\n.\r\n..leading\r\nmiddle . dot\r\n"


def test_message_reaches_the_policy_with_its_envelope():
    """accept_message gets the envelope and the message without a Received field."""
    client = connect()
    assert client.transaction()[-1] == "250 2.0.0 Ok: queued as Q0"
    envelope, data = client.policy.messages[0]
    assert envelope.sender == Address("bob", "example.org")
    assert envelope.recipients == (Address("alice", "example.test"),)
    assert data == b"Subject: hi\r\n\r\nhello\r\n"


def test_pipelining_mail_rcpt_data_in_one_packet():
    """MAIL, RCPT and DATA in one packet are answered in order (RFC 2920)."""
    client = connect()
    client.ehlo()
    replies = client.send(
        b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\n"
        b"RCPT TO:<unknown@example.test>\r\nDATA\r\n"
    )
    assert replies == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "550 5.1.1 <unknown@example.test>: Recipient address rejected",
        "354 End data with <CR><LF>.<CR><LF>",
    ]


def test_pipelined_commands_wait_for_a_slow_policy():
    """A command waits for the previous one's (deferred) answer: replies stay in order."""
    client = connect()
    client.ehlo()
    pending = defer.Deferred()
    client.policy.check_sender = lambda session, sender, parameters: pending
    replies = client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert replies == []
    assert client.transport.producerState == "producing"  # a few commands wait in the inbox
    pending.callback(None)
    assert client.replies() == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    assert client.transport.producerState == "producing"


def test_input_piling_up_behind_a_slow_policy_pauses_the_transport_until_it_answers():
    """Past 64 KiB waiting, the client is no longer read (it is not closed: that is 1 MiB)."""
    client = connect()
    client.ehlo()
    pending = defer.Deferred()
    client.policy.check_sender = lambda session, sender, parameters: pending
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    assert client.send(b"NOOP\r\n" * 5000) == [] and client.transport.producerState == "producing"
    assert client.send(b"NOOP\r\n" * 10000) == [] and client.transport.producerState == "paused"
    pending.callback(None)
    assert client.replies()[:2] == ["250 2.1.0 Ok", "250 2.0.0 Ok"] and len(client.replies()) == 15001
    assert client.transport.producerState == "producing"


def test_flood_while_the_policy_works_closes():
    """A client pushing over 1 MiB of commands while a check is pending is closed with 421."""
    client = connect()
    client.ehlo()
    client.policy.check_sender = lambda session, sender, parameters: defer.Deferred()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    replies = client.send(b"NOOP\r\n" * 200_000)
    assert replies == [f"421 4.7.0 {HOST} Error: too much pipelined input"]
    assert client.transport.disconnecting


def test_data_arriving_byte_by_byte():
    """A message sent one octet at a time ends at the real end of data, with the right content."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    for octet in b"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\nNOOP\r\n":
        client.server.dataReceived(bytes([octet]))
    assert client.replies()[-2:] == ["250 2.0.0 Ok: queued as Q0", "250 2.0.0 Ok"]
    assert client.policy.messages[0][1] == b"Subject: x\r\n\r\n.dot\r\nbody\r\n"


@pytest.mark.parametrize(
    "bad, reply",
    [
        (b"bare\nline feed\r\n", "550 5.5.2 Error: bare <LF> received"),
        (b"bare\rcarriage return\r\n", "550 5.5.2 Error: bare <CR> received"),
        (b"a NUL \x00 octet\r\n", "550 5.6.0 Error: NUL character received"),
    ],
    ids=["bare-lf", "bare-cr", "nul"],
)
def test_bad_octets_in_data_are_refused_after_the_real_end(bad, reply):
    """Bare LF, bare CR and NUL are refused, but only at the real <CRLF>.<CRLF>."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert client.send(b"Subject: x\r\n\r\n" + bad) == []
    assert client.send(b".\r\n") == [reply]
    assert client.policy.messages == []
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


@pytest.mark.parametrize(
    "fake_end",
    [b"\n.\n", b"\n.\r\n", b"\r\n.\n", b"\r.\r", b"\r.\r\n"],
    ids=["lf-dot-lf", "lf-dot-crlf", "crlf-dot-lf", "cr-dot-cr", "cr-dot-crlf"],
)
def test_smuggled_end_of_data_does_not_end_data(fake_end):
    """`<LF>.<LF>` and kin are message content: no second transaction can be smuggled (CVE-2023-51766)."""
    client = connect()
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    smuggled = (
        b"Subject: smuggle\r\n\r\na"
        + fake_end
        + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
        b"Subject: forged\r\n\r\nforged\r\n"
    )
    assert client.send(smuggled) == []
    assert client.send(b".\r\n")[0].startswith("550 5.5.2 Error: bare")
    assert [sender for sender, _ in client.policy.senders] == [Address("bob", "example.org")]
    assert client.policy.messages == []


def test_long_data_line_does_not_reach_command_mode():
    """A DATA line far over the line limit stays message content; what follows it is not a command,
    and the message is refused at the real end of data."""
    client = connect(limits=attrs.evolve(LIMITS, max_message_size=1_000_000))
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    long_line = b"A" * 300_000
    assert client.send(long_line[:150_000]) == []
    assert client.send(long_line[150_000:] + b"\r\nRSET\r\nMAIL FROM:<evil@example.net>\r\n") == []
    assert client.send(b".\r\n") == ["554 5.6.0 Error: message has a line longer than 2048 octets"]
    assert client.policy.messages == []
    assert len(client.policy.senders) == 1
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


@pytest.mark.parametrize("length, accepted", [(2048, True), (2049, False)])
def test_data_line_limit_is_2048_octets(length, accepted):
    """A message line of 2048 octets (without CRLF) is accepted; one more octet refuses the message."""
    client = connect()
    body = b"Subject: x\r\n\r\n" + b"b" * length + b"\r\nshort\r\n"
    reply = client.transaction(body)[-1]
    assert reply.startswith("250") if accepted else reply.startswith("554 5.6.0")


def test_empty_message_is_passed_on():
    """DATA immediately followed by `.` is an empty message, for the policy to judge."""
    client = connect()
    assert client.transaction(b"")[-1] == "250 2.0.0 Ok: queued as Q0"
    assert client.policy.messages[0][1] == b""


# -- End of data outcomes ----------------------------------------------------


def test_queued_is_sent_only_when_accept_fires():
    """`250 ... queued as <id>` waits for accept_message's Deferred, and so do pipelined commands."""
    client = connect()
    pending = defer.Deferred()
    client.policy.accept = lambda envelope, data: pending
    client.ehlo()
    replies = client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert replies[-1] == "354 End data with <CR><LF>.<CR><LF>"
    client.transport.clear()
    pending.callback("4XyZ")
    assert client.replies() == ["250 2.0.0 Ok: queued as 4XyZ", "250 2.0.0 Ok"]


def test_temporary_accept_failure_is_451_not_550():
    """A TemporaryFailure from accept_message answers 451 4.3.0 (stock Twisted would say 550)."""
    client = connect()
    client.policy.accept = lambda envelope, data: defer.fail(codes.TemporaryFailure("Error: queue file write error"))
    assert client.transaction()[-1] == "451 4.3.0 Error: queue file write error"


def test_temporary_continuity_error_is_451():
    """A temporary ContinuityError (e.g. DeliveryError) from accept_message keeps its 4xx code."""
    client = connect()

    def fail(envelope, data):
        raise DeliveryError("Error: spool unavailable", 451, "4.3.0")

    client.policy.accept = fail
    assert client.transaction()[-1] == "451 4.3.0 Error: spool unavailable"


def test_permanent_accept_failure_is_554():
    """A PermanentFailure from accept_message answers 554 by default."""
    client = connect()
    client.policy.accept = lambda envelope, data: defer.fail(codes.PermanentFailure("Error: message content rejected"))
    assert client.transaction()[-1] == "554 5.0.0 Error: message content rejected"


def test_unexpected_exception_is_451_without_traceback():
    """An unexpected exception is logged and answered 451 4.3.0; nothing of it reaches the wire."""
    client = connect()

    def explode(envelope, data):
        raise ZeroDivisionError("secret /var/spool/path detail")

    client.policy.accept = explode
    client.ehlo()
    replies = client.send(b"MAIL FROM:<bob@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nhi\r\n.\r\n")
    assert replies[-1] == "451 4.3.0 Error: internal error, please try again later"
    wire = client.transport.value()
    assert b"Traceback" not in wire and b"ZeroDivision" not in wire and b"secret" not in wire
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_unexpected_exception_in_rcpt_is_451():
    """An unexpected exception in check_recipient is answered 451 4.3.0 and the session goes on."""
    client = connect()

    def explode(session, recipient, raw, parameters):
        raise RuntimeError("boom")

    client.policy.check_recipient = explode
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    assert client.send(b"RCPT TO:<alice@example.test>\r\n") == ["451 4.3.0 Error: internal error, please try again later"]


def test_unexpected_exception_is_logged_with_the_session_id():
    """The traceback goes to the log, tagged with the session id."""
    client = connect()
    client.policy.accept = lambda envelope, data: 1 / 0
    with capturedLogs() as events:
        client.transaction()
    failures = [event for event in events if "log_failure" in event]
    assert failures and failures[0]["log_failure"].check(ZeroDivisionError)
    assert formatEvent(failures[0]).startswith(client.server.session.session_id)


def test_one_log_line_per_transaction_without_the_body():
    """Each transaction logs its outcome (sender, recipients, size, reply) but never the body."""
    client = connect()
    with capturedLogs() as events:
        client.transaction(b"Subject: private\r\n\r\nconfidential words\r\n")
    lines = [formatEvent(event) for event in events]
    outcome = [line for line in lines if "from=<bob@example.org>" in line]
    assert len(outcome) == 1 and "nrcpt=1" in outcome[0] and "queued as Q0" in outcome[0]
    assert not any("confidential" in line or "private" in line for line in lines)


def test_queue_id_cannot_inject_a_reply_line():
    """A queue id with CR LF is escaped, never sent as a second reply line."""
    client = connect()
    client.policy.accept = lambda envelope, data: "Q1\r\n250 fake"
    assert client.transaction()[-1] == "250 2.0.0 Ok: queued as Q1\\r\\n250 fake"


# -- STARTTLS ------------------------------------------------------------------


def test_starttls_discards_pipelined_commands_and_resets_the_session():
    """Octets after STARTTLS in the same packet are dropped; after TLS, HELO and MAIL are forgotten."""
    context = object()
    client = connect(transport=TLSCapableTransport(peerAddress=PEER), tls_context=context)
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\nRSET\r\n")
    replies = client.send(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.test>\r\n")
    assert replies == ["220 2.0.0 Ready to start TLS"]
    assert client.transport.tls_context is context
    assert client.server.session.tls and client.server.session.helo is None
    assert [sender for sender, _ in client.policy.senders] == [Address("bob", "example.org")]
    assert client.send(b"MAIL FROM:<bob@example.org>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"]
    assert "250-STARTTLS" not in client.ehlo()


def test_starttls_when_already_in_tls_is_503():
    """STARTTLS on a TLS connection gets 503."""
    client = tls_client(tls_context=object())
    assert client.send(b"STARTTLS\r\n") == ["503 5.5.1 Error: TLS already active"]


def test_starttls_without_context_is_not_implemented():
    """Without a TLS context STARTTLS is neither offered nor accepted."""
    client = connect(transport=TLSCapableTransport(peerAddress=PEER))
    assert client.send(b"STARTTLS\r\n") == ["502 5.5.1 Error: command not implemented"]


def test_starttls_inside_a_transaction_is_refused():
    """STARTTLS after MAIL is out of sequence."""
    client = connect(transport=TLSCapableTransport(peerAddress=PEER), tls_context=object())
    client.ehlo()
    client.send(b"MAIL FROM:<bob@example.org>\r\n")
    assert client.send(b"STARTTLS\r\n") == ["503 5.5.1 Error: MAIL transaction in progress"]


def test_implicit_tls_transport_is_detected():
    """On an implicit-TLS listener the session is TLS from the start; no STARTTLS is offered."""
    client = tls_client(tls_context=object())
    assert client.server.session.tls
    assert "250-STARTTLS" not in client.ehlo()


def test_implicit_tls_flag_marks_the_session():
    """A factory built with implicit_tls treats every connection as TLS."""
    client = connect(implicit_tls=True, auth_enabled=True)
    assert client.server.session.tls and "250-AUTH PLAIN LOGIN" in client.ehlo()


def test_tcp_nodelay_is_set():
    """connectionMade turns on TCP_NODELAY when the transport has it."""

    class NoDelayTransport(StringTransport):
        no_delay = None

        def setTcpNoDelay(self, enabled):
            self.no_delay = enabled

    client = connect(transport=NoDelayTransport(peerAddress=PEER))
    assert client.transport.no_delay is True


# -- AUTH ----------------------------------------------------------------------


def test_auth_is_refused_before_tls():
    """With require_tls_for_auth, AUTH is not offered before TLS and answered 538 5.7.11."""
    client = connect(auth_enabled=True)
    assert not any("AUTH" in line for line in client.ehlo())
    reply = client.send(b"AUTH PLAIN " + b64("\0alice@example.test\0Secret 1") + b"\r\n")
    assert reply == ["538 5.7.11 Encryption required for requested authentication mechanism"]
    assert client.policy.logins == []


def test_auth_is_offered_after_tls():
    """Over TLS, EHLO announces AUTH PLAIN LOGIN."""
    client = tls_client(auth_enabled=True)
    assert "250-AUTH PLAIN LOGIN" in client.ehlo()


def test_auth_without_tls_when_allowed():
    """With require_tls_for_auth off, AUTH works in clear."""
    client = connect(auth_enabled=True, require_tls_for_auth=False)
    client.ehlo()
    assert client.send(b"AUTH PLAIN " + b64("\0alice@example.test\0Secret 1") + b"\r\n")[0].startswith("235")


def test_auth_not_enabled_is_refused():
    """AUTH on a listener without auth (the MX) is refused."""
    client = tls_client()
    client.ehlo()
    assert client.send(b"AUTH LOGIN\r\n") == ["503 5.5.1 Error: authentication not enabled"]


def test_auth_plain_with_initial_response_succeeds():
    """AUTH PLAIN with an initial response logs in: 235 2.7.0, the session knows the user."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    reply = client.send(b"AUTH PLAIN " + b64("\0alice@example.test\0Secret 1") + b"\r\n")
    assert reply == ["235 2.7.0 Authentication successful"]
    assert client.server.session.user == "alice@example.test"
    assert client.server.session.with_protocol == "ESMTPSA"
    assert client.policy.logins == [("PLAIN", "alice@example.test", "Secret 1")]
    assert not any("AUTH" in line for line in client.ehlo())


def test_auth_plain_without_initial_response_succeeds():
    """AUTH PLAIN alone gets an empty 334 challenge, then the response logs in."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    assert client.send(b"AUTH PLAIN\r\n") == ["334 "]
    assert client.send(b64("alice@example.test\0alice@example.test\0Secret 1") + b"\r\n") == [
        "235 2.7.0 Authentication successful"
    ]


def test_auth_plain_with_wrong_password_is_535():
    """Wrong credentials get 535 5.7.8 and no user."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    reply = client.send(b"AUTH PLAIN " + b64("\0alice@example.test\0wrong") + b"\r\n")
    assert reply == ["535 5.7.8 Error: authentication failed"]
    assert client.server.session.user is None


def test_auth_login_succeeds():
    """AUTH LOGIN (Outlook) prompts Username: and Password: in base64, then logs in."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    assert client.send(b"AUTH LOGIN\r\n") == ["334 VXNlcm5hbWU6"]
    assert client.send(b64("alice@example.test") + b"\r\n") == ["334 UGFzc3dvcmQ6"]
    assert client.send(b64("Secret 1") + b"\r\n") == ["235 2.7.0 Authentication successful"]


def test_auth_login_with_wrong_password_is_535():
    """AUTH LOGIN with a wrong password gets 535 5.7.8."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    client.send(b"AUTH LOGIN " + b64("alice@example.test") + b"\r\n")
    assert client.send(b64("nope") + b"\r\n") == ["535 5.7.8 Error: authentication failed"]


def test_auth_cancelled_with_star_is_501():
    """`*` in answer to a challenge cancels AUTH with 501; commands work again."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    client.send(b"AUTH LOGIN\r\n")
    assert client.send(b"*\r\n") == ["501 5.7.0 Authentication aborted"]
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]


def test_auth_bad_base64_is_501():
    """A response that is not base64 gets 501 5.5.2."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    assert client.send(b"AUTH PLAIN not*base64\r\n") == ["501 5.5.2 Error: cannot decode response"]


def test_auth_unknown_mechanism_is_504():
    """An unknown mechanism gets 504 5.5.4."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    assert client.send(b"AUTH CRAM-MD5\r\n") == ["504 5.5.4 Unrecognized authentication type"]


def test_passwords_are_never_logged():
    """Logins are logged with the username, never with the password, right or wrong."""
    client = tls_client(auth_enabled=True)
    client.ehlo()
    with capturedLogs() as events:
        client.send(b"AUTH PLAIN " + b64("\0alice@example.test\0Wrong pass") + b"\r\n")
        client.send(b"AUTH LOGIN " + b64("alice@example.test") + b"\r\n" + b64("Secret 1") + b"\r\n")
    text = "\n".join(formatEvent(event) + repr(sorted(map(str, event.values()))) for event in events)
    assert "alice@example.test" in text
    assert "Secret 1" not in text and "Wrong pass" not in text


def test_auth_throttled_by_policy_is_temporary():
    """A TemporaryFailure from authenticate (throttling) is sent as is."""
    client = tls_client(auth_enabled=True)

    def throttled(session, mechanism, username, password):
        raise codes.TemporaryFailure("Error: too many failed logins, try later", 454, "4.7.0")

    client.policy.authenticate = throttled
    client.ehlo()
    reply = client.send(b"AUTH PLAIN " + b64("\0alice@example.test\0Secret 1") + b"\r\n")
    assert reply == ["454 4.7.0 Error: too many failed logins, try later"]


# -- Real TLS over loopback ----------------------------------------------------


def self_signed(hostname: str) -> tuple[ssl.CertificateOptions, ssl.IOpenSSLClientConnectionCreator]:
    """Server options with a fresh self-signed certificate, and client options trusting it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    server = ssl.CertificateOptions(privateKey=key, certificate=certificate)
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    client = ssl.optionsForClientTLS(hostname, trustRoot=ssl.Certificate.loadPEM(pem))
    return server, client


class ScriptedClient(LineReceiver):
    """Collects complete replies; ``next_reply()`` waits for the next one."""

    def __init__(self) -> None:
        self.replies: list[list[str]] = []
        self.waiting: list[defer.Deferred] = []
        self.current: list[str] = []
        self.closed = defer.Deferred()

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("ascii")
        self.current.append(text)
        if text[3:4] != "-":
            self.replies.append(self.current)
            self.current = []
            self._deliver()

    def _deliver(self) -> None:
        while self.replies and self.waiting:
            self.waiting.pop(0).callback(self.replies.pop(0))

    def next_reply(self) -> defer.Deferred:
        waiting = defer.Deferred()
        self.waiting.append(waiting)
        self._deliver()
        return waiting

    def connectionLost(self, reason: object = None) -> None:
        self.closed.callback(None)


@pytest_twisted.inlineCallbacks
def test_starttls_over_real_tls_loopback():
    """A real STARTTLS on 127.0.0.1: pipelined clear-text MAIL is dropped, then EHLO, AUTH and mail work in TLS."""
    from twisted.internet import endpoints, reactor

    server_options, client_options = self_signed(HOST)
    policy = FakePolicy()
    factory = SMTPServerFactory(policy, HOST, LIMITS, tls_context=server_options, auth_enabled=True)
    port = yield endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    try:
        client = ScriptedClient()
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield endpoints.connectProtocol(endpoint, client)
        assert (yield client.next_reply()) == [f"220 {HOST} ESMTP continuity"]
        client.sendLine(b"EHLO client.example.org")
        assert "250-STARTTLS" in (yield client.next_reply())
        client.transport.write(b"STARTTLS\r\nMAIL FROM:<evil@example.net>\r\n")
        assert (yield client.next_reply()) == ["220 2.0.0 Ready to start TLS"]
        client.transport.startTLS(client_options)
        client.sendLine(b"EHLO client.example.org")
        keywords = yield client.next_reply()
        assert "250-STARTTLS" not in keywords and "250-AUTH PLAIN LOGIN" in keywords
        assert policy.senders == []  # the clear-text MAIL was dropped
        client.sendLine(b"AUTH PLAIN " + b64("\0alice@example.test\0Secret 1"))
        assert (yield client.next_reply()) == ["235 2.7.0 Authentication successful"]
        client.transport.write(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        assert (yield client.next_reply()) == ["250 2.1.0 Ok"]
        assert (yield client.next_reply()) == ["250 2.1.5 Ok"]
        assert (yield client.next_reply())[0].startswith("354")
        client.transport.write(b"Subject: tls\r\n\r\nover TLS\r\n.\r\nQUIT\r\n")
        assert (yield client.next_reply()) == ["250 2.0.0 Ok: queued as Q0"]
        assert (yield client.next_reply()) == ["221 2.0.0 Bye"]
        yield client.closed
        session = policy.sessions[0]
        assert session.tls and session.tls_protocol and session.tls_protocol.startswith("TLSv1")
        assert session.tls_cipher and session.with_protocol == "ESMTPSA"
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_implicit_tls_listener_over_real_tls_loopback():
    """On an ssl: endpoint (port 465 style) the session is TLS at once: no STARTTLS, AUTH offered."""
    from twisted.internet import endpoints, reactor

    server_options, client_options = self_signed(HOST)
    policy = FakePolicy()
    factory = SMTPServerFactory(policy, HOST, LIMITS, tls_context=server_options, auth_enabled=True)
    listening = endpoints.SSL4ServerEndpoint(reactor, 0, server_options, interface="127.0.0.1")
    port = yield listening.listen(factory)
    try:
        client = ScriptedClient()
        endpoint = endpoints.wrapClientTLS(
            client_options, endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        )
        yield endpoints.connectProtocol(endpoint, client)
        assert (yield client.next_reply()) == [f"220 {HOST} ESMTP continuity"]
        client.sendLine(b"EHLO client.example.org")
        keywords = yield client.next_reply()
        assert "250-STARTTLS" not in keywords and "250-AUTH PLAIN LOGIN" in keywords
        client.sendLine(b"QUIT")
        assert (yield client.next_reply()) == ["221 2.0.0 Bye"]
        yield client.closed
        session = policy.sessions[0]
        assert session.tls and session.tls_cipher and session.tls_protocol.startswith("TLSv1")
    finally:
        yield port.stopListening()

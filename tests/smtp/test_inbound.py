"""The MX policy of the smtp listener (CONTRACT 4): hosted domains only, recipients by mode, limits per IP.

The real server protocol over a StringTransport, with the real InboundPolicy
on a delivery stack (SQLite, spool, Maildirs) whose threads run inline.
"""

from __future__ import annotations

import ipaddress

import attrs
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from support import DeliveryStack

from continuity.delivery.direct import DirectDelivery
from continuity.directory.cache import DirectoryCache
from continuity.smtp.inbound import InboundPolicy
from continuity.smtp.server import SMTPServerFactory

HOST = "mx.example.test"


@pytest.fixture
def stack(tmp_path):
    """A started stack hosting example.com (users bob, carol; alias robert -> bob)."""
    stack = DeliveryStack(tmp_path).start()
    stack.domain(users=["bob@example.com", "carol@example.com"])
    stack.directory.add_alias("bob@example.com", "robert@example.com")
    yield stack
    stack.stop()


class Session:
    """One client connection to a server with the inbound policy."""

    def __init__(self, factory: SMTPServerFactory, ip: str = "192.0.2.7"):
        peer = IPv4Address("TCP", ip, 40000)
        self.server = factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.server.makeConnection(transport=self.transport)

    def send(self, data: bytes) -> list[str]:
        self.transport.clear()
        self.server.dataReceived(data)
        return self.transport.value().decode("ascii").split("\r\n")[:-1]

    def rcpt(self, recipient: str, sender: str = "alice@sender.example") -> str:
        self.send(b"EHLO client.sender.example\r\n")
        self.send(f"MAIL FROM:<{sender}>\r\n".encode())
        return self.send(f"RCPT TO:<{recipient}>\r\n".encode())[-1]


def factory(stack: DeliveryStack, direct: bool = False, **config_changes) -> SMTPServerFactory:
    config = stack.config
    if config_changes:
        config = attrs.evolve(config, **config_changes)
    cache = DirectoryCache(stack.clock, stack.sql, stack.directory)
    policy = InboundPolicy(config, stack.sql, cache, stack.index, stack.intake, stack.clock,
                           DirectDelivery(stack.clock, stack.sql, stack.io, stack.directory, stack.mailstore)
                           if direct else None)
    return SMTPServerFactory(policy, HOST, config.limits, tls_context=None, auth_enabled=False,
                             require_tls_for_auth=True, clock=stack.clock)


def emergency(stack: DeliveryStack, mode: str = "emergency") -> None:
    stack.directory.set_mode("example.com", mode, "continuityctl", automatic=False)


def test_unhosted_domain_is_refused_550_5_7_1(stack):
    """RCPT for a domain we do not host is relay access denied, and tracked as rejected."""
    reply = Session(factory(stack)).rcpt("someone@elsewhere.example")
    assert reply == "550 5.7.1 <someone@elsewhere.example>: Relay access denied"
    (row,) = stack.tracking("someone@elsewhere.example")
    assert row["status"] == "rejected" and row["sender"] == "alice@sender.example"


def test_in_an_smtp_worker_a_refusal_s_tracking_row_is_handed_to_the_service(stack):
    """The worker writes nothing to the store: the refusal goes over its pipe, the 550 as before."""
    smtp = factory(stack)
    handed: list = []
    smtp.policy.hand_over = lambda *row: handed.append(row)
    reply = Session(smtp).rcpt("someone@elsewhere.example")
    assert reply == "550 5.7.1 <someone@elsewhere.example>: Relay access denied"
    assert stack.tracking("someone@elsewhere.example") == []
    assert handed == [("alice@sender.example", "someone@elsewhere.example", "relay access denied (client 192.0.2.7)")]


def test_relay_networks_may_send_to_unhosted_domains(stack):
    """A client in relay_networks may relay to any domain (the customer's outbound mail)."""
    outbound = attrs.evolve(stack.config.outbound, relay_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    session = Session(factory(stack, outbound=outbound))
    assert session.rcpt("someone@elsewhere.example").startswith("250")
    assert Session(factory(stack, outbound=outbound), ip="198.51.100.1").rcpt(
        "someone@elsewhere.example").startswith("550 5.7.1")


def test_any_local_part_is_accepted_in_normal_mode(stack):
    """In normal mode recipient checks are the upstream's: an unknown local part is accepted."""
    assert Session(factory(stack)).rcpt("nobody@example.com").startswith("250")


@pytest.mark.parametrize("mode", ["emergency", "recovering"])
def test_unknown_user_is_refused_550_5_1_1_outside_normal_mode(stack, mode):
    """In emergency and recovering mode an address that is neither user nor alias is user unknown."""
    emergency(stack, mode)
    reply = Session(factory(stack)).rcpt("nobody@example.com")
    assert reply == "550 5.1.1 <nobody@example.com>: Recipient address rejected: User unknown"
    assert stack.tracking("nobody@example.com")[0]["status"] == "rejected"


def test_users_and_aliases_are_accepted_in_emergency(stack):
    """In emergency registered users and their aliases are accepted (covered or not)."""
    emergency(stack)
    stack.directory.set_active("carol@example.com", False)
    for address in ("bob@example.com", "robert@example.com", "carol@example.com"):
        assert Session(factory(stack)).rcpt(address).startswith("250"), address


def test_accepted_mail_is_spooled_with_our_received_field_before_250(stack):
    """The 250 after DATA names a queue id whose spool file exists and starts with our Received: field."""
    emergency(stack)
    session = Session(factory(stack))
    session.rcpt("robert@example.com")
    session.send(b"DATA\r\n")
    reply = session.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")[-1]
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    queue_id = reply.rsplit(" ", 1)[1]
    (entry,) = stack.queue(queue_id)
    assert entry.recipient == "robert@example.com" and entry.state == "done"  # delivered to bob's INBOX
    (stored,) = stack.inbox("bob@example.com")
    assert b"Delivered-To: robert@example.com\r\nReceived: from client.sender.example ([192.0.2.7])" in stored
    assert f"by {HOST} (continuity) with ESMTP id {queue_id}".encode() in stored


def test_in_emergency_mail_for_mailboxes_skips_the_spool(stack):
    """With direct delivery the 250 comes once the Maildir copy is written; no spool file, no queue rows."""
    emergency(stack)
    session = Session(factory(stack, direct=True))
    session.rcpt("robert@example.com")
    session.send(b"DATA\r\n")
    reply = session.send(b"Subject: hi\r\nMessage-ID: <x@y>\r\n\r\nhello\r\n.\r\n")[-1]
    queue_id = reply.rsplit(" ", 1)[1]
    assert reply.startswith("250 2.0.0 Ok: queued as ") and stack.queue(queue_id) == []
    (stored,) = stack.inbox("bob@example.com")
    assert f"with ESMTP id {queue_id}".encode() in stored
    assert stack.tracking("robert@example.com")[0]["status"] == "delayed"
    assert list(stack.spool.queue_ids()) == []


def to_bob_and_carol(stack: DeliveryStack) -> str:
    """One message to bob and carol through a server with direct delivery; its queue id from the 250."""
    session = Session(factory(stack, direct=True))
    session.rcpt("bob@example.com")
    session.send(b"RCPT TO:<carol@example.com>\r\n")
    session.send(b"DATA\r\n")
    reply = session.send(b"Subject: hi\r\n\r\nhello\r\n.\r\n")[-1]
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    return reply.rsplit(" ", 1)[1]


def test_in_emergency_a_held_recipient_sends_the_whole_message_through_the_spool(stack):
    """Direct delivery only when every recipient is routed to a mailbox: carol is excluded (held until
    recovery), so bob's copy too comes from the spool, once, with carol's held beside it."""
    emergency(stack)
    stack.directory.exclude("carol@example.com")
    queue_id = to_bob_and_carol(stack)
    entries = {entry.recipient: entry.state for entry in stack.queue(queue_id)}
    assert entries == {"bob@example.com": "done", "carol@example.com": "held"}
    assert len(stack.inbox("bob@example.com")) == 1


def test_a_direct_copy_that_fails_sends_the_rest_through_the_spool_and_still_answers_250(stack, monkeypatch):
    """bob's copy is written, carol's mailbox fails: the 250 still comes, carol's copy is the spool's to retry."""
    emergency(stack)
    deliver_one = stack.mailstore.deliver

    def failing(address, message, *args, **kwargs):
        if address.local == "carol":
            raise OSError(122, "Disk quota exceeded")
        return deliver_one(address, message, *args, **kwargs)

    monkeypatch.setattr(stack.mailstore, "deliver", failing)
    queue_id = to_bob_and_carol(stack)
    assert len(stack.inbox("bob@example.com")) == 1
    (carol,) = stack.queue(queue_id)
    assert carol.recipient == "carol@example.com" and carol.state == "deferred"


def test_connections_per_ip_beyond_the_limit_get_421(stack):
    """Beyond connections_per_ip from one IP a connection is greeted 421 4.7.0; other IPs are not affected."""
    limits = attrs.evolve(stack.config.limits, connections_per_ip=2)
    shared = factory(stack, limits=limits)
    first, second = Session(shared), Session(shared)
    assert first.transport.value().startswith(b"220 ")
    third = Session(shared)
    assert third.transport.value().startswith(b"421 4.7.0 ")
    assert b"too many connections from 192.0.2.7" in third.transport.value()
    third.server.connectionLost(None)  # a refused connection never counted, so it frees nothing
    assert Session(shared).transport.value().startswith(b"421 4.7.0 ")
    assert Session(shared, ip="198.51.100.1").transport.value().startswith(b"220 ")
    second.server.connectionLost(None)
    assert Session(shared).transport.value().startswith(b"220 ")

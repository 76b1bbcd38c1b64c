"""Read-ahead of small messages: RETR and TOP in order answered from memory, bounded, consistent with the disk."""

from __future__ import annotations

import io

from twisted.internet import task

from continuity.pop3.readahead import ReadAhead
from continuity.pop3.server import POP3ServerFactory
from continuity.pop3.wire import encode_message, survey
from continuity.testing.inline import InlineThread, QueuedThread

from .conftest import ADDRESS, PASSWORD, Client, TLSCapableTransport, limits


def numbered(count: int, size: int = 300) -> list[bytes]:
    """``count`` distinct CRLF messages of about ``size`` octets."""
    line = b"some text of the message body\r\n"
    return [b"Subject: message %d\r\n\r\n" % number + line * (size // len(line)) for number in range(1, count + 1)]


def session(authenticator, pool=None, read_ahead_bytes: int = 1024 * 1024, transport=None) -> Client:
    """A logged-in client on a factory whose worker pool is ``pool`` (default: inline)."""
    pool = pool if pool is not None else InlineThread()
    factory = POP3ServerFactory(authenticator, pool, "pop.example.test", limits(), tls_context=None,
                                require_tls_for_auth=False, clock=task.Clock(), read_ahead_bytes=read_ahead_bytes)
    client = Client(factory, transport=transport)
    client.take()
    client.command("USER " + ADDRESS)
    client.server.dataReceived(f"PASS {PASSWORD}\r\n".encode())
    if isinstance(pool, QueuedThread):
        pool.run_pending()
    assert client.lines() == [b"+OK Logged in."]
    return client


def retr_reply(message: bytes) -> bytes:
    """What RETR of ``message`` answers: its RFC 1939 size, then the message in multi-line form."""
    return b"+OK %d octets\r\n" % survey(io.BytesIO(message))[0] + encode_message(message)


def test_messages_read_in_order_are_answered_from_memory(authenticator, deliver):
    """After the first RETR, the next messages in order are answered without a trip to the worker pool."""
    messages = numbered(10)
    deliver(*messages)
    pool = InlineThread()
    client = session(authenticator, pool)
    assert client.send(b"RETR 1\r\n") is not None
    trips = pool.jobs
    for number in range(2, 11):
        client.server.dataReceived(b"RETR %d\r\n" % number)
        assert client.take() == retr_reply(messages[number - 1]), number
    assert pool.jobs == trips


def test_read_ahead_reads_a_window_in_one_worker_call(authenticator, deliver):
    """The messages after the first RETR are read in one worker call, not one each."""
    deliver(*numbered(10))
    pool = QueuedThread()
    client = session(authenticator, pool)
    client.server.dataReceived(b"RETR 1\r\n")
    assert pool.run_pending() == 2  # message 1, then the window after it
    assert all(client.server._ahead.has(number) for number in range(2, 11))


def test_read_ahead_is_bounded_by_the_session_budget(authenticator, deliver):
    """What a session holds read ahead never exceeds its budget, however many messages follow."""
    messages = numbered(60, size=1000)
    deliver(*messages)
    budget = 8 * 1024
    client = session(authenticator, read_ahead_bytes=budget)
    ahead = client.server._ahead
    for number in range(1, 61):
        client.server.dataReceived(b"RETR %d\r\n" % number)
        assert client.take() == retr_reply(messages[number - 1]), number
        assert 0 < ahead.held <= budget or number >= 55, (number, ahead.held)
        assert ahead.held <= budget


def test_large_messages_are_streamed_not_read_ahead(authenticator, deliver):
    """A message too large for the read-ahead is left out of it and streamed from disk as before."""
    messages = numbered(5)
    messages[2] = b"Subject: large\r\n\r\n" + (b"y" * 78 + b"\r\n") * 1000  # 80 KB: over MESSAGE_LIMIT
    deliver(*messages)
    client = session(authenticator)
    client.server.dataReceived(b"RETR 1\r\n")
    client.take()
    ahead = client.server._ahead
    assert ahead.has(2) and not ahead.has(3) and ahead.has(4)
    for number in (2, 3, 4, 5):
        client.server.dataReceived(b"RETR %d\r\n" % number)
        assert client.take() == retr_reply(messages[number - 1]), number


def test_message_removed_on_disk_after_read_ahead_is_still_served(authenticator, deliver, store):
    """A message another tool removes after it was read ahead is sent as it was read; QUIT still works."""
    messages = numbered(3)
    refs = deliver(*messages)
    client = session(authenticator)
    client.command("RETR 1")
    store.remove_message(refs[1])
    client.server.dataReceived(b"RETR 2\r\n")
    assert client.take() == retr_reply(messages[1])
    assert client.command("QUIT")[0].startswith(b"+OK")


def test_message_removed_on_disk_before_read_ahead_is_a_clean_error(authenticator, deliver, store):
    """A message removed before it could be read ahead gets the usual -ERR; the ones after it are served."""
    messages = numbered(3)
    refs = deliver(*messages)
    client = session(authenticator)
    store.remove_message(refs[1])
    client.command("RETR 1")
    assert not client.server._ahead.has(2) and client.server._ahead.has(3)
    assert client.command("RETR 2") == [b"-ERR [SYS/PERM] Message 2 was removed by another mail client."]
    client.server.dataReceived(b"RETR 3\r\n")
    assert client.take() == retr_reply(messages[2])


def test_deleted_messages_are_not_read_ahead(authenticator, deliver):
    """A message marked deleted is never read ahead, and DELE drops one that was."""
    deliver(*numbered(5))
    client = session(authenticator)
    assert client.command("DELE 3") == [b"+OK Marked to be deleted."]
    client.command("RETR 1")
    ahead = client.server._ahead
    assert ahead.has(2) and not ahead.has(3) and ahead.has(4)
    client.command("DELE 4")
    assert not ahead.has(4)
    assert client.command("RETR 4") == [b"-ERR Message 4 is marked deleted."]


def test_a_batch_landing_after_dele_does_not_keep_the_deleted_message(authenticator, deliver):
    """A message deleted while its batch was being read is not kept when the batch lands."""
    deliver(*numbered(4))
    pool = QueuedThread()
    client = session(authenticator, pool)
    client.server.dataReceived(b"RETR 1\r\n")
    pool.run_pending()
    client.take()
    client.command("RETR 2")  # from memory; the window after it is planned only once half of it is used
    ahead = client.server._ahead
    ahead._replies.clear()  # as if 3 and 4 were still being read
    ahead._held = 0
    ahead._horizon = 2
    ahead._start(2)
    assert pool.pending == 1
    client.command("DELE 3")
    pool.run_pending()
    assert not ahead.has(3) and ahead.has(4)


def test_retr_of_a_message_being_read_ahead_waits_for_it(authenticator, deliver):
    """A RETR of a message whose batch is on the worker pool waits for the batch instead of reading it again."""
    messages = numbered(4)
    deliver(*messages)
    pool = QueuedThread()
    client = session(authenticator, pool)
    client.server.dataReceived(b"RETR 1\r\n")
    assert pool.run_pending() == 2
    client.take()
    ahead = client.server._ahead
    ahead._replies.clear()
    ahead._held = 0
    ahead._horizon = 1
    ahead._start(1)  # the batch of 2..4 is on the pool
    client.server.dataReceived(b"RETR 2\r\n")
    assert client.take() == b""  # waiting
    assert pool.run_pending() == 1  # the batch alone: message 2 is not read on its own
    assert client.take() == retr_reply(messages[1])


def test_random_access_reads_nothing_ahead(authenticator, deliver):
    """A client that picks messages out of order causes no read-ahead."""
    messages = numbered(10)
    deliver(*messages)
    pool = InlineThread()
    client = session(authenticator, pool)
    before = pool.jobs
    for number in (5, 2, 8, 3):
        client.server.dataReceived(b"RETR %d\r\n" % number)
        assert client.take() == retr_reply(messages[number - 1])
    assert pool.jobs - before == 4 and client.server._ahead.held == 0


def test_jumping_drops_what_was_read_ahead(authenticator, deliver):
    """What the client skips is dropped; when it goes back, all that was read ahead is."""
    deliver(*numbered(10))
    client = session(authenticator)
    ahead = client.server._ahead
    client.command("RETR 1")
    assert ahead.held > 0
    client.command("RETR 1")  # the same again: still in order
    assert ahead.held > 0
    client.command("LIST")
    client.command("RETR 9")  # skips 2 to 8
    assert not any(ahead.has(number) for number in range(2, 9)) and ahead.has(10)
    client.command("RETR 3")  # back
    assert ahead.held == 0


def test_top_of_every_message_keeps_reading_ahead(authenticator, deliver):
    """TOP keeps the message it sent for a RETR, but the next TOP drops it: TOP of all is read ahead."""
    messages = numbered(200)
    deliver(*messages)
    pool = InlineThread()
    client = session(authenticator, pool, read_ahead_bytes=16 * 1024)
    for number in range(1, 201):
        client.server.dataReceived(b"TOP %d 0\r\n" % number)
        assert client.take() == b"+OK Top of message follows.\r\n" + encode_message(messages[number - 1], 0)
        assert client.server._ahead.held <= 16 * 1024
    assert pool.jobs < 40  # about one trip per window of the budget, not one per message


def test_read_ahead_is_dropped_at_quit(authenticator, deliver):
    """QUIT drops the read-ahead."""
    deliver(*numbered(5))
    client = session(authenticator)
    client.command("RETR 1")
    ahead = client.server._ahead
    assert ahead.held > 0
    assert client.command("QUIT")[0].startswith(b"+OK")
    assert ahead.held == 0


def test_read_ahead_is_dropped_on_disconnect(authenticator, deliver):
    """A lost connection drops the read-ahead, and a batch landing afterwards is thrown away."""
    deliver(*numbered(5))
    pool = QueuedThread()
    client = session(authenticator, pool)
    client.server.dataReceived(b"RETR 1\r\n")
    pool.run_pending()
    ahead = client.server._ahead
    assert ahead.held > 0
    ahead._replies.clear()
    ahead._held = 0
    ahead._horizon = 1
    ahead._start(1)
    client.disconnect()
    pool.run_pending()
    assert ahead.held == 0 and not ahead.has(2)


def test_retr_from_memory_marks_the_message_seen_at_quit(authenticator, deliver, store):
    """A message answered from memory counts as retrieved: it is flagged seen at QUIT."""
    deliver(*numbered(3))
    client = session(authenticator)
    client.command("RETR 1")
    client.command("RETR 2")
    client.command("QUIT")
    from continuity.envelope import parse_address

    flags = sorted((ref.uid, ref.has_flag("S")) for ref in store.get_messages(parse_address(ADDRESS)))
    assert [seen for _, seen in flags] == [True, True, False]


TRICKY = [
    b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n",
    b"A: 1\nB: 2\n\n.l1\nl2\n.\nl3",
    b"A: 1\r\n\r\n\r\nl1\rl2\r\nl3\r",
    b"No header end\r\n.dot\r\nmore",
    b".A: dot first\r\n\r\n..\r\n",
    b"",
    b"\r\n",
]


def test_top_from_memory_is_the_top_from_disk(authenticator, deliver):
    """TOP of a message read ahead sends what TOP from the file sends, for any line count."""
    deliver(b"first\r\n", *TRICKY)
    client = session(authenticator)
    client.command("RETR 1")
    ahead = client.server._ahead
    for number, message in enumerate(TRICKY, start=2):
        assert ahead.has(number)
        for lines in range(0, 6):
            client.server.dataReceived(b"TOP %d %d\r\n" % (number, lines))
            assert client.take() == b"+OK Top of message follows.\r\n" + encode_message(message, lines), (number, lines)
        assert ahead.has(number)  # TOP keeps the message for the RETR that often follows


def test_retr_after_top_of_the_same_message_is_answered_from_memory(authenticator, deliver):
    """TOP n then RETR n: the RETR needs no trip to the worker pool."""
    messages = numbered(5)
    deliver(*messages)
    pool = InlineThread()
    client = session(authenticator, pool)
    client.command("RETR 1")
    trips = pool.jobs
    for number in range(2, 6):
        client.command(f"TOP {number} 0")
        client.server.dataReceived(b"RETR %d\r\n" % number)
        assert client.take() == retr_reply(messages[number - 1])
    assert pool.jobs == trips


def test_read_ahead_sends_plain_messages_as_they_are(authenticator, deliver, monkeypatch):
    """A message measured plain is not encoded again when it is read ahead; one that is not, is."""
    messages = numbered(3)
    messages[2] = b"Subject: bare LF\n\n.dot\n"
    deliver(*messages)
    client = session(authenticator)
    from continuity.pop3 import readahead

    encoded = []
    monkeypatch.setattr(readahead, "encode_message", lambda data: encoded.append(data) or encode_message(data))
    client.command("RETR 1")
    assert encoded == [messages[2]]
    for number in (2, 3):
        client.server.dataReceived(b"RETR %d\r\n" % number)
        assert client.take() == retr_reply(messages[number - 1])


class FillingTransport(TLSCapableTransport):
    """A transport whose buffer is 'full' past ``limit`` octets: it pauses its streaming producer."""

    limit = 1000

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and len(self.value()) > self.limit:
            self.producer.pauseProducing()


def test_pipelined_retrs_wait_while_the_client_does_not_read(authenticator, deliver):
    """Answers from memory stop while the transport is full and go on once it asks for more."""
    messages = numbered(5, size=600)
    deliver(*messages)
    transport = FillingTransport()
    client = session(authenticator, transport=transport)
    client.command("RETR 1")
    transport.limit = 500  # from now on each answer fills the buffer
    client.server.dataReceived(b"RETR 2\r\nRETR 3\r\nRETR 4\r\n")
    assert client.take() == retr_reply(messages[1])  # the buffer filled: 3 and 4 wait
    transport.producer.resumeProducing()
    assert client.take() == retr_reply(messages[2])
    transport.producer.resumeProducing()
    assert client.take() == retr_reply(messages[3])


def test_pipelined_retrs_from_disk_wait_while_the_client_does_not_read(authenticator, deliver):
    """A message sent from disk in one write still holds the next command while the transport is full."""
    messages = numbered(6, size=600)
    deliver(*messages)
    transport = FillingTransport()
    client = session(authenticator, transport=transport)
    transport.limit = 500
    client.server.dataReceived(b"RETR 5\r\nRETR 2\r\n")  # out of order: both from disk
    assert client.take() == retr_reply(messages[4])
    transport.producer.resumeProducing()
    assert client.take() == retr_reply(messages[1])
    transport.producer.resumeProducing()
    assert transport.producer is None and client.command("NOOP") == [b"+OK"]


def test_streaming_after_answers_from_memory_takes_over_the_producer(authenticator, deliver):
    """A streamed RETR after answers from memory registers its own producer and unregisters it at the end."""
    messages = numbered(3)
    messages[1] = b"Subject: large\r\n\r\n" + (b"y" * 78 + b"\r\n") * 1000
    deliver(*messages)
    transport = TLSCapableTransport()
    client = session(authenticator, transport=transport)
    client.command("RETR 1")
    client.server.dataReceived(b"RETR 2\r\n")
    assert client.take() == retr_reply(messages[1]) and transport.producer is None
    client.server.dataReceived(b"RETR 3\r\n")
    assert client.take() == retr_reply(messages[2])
    assert client.command("QUIT")[0].startswith(b"+OK") and transport.producer is None


def test_read_ahead_of_a_fresh_maildrop_plans_nothing_beyond_its_end(store, deliver):
    """Planning stops at the last message; nothing is read when nothing follows."""
    from continuity.pop3.maildrop import Maildrop, SizeCache

    deliver(*numbered(2))
    maildrop = Maildrop(store, ADDRESS)
    maildrop.open(SizeCache())
    pool = QueuedThread()
    ahead = ReadAhead(maildrop, pool)
    ahead.served(1)
    assert pool.pending == 1
    pool.run_pending()
    ahead.served(2)
    assert pool.pending == 0
    maildrop.release()

"""FETCH in memory: rendering, \\Seen, batches read ahead of the writes, back-pressure, files changing meanwhile."""

from __future__ import annotations

import gc
import os
import re
import time

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address

from continuity.imap import fetch
from continuity.imap.fetch import Prefetch, parse_fetch
from continuity.imap.mailbox import FolderView
from continuity.imap.parser import Atom, ParseError, SequenceSet
from continuity.mailstore import INBOX_NAME, FolderSnapshot

from .conftest import Client, TLSTransport


def message(number: int) -> bytes:
    return b"Subject: message %d\r\n\r\n" % number + b"body line\r\n" * 20


def deliver(store, address, count: int) -> None:
    for number in range(1, count + 1):
        store.deliver(address, message(number), flags="S")


def raw(client: Client, line: bytes) -> bytes:
    """Send a command line; return everything the server wrote, unsplit."""
    client.server.dataReceived(line + b"\r\n")
    return client.take()


def fetched_numbers(reply: bytes) -> list[int]:
    return [int(n) for n in re.findall(rb"^\* (\d+) FETCH", reply, re.M)]


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of a few messages each, so a FETCH of 20 takes several reads."""
    monkeypatch.setattr(fetch, "FIRST_BATCH_BYTES", 200)
    monkeypatch.setattr(fetch, "BATCH_BYTES", 800)


class FullTransport(TLSTransport):
    """A transport whose buffer is always full: every write pauses a registered streaming producer."""

    def write(self, data):
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


class SlowClient(Client):
    """A client that reads nothing until told: the server sees a full buffer after each write."""

    def __init__(self, factory):
        self.transport = FullTransport(peerAddress=IPv4Address("TCP", "192.0.2.9", 40000))
        self.server = factory.buildProtocol(None)
        self.server.makeConnection(self.transport)


def count_reads(store, monkeypatch) -> list[int]:
    """Record the number of messages of each read_messages call the server makes."""
    calls: list[int] = []
    original = store.read_messages

    def read_messages(refs):
        calls.append(len(refs))
        return original(refs)

    monkeypatch.setattr(store, "read_messages", read_messages)
    return calls


# -- rendering and \Seen ---------------------------------------------------------------------


def test_fetch_rfc822_sets_seen_and_shows_the_flags(logged_in, store, address):
    """FETCH RFC822 of an unseen message sends the literal, then FLAGS with \\Seen, and stores \\Seen."""
    store.deliver(address, message(1))
    logged_in.command("s SELECT INBOX")
    body = message(1)
    assert raw(logged_in, b"f FETCH 1 (RFC822)") == (b"* 1 FETCH (RFC822 {%d}\r\n" % len(body) + body
                                + b" FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n")
    assert store.get_messages(address)[0].flags == "S"


def test_fetch_of_seen_messages_sends_no_flags(logged_in, store, address):
    """A message seen already gets no FLAGS item it did not ask for."""
    deliver(store, address, 1)
    logged_in.command("s SELECT INBOX")
    assert raw(logged_in, b"f FETCH 1 (RFC822)") == b"* 1 FETCH (RFC822 {%d}\r\n%s)\r\nf OK FETCH completed\r\n" % (
        len(message(1)), message(1))


def test_examine_fetch_rfc822_does_not_set_seen(logged_in, store, address):
    """In a read-only folder FETCH RFC822 changes no flag (RFC 3501 6.3.2)."""
    store.deliver(address, message(1))
    logged_in.command("s EXAMINE INBOX")
    reply = logged_in.command("f FETCH 1 (RFC822)")
    assert b"FLAGS" not in b"".join(reply) and store.get_messages(address)[0].flags == ""


def test_items_are_rendered_in_order_with_literals_between(logged_in, store, address):
    """Simple items, literals and a partial body follow each other with one space, in the order asked."""
    deliver(store, address, 1)
    logged_in.command("s SELECT INBOX")
    body = message(1)
    header = b"Subject: message 1\r\n\r\n"
    assert raw(logged_in, b"f UID FETCH 1 (RFC822.SIZE BODY.PEEK[HEADER] BODY.PEEK[]<0.7> FLAGS)").split(b"f OK")[0] == (
        b"* 1 FETCH (UID 1 RFC822.SIZE %d BODY[HEADER] {%d}\r\n%s BODY[]<0> {7}\r\n%s FLAGS (\\Seen))\r\n"
        % (len(body), len(header), header, body[:7]))


def test_render_without_a_file_needs_no_read(logged_in, store, address):
    """FETCH (FLAGS) reads no message file."""
    deliver(store, address, 3)
    logged_in.command("s SELECT INBOX")
    store.read_messages = lambda refs: pytest.fail("read a file")
    assert logged_in.command("f FETCH 1:* (FLAGS)")[:3] == [b"* %d FETCH (FLAGS (\\Seen))" % n for n in (1, 2, 3)]


# -- which messages -----------------------------------------------------------------------------


def view_of(uids: list[int]) -> FolderView:
    snapshot = FolderSnapshot(INBOX_NAME, 1, uids[-1] + 1 if uids else 1, 1, ())
    view = FolderView.open(snapshot, False, ())
    view.uids = list(uids)
    return view


@pytest.mark.parametrize(("text", "by_uid", "expected"), [
    ("1:*", False, [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]),
    ("4,2:3,3:2,*", False, [(2, 4), (3, 6), (4, 8), (5, 10)]),
    ("5:1,1", False, [(1, 2), (2, 4), (3, 6), (4, 8), (5, 10)]),
    ("3:7,1,7:5,20:*", True, [(2, 4), (3, 6), (5, 10)]),
    ("11:*", True, [(5, 10)]),  # RFC 3501 6.4.8: n:* with n beyond the largest UID is the largest
    ("1,3,5", True, []),
])
def test_sequence_sets_resolve_to_each_message_once_ascending(text, by_uid, expected):
    """Overlapping, reversed and repeated ranges name each message once, in ascending order."""
    assert view_of([2, 4, 6, 8, 10]).resolve(SequenceSet.parse(Atom(text)), by_uid) == expected


def test_sequence_number_beyond_the_folder_is_bad():
    """A message number beyond the folder is a syntax error (BAD), even when other ranges are fine."""
    with pytest.raises(ParseError):
        view_of([2, 4]).resolve(SequenceSet.parse(Atom("1,3")), False)


def test_fetch_allocates_nothing_per_message_for_the_garbage_collector(logged_in, store, address):
    """FETCH of 1,500 messages sets off at most one young collection of the cyclic GC: no object per
    message that it tracks (a burst of them once set off full passes of 50-100 ms)."""
    store.ensure_mailbox(address)
    cur = os.path.join(store.user_root(address), "cur")
    for number in range(1, 1501):
        with open(os.path.join(cur, "1700000000.M%dP1.test,S=%d:2,S" % (number, len(message(number)))), "wb") as f:
            f.write(message(number))
    past = time.time() - 100
    for subdir in ("cur", "new"):  # an old folder: its listing is cached, not rescanned after each command
        os.utime(os.path.join(store.user_root(address), subdir), (past, past))
    logged_in.command("s SELECT INBOX")
    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(info["generation"])

    for command in (b"f FETCH 1:* (RFC822)", b"g UID FETCH 1:* (FLAGS)"):
        gc.collect()
        gc.callbacks.append(count)
        try:
            reply = raw(logged_in, command)
        finally:
            gc.callbacks.remove(count)
        assert len(fetched_numbers(reply)) == 1500
    assert len(collections) <= 2


# -- batches ---------------------------------------------------------------------------------


def test_first_batch_is_small_and_later_ones_grow(monkeypatch):
    """Batches start at FIRST_BATCH_BYTES and grow to BATCH_BYTES; every row is in exactly one."""
    monkeypatch.setattr(fetch, "FIRST_BATCH_BYTES", 1000)
    monkeypatch.setattr(fetch, "BATCH_BYTES", 8000)

    class Ref:
        size = 400

    rows = fetch.Rows(list(range(1, 101)), [Ref()] * 100)
    chunks = fetch.batches(rows, True)
    assert [len(chunk) for chunk in chunks[:4]] == [2, 8, 16, 16]
    assert [seq for chunk in chunks for seq in chunk.seqs] == list(range(1, 101))


def test_fetch_in_many_batches_answers_each_message_once_in_order(logged_in, store, address, small_batches,
                                                                   monkeypatch):
    """A FETCH read in several batches answers every message once, in sequence order."""
    deliver(store, address, 20)
    logged_in.command("s SELECT INBOX")
    reads = count_reads(store, monkeypatch)
    reply = raw(logged_in, b"f FETCH 1:* (RFC822)")
    assert fetched_numbers(reply) == list(range(1, 21)) and reply.endswith(b"f OK FETCH completed\r\n")
    assert len(reads) > 3 and sum(reads) == 20
    assert b"Subject: message 20\r\n" in reply


def test_message_removed_on_disk_between_batches_is_left_out(logged_in, store, address, small_batches,
                                                              monkeypatch):
    """A file removed after the first batch was read is skipped; FETCH ends NO [EXPUNGEISSUED], and the
    EXPUNGE waits for the next command that allows it."""
    deliver(store, address, 20)
    logged_in.command("s SELECT INBOX")
    doomed = store.get_messages(address)[14]
    original = store.read_messages

    def read_messages(refs):
        data = original(refs)
        if os.path.exists(doomed.path):
            os.unlink(doomed.path)
        return data

    monkeypatch.setattr(store, "read_messages", read_messages)
    reply = raw(logged_in, b"f FETCH 1:* (RFC822)")
    assert fetched_numbers(reply) == [n for n in range(1, 21) if n != 15]
    assert not re.search(rb"^\* \d+ EXPUNGE", reply, re.M)
    assert reply.endswith(b"\r\nf NO [EXPUNGEISSUED] Some messages were expunged meanwhile\r\n")
    assert logged_in.command("n NOOP")[0] == b"* 15 EXPUNGE"


def test_message_renamed_between_batches_is_still_fetched(logged_in, store, address, small_batches, monkeypatch):
    """A file another session renamed (a flag change) after the first batch is found and sent."""
    deliver(store, address, 20)
    logged_in.command("s SELECT INBOX")
    moved = store.get_messages(address)[14]
    original = store.read_messages

    def read_messages(refs):
        data = original(refs)
        if os.path.exists(moved.path):
            os.rename(moved.path, moved.path + "F")
        return data

    monkeypatch.setattr(store, "read_messages", read_messages)
    reply = raw(logged_in, b"f FETCH 1:* (RFC822)")
    bodies = [int(n) for n in re.findall(rb"^\* (\d+) FETCH \(RFC822 ", reply, re.M)]
    assert bodies == list(range(1, 21)) and b"Subject: message 15\r\n" in reply
    assert reply.endswith(b"* 15 FETCH (UID 15 FLAGS (\\Flagged \\Seen))\r\nf OK FETCH completed\r\n")


# -- back-pressure -----------------------------------------------------------------------------


def test_slow_client_holds_reads_a_few_batches_ahead(factory, store, address, small_batches, monkeypatch):
    """While the client reads nothing, the server writes one batch and reads at most PREFETCH_BATCHES more;
    each time the buffer drains, one more batch is written and one more read."""
    deliver(store, address, 20)
    client = SlowClient(factory)
    client.login()
    client.command("s SELECT INBOX")
    reads = count_reads(store, monkeypatch)
    reply = raw(client, b"f FETCH 1:* (RFC822)")
    assert len(reads) == 1 + fetch.PREFETCH_BATCHES
    sent = fetched_numbers(reply)
    assert sent == list(range(1, len(sent) + 1))
    client.transport.producer.resumeProducing()
    assert len(reads) == 2 + fetch.PREFETCH_BATCHES
    more = fetched_numbers(client.take())
    assert more and more[0] == len(sent) + 1
    while client.transport.producer is not None:
        client.transport.producer.resumeProducing()
    assert client.take().endswith(b"f OK FETCH completed\r\n") and sum(reads) == 20


def test_flags_of_many_messages_are_rendered_a_batch_at_a_time(factory, store, address, monkeypatch):
    """FETCH (FLAGS) of more than a batch renders the next batch only when the client took the one before."""
    monkeypatch.setattr(fetch, "FLAG_BATCH_MESSAGES", 3)
    deliver(store, address, 10)
    client = SlowClient(factory)
    client.login()
    client.command("s SELECT INBOX")
    assert fetched_numbers(raw(client, b"f FETCH 1:* (FLAGS)")) == [1, 2, 3]
    client.transport.producer.resumeProducing()
    assert fetched_numbers(client.take()) == [4, 5, 6]
    while client.transport.producer is not None:
        client.transport.producer.resumeProducing()
    reply = client.take()
    assert fetched_numbers(reply) == [7, 8, 9, 10] and reply.endswith(b"f OK FETCH completed\r\n")


def test_flags_of_one_batch_are_written_without_a_producer(factory, store, address):
    """A FETCH without files that fits one batch is written at once: no producer is registered."""
    deliver(store, address, 3)
    client = SlowClient(factory)
    client.login()
    client.command("s SELECT INBOX")
    registered = []
    client.transport.registerProducer = lambda producer, streaming: registered.append(producer)
    assert fetched_numbers(raw(client, b"f FETCH 1:* (FLAGS)")) == [1, 2, 3] and not registered


def test_lost_connection_stops_the_reads(factory, store, address, small_batches, monkeypatch):
    """When a slow client goes away mid-FETCH, no further batch is read."""
    deliver(store, address, 20)
    client = SlowClient(factory)
    client.login()
    client.command("s SELECT INBOX")
    reads = count_reads(store, monkeypatch)
    raw(client, b"f FETCH 1:* (RFC822)")
    before = len(reads)
    client.transport.producer.stopProducing()  # Twisted's order: the producer first, then the protocol
    client.server.connectionLost()
    assert len(reads) == before and sum(reads) < 20


# -- Prefetch ------------------------------------------------------------------------------------


class ManualRun:
    """A worker pool whose calls finish when the test says: each call's chunk and Deferred."""

    def __init__(self):
        self.calls: list[tuple[object, defer.Deferred]] = []

    def __call__(self, function, chunk, plan, read):
        d: defer.Deferred = defer.Deferred()
        self.calls.append((chunk, d))
        return d


PLAN = parse_fetch([Atom("RFC822")], False, False)


def test_prefetch_reads_one_batch_at_a_time_in_order_up_to_its_depth():
    """One worker call at a time, chunks in order; it stops when depth batches wait for the writer."""
    run = ManualRun()
    Prefetch(run, ["a", "b", "c", "d"], PLAN, lambda refs: [], depth=2)
    assert [chunk for chunk, _ in run.calls] == ["a"]
    run.calls[0][1].callback((b"A", 0))
    assert [chunk for chunk, _ in run.calls] == ["a", "b"]
    run.calls[1][1].callback((b"B", 0))
    assert len(run.calls) == 2


def test_prefetch_next_hands_out_batches_in_order_and_reads_on():
    """next() gives the batches in chunk order, waiting for one not read yet; taking one starts the next read."""
    run = ManualRun()
    prefetch = Prefetch(run, ["a", "b", "c"], PLAN, lambda refs: [], depth=1)
    first = defer.Deferred.fromCoroutine(prefetch.next())
    assert not first.called
    run.calls[0][1].callback((b"A", 0))
    assert first.result == (b"A", 0)
    assert [chunk for chunk, _ in run.calls] == ["a", "b"]
    run.calls[1][1].callback((b"B", 1))
    assert len(run.calls) == 2
    assert defer.Deferred.fromCoroutine(prefetch.next()).result == (b"B", 1)
    assert [chunk for chunk, _ in run.calls] == ["a", "b", "c"]


def test_prefetch_failed_read_is_raised_in_order_and_ends_the_reads():
    """A read that fails is raised by next() after the batches before it; nothing after it is read."""
    run = ManualRun()
    prefetch = Prefetch(run, ["a", "b", "c"], PLAN, lambda refs: [], depth=2)
    run.calls[0][1].callback((b"A", 0))
    run.calls[1][1].errback(OSError("disk"))
    assert defer.Deferred.fromCoroutine(prefetch.next()).result == (b"A", 0)
    failed = defer.Deferred.fromCoroutine(prefetch.next())
    assert failed.result.check(OSError)
    failed.addErrback(lambda _: None)
    assert len(run.calls) == 2


def test_prefetch_stop_drops_what_is_read_later():
    """After stop(), a read under way is dropped and no other read starts."""
    run = ManualRun()
    prefetch = Prefetch(run, ["a", "b"], PLAN, lambda refs: [], depth=2)
    prefetch.stop()
    run.calls[0][1].errback(OSError("disk"))  # dropped: no unhandled error either
    assert len(run.calls) == 1

"""Intake: a message is spooled and indexed before accept() returns; a restart rebuilds the index from files."""

from __future__ import annotations

import email.utils
import os

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from continuity.db import Database
from continuity.spool.index import QueueIndex
from continuity.envelope import header_section, message_id_of
from continuity.smtp.inbound import received_header
from continuity.spool.intake import MessageIntake
from continuity.spool.store import MessageSpool
from continuity.testing.inline import InlineThread

NOW = 1_800_000_000.0
MESSAGE = b"Subject: hi\r\nMessage-ID:  <m1@sender.example> \r\n\r\nMessage-ID: <not-this@x>\r\n"


class Parts:
    """Spool, index and intake under one data directory, threads inline, time on a Clock."""

    def __init__(self, root):
        self.clock = Clock()
        self.clock.advance(NOW)
        self.db = Database(os.path.join(root, "store.sqlite3")).open()
        self.spool = MessageSpool(os.path.join(root, "spool"))
        self.spool.prepare()
        self.index = QueueIndex(self.db, clock=self.clock.seconds)
        self.kicked: list[str] = []
        self.intake = MessageIntake(self.clock, InlineThread(), InlineThread(), self.spool, self.index,
                                    lambda queue_id, message, claimed: self.kicked.append(queue_id))

    def run(self, coroutine):
        results = []
        Deferred.fromCoroutine(coroutine).addBoth(results.append)
        assert results, "did not finish"
        return results[0]

    def accept(self, recipients=("bob@example.com",), message=MESSAGE) -> str:
        return self.run(self.intake.accept(sender="alice@sender.example", recipients=list(recipients),
                                           chunks=[b"Received: by us\r\n", message], direction="inbound",
                                           origin="smtp", client="192.0.2.1"))


@pytest.fixture
def parts(tmp_path):
    """Intake on a fresh data directory."""
    parts = Parts(str(tmp_path))
    yield parts
    parts.db.close()


def test_accept_spools_indexes_and_wakes_the_runner(parts):
    """When accept() returns, the file is in the spool, the recipients are queued and the runner was kicked."""
    queue_id = parts.accept(["bob@example.com", "carol@example.com"])
    envelope, data = parts.spool.read(queue_id)
    assert envelope.recipients == ("bob@example.com", "carol@example.com")
    assert envelope.received == NOW and envelope.message_id == "<m1@sender.example>"
    assert data == b"Received: by us\r\n" + MESSAGE
    assert [e.recipient for e in parts.index.pending(queue_id)] == ["bob@example.com", "carol@example.com"]
    assert parts.kicked == [queue_id]


def test_recover_spool_rebuilds_the_index_from_the_files(tmp_path):
    """After a crash that lost the index (a fresh store), every spool file is queued again from its envelope."""
    first = Parts(str(tmp_path))
    recipients = {first.accept([f"user{n}@example.com"]): f"user{n}@example.com" for n in range(3)}
    ids = sorted(recipients)
    first.db.close()
    os.unlink(tmp_path / "store.sqlite3")
    again = Parts(str(tmp_path))
    assert again.run(again.intake.recover_spool()) == (3, 0)
    assert sorted(e.queue_id for e in again.index.due(NOW)) == ids
    for queue_id, recipient in recipients.items():
        (entry,) = again.index.pending(queue_id)
        assert (entry.sender, entry.recipient, entry.received) == ("alice@sender.example", recipient, NOW)
    again.db.close()


def test_recover_spool_adds_only_what_the_index_lacks(parts):
    """A spool file written but not indexed (crash between the two) is indexed; known ones are left alone."""
    known = parts.accept()
    parts.intake.kick = None
    from continuity.spool.store import SpoolEnvelope

    orphan = SpoolEnvelope(queue_id="0000ORPHAN0001", sender="", recipients=("bob@example.com",), received=NOW,
                           direction="inbound", origin="smtp")
    parts.spool.write(orphan, [b"Subject: orphan\r\n\r\n"])
    assert parts.run(parts.intake.recover_spool()) == (1, 0)
    assert len(parts.index.pending(known)) == 1
    assert parts.index.pending("0000ORPHAN0001")[0].sender == ""


def test_recover_spool_removes_files_of_finished_messages(parts):
    """A spool file whose recipients are all done (crash before its removal) is removed at start-up."""
    queue_id = parts.accept()
    parts.index.finish(parts.index.pending(queue_id), "relayed", "250 ok")
    assert parts.run(parts.intake.recover_spool()) == (0, 1)
    assert not parts.spool.exists(queue_id)


def test_message_id_is_taken_from_the_header_section_only():
    """The Message-ID of the headers is used, trimmed; one in the body is not."""
    assert message_id_of(MESSAGE) == "<m1@sender.example>"
    assert message_id_of(b"Subject: x\r\n\r\nMessage-ID: <body@x>\r\n") is None


def test_header_section_ends_at_the_first_empty_line():
    """The header section includes its last line ending, for CRLF and bare LF messages."""
    assert header_section(b"A: 1\r\nB: 2\r\n\r\nbody") == b"A: 1\r\nB: 2\r\n"
    assert header_section(b"A: 1\n\nbody") == b"A: 1\n"
    assert header_section(b"A: 1\r\n") == b"A: 1\r\n"


def test_received_header_names_the_client_us_and_the_queue_id():
    """Our Received: field (RFC 5321 4.4) has from, by, with, id, for and the date, folded with CRLF TAB."""
    header = received_header(hostname="mx.example.test", helo="client.example", client_ip="192.0.2.1",
                             protocol="ESMTPS", queue_id="Q1", recipient="bob@example.com", now=NOW)
    assert header.startswith(b"Received: from client.example ([192.0.2.1])\r\n\tby mx.example.test (continuity)"
                             b" with ESMTPS id Q1\r\n\tfor <bob@example.com>;\r\n\t")
    date = header.rsplit(b"\t", 1)[1].decode().strip()
    assert email.utils.parsedate_to_datetime(date).timestamp() == NOW


def test_a_failed_spool_write_fails_accept_and_indexes_nothing(parts, monkeypatch):
    """Disk full while writing: accept() fails (the server answers 4xx), no row is indexed, nothing is kicked."""

    def full(envelope, chunks):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(parts.spool, "write", full)
    failure = parts.run(parts.intake.accept(sender="alice@sender.example", recipients=["bob@example.com"],
                                            chunks=[MESSAGE], direction="inbound", origin="smtp"))
    assert failure.check(OSError)
    assert parts.index.known_queue_ids() == set() and parts.kicked == []


def test_the_runner_claims_in_the_transaction_that_indexes(parts):
    """With a claim hook, the rows are claimed in the index job and its answer goes to kick."""
    claimed = []
    parts.intake.claim = lambda entries: claimed.append([e.recipient for e in entries]) or "routes"
    parts.intake.kick = lambda queue_id, message, routes: parts.kicked.append((queue_id, message, routes))
    queue_id = parts.accept(["bob@example.com"])
    assert claimed == [["bob@example.com"]]
    assert parts.kicked == [(queue_id, ("alice@sender.example", b"Received: by us\r\n" + MESSAGE), "routes")]


def test_a_failed_claim_still_gives_the_client_its_250(parts):
    """The message is spooled and indexed; a queue pass delivers it (a 4xx would make the client send it twice)."""

    def broken(entries):
        raise RuntimeError("lookup failed")

    parts.intake.claim = broken
    queue_id = parts.accept(["bob@example.com"])
    (entry,) = parts.index.pending(queue_id)
    assert (entry.state, entry.attempts) == ("queued", 0) and parts.kicked == [queue_id]


def test_with_a_hand_over_accept_writes_the_file_and_hands_it_over_unindexed(parts):
    """An SMTP worker's intake: the durable file is the message; the service process indexes it (adopt)."""
    handed: list[str] = []
    parts.intake.hand_over = handed.append
    queue_id = parts.accept(["bob@example.com"])
    assert handed == [queue_id] and parts.kicked == []
    assert parts.spool.read(queue_id)[1] == b"Received: by us\r\n" + MESSAGE
    assert parts.index.known_queue_ids() == set()


def test_adopt_indexes_claims_and_kicks_a_handed_over_file_once(parts):
    """The service's side: the file's envelope is indexed and claimed, and the runner gets the message."""
    parts.intake.hand_over = lambda queue_id: None
    queue_id = parts.accept(["bob@example.com", "carol@example.com"])
    parts.intake.hand_over = None
    claimed = []
    parts.intake.claim = lambda entries: claimed.append([e.recipient for e in entries]) or "routes"
    parts.intake.kick = lambda queue_id, message, routes: parts.kicked.append((queue_id, message, routes))
    parts.intake.adopt(queue_id)
    assert claimed == [["bob@example.com", "carol@example.com"]]
    assert parts.kicked == [(queue_id, ("alice@sender.example", b"Received: by us\r\n" + MESSAGE), "routes")]
    (entry, _) = parts.index.pending(queue_id)
    assert (entry.sender, entry.received) == ("alice@sender.example", NOW)
    parts.intake.adopt(queue_id)  # handed over twice, or recovered at start-up meanwhile: indexed once
    assert len(parts.index.pending(queue_id)) == 2 and len(claimed) == 1


def test_adopt_keeps_each_recipient_s_direction(parts):
    """A relay client's message to a hosted and an outside address: each row keeps its direction."""
    parts.intake.hand_over = lambda queue_id: None
    queue_id = parts.run(parts.intake.accept(
        sender="alice@example.com", recipients=["bob@example.com", "eve@elsewhere.example"], chunks=[MESSAGE],
        direction="outbound", origin="smtp", directions=["inbound", "outbound"]))
    parts.intake.adopt(queue_id)
    assert [(e.recipient, e.direction) for e in parts.index.pending(queue_id)] == [
        ("bob@example.com", "inbound"), ("eve@elsewhere.example", "outbound")]


def test_adopt_leaves_a_large_message_for_the_runner_to_read(parts, monkeypatch):
    """A message over the hand-off limit is not read on the SQL thread: the runner reads it itself."""
    from continuity.spool import intake

    monkeypatch.setattr(intake, "HANDOFF_LIMIT", 10)
    parts.intake.hand_over = lambda queue_id: None
    queue_id = parts.accept(["bob@example.com"])
    parts.intake.kick = lambda queue_id, message, routes: parts.kicked.append((queue_id, message))
    parts.intake.adopt(queue_id)
    assert parts.kicked == [(queue_id, None)]


def adopted(parts, queue_id: str) -> bool:
    results: list = []
    parts.intake.adopt(queue_id).addBoth(results.append)
    return results[0]


def test_index_strays_indexes_what_an_ended_worker_did_not_hand_over(parts):
    """A worker killed between its 250 and its hand-over: the service finds the file and indexes it once
    (unclaimed: the next queue pass delivers it)."""
    parts.intake.hand_over = lambda queue_id: None
    lost = parts.accept(["bob@example.com"])
    handed = parts.accept(["carol@example.com"])
    parts.intake.hand_over = None
    parts.intake.kick = lambda queue_id, message, routes: parts.kicked.append(queue_id)
    assert adopted(parts, handed) is True
    assert parts.run(parts.intake.index_strays()) == 1
    assert parts.kicked == [handed]
    assert [(e.state, e.attempts) for e in parts.index.pending(lost)] == [("queued", 0)]
    assert lost in {e.queue_id for e in parts.index.due(NOW)}
    assert adopted(parts, lost) is False  # its hand-over after all: not again
    assert parts.kicked == [handed]


def test_recovery_goes_on_past_a_file_it_cannot_read(parts):
    """A corrupt spool file is logged and left; the others are indexed."""
    parts.intake.hand_over = lambda queue_id: None
    good = parts.accept(["bob@example.com"])
    with open(parts.spool.path("0000BROKEN0001"), "wb") as handle:
        handle.write(b"not an envelope\r\n")
    parts.intake.hand_over = None
    assert parts.run(parts.intake.recover_spool()) == (1, 0)
    assert [e.recipient for e in parts.index.pending(good)] == ["bob@example.com"]
    assert parts.spool.exists("0000BROKEN0001")


def test_a_cs_sent_message_is_tracked_once_by_whoever_indexes_it(parts):
    """Mail a user sent in an outage: its CS-SENT copy's row is written with the index rows, by the service for
    a worker's hand-over as for its own, once however often the file is indexed."""
    from continuity import tracking

    def cs_sent_rows():
        return [row for row in tracking.query(parts.db, recipient="bob@example.com") if row["queue_id"] == queue_id]

    parts.intake.hand_over = lambda queue_id: None
    queue_id = parts.run(parts.intake.accept(
        sender="bob@example.com", recipients=["friend@internet.example"], chunks=[b"Received: by us\r\n", MESSAGE],
        direction="outbound", origin="submission", auth_user="bob@example.com", extra={"cs_sent": True}))
    assert cs_sent_rows() == []  # the worker writes nothing to the store
    parts.intake.hand_over = None
    parts.intake.adopt(queue_id)
    parts.intake.adopt(queue_id)
    (row,) = cs_sent_rows()
    assert (row["status"], row["sender"], row["message_id"]) == ("delayed", "bob@example.com", "<m1@sender.example>")

"""The queue index: per-recipient state, due times, attempts, and the tracking row beside each change."""

from __future__ import annotations

import pytest

from continuity.db import Database
from continuity.spool.index import QueueIndex
from continuity.spool.store import SpoolEnvelope

NOW = 1_800_000_000.0


class Clock:
    def __init__(self):
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    """A settable clock for the index's event times."""
    return Clock()


@pytest.fixture
def index(tmp_path, clock) -> QueueIndex:
    """A queue index on a fresh SQLite file."""
    db = Database(str(tmp_path / "store.sqlite3")).open()
    yield QueueIndex(db, clock=clock)
    db.close()


def add(index: QueueIndex, queue_id: str, recipients=("bob@example.com",), sender="alice@sender.example",
        directions=None):
    envelope = SpoolEnvelope(queue_id=queue_id, sender=sender, recipients=tuple(recipients), received=NOW,
                             direction="inbound", origin="smtp", client="192.0.2.1", message_id=f"<{queue_id}@x>")
    return index.add(envelope, 100, directions)


def statuses(index: QueueIndex, tracking_id: int) -> list[str]:
    return [r["status"] for r in index.db.read(
        "SELECT status FROM tracking_events WHERE tracking_id = ? ORDER BY id", (tracking_id,))]


def test_add_queues_each_recipient_with_a_received_tracking_row(index):
    """Each recipient gets a queued row due now and a tracking row with the event received."""
    added = add(index, "Q1", ["bob@example.com", "Carol@Other.example"])
    bob, carol = index.pending("Q1")
    assert added == [bob, carol]  # add() returns the rows as pending() reads them
    assert (bob.state, bob.attempts, bob.next_attempt, bob.domain) == ("queued", 0, NOW, "example.com")
    assert carol.domain == "other.example"
    assert (bob.sender, bob.received) == ("alice@sender.example", NOW)
    assert statuses(index, bob.tracking_id) == ["received"]


def test_adding_a_message_twice_indexes_it_once(index):
    """Re-indexing a queue id already known (spool recovery) adds nothing."""
    add(index, "Q1")
    assert add(index, "Q1") == []
    assert len(index.pending("Q1")) == 1


def test_directions_are_per_recipient(index):
    """A message to a hosted and a foreign domain keeps each recipient's direction."""
    add(index, "Q1", ["bob@example.com", "x@elsewhere.example"], directions=["inbound", "outbound"])
    assert [e.direction for e in index.pending("Q1")] == ["inbound", "outbound"]


def test_due_returns_queued_and_deferred_whose_time_has_come_oldest_first(index):
    """due(now) skips future, held and done recipients and orders by next attempt."""
    add(index, "Q1")
    add(index, "Q2")
    add(index, "Q3")
    add(index, "Q4")
    (q1,), (q2,), (q3,), (q4,) = (index.pending(q) for q in ("Q1", "Q2", "Q3", "Q4"))
    index.defer([q1], "451 busy", NOW - 10)
    index.defer([q2], "451 busy", NOW + 10)
    index.defer([q3], "held", NOW - 20, state="held")
    index.finish([q4], "relayed", "250 ok")
    assert [e.queue_id for e in index.due(NOW)] == ["Q1"]
    assert [e.queue_id for e in index.due(NOW + 10)] == ["Q1", "Q2"]
    assert index.next_due() == NOW - 10


def test_claim_counts_the_attempt_and_moves_next_attempt_forward(index):
    """claim() runs before an attempt: attempts + 1, next_attempt set to the retry time."""
    (added,) = add(index, "Q1")
    assert index.claim([added.id], NOW + 60, NOW) == {added.id}
    (entry,) = index.pending("Q1")
    assert (entry.attempts, entry.next_attempt, entry.state) == (1, NOW + 60, "queued")
    assert index.due(NOW) == []


def test_defer_keeps_the_reason_and_tracks_deferred(index, clock):
    """A temporary failure records its reason in the queue and a deferred tracking event."""
    add(index, "Q1")
    (entry,) = index.pending("Q1")
    clock.now = NOW + 5
    index.defer([entry], "451 4.3.0 busy", NOW + 60)
    (entry,) = index.pending("Q1")
    assert (entry.state, entry.last_error, entry.next_attempt) == ("deferred", "451 4.3.0 busy", NOW + 60)
    row = index.db.read("SELECT status, time FROM tracking WHERE id = ?", (entry.tracking_id,))[0]
    assert (row["status"], row["time"]) == ("deferred", NOW + 5)


def test_finish_marks_done_with_the_final_status_and_mailbox_ref(index):
    """finish() ends a recipient with its tracking status and, for a mailbox delivery, where it went."""
    add(index, "Q1")
    (entry,) = index.pending("Q1")
    index.defer([entry], "451 busy", NOW + 60)
    index.finish([entry], "delayed", "in the continuity mailbox", ["bob@example.com/1.M2.host"])
    assert index.pending("Q1") == []
    (done,) = index.recipients("Q1")
    assert (done.state, done.last_error) == ("done", None)
    row = index.db.read("SELECT status, mailbox_ref FROM tracking WHERE id = ?", (entry.tracking_id,))[0]
    assert (row["status"], row["mailbox_ref"]) == ("delayed", "bob@example.com/1.M2.host")
    assert statuses(index, entry.tracking_id) == ["received", "deferred", "delayed"]
    assert index.finished_queue_ids() == ["Q1"]


def test_release_never_reopens_a_delivered_recipient(index):
    """release() with a stale list (read before a delivery finished) leaves the delivered recipient done."""
    add(index, "Q1")
    stale = index.pending("Q1")
    index.finish(stale, "relayed", "250 ok")
    index.release(stale, NOW)
    assert index.pending("Q1") == []


def test_release_makes_held_and_deferred_recipients_due_now(index):
    """release() turns held and deferred recipients into queued ones due at the given time."""
    add(index, "Q1")
    add(index, "Q2")
    (held,), (deferred,) = index.pending("Q1"), index.pending("Q2")
    index.defer([held], "held until recovery", NOW + 10**9, state="held")
    index.defer([deferred], "451 busy", NOW + 900)
    index.release([held, deferred], NOW + 1)
    assert [e.queue_id for e in index.due(NOW + 1)] == ["Q1", "Q2"]


def test_release_all_flushes_one_domain_or_all(index):
    """release_all(domain) releases that domain's waiting recipients only; None releases every one."""
    add(index, "Q1", ["bob@example.com"])
    add(index, "Q2", ["x@other.example"])
    index.defer(index.pending("Q1"), "451", NOW + 900)
    index.defer(index.pending("Q2"), "held", NOW + 900, state="held")
    assert index.release_all("example.com", NOW) == 1
    assert [e.queue_id for e in index.due(NOW)] == ["Q1"]
    assert index.release_all(None, NOW) == 1
    assert [e.queue_id for e in index.due(NOW)] == ["Q1", "Q2"]


def test_depth_and_counts_include_every_waiting_state(index):
    """Queue depth counts queued, deferred and held recipients of a domain; done ones are gone."""
    add(index, "Q1", ["a@example.com", "b@example.com", "c@example.com", "d@example.com"])
    a, b, c, d = index.pending("Q1")
    index.defer([b], "451", NOW + 60)
    index.defer([c], "held", NOW + 60, state="held")
    index.finish([d], "relayed", "250")
    assert index.depth("example.com") == 3
    assert index.depth("other.example") == 0
    assert index.counts() == {"queued": 1, "deferred": 1, "held": 1}
    assert [e.recipient for e in index.listing("example.com")] == ["a@example.com", "b@example.com",
                                                                   "c@example.com"]
    assert [e.recipient for e in index.for_domain("example.com", ["held"])] == ["c@example.com"]


def test_a_rejected_recipient_is_tracked_without_a_message(index):
    """A RCPT refused during the dialogue leaves a tracking row with status rejected and no queue id."""
    index.record_rejection("alice@sender.example", "x@elsewhere.example", "relay access denied")
    row = index.db.read("SELECT * FROM tracking")[0]
    assert (row["status"], row["queue_id"], row["recipient"]) == ("rejected", None, "x@elsewhere.example")
    assert index.counts() == {"queued": 0, "deferred": 0, "held": 0}


def test_release_stale_claims_frees_what_a_dead_run_claimed_and_nothing_newer(index):
    """At start-up, claims of the previous run's attempts come due now; a worker's fresh claim does not."""
    (old,) = add(index, "Q1")
    index.claim([old.id], NOW + 300, NOW)
    envelope = SpoolEnvelope(queue_id="Q2", sender="a@b.example", recipients=("bob@example.com",), received=NOW + 10,
                             direction="inbound", origin="smtp")
    (new,) = index.add(envelope, 100)
    index.claim([new.id], NOW + 310, NOW + 10)
    (deferred,) = add(index, "Q3")
    index.defer([deferred], "451 later", NOW + 600)
    assert index.release_stale_claims(started=NOW + 5, now=NOW + 20) == 1
    assert [(e.queue_id, e.next_attempt) for e in index.due(NOW + 20)] == [("Q1", NOW + 20)]


def test_of_two_runners_claiming_one_recipient_only_one_gets_it(index):
    """A pass and an SMTP worker read it due at once; the claim is a compare-and-set."""
    (entry,) = add(index, "Q1")
    assert index.claim([entry.id], NOW + 300, NOW) == {entry.id}
    assert index.claim([entry.id], NOW + 300, NOW) == set()  # already claimed: its next attempt is ahead
    index.finish([entry], "relayed", "250 ok")
    assert index.claim([entry.id], NOW + 600, NOW + 400) == set()  # done: never claimed again

"""Recovery step by step: INBOX mail back to the upstream, interruptions, and a restart after a crash.

The upstream is a :class:`~continuity.testing.upstream.ScriptedPool`: these
tests need an upstream that accepts the first message and fails the second,
which no smtp-sink option does, and they run on a task.Clock.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred

from support import UPSTREAM, DeliveryStack

from continuity.envelope import parse_address
from continuity.failover.recovery import split_delivery_headers
from continuity.testing.upstream import SOFT, Reply

BOB = parse_address("bob@example.com")


def message(number: int) -> bytes:
    return f"Subject: number {number}\r\nMessage-ID: <n{number}@sender.example>\r\n\r\nBody {number}.\r\n".encode()


@pytest.fixture
def stack(tmp_path):
    """A started stack; example.com is in (manual) emergency with three messages in bob's INBOX."""
    stack = DeliveryStack(tmp_path).start()
    stack.domain(activation="manual")
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.clock.advance(1)
    for number in range(3):
        stack.accept(["bob@example.com"], message=message(number))
    assert len(stack.inbox("bob@example.com")) == 3
    yield stack
    stack.stop()


def recover(stack: DeliveryStack) -> bool:
    results = []
    Deferred.fromCoroutine(stack.recovery("example.com")).addBoth(results.append)
    assert results, "recovery did not finish"
    return results[0]


def sent_numbers(stack: DeliveryStack) -> list[int]:
    return sorted(int(d.message.split(b"Subject: number ")[1][:1]) for d in stack.pool.to(UPSTREAM)
                  if d.reply.code == 250)


def inbox_refs(stack: DeliveryStack):
    return sorted(stack.mailstore.inbox_messages(BOB), key=lambda ref: ref.base)


def test_inbox_mail_is_relayed_to_the_user_and_removed(stack):
    """Each INBOX message goes to the upstream for its user, from its original sender, without our headers."""
    assert recover(stack) is True
    deliveries = stack.pool.to(UPSTREAM)
    assert len(deliveries) == 3
    for delivery in deliveries:
        assert delivery.sender == "alice@sender.example"
        assert delivery.recipients == ("bob@example.com",)
        assert not delivery.message.startswith((b"Return-Path:", b"Delivered-To:"))
    assert stack.inbox("bob@example.com") == []
    assert {r["status"] for r in stack.tracking("bob@example.com")} == {"redelivered"}


def test_a_failure_mid_way_leaves_the_rest_untouched(stack):
    """A 4xx on the second message stops recovery; the second and third stay in INBOX unchanged."""
    before = {ref.base: stack.mailstore.read_message(ref) for ref in inbox_refs(stack)}
    stack.pool.script(UPSTREAM, Reply(), SOFT)
    assert recover(stack) is False
    left = inbox_refs(stack)
    assert len(left) == 2
    assert all(stack.mailstore.read_message(ref) == before[ref.base] for ref in left)
    assert len(stack.pool.to(UPSTREAM)) == 2  # the third was never tried


def test_after_an_interruption_nothing_accepted_is_sent_again(stack):
    """A second recovery sends only what the first did not get accepted."""
    stack.pool.script(UPSTREAM, Reply(), SOFT)
    recover(stack)
    assert recover(stack) is True
    assert sent_numbers(stack) == [0, 1, 2]
    assert stack.inbox("bob@example.com") == []


def test_the_monitor_puts_the_domain_back_in_emergency_after_a_failure_mid_way(stack):
    """emergency stop, then a 4xx mid-way: the domain is in emergency again with the rest in INBOX."""
    stack.pool.script(UPSTREAM, Reply(), SOFT)
    stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    stack.clock.advance(1)
    assert stack.directory.get_domain("example.com").mode == "emergency"
    assert len(stack.inbox("bob@example.com")) == 2
    change = stack.directory.mode_history("example.com")[0]
    assert (change.old_mode, change.new_mode, change.automatic) == ("recovering", "emergency", True)


def test_restart_after_a_crash_resumes_from_the_journal(stack):
    """Journal 'sent' rows (crash after the 250) are removed unsent; 'sending' rows are sent again."""
    first, second, third = inbox_refs(stack)
    bodies = {ref.base: split_delivery_headers(stack.mailstore.read_message(ref))[1] for ref in (first, second, third)}
    stack.journal.mark("example.com", "bob@example.com", "inbox", first.base, "sent")
    stack.journal.mark("example.com", "bob@example.com", "inbox", second.base, "sending")
    assert recover(stack) is True
    sent = [d.message for d in stack.pool.to(UPSTREAM)]
    assert sorted(sent) == sorted([bodies[second.base], bodies[third.base]])
    assert stack.inbox("bob@example.com") == []
    for ref in (first, second, third):
        assert stack.journal.state("bob@example.com", "inbox", ref.base) == "removed"


def test_a_permanent_refusal_keeps_the_message_locally(stack):
    """A 5xx for a redelivery is not retried by recovery; the message stays in INBOX, the rest goes."""
    stack.pool.script(UPSTREAM, Reply(550, "5.1.1", "No such user", "RCPT"))
    assert recover(stack) is True
    assert len(stack.inbox("bob@example.com")) == 1
    assert len(stack.pool.to(UPSTREAM)) == 3


def test_deleted_and_moved_mail_is_not_sent_and_tracked(stack):
    """Mail deleted or moved out of INBOX during the outage is not redelivered; tracking says so."""
    first, second, _ = inbox_refs(stack)
    stack.mailstore.remove_message(first)
    stack.mailstore.create_folder(BOB, "Archive")
    stack.mailstore.move(BOB, "INBOX", [second.uid], "Archive")
    assert recover(stack) is True
    assert len(stack.pool.to(UPSTREAM)) == 1
    assert sorted(r["status"] for r in stack.tracking("bob@example.com")) == ["deleted", "moved", "redelivered"]
    assert len(stack.mailstore.get_messages(BOB, "Archive")) == 1


def test_anything_in_inbox_counts_whoever_put_it_there(stack):
    """A message another tool dropped into INBOX (no Return-Path of ours) is relayed from <>."""
    stack.mailstore.deliver(BOB, b"Subject: dropped in\r\n\r\nby another tool\r\n")
    assert recover(stack) is True
    dropped = [d for d in stack.pool.to(UPSTREAM) if b"dropped in" in d.message]
    assert len(dropped) == 1 and dropped[0].sender == ""


def test_split_delivery_headers_takes_the_sender_and_strips_our_headers():
    """Return-Path gives the envelope sender; both of our headers are taken off, nothing else."""
    sender, rest = split_delivery_headers(b"Return-Path: <a@b.example>\r\nDelivered-To: c@d.example\r\n"
                                          b"Subject: s\r\n\r\nx\r\n")
    assert sender == "a@b.example"
    assert rest == b"Subject: s\r\n\r\nx\r\n"


def test_several_messages_are_under_way_at_once(stack):
    """Recovery does not wait for one 250 before sending the next: all three are journalled sending first."""
    held = [Deferred() for _ in range(3)]
    stack.pool.script(UPSTREAM, *held)
    results = []
    Deferred.fromCoroutine(stack.recovery("example.com")).addBoth(results.append)
    assert not results
    assert [stack.journal.state("bob@example.com", "inbox", ref.base) for ref in inbox_refs(stack)] == ["sending"] * 3
    for d in held:
        d.callback(Reply())
    assert results == [True]
    assert stack.inbox("bob@example.com") == []


def test_a_failure_while_others_are_under_way_keeps_only_the_refused(stack):
    """Messages already under way when one gets a 4xx finish: the accepted ones go, the refused one stays."""
    held = [Deferred() for _ in range(3)]
    stack.pool.script(UPSTREAM, *held)
    results = []
    Deferred.fromCoroutine(stack.recovery("example.com")).addBoth(results.append)
    held[0].callback(Reply())
    held[1].callback(SOFT)
    held[2].callback(Reply())
    assert results == [False]
    (left,) = inbox_refs(stack)
    assert stack.journal.state("bob@example.com", "inbox", left.base) == "sending"
    sent = sent_numbers(stack)
    assert len(sent) == 2
    assert int(stack.mailstore.read_message(left).split(b"Subject: number ")[1][:1]) not in sent


def test_leaving_recovering_mode_stops_the_recovery(stack):
    """An admin's emergency start during recovery stops it before the next message; the rest stays local."""
    asked: list[str] = []

    def still_recovering(domain: str) -> bool:
        asked.append(domain)
        return len(asked) <= 1  # the admin switched back after the first message

    stack.recovery.still_recovering = still_recovering
    assert recover(stack) is False
    assert len(sent_numbers(stack)) <= 1
    assert len(stack.inbox("bob@example.com")) == 3 - len(sent_numbers(stack))
    assert set(asked) == {"example.com"}


def test_recovery_started_by_emergency_stop_sees_recovering_mode(stack):
    """Wired to the monitor, the recovery is told "recovering" for each message while it runs."""
    answers: list[bool] = []

    def still_recovering(domain: str) -> bool:
        answers.append(stack.monitor.is_recovering(domain))
        return answers[-1]

    stack.recovery.still_recovering = still_recovering
    assert stack.monitor.is_recovering("example.com") is False
    assert stack.monitor.is_recovering("unknown.example") is False
    stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    stack.clock.advance(2)
    assert answers == [True, True, True]
    assert sorted(sent_numbers(stack)) == [0, 1, 2]
    assert stack.monitor.is_recovering("example.com") is False

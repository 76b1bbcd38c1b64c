"""Direct delivery in emergency mode: straight into the continuity mailboxes before the 250, without the spool."""

from __future__ import annotations

import threading

import pytest
from twisted.internet.defer import Deferred

from support import UPSTREAM, DeliveryStack, stack  # noqa: F401 (fixture)

from continuity.delivery.direct import DirectDelivery
from continuity.testing.upstream import OK

MESSAGE = b"Subject: hello\r\nMessage-ID: <d1@sender.example>\r\n\r\nHi.\r\n"


def deliver(stack: DeliveryStack, recipients: list[str], queue_id: str = "0660E9766B72C6F0B5B8",
            hand_over=None, mailboxes: dict[str, str] | None = None) -> list | None:
    """Deliver to ``recipients``, each to its own mailbox unless ``mailboxes`` (alias -> user) says otherwise."""
    direct = DirectDelivery(stack.clock, stack.sql, stack.io, stack.directory, stack.mailstore)
    direct.hand_over = hand_over
    copies = [(r, (mailboxes or {}).get(r, r)) for r in recipients]
    results: list = []
    Deferred.fromCoroutine(direct.deliver(
        queue_id=queue_id, sender="alice@sender.example", copies=copies,
        chunks=[b"Received: by us\r\n", MESSAGE], client="192.0.2.1", message_id="<d1@sender.example>",
    )).addBoth(results.append)
    assert results and (results[0] is None or isinstance(results[0], list)), results
    return results[0]


def emergency(stack: DeliveryStack, **settings) -> None:
    stack.domain(activation="manual", **settings)
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)


def test_every_copy_goes_to_its_mailbox_with_tracking_and_no_spool(stack):
    emergency(stack, users=["bob@example.com", "carol@example.com"])
    stack.directory.add_alias("carol@example.com", "sales@example.com")
    assert deliver(stack, ["bob@example.com", "sales@example.com"],
                   mailboxes={"sales@example.com": "carol@example.com"}) == []
    (bob,) = stack.inbox("bob@example.com")
    assert bob == (b"Return-Path: <alice@sender.example>\r\nDelivered-To: bob@example.com\r\n"
                   b"Received: by us\r\n" + MESSAGE)
    (carol,) = stack.inbox("carol@example.com")
    assert b"Delivered-To: sales@example.com\r\n" in carol
    (row,) = stack.tracking("sales@example.com")
    assert row["status"] == "delayed" and row["message_id"] == "<d1@sender.example>"
    assert [e["status"] for e in row["events"]] == ["received", "delayed"]
    assert list(stack.spool.queue_ids()) == [] and stack.index.known_queue_ids() == set()


def test_nothing_is_written_unless_every_recipient_domain_is_in_emergency_mode(stack):
    """The caller routed from a cache; the domain's emergency mark at the write has the last word."""
    emergency(stack, users=["bob@example.com"])
    stack.directory.add_domain("other.example", "smtp.other.example:25")
    assert deliver(stack, ["bob@example.com", "ann@other.example"]) is None
    assert stack.inbox("bob@example.com") == [] and stack.tracking("bob@example.com") == []


def test_the_mode_at_the_write_decides_not_the_caller(stack):
    """In normal mode, or once recovery began, nothing is delivered to a mailbox: the spool takes it."""
    stack.domain()
    assert deliver(stack, ["bob@example.com"]) is None
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    assert deliver(stack, ["bob@example.com"]) is None
    assert stack.inbox("bob@example.com") == []


def test_leaving_emergency_mode_waits_for_the_copy_being_written(stack, monkeypatch):
    """A switch that lands while a copy is written returns only once it is in the INBOX (recovery's listing
    then has it), and no copy is written after it."""
    emergency(stack)
    deliver_one = stack.mailstore.deliver
    writing, finish = threading.Event(), threading.Event()

    def slow(address, message, *args, **kwargs):
        writing.set()
        finish.wait(10)
        return deliver_one(address, message, *args, **kwargs)

    monkeypatch.setattr(stack.mailstore, "deliver", slow)
    direct = DirectDelivery(stack.clock, stack.sql, stack.io, stack.directory, stack.mailstore)
    results: list = []
    copies = [("bob@example.com", "bob@example.com")]
    writer = threading.Thread(target=lambda: results.append(
        direct._write_copies("0660E9766B72C6F0B5B8", "alice@sender.example", copies, [MESSAGE])))
    writer.start()
    assert writing.wait(10)
    switched = threading.Event()
    switcher = threading.Thread(target=lambda: (stack.directory.set_mode(
        "example.com", "recovering", "continuityctl emergency stop", automatic=False), switched.set()))
    switcher.start()
    assert not switched.wait(0.3)  # the copy under way holds the switch back
    assert stack.inbox("bob@example.com") == []
    finish.set()
    switcher.join(10)
    writer.join(10)
    assert switched.is_set() and len(stack.inbox("bob@example.com")) == 1
    assert direct._write_copies("0660E9766B72C6F0B5B9", "alice@sender.example", copies, [MESSAGE]) == (
        [], ["bob@example.com"])
    assert len(stack.inbox("bob@example.com")) == 1


def test_a_mark_that_cannot_be_emptied_leaves_the_domain_in_emergency_mode(stack, monkeypatch):
    """Leaving emergency mode fences first: if that fails, the switch is refused and nothing is stranded."""
    emergency(stack)

    def broken(domain):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(stack.directory.fence, "close_gate", broken)
    with pytest.raises(OSError):
        stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    assert stack.directory.get_domain("example.com").mode == "emergency"


def test_a_switch_already_in_the_store_still_closes_the_gate(stack):
    """continuityctl committed "recovering" and died before its mark: the service's own switch to the same
    mode (a probe that succeeded) still empties it before the recovery it starts lists the INBOX."""
    emergency(stack)
    with stack.db.transaction() as conn:
        conn.execute("UPDATE domains SET mode = 'recovering' WHERE name = 'example.com'")
    assert stack.directory.fence.says_emergency("example.com")
    assert stack.directory.set_mode("example.com", "recovering", "probe succeeded", automatic=True) is None
    assert not stack.directory.fence.says_emergency("example.com")


def test_recovery_redelivers_and_tracks_directly_delivered_mail(stack):
    """The mailbox reference recovery works from is the same as the spool path's."""
    emergency(stack)
    assert deliver(stack, ["bob@example.com"]) == []
    stack.pool.default = OK
    stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    stack.clock.advance(1)  # the monitor's poll starts the recovery
    (redelivered,) = stack.pool.to(UPSTREAM)
    assert redelivered.recipients == ("bob@example.com",) and redelivered.message.endswith(MESSAGE)
    assert stack.inbox("bob@example.com") == []
    assert stack.tracking("bob@example.com")[0]["status"] == "redelivered"


def test_a_copy_that_fails_after_others_leaves_the_rest_to_the_spool(stack, monkeypatch):
    """Disk trouble in carol's mailbox: bob's copy stays tracked, carol's goes to the spool; nothing twice."""
    emergency(stack, users=["bob@example.com", "carol@example.com"])
    deliver_one = stack.mailstore.deliver

    def failing(address, message, *args, **kwargs):
        if address.local == "carol":
            raise OSError(122, "Disk quota exceeded")
        return deliver_one(address, message, *args, **kwargs)

    monkeypatch.setattr(stack.mailstore, "deliver", failing)
    assert deliver(stack, ["bob@example.com", "carol@example.com"]) == ["carol@example.com"]
    assert len(stack.inbox("bob@example.com")) == 1
    assert [r["status"] for r in stack.tracking("bob@example.com")] == ["delayed"]
    assert stack.tracking("carol@example.com") == []


def test_a_first_copy_that_fails_leaves_the_whole_message_to_the_spool(stack, monkeypatch):
    emergency(stack)

    def failing(address, message, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(stack.mailstore, "deliver", failing)
    assert deliver(stack, ["bob@example.com"]) is None
    assert stack.tracking("bob@example.com") == []


def test_in_an_smtp_worker_the_tracking_rows_are_handed_to_the_service(stack):
    """The worker writes the copy and nothing to the store; the service's record() writes the same rows."""
    emergency(stack, users=["bob@example.com"])
    handed: list = []
    stack.clock.advance(5)
    assert deliver(stack, ["bob@example.com"], hand_over=lambda *report: handed.append(report)) == []
    assert len(stack.inbox("bob@example.com")) == 1 and stack.tracking("bob@example.com") == []
    ((queue_id, message_id, sender, client, now, copies),) = handed
    assert (queue_id, message_id, sender, client, now) == (
        "0660E9766B72C6F0B5B8", "<d1@sender.example>", "alice@sender.example", "192.0.2.1", stack.clock.seconds())
    ((recipient, mailbox, ref),) = copies
    service = DirectDelivery(stack.clock, stack.sql, stack.io, stack.directory, stack.mailstore)
    stack.clock.advance(1)
    service.record(queue_id, message_id, sender, client, now, copies)
    (row,) = stack.tracking("bob@example.com")
    assert row["status"] == "delayed" and row["time"] == "2027-01-15T08:00:05+00:00"  # the worker's time
    ref_of = stack.db.read("SELECT mailbox_ref FROM tracking WHERE recipient = ?", ("bob@example.com",))
    assert [r[0] for r in ref_of] == [f"bob@example.com/{ref}"]

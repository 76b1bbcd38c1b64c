"""Direct delivery in emergency mode: straight into the continuity mailboxes before the 250, without the spool."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from support import UPSTREAM, DeliveryStack, stack  # noqa: F401 (fixture)

from continuity.delivery.direct import DirectDelivery
from continuity.testing.upstream import OK

MESSAGE = b"Subject: hello\r\nMessage-ID: <d1@sender.example>\r\n\r\nHi.\r\n"


def deliver(stack: DeliveryStack, recipients: list[str], queue_id: str = "0660E9766B72C6F0B5B8",
            hand_over=None) -> list | None:
    direct = DirectDelivery(stack.clock, stack.sql, stack.io, stack.directory, stack.mailstore)
    direct.hand_over = hand_over
    results: list = []
    Deferred.fromCoroutine(direct.deliver(
        queue_id=queue_id, sender="alice@sender.example", recipients=recipients,
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
    assert deliver(stack, ["bob@example.com", "sales@example.com"]) == []
    (bob,) = stack.inbox("bob@example.com")
    assert bob == (b"Return-Path: <alice@sender.example>\r\nDelivered-To: bob@example.com\r\n"
                   b"Received: by us\r\n" + MESSAGE)
    (carol,) = stack.inbox("carol@example.com")
    assert b"Delivered-To: sales@example.com\r\n" in carol
    (row,) = stack.tracking("sales@example.com")
    assert row["status"] == "delayed" and row["message_id"] == "<d1@sender.example>"
    assert [e["status"] for e in row["events"]] == ["received", "delayed"]
    assert list(stack.spool.queue_ids()) == [] and stack.index.known_queue_ids() == set()


def test_nothing_is_written_unless_every_copy_goes_to_a_mailbox(stack):
    """An uncovered user's copy is held for recovery by the spool path: the whole message takes it."""
    emergency(stack, users=["bob@example.com", "carol@example.com"])
    stack.directory.exclude("carol@example.com")
    assert deliver(stack, ["bob@example.com", "carol@example.com"]) is None
    assert deliver(stack, ["bob@example.com", "nobody@elsewhere.example"]) is None
    assert stack.inbox("bob@example.com") == [] and stack.tracking("bob@example.com") == []


def test_the_store_decides_not_the_caller(stack):
    """In normal mode (say, recovery just finished) nothing is delivered to a mailbox."""
    stack.domain()
    assert deliver(stack, ["bob@example.com"]) is None
    assert stack.inbox("bob@example.com") == []


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

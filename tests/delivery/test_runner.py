"""The queue runner on a task.Clock: backoff, expiry, bounces with DSNs, failover and rerouting.

Upstreams are a :class:`~continuity.testing.upstream.ScriptedPool`: the clock
drives time here, and no socket works without the real reactor.
"""

from __future__ import annotations

import email
import email.policy

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from support import EPOCH, UPSTREAM, DeliveryStack, stack  # noqa: F401 (fixture)

from continuity.testing.upstream import OK, REFUSED, SOFT, Reply

SMARTHOST = "smarthost.test:25"
HARD = Reply(550, "5.1.1", "No such user", "RCPT")


def dsn_of(stack: DeliveryStack) -> email.message.EmailMessage:
    (delivery,) = stack.pool.to(SMARTHOST)
    assert delivery.sender == ""
    return email.message_from_bytes(delivery.message, policy=email.policy.default)


def test_delivered_recipients_are_relayed_and_done(stack):
    """A 250 from the upstream marks the recipient done and tracked as relayed; the spool file goes."""
    stack.domain()
    queue_id = stack.accept(["bob@example.com"])
    (delivery,) = stack.pool.to(UPSTREAM)
    assert delivery.recipients == ("bob@example.com",) and b"Hi." in delivery.message
    assert [e.state for e in stack.queue(queue_id)] == ["done"]
    assert stack.tracking("bob@example.com")[0]["status"] == "relayed"
    assert not stack.spool.exists(queue_id)


def test_a_relayed_message_costs_two_sql_jobs_and_two_io_jobs(stack):
    """Index + claim + route in one SQL job, the outcome + what is left in another; spool write and removal."""
    stack.domain()
    sql, io = stack.sql.jobs, stack.io.jobs
    queue_id = stack.accept(["bob@example.com"])
    assert [e.state for e in stack.queue(queue_id)] == ["done"]
    assert (stack.sql.jobs - sql, stack.io.jobs - io) == (2, 2)
    assert not stack.spool.exists(queue_id)


def test_next_attempt_is_moved_forward_before_the_attempt(stack):
    """While the upstream has not answered, the attempt is counted and next_attempt already lies ahead."""
    stack.domain(activation="manual")
    held: Deferred = Deferred()
    stack.pool.script(UPSTREAM, held)
    queue_id = stack.accept(["bob@example.com"])
    (entry,) = stack.queue(queue_id)
    assert entry.attempts == 1
    assert entry.next_attempt == EPOCH + 60
    assert entry.state == "queued"
    held.callback(OK)
    assert [e.state for e in stack.queue(queue_id)] == ["done"]


def test_retry_backoff_follows_retry_intervals(stack):
    """Deferred mail is retried after 60, 300, 900 and then 900 s again (the last interval repeats)."""
    stack.domain(activation="manual")
    stack.pool.default = SOFT
    queue_id = stack.accept(["bob@example.com"])
    start = EPOCH
    waits = []
    for _ in range(4):
        (entry,) = stack.queue(queue_id)
        assert entry.state == "deferred"
        waits.append(entry.next_attempt - start)
        start = entry.next_attempt
        stack.clock.advance(entry.next_attempt - stack.clock.seconds() - 1)
        attempts = len(stack.pool.to(UPSTREAM))
        stack.clock.advance(1)  # the one-second pass picks it up when due, not before
        assert len(stack.pool.to(UPSTREAM)) == attempts + 1
    assert waits == [60, 300, 900, 900]
    assert stack.queue(queue_id)[0].attempts == 5


def test_deferred_recipient_keeps_the_reason(stack):
    """A temporary failure is tracked as deferred with the upstream's reply as the reason."""
    stack.domain(activation="manual")
    stack.pool.default = SOFT
    queue_id = stack.accept(["bob@example.com"])
    (entry,) = stack.queue(queue_id)
    assert "451 4.3.0 Try again later" in entry.last_error
    row = stack.tracking("bob@example.com")[0]
    assert row["status"] == "deferred" and "451 4.3.0" in row["events"][-1]["detail"]


def test_expired_mail_is_bounced_with_a_dsn_to_the_sender(stack):
    """Deferred mail older than max_queue_age is bounced and an RFC 3464 report goes to the envelope sender."""
    stack.domain(activation="manual")
    stack.pool.default = SOFT
    queue_id = stack.accept(["bob@example.com"])
    stack.pool.script(SMARTHOST, OK)
    stack.clock.advance(3600)
    (entry,) = stack.queue(queue_id)
    assert entry.state == "done"
    assert stack.tracking("bob@example.com")[0]["status"] == "bounced"
    report = dsn_of(stack)
    assert stack.pool.to(SMARTHOST)[0].recipients == ("alice@sender.example",)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status",
                                                     "text/rfc822-headers"]
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; bob@example.com" in status
    assert "Action: failed" in status and "Status: 5.3.0" in status
    assert "delivery time expired" in status
    assert "Message-ID: <m1@sender.example>" in parts[2].as_string()


def test_expired_mail_from_the_null_sender_gets_no_dsn(stack):
    """A bounce of mail from <> is never reported (RFC 5321 6.1): no DSN is spooled."""
    stack.domain(activation="manual")
    stack.pool.default = SOFT
    queue_id = stack.accept(["bob@example.com"], sender="")
    stack.clock.advance(3600)
    assert stack.queue(queue_id)[0].state == "done"
    assert stack.tracking("bob@example.com")[0]["status"] == "bounced"
    assert stack.pool.to(SMARTHOST) == []
    assert stack.index.counts() == {"queued": 0, "deferred": 0, "held": 0}


def test_mail_younger_than_max_queue_age_is_deferred_not_bounced(stack):
    """Just before max_queue_age a temporary failure still defers."""
    stack.domain(activation="manual")
    stack.pool.default = SOFT
    queue_id = stack.accept(["bob@example.com"])
    stack.clock.advance(3599 - 0.5)
    assert stack.queue(queue_id)[0].state == "deferred"
    assert stack.pool.to(SMARTHOST) == []


def test_permanent_refusal_bounces_with_a_dsn(stack):
    """A 5xx from the upstream bounces the recipient at once; the DSN carries the upstream's reply."""
    stack.domain()
    stack.pool.script(UPSTREAM, HARD)
    queue_id = stack.accept(["nobody@example.com"])
    assert stack.queue(queue_id)[0].state == "done"
    assert stack.tracking("nobody@example.com")[0]["status"] == "bounced"
    status = list(dsn_of(stack).iter_parts())[1].as_string()
    assert "Final-Recipient: rfc822; nobody@example.com" in status
    assert "Status: 5.1.1" in status
    assert "550 5.1.1 No such user (in reply to RCPT)" in status
    assert stack.directory.get_domain("example.com").mode == "normal"


def test_temporary_failure_with_auto_activation_delivers_to_the_mailbox_at_once(stack):
    """A 4xx with --activation auto switches to emergency and the covered user's copy lands in INBOX now."""
    stack.domain()
    stack.pool.script(UPSTREAM, SOFT)
    queue_id = stack.accept(["bob@example.com"])
    assert stack.directory.get_domain("example.com").mode == "emergency"
    (stored,) = stack.inbox("bob@example.com")
    assert stored.startswith(b"Return-Path: <alice@sender.example>\r\nDelivered-To: bob@example.com\r\n")
    assert [e.state for e in stack.queue(queue_id)] == ["done"]
    row = stack.tracking("bob@example.com")[0]
    assert row["status"] == "delayed"
    assert len(stack.pool.to(UPSTREAM)) == 1
    (change,) = stack.directory.mode_history("example.com")
    assert (change.new_mode, change.automatic) == ("emergency", True)
    assert "451 4.3.0" in change.reason


def test_unreachable_upstream_with_auto_activation_fails_over(stack):
    """A refused connection counts as a temporary failure: emergency, and INBOX delivery."""
    stack.domain()
    stack.pool.script(UPSTREAM, REFUSED)
    stack.accept(["bob@example.com"])
    assert stack.directory.get_domain("example.com").mode == "emergency"
    assert len(stack.inbox("bob@example.com")) == 1


def test_failover_reroutes_covered_users_already_deferred(stack):
    """At the automatic switch, mail deferred earlier for covered users moves into their mailboxes."""
    stack.domain(activation="manual")
    stack.pool.default = SOFT
    first = stack.accept(["bob@example.com"])
    assert stack.queue(first)[0].state == "deferred"
    stack.directory.set_domain("example.com", activation="auto")
    stack.accept(["bob@example.com"])  # this failure switches the domain
    stack.clock.advance(0)
    assert stack.directory.get_domain("example.com").mode == "emergency"
    assert len(stack.inbox("bob@example.com")) == 2
    assert stack.queue(first)[0].state == "done"


def test_temporary_failure_with_manual_activation_defers(stack):
    """With --activation manual a 4xx leaves the domain in normal mode and the mail deferred."""
    stack.domain(activation="manual")
    stack.pool.script(UPSTREAM, SOFT)
    queue_id = stack.accept(["bob@example.com"])
    assert stack.directory.get_domain("example.com").mode == "normal"
    assert stack.queue(queue_id)[0].state == "deferred"
    assert stack.inbox("bob@example.com") == []


def test_temporary_failure_without_continuity_defers(stack):
    """With --no-continuity a 4xx never switches the domain, even with automatic activation."""
    stack.domain(continuity=False)
    stack.pool.script(UPSTREAM, SOFT)
    queue_id = stack.accept(["bob@example.com"])
    assert stack.directory.get_domain("example.com").mode == "normal"
    assert stack.queue(queue_id)[0].state == "deferred"


def test_emergency_start_moves_queued_mail_of_covered_users_at_once(stack):
    """continuityctl emergency start (a mode in the store) delivers deferred mail to mailboxes within the poll."""
    stack.domain(activation="manual", users=["bob@example.com", "carol@example.com"])
    stack.directory.exclude("carol@example.com")
    stack.pool.default = SOFT
    queue_id = stack.accept(["bob@example.com", "carol@example.com"])
    assert [e.state for e in stack.queue(queue_id)] == ["deferred", "deferred"]
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.clock.advance(1)  # the monitor's poll
    stack.clock.advance(0)  # the pass it asked for
    assert len(stack.inbox("bob@example.com")) == 1
    bob, carol = stack.queue(queue_id)
    assert bob.state == "done"
    assert carol.state == "held" and "carol@example.com is not covered" in carol.last_error
    assert stack.inbox("carol@example.com") == []
    assert stack.tracking("carol@example.com")[0]["status"] == "deferred"
    assert len(stack.pool.to(UPSTREAM)) == 1  # nothing was relayed again


def test_uncovered_users_stay_deferred_in_emergency_until_recovery(stack):
    """In emergency an inactive user's mail is held, then relayed to the upstream after recovery."""
    stack.domain(activation="manual", users=["bob@example.com", "dave@example.com"])
    stack.directory.set_active("dave@example.com", False)
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    stack.clock.advance(1)
    queue_id = stack.accept(["dave@example.com"])
    stack.clock.advance(3600 * 24)
    (entry,) = stack.queue(queue_id)
    assert entry.state == "held"
    assert stack.pool.to(UPSTREAM) == []
    stack.directory.set_mode("example.com", "recovering", "continuityctl emergency stop", automatic=False)
    stack.clock.advance(1)  # poll: recovery runs, finishes, releases held mail
    stack.clock.advance(0)
    assert stack.directory.get_domain("example.com").mode == "normal"
    assert stack.queue(queue_id)[0].state == "done"
    assert stack.pool.to(UPSTREAM)[0].recipients == ("dave@example.com",)


def test_queue_flush_retries_deferred_mail_now(stack):
    """flush() makes deferred mail due at once instead of after its backoff."""
    stack.domain(activation="manual")
    stack.pool.script(UPSTREAM, SOFT)
    queue_id = stack.accept(["bob@example.com"])
    from twisted.internet.defer import Deferred as D

    D.fromCoroutine(stack.runner.flush("example.com"))
    stack.clock.advance(0)
    assert stack.queue(queue_id)[0].state == "done"
    assert len(stack.pool.to(UPSTREAM)) == 2


def test_recipients_of_one_message_share_one_transaction(stack):
    """Recipients at one domain go to its upstream in one transaction; results are per recipient."""
    stack.domain(users=["bob@example.com", "carol@example.com"])
    queue_id = stack.accept(["bob@example.com", "carol@example.com"])
    (delivery,) = stack.pool.to(UPSTREAM)
    assert delivery.recipients == ("bob@example.com", "carol@example.com")
    assert [e.state for e in stack.queue(queue_id)] == ["done", "done"]


def test_outbound_mail_goes_to_the_smarthost_and_is_tracked_sent(stack):
    """Mail for a domain we do not host goes to the smarthost; a 250 is tracked as sent."""
    stack.accept(["someone@elsewhere.example"], sender="bob@example.com")
    assert stack.pool.to(SMARTHOST)[0].recipients == ("someone@elsewhere.example",)
    assert stack.tracking("someone@elsewhere.example")[0]["status"] == "sent"


def test_pending_mail_is_picked_up_by_the_periodic_pass(stack):
    """A due recipient not delivered at spooling (e.g. after a restart) is found by the next pass."""
    stack.domain()
    stack.runner.stopService()
    queue_id = stack.accept(["bob@example.com"])
    assert stack.queue(queue_id)[0].state == "queued"
    stack.runner.startService()
    stack.clock.advance(0)
    assert stack.queue(queue_id)[0].state == "done"


def test_a_stop_during_a_pass_over_a_backlog_leaves_the_rest_queued_without_nesting(tmp_path):
    """Stopping while a pass has hundreds of messages waiting for a delivery slot: each of them ends at
    once (not started), and those ends must not nest one inside the last. They overflowed the stack and
    logged a traceback per message waiting."""
    stack = DeliveryStack(tmp_path, concurrency=2)
    stack.domain(activation="manual")
    queued = [stack.accept(["bob@example.com"]) for _ in range(400)]  # not running: all wait for the pass
    held: list[Deferred] = [Deferred(), Deferred()]
    stack.pool.script(UPSTREAM, *held)
    stack.start()  # two attempts wait for the upstream, the other 398 for a slot
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    try:
        stopped = []
        stack.runner.stopService().addCallback(stopped.append)
        for d in held:
            d.callback(OK)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert stopped and failures == []
    states = [stack.queue(queue_id)[0].state for queue_id in queued]
    assert states.count("done") == 2 and states.count("queued") == 398
    stack.stop()


def test_stop_waits_for_deliveries_in_flight_and_starts_no_more(tmp_path):
    """stopService fires once the delivery in flight is done; a message waiting for a slot is not attempted."""
    stack = DeliveryStack(tmp_path, concurrency=1)
    stack.domain()
    first, second = stack.accept(["bob@example.com"]), stack.accept(["bob@example.com"])  # not running: queued
    held: Deferred = Deferred()
    stack.pool.script(UPSTREAM, held)
    stack.start()
    stopped = []
    stack.runner.stopService().addCallback(stopped.append)
    assert stopped == []
    held.callback(OK)
    assert len(stopped) == 1
    states = {queue_id: stack.queue(queue_id)[0] for queue_id in (first, second)}
    assert sorted((e.state, e.attempts) for e in states.values()) == [("done", 1), ("queued", 0)]
    assert len(stack.pool.to(UPSTREAM)) == 1
    stack.stop()


def test_a_reroute_leaves_a_claimed_message_to_the_attempt_that_claimed_it(stack):
    """A mode switch while an attempt is under way must not deliver the message a second time."""
    stack.domain(activation="manual")
    held: Deferred = Deferred()
    stack.pool.script(UPSTREAM, held)
    queue_id = stack.accept(["bob@example.com"])  # the attempt waits for the upstream
    stack.directory.set_mode("example.com", "emergency", "continuityctl emergency start", automatic=False)
    Deferred.fromCoroutine(stack.runner.reroute("example.com"))
    stack.clock.advance(0)
    assert stack.inbox("bob@example.com") == []
    held.callback(OK)  # the upstream took it after all
    assert [e.state for e in stack.queue(queue_id)] == ["done"]
    assert stack.inbox("bob@example.com") == [] and len(stack.pool.to(UPSTREAM)) == 1


def test_a_claim_lasts_as_long_as_an_attempt_can(tmp_path):
    """No other runner (a pass, an SMTP worker) may take a message while a slow attempt is still under way."""
    from continuity.delivery.runner import ATTEMPT_TIMEOUTS

    stack = DeliveryStack(tmp_path, relay={"timeout": 30}).start()
    stack.domain(activation="manual")
    stack.pool.script(UPSTREAM, Deferred())  # the upstream never answers
    (entry,) = stack.queue(stack.accept(["bob@example.com"]))
    assert entry.next_attempt == EPOCH + ATTEMPT_TIMEOUTS * 30
    stack.stop()

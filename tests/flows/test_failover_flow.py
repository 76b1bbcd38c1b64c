"""Automatic failover through the real service, for every way an upstream can fail (CONTRACT 4).

The service runs as ``twistd -n continuity``; the upstream is Postfix's real
``smtp-sink`` answering 4xx or 5xx at a chosen stage, a dead port (nothing
listens) or a black hole (the handshake completes, no greeting ever comes).
Probes run every 30 s here, so a probe cannot start recovery while a test looks.
"""

from __future__ import annotations

import email
import email.policy

import pytest

from service import MX, wait_until

from continuity.testing.sink import black_hole, dead_port, smtp_sink  # noqa: F401 (fixtures)


@pytest.fixture
def mx(tmp_path, smtp_sink):
    """A running service (relay timeout 2 s) whose outbound mail (DSNs) goes to a healthy sink, ``mx.internet``."""
    internet = smtp_sink()
    mx = MX(tmp_path, relay={"timeout": 2, "probe_interval": 30},
            outbound={"smarthost": internet.address}).start()
    mx.internet = internet
    yield mx
    mx.stop()


def assert_failed_over(mx: MX) -> dict:
    """The message is in bob's INBOX, tracked delayed, and the domain switched automatically."""
    (stored,) = wait_until(lambda: mx.inbox("bob@example.com"), what="continuity delivery")
    assert stored.read_bytes().startswith(b"Return-Path: <alice@sender.example>\r\nDelivered-To: bob@example.com")
    rows = wait_until(lambda: [r for r in mx.cli.json("track", "--recipient", "bob@example.com")
                               if r["status"] == "delayed"], what="status delayed")
    assert rows[0]["message_id"] == "<m1@sender.example>"
    shown = mx.cli.json("domain", "show", "example.com")
    assert (shown["mode"], shown["health"]) == ("emergency", "failing")
    assert shown["last_switch"]["automatic"] is True and shown["last_switch"]["to"] == "emergency"
    assert mx.cli.json("queue", "list") == []
    return shown


@pytest.mark.parametrize("stage", ["CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "."],
                         ids=["greeting", "EHLO", "MAIL", "RCPT", "DATA", "end-of-data"])
def test_a_4xx_at_any_stage_delivers_to_the_mailbox(mx, smtp_sink, stage):
    """An upstream answering 450 at one stage puts the domain in emergency; the mail lands in INBOX."""
    upstream = smtp_sink("-r", stage)
    mx.add_domain(upstream.address)
    mx.send(["bob@example.com"])
    shown = assert_failed_over(mx)
    assert "450 4.3.0" in shown["last_switch"]["reason"]
    if stage != ".":  # after the end of data the sink has read (and dumped) the message it refuses
        assert upstream.messages() == []


def test_a_421_and_disconnect_delivers_to_the_mailbox(mx, smtp_sink):
    """An upstream that answers MAIL with 421 and hangs up fails over like any 4xx."""
    upstream = smtp_sink("-Q", "MAIL")
    mx.add_domain(upstream.address)
    mx.send(["bob@example.com"])
    assert "421" in assert_failed_over(mx)["last_switch"]["reason"]


def test_a_dead_upstream_delivers_to_the_mailbox(mx, dead_port):
    """Nothing listening at the upstream (connection refused) fails over at once."""
    mx.add_domain(dead_port.address)
    mx.send(["bob@example.com"])
    assert_failed_over(mx)


def test_a_black_hole_upstream_delivers_to_the_mailbox_after_the_timeout(mx, black_hole):
    """An upstream that accepts TCP and never greets fails over after [relay] timeout (2 s)."""
    mx.add_domain(black_hole.address)
    mx.send(["bob@example.com"])
    shown = assert_failed_over(mx)
    assert "timeout after 2s waiting for the greeting" in shown["last_switch"]["reason"]


def test_a_5xx_bounces_with_a_dsn_to_the_sender(mx, smtp_sink):
    """An upstream refusing RCPT with 500 bounces the mail: tracked bounced, a DSN from <> to the sender."""
    upstream = smtp_sink("-f", "RCPT")
    mx.add_domain(upstream.address)
    mx.send(["bob@example.com"])
    (dsn,) = mx.internet.messages(1, timeout=15)
    assert dsn.sender == "" and dsn.recipients == ("alice@sender.example",)
    report = email.message_from_bytes(dsn.content, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    status = list(report.iter_parts())[1].as_string()
    assert "Final-Recipient: rfc822; bob@example.com" in status and "Action: failed" in status
    assert "Status: 5.3.0" in status
    row = wait_until(lambda: [r for r in mx.cli.json("track", "--recipient", "bob@example.com")
                              if r["status"] == "bounced"], what="status bounced")[0]
    assert "500 5.3.0" in row["events"][-1]["detail"]
    assert mx.cli.json("domain", "show", "example.com")["mode"] == "normal"
    assert mx.inbox("bob@example.com") == []
    wait_until(lambda: [r for r in mx.cli.json("track", "--recipient", "alice@sender.example")
                        if r["status"] == "sent"], what="the DSN tracked as sent")

"""Inbound mail through the real service: relay, automatic and manual failover, recovery.

The service runs as ``twistd -n continuity``; the upstream is Postfix's real
``smtp-sink`` (healthy, or answering 4xx), and clients are Python's smtplib
and continuityctl.
"""

from __future__ import annotations

import smtplib
import time

import pytest

from service import MESSAGE, MX, wait_until

from continuity.testing.sink import dead_port, smtp_sink  # noqa: F401 (fixtures)


@pytest.fixture
def mx(tmp_path):
    """A running service with the smtp listener, and continuityctl for it; stopped cleanly after."""
    mx = MX(tmp_path).start()
    yield mx
    mx.stop()


def test_normal_mode_relays_to_the_upstream(mx, smtp_sink):
    """In normal mode mail for a hosted domain is relayed to its upstream and tracked as relayed."""
    cli = mx.cli
    sink = smtp_sink()
    mx.add_domain(sink.address)
    mx.send(["bob@example.com", "anyone@example.com"])
    (message,) = sink.messages(1, timeout=15)
    assert set(message.recipients) == {"bob@example.com", "anyone@example.com"}
    assert b"Hi Bob." in message.content
    assert b"by mx.example.test (continuity) with ESMTP id" in message.content
    rows = wait_until(lambda: [r for r in cli.json("track", "--recipient", "bob@example.com")
                               if r["status"] == "relayed"], what="relayed status")
    assert rows[0]["message_id"] == "<m1@sender.example>"
    assert [e["status"] for e in rows[0]["events"]] == ["received", "relayed"]


def test_unhosted_domain_is_relay_denied(mx):
    """RCPT for a domain we do not host is refused 550 5.7.1 and tracked as rejected."""
    cli = mx.cli
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        mx.send(["someone@elsewhere.example"])
    code, text = info.value.recipients["someone@elsewhere.example"]
    assert code == 550 and text.startswith(b"5.7.1")
    assert cli.json("track", "--status", "rejected")[0]["recipient"] == "someone@elsewhere.example"


def test_automatic_failover_and_recovery(mx, smtp_sink):
    """A 4xx upstream puts the domain in emergency at once; the probe brings INBOX mail back."""
    cli = mx.cli
    failing = smtp_sink("-r", "RCPT")
    mx.add_domain(failing.address)
    mx.send(["bob@example.com"])
    files = wait_until(lambda: mx.inbox("bob@example.com"), what="continuity delivery")
    content = files[0].read_bytes()
    assert content.startswith(b"Return-Path: <alice@sender.example>\r\nDelivered-To: bob@example.com\r\n")
    assert cli.json("domain", "show", "example.com")["mode"] == "emergency"
    row = cli.json("track", "--recipient", "bob@example.com")[0]
    assert row["status"] == "delayed"
    # Unknown users are refused while in emergency mode.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        mx.send(["nobody@example.com"])
    assert info.value.recipients["nobody@example.com"][0] == 550
    assert info.value.recipients["nobody@example.com"][1].startswith(b"5.1.1")
    # The customer's server comes back (here: a healthy sink at the configured upstream).
    healthy = smtp_sink()
    assert cli("domain", "set", "example.com", "--upstream", healthy.address).returncode == 0
    (message,) = healthy.messages(1, timeout=20)
    assert message.recipients == ("bob@example.com",)
    assert message.sender == "alice@sender.example"
    assert not message.content.startswith(b"Return-Path:")
    assert b"Hi Bob." in message.content
    wait_until(lambda: cli.json("domain", "show", "example.com")["mode"] == "normal", what="normal mode")
    assert mx.inbox("bob@example.com") == []
    statuses = [e["status"] for e in cli.json("track", "--recipient", "bob@example.com")[0]["events"]]
    assert statuses[-2:] == ["delayed", "redelivered"]


def test_manual_activation_defers_until_emergency_start(mx, smtp_sink, dead_port):
    """With --activation manual mail is deferred; emergency start moves it to the mailbox at once."""
    cli = mx.cli
    mx.add_domain(dead_port.address, "--activation", "manual")
    mx.send(["bob@example.com"])
    wait_until(lambda: [i for i in cli.json("queue", "list") if i["attempts"] >= 1 and i["last_error"]],
               what="a deferred attempt")
    assert cli.json("domain", "show", "example.com")["mode"] == "normal"
    assert mx.inbox("bob@example.com") == []
    assert cli("emergency", "start", "example.com").returncode == 0
    wait_until(lambda: mx.inbox("bob@example.com"), timeout=5, what="mail moved to the mailbox")
    assert cli.json("queue", "list") == []
    healthy = smtp_sink()
    cli("domain", "set", "example.com", "--upstream", healthy.address)
    assert cli("emergency", "stop", "example.com").returncode == 0
    (message,) = healthy.messages(1, timeout=20)
    assert message.recipients == ("bob@example.com",)
    wait_until(lambda: cli.json("domain", "show", "example.com")["mode"] == "normal", what="normal mode")
    history = cli.json("domain", "show", "example.com")["mode_history"]
    assert [(h["to"], h["automatic"]) for h in reversed(history)] == [
        ("emergency", False), ("recovering", False), ("normal", True)]


def test_deleted_and_moved_mail_is_not_redelivered(mx, smtp_sink):
    """During recovery only what is still in INBOX goes back; tracking says deleted and moved."""
    cli = mx.cli
    mx.add_domain("127.0.0.1:9", "--activation", "manual")
    assert cli("emergency", "start", "example.com").returncode == 0
    time.sleep(1.5)  # the service notices the manual switch within 2 s
    for number in range(3):
        mx.send(["bob@example.com"], MESSAGE.replace(b"m1@", f"m{number}x@".encode()))
    files = wait_until(lambda: len(mx.inbox("bob@example.com")) == 3 and mx.inbox("bob@example.com"),
                       what="three deliveries")
    files[0].unlink()  # the user deleted one
    archive = mx.data_dir / "mail" / "example.com" / "bob" / ".Archive"
    for sub in ("cur", "new", "tmp"):
        (archive / sub).mkdir(parents=True, exist_ok=True)
    files[1].rename(archive / "cur" / (files[1].name + ":2,S"))  # and moved one
    healthy = smtp_sink()
    cli("domain", "set", "example.com", "--upstream", healthy.address)
    cli("emergency", "stop", "example.com")
    wait_until(lambda: cli.json("domain", "show", "example.com")["mode"] == "normal", what="normal mode")
    assert len(healthy.messages(1, timeout=10)) == 1
    statuses = sorted(r["status"] for r in cli.json("track", "--recipient", "bob@example.com"))
    assert statuses == ["deleted", "moved", "redelivered"]

"""Inbound mail through the real service: relay, automatic and manual failover, recovery.

The service runs as ``twistd -n continuity``; the upstream is Postfix's real
``smtp-sink`` (healthy, or answering 4xx), and clients are Python's smtplib
and continuityctl.
"""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

import pytest

from support import CLI, default_sections, free_port, render_config

from service import Service, wait_until
from service import maildir_inbox as inbox

from continuity.testing.sink import dead_port, smtp_sink  # noqa: F401 (fixtures)

MESSAGE = b"From: alice@sender.example\r\nTo: bob@example.com\r\nSubject: hello\r\nMessage-ID: <m1@sender.example>\r\n\r\nHi Bob.\r\n"


@pytest.fixture
def mx(tmp_path):
    """A running service with the smtp listener, and continuityctl for it."""
    port = free_port()
    sections = default_sections(listen={"smtp": f"tcp:{port}:interface=127.0.0.1"})
    sections["relay"] = {"timeout": 3, "probe_interval": 1, "retry_intervals": [1, 2], "max_queue_age": 3600}
    config = tmp_path / "c.toml"
    config.write_text(render_config(sections))
    service = Service(config).start(wait_ports=(port,))
    yield port, CLI(config), tmp_path / "var"
    code = service.stop()
    # twistd reports the signal that stopped it as its exit status (-SIGTERM) after a clean shut-down.
    assert code in (0, -15) and "Server Shut Down." in service.log(), service.log()
    assert "Traceback" not in service.log(), service.log()


def send(port: int, recipients: list[str], message: bytes = MESSAGE, sender: str = "alice@sender.example"):
    with smtplib.SMTP("127.0.0.1", port, timeout=20) as client:
        client.ehlo("client.sender.example")
        return client.sendmail(sender, recipients, message)


def setup_domain(cli: CLI, upstream: str, *extra: str) -> None:
    assert cli("domain", "add", "example.com", "--upstream", upstream, *extra).returncode == 0
    assert cli("user", "add", "bob@example.com", "--password-stdin", stdin="Secret123\n").returncode == 0


def test_normal_mode_relays_to_the_upstream(mx, smtp_sink):
    """In normal mode mail for a hosted domain is relayed to its upstream and tracked as relayed."""
    port, cli, _ = mx
    sink = smtp_sink()
    setup_domain(cli, sink.address)
    send(port, ["bob@example.com", "anyone@example.com"])
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
    port, cli, _ = mx
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(port, ["someone@elsewhere.example"])
    code, text = info.value.recipients["someone@elsewhere.example"]
    assert code == 550 and text.startswith(b"5.7.1")
    assert cli.json("track", "--status", "rejected")[0]["recipient"] == "someone@elsewhere.example"


def test_automatic_failover_and_recovery(mx, smtp_sink):
    """A 4xx upstream puts the domain in emergency at once; the probe brings INBOX mail back."""
    port, cli, data_dir = mx
    failing = smtp_sink("-r", "RCPT")
    setup_domain(cli, failing.address)
    send(port, ["bob@example.com"])
    files = wait_until(lambda: inbox(data_dir, "bob@example.com"), what="continuity delivery")
    content = files[0].read_bytes()
    assert content.startswith(b"Return-Path: <alice@sender.example>\r\nDelivered-To: bob@example.com\r\n")
    assert cli.json("domain", "show", "example.com")["mode"] == "emergency"
    row = cli.json("track", "--recipient", "bob@example.com")[0]
    assert row["status"] == "delayed"
    # Unknown users are refused while in emergency mode.
    with pytest.raises(smtplib.SMTPRecipientsRefused) as info:
        send(port, ["nobody@example.com"])
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
    assert inbox(data_dir, "bob@example.com") == []
    statuses = [e["status"] for e in cli.json("track", "--recipient", "bob@example.com")[0]["events"]]
    assert statuses[-2:] == ["delayed", "redelivered"]


def test_manual_activation_defers_until_emergency_start(mx, smtp_sink, dead_port):
    """With --activation manual mail is deferred; emergency start moves it to the mailbox at once."""
    port, cli, data_dir = mx
    setup_domain(cli, dead_port.address, "--activation", "manual")
    send(port, ["bob@example.com"])
    wait_until(lambda: [i for i in cli.json("queue", "list") if i["attempts"] >= 1 and i["last_error"]],
               what="a deferred attempt")
    assert cli.json("domain", "show", "example.com")["mode"] == "normal"
    assert inbox(data_dir, "bob@example.com") == []
    assert cli("emergency", "start", "example.com").returncode == 0
    wait_until(lambda: inbox(data_dir, "bob@example.com"), timeout=5, what="mail moved to the mailbox")
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
    port, cli, data_dir = mx
    setup_domain(cli, "127.0.0.1:9", "--activation", "manual")
    assert cli("emergency", "start", "example.com").returncode == 0
    time.sleep(1.5)  # the service notices the manual switch within 2 s
    for number in range(3):
        send(port, ["bob@example.com"], MESSAGE.replace(b"m1@", f"m{number}x@".encode()))
    files = wait_until(lambda: len(inbox(data_dir, "bob@example.com")) == 3 and inbox(data_dir, "bob@example.com"),
                       what="three deliveries")
    files[0].unlink()  # the user deleted one
    archive = data_dir / "mail" / "example.com" / "bob" / ".Archive"
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

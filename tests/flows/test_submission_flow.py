"""Submission and outbound mail through the real service, and CS-SENT copies of mail sent in an outage.

The service runs as ``twistd -n continuity`` with the ``smtp``, ``submission``
(587-style, STARTTLS) and ``submissions`` (465-style, implicit TLS) listeners.
Clients are swaks and Python's smtplib; Postfix's ``smtp-sink`` plays both the
customer's server (the upstream) and the Internet (the outbound smarthost).
"""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from support import CLI, default_sections, free_port, render_config

from service import Service, maildir_inbox, wait_until

from continuity.testing.sink import SmtpSink, smtp_sink  # noqa: F401 (fixtures)

PASSWORD = "Secret123"


class MSA:
    """A running service with its ports, continuityctl, data_dir and the Internet's sink."""

    def __init__(self, tmp_path: Path, internet: SmtpSink, **limits):
        self.smtp, self.submission, self.submissions, self.imap = free_port(), free_port(), free_port(), free_port()
        sections = default_sections(listen={
            "smtp": f"tcp:{self.smtp}:interface=127.0.0.1",
            "submission": f"tcp:{self.submission}:interface=127.0.0.1",
            "submissions": f"tcp:{self.submissions}:interface=127.0.0.1",
            "imap": f"tcp:{self.imap}:interface=127.0.0.1",
        })
        sections["relay"] = {"timeout": 3, "probe_interval": 1, "retry_intervals": [1, 2], "max_queue_age": 3600}
        sections["outbound"] = {"smarthost": internet.address, "relay_networks": ["127.0.0.1/32"]}
        sections["limits"] = {"messages_per_hour": 5, **limits}
        self.config = tmp_path / "c.toml"
        self.config.write_text(render_config(sections))
        self.data_dir = tmp_path / "var"
        self.cli = CLI(self.config)
        self.internet = internet
        self.service = Service(self.config)

    def start(self) -> "MSA":
        self.service.start(wait_ports=(self.smtp, self.submission, self.submissions))
        return self

    def stop(self) -> None:
        self.service.stop_cleanly()

    def domain(self, upstream: str, *users: str) -> None:
        assert self.cli("domain", "add", "example.com", "--upstream", upstream).returncode == 0
        for address in users:
            result = self.cli("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")
            assert result.returncode == 0, result.stderr

    def swaks(self, *args: str, port: int | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port or self.submission),
                               "--helo", "laptop.example.com", "--timeout", "20", *args],
                              capture_output=True, text=True, timeout=60)

    def submit(self, sender: str, recipients: list[str], message: bytes, user: str | None = None,
               implicit_tls: bool = False) -> dict:
        """Log in as ``user`` (default ``sender``) over TLS and send; return the refused recipients."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if implicit_tls:
            client = smtplib.SMTP_SSL("127.0.0.1", self.submissions, timeout=20, context=context)
        else:
            client = smtplib.SMTP("127.0.0.1", self.submission, timeout=20)
            client.starttls(context=context)
        with client:
            client.login(user or sender, PASSWORD)
            return client.sendmail(sender, recipients, message)


@pytest.fixture(scope="module")
def internet():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def upstream():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def msa(tmp_path_factory, internet, upstream):
    """One service for the tests that only send (each uses its own users)."""
    msa = MSA(tmp_path_factory.mktemp("msa"), internet).start()
    msa.domain(upstream.address, "alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com")
    assert msa.cli("user", "alias", "add", "alice@example.com", "sales@example.com").returncode == 0
    yield msa
    msa.stop()


def message(sender: str, to: str, subject: str = "hello", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n{extra}\r\nHello from {sender}.\r\n").encode()


def test_swaks_starttls_auth_login_delivers_to_the_internet(msa, internet):
    """swaks with STARTTLS and AUTH LOGIN on submission: the smarthost gets the mail, tracked as sent."""
    result = msa.swaks("--tls", "--auth", "LOGIN", "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
                       "--from", "alice@example.com", "--to", "friend@internet.example",
                       "--header", "Subject: swaks over 587")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    found = wait_until(lambda: [m for m in internet.messages(0) if b"swaks over 587" in m.content],
                       what="the outbound message at the smarthost")
    assert found[0].recipients == ("friend@internet.example",)
    assert found[0].sender == "alice@example.com"
    assert b"with ESMTPSA id" in found[0].content
    rows = wait_until(lambda: [r for r in msa.cli.json("track", "--recipient", "friend@internet.example")
                               if r["status"] == "sent"], what="sent status")
    assert [e["status"] for e in rows[0]["events"]] == ["received", "sent"]


def test_swaks_implicit_tls_with_auth_plain(msa, internet):
    """swaks with TLS on connect (the submissions port) and AUTH PLAIN."""
    result = msa.swaks("--tlsc", "--auth", "PLAIN", "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
                       "--from", "alice@example.com", "--to", "friend2@internet.example",
                       "--header", "Subject: swaks over 465", port=msa.submissions)
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: [m for m in internet.messages(0) if b"swaks over 465" in m.content],
               what="the implicit-TLS message at the smarthost")


def test_swaks_foreign_sender_is_refused_553(msa):
    """MAIL FROM an address the user does not own is refused 553 5.7.1."""
    result = msa.swaks("--tls", "--auth", "LOGIN", "--auth-user", "alice@example.com", "--auth-password", PASSWORD,
                       "--from", "bob@example.com", "--to", "friend@internet.example")
    assert result.returncode != 0
    assert "553 5.7.1 <bob@example.com>: Sender address rejected: not owned by user alice@example.com" \
        in result.stdout


def test_auth_is_not_offered_or_accepted_before_tls(msa):
    """Without TLS the EHLO has no AUTH and an AUTH attempt gets 538 5.7.11."""
    with smtplib.SMTP("127.0.0.1", msa.submission, timeout=20) as client:
        client.ehlo("laptop.example.com")
        assert not client.has_extn("auth")
        assert client.has_extn("starttls")
        code, text = client.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUuY29tAFNlY3JldDEyMw==")
        assert (code, text[:6]) == (538, b"5.7.11")


def test_mail_without_auth_is_refused_530(msa):
    """Submission without logging in is refused 530 5.7.0, even over TLS."""
    with smtplib.SMTP("127.0.0.1", msa.submission, timeout=20) as client:
        client.starttls(context=ssl._create_unverified_context())
        client.ehlo("laptop.example.com")
        code, text = client.mail("alice@example.com")
        assert (code, text[:5]) == (530, b"5.7.0")


def test_wrong_password_is_535(msa):
    """A wrong password gets 535 5.7.8."""
    with smtplib.SMTP("127.0.0.1", msa.submission, timeout=20) as client:
        client.starttls(context=ssl._create_unverified_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            client.login("alice@example.com", "Wrong1234")
        assert info.value.smtp_code == 535


def test_from_header_must_be_owned(msa):
    """A From: header naming someone else is refused 553 5.7.1 at the end of data."""
    with pytest.raises(smtplib.SMTPDataError) as info:
        msa.submit("alice@example.com", ["friend@internet.example"],
                   message("Bob <bob@example.com>", "friend@internet.example"))
    assert info.value.smtp_code == 553 and info.value.smtp_error.startswith(b"5.7.1 <bob@example.com>")


def test_alias_may_be_used_as_sender(msa, internet):
    """A user may send as one of their aliases, in the envelope and in From:."""
    msa.submit("sales@example.com", ["buyer@internet.example"],
               message("Sales <sales@example.com>", "buyer@internet.example", "from the alias"),
               user="alice@example.com", implicit_tls=True)
    wait_until(lambda: [m for m in internet.messages(0) if b"from the alias" in m.content],
               what="the alias's message")


def test_missing_date_and_message_id_are_added(msa, internet):
    """RFC 6409 8: a submission without Date: or Message-ID: gets both."""
    msa.submit("carol@example.com", ["x@internet.example"],
               b"From: carol@example.com\r\nTo: x@internet.example\r\nSubject: bare headers\r\n\r\nHi.\r\n")
    (found,) = wait_until(lambda: [m for m in internet.messages(0) if b"bare headers" in m.content],
                          what="the message at the smarthost")
    assert b"\nDate: " in found.content and b"\nMessage-ID: <" in found.content


def test_sending_rate_is_limited_per_user(msa):
    """Beyond messages_per_hour (5 here) a user's next MAIL gets 450 4.7.1."""
    for number in range(5):
        msa.submit("dave@example.com", ["y@internet.example"], message("dave@example.com", "y@internet.example",
                                                                         f"rate {number}"))
    with pytest.raises(smtplib.SMTPSenderRefused) as info:
        msa.submit("dave@example.com", ["y@internet.example"], message("dave@example.com", "y@internet.example"))
    assert info.value.smtp_code == 450 and info.value.smtp_error.startswith(b"4.7.1")


def test_relay_networks_relay_outbound_on_smtp_without_auth(msa, internet):
    """The customer's server (in relay_networks) uses the smtp listener as its smart host."""
    with smtplib.SMTP("127.0.0.1", msa.smtp, timeout=20) as client:
        client.sendmail("bob@example.com", ["partner@internet.example"],
                        message("bob@example.com", "partner@internet.example", "via the smart host"))
    wait_until(lambda: [m for m in internet.messages(0) if b"via the smart host" in m.content],
               what="the relayed message")
    rows = wait_until(lambda: [r for r in msa.cli.json("queue", "list")] == [] and
                      msa.cli.json("track", "--recipient", "partner@internet.example"), what="tracking")
    assert rows[0]["status"] == "sent"


def test_outage_cs_sent_once_across_a_sigkill_in_recovery(tmp_path, smtp_sink, internet, request):
    """Upstream down: mail sent via 587 reaches the Internet and the colleague's mailbox; at recovery the
    upstream gets the INBOX mail and one (CS-SENT) copy per sent message, even after a SIGKILL mid-recovery."""
    failing = smtp_sink("-r", "RCPT")
    msa = MSA(tmp_path, internet).start()
    request.addfinalizer(lambda: msa.service.stop(signal.SIGKILL))  # a failed assertion leaves no service behind
    msa.domain(failing.address, "alice@example.com", "bob@example.com")
    # The outage: the first inbound message puts the domain in emergency mode.
    for number in range(4):
        with smtplib.SMTP("127.0.0.1", msa.smtp, timeout=20) as client:
            client.sendmail("news@internet.example", ["bob@example.com"],
                            message("news@internet.example", "bob@example.com", f"news {number}"))
    wait_until(lambda: len(maildir_inbox(msa.data_dir, "bob@example.com")) == 4, what="bob's continuity INBOX")
    assert msa.cli.json("domain", "show", "example.com")["mode"] == "emergency"
    # Bob answers the Internet and writes to Alice; the subject is RFC 2047 encoded.
    msa.submit("bob@example.com", ["friend@internet.example", "alice@example.com"],
               message("Bob <bob@example.com>", "friend@internet.example, alice@example.com",
                       "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="))
    wait_until(lambda: [m for m in internet.messages(0) if b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=" in m.content],
               what="Bob's mail at the Internet")
    # Alice's copy went straight to her continuity mailbox, not to the failing upstream.
    wait_until(lambda: maildir_inbox(msa.data_dir, "alice@example.com"), what="Alice's continuity INBOX")
    # Bob also saves a copy in Sent, as his client does; that copy must not be sent again.
    sent = msa.data_dir / "mail" / "example.com" / "bob" / ".Sent"
    for sub in ("cur", "new", "tmp"):
        (sent / sub).mkdir(parents=True, exist_ok=True)
    (sent / "cur" / "1.saved.host:2,S").write_bytes(message("bob@example.com", "friend@internet.example",
                                                            "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="))
    tracked = msa.cli.json("track", "--recipient", "bob@example.com", "--status", "delayed")
    assert any(r["sender"] == "bob@example.com" for r in tracked)  # the CS-SENT copy, held for recovery
    # The upstream comes back, slow: 2 s before each DATA reply. Once what it received is all journalled,
    # the next messages wait for their 354, so the kill lands between the upstream's 250s.
    healthy = smtp_sink("-w", "2")
    assert msa.cli("domain", "set", "example.com", "--upstream", healthy.address).returncode == 0
    def settled() -> bool:
        """At least two messages at the upstream, and every one of them journalled as redelivered."""
        received = len(healthy.messages(0))
        redelivered = msa.cli.json("track", "--status", "redelivered")
        return received >= 2 and len(redelivered) == received

    wait_until(settled, timeout=30, what="messages redelivered and journalled")
    msa.service.stop(signal.SIGKILL)
    msa.service.start(wait_ports=(msa.smtp,))
    arrived = healthy.messages(6, timeout=60)
    wait_until(lambda: msa.cli.json("domain", "show", "example.com")["mode"] == "normal", timeout=30,
               what="normal mode")
    msa.stop()
    received = sorted((m.recipients, m.content.split(b"\nSubject: ", 1)[1].split(b"\n", 1)[0]) for m in arrived)
    assert received == sorted(
        [(("bob@example.com",), f"news {n}".encode()) for n in range(4)]
        + [(("alice@example.com",), b"=?UTF-8?Q?Gr=C3=BC=C3=9Fe?="),
           (("bob@example.com",), b"(CS-SENT) =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=")])
    cs_sent = [m for m in arrived if b"(CS-SENT)" in m.content]
    assert cs_sent[0].sender == "bob@example.com"
    assert len(healthy.messages(0)) == 6  # nothing twice
    assert maildir_inbox(msa.data_dir, "bob@example.com") == []
    assert list((tmp_path / "var" / "cs-sent" / "messages").iterdir()) == []
    statuses = [r["status"] for r in msa.cli.json("track", "--recipient", "bob@example.com")]
    assert statuses.count("redelivered") == 5 and "delayed" not in statuses


def test_bare_lf_in_submitted_data_is_refused(msa):
    """Submission applies the inbound DATA rules: a bare LF is refused 550 5.5.2 after the real end of data."""
    with smtplib.SMTP("127.0.0.1", msa.submission, timeout=20) as client:
        client.starttls(context=ssl._create_unverified_context())
        client.login("carol@example.com", PASSWORD)
        client.mail("carol@example.com")
        client.rcpt("z@internet.example")
        assert client.docmd("DATA")[0] == 354
        client.send(b"From: carol@example.com\r\nSubject: smuggle\r\n\r\nline\n.\nMAIL FROM:<x@y>\r\n.\r\n")
        code, text = client.getreply()
        assert (code, text[:5]) == (550, b"5.5.2")
        assert client.noop()[0] == 250  # still in command mode, nothing smuggled


@pytest.fixture
def frozen_service_msa(tmp_path, internet, upstream):
    """A service of its own whose SMTP worker has taken the submission listeners over."""
    msa = MSA(tmp_path, internet, auth_failures=3).start()
    msa.domain(upstream.address, "erin@example.com")
    wait_until(lambda: "smtp worker 1 accepting on smtp, submission, submissions" in msa.service.log(),
               what="the SMTP worker to accept")
    yield msa
    os.kill(msa.service.process.pid, signal.SIGCONT)
    msa.stop()


def test_the_smtp_worker_takes_submission_and_the_service_delivers(frozen_service_msa, internet):
    """STARTTLS and implicit TLS sessions go to the worker; the service (frozen meanwhile) relays after."""
    msa = frozen_service_msa
    os.kill(msa.service.process.pid, signal.SIGSTOP)
    msa.submit("erin@example.com", ["w1@internet.example"], message("erin@example.com", "w1@internet.example",
                                                                     "via the worker, 587"))
    msa.submit("erin@example.com", ["w2@internet.example"], message("erin@example.com", "w2@internet.example",
                                                                     "via the worker, 465"), implicit_tls=True)
    os.kill(msa.service.process.pid, signal.SIGCONT)
    wait_until(lambda: len([m for m in internet.messages(0) if b"via the worker" in m.content]) == 2,
               what="both messages at the smarthost")
    assert "smtp worker 1: " in msa.service.log() and "submitted by erin@example.com" in msa.service.log()


def test_a_stopped_worker_gives_submission_back_to_the_service(frozen_service_msa, internet):
    """A worker that stops answering (SIGSTOP here; a stuck reactor) is not waited for: after 3 s of silence
    the service accepts on submission itself, and leaves it to the worker again once it answers."""
    from test_smtp_workers import workers_of

    msa = frozen_service_msa
    (worker,) = workers_of(msa.service.process.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        wait_until(lambda: "no smtp worker answered for 3 s" in msa.service.log(), timeout=10,
                   what="the service to notice")
        msa.submit("erin@example.com", ["w3@internet.example"], message("erin@example.com", "w3@internet.example",
                                                                         "while the worker is stopped"))
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until(lambda: "smtp worker 1 answers again" in msa.service.log(), timeout=10, what="the worker's word")
    wait_until(lambda: [m for m in internet.messages(0) if b"while the worker is stopped" in m.content],
               what="the message at the smarthost")


def test_failed_logins_count_across_the_service_and_its_worker(frozen_service_msa):
    """auth_failures (3) per IP: one on IMAP (the service), two on submission (the worker: smtplib tries PLAIN,
    then LOGIN) throttle logins in both."""
    import imaplib

    msa = frozen_service_msa

    def imap_login(password: str) -> None:
        with imaplib.IMAP4("127.0.0.1", msa.imap, timeout=20) as client:
            client.starttls(ssl._create_unverified_context())
            client.login("erin@example.com", password)

    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        imap_login("wrong")
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        with smtplib.SMTP("127.0.0.1", msa.submission, timeout=20) as client:
            client.starttls(context=ssl._create_unverified_context())
            client.login("erin@example.com", "wrong")
    assert info.value.smtp_code == 535
    with pytest.raises(smtplib.SMTPAuthenticationError) as info:
        msa.submit("erin@example.com", ["x@internet.example"], message("erin@example.com", "x@internet.example"))
    assert (info.value.smtp_code, info.value.smtp_error[:5]) == (454, b"4.7.0")
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        imap_login(PASSWORD)


def test_outbound_refusal_bounces_to_the_sender(tmp_path, smtp_sink):
    """A 5xx from the smarthost bounces: the user's DSN goes to their mailbox upstream."""
    internet, upstream = smtp_sink("-f", "RCPT"), smtp_sink()
    msa = MSA(tmp_path, internet).start()
    try:
        msa.domain(upstream.address, "alice@example.com")
        msa.submit("alice@example.com", ["gone@internet.example"],
                   message("alice@example.com", "gone@internet.example", "to a closed mailbox"))
        (dsn,) = upstream.messages(1, timeout=20)
        assert dsn.sender == "" and dsn.recipients == ("alice@example.com",)
        assert b"multipart/report; report-type=delivery-status" in dsn.content
        assert b"Final-Recipient: rfc822; gone@internet.example" in dsn.content
        assert b"Action: failed" in dsn.content
        row = msa.cli.json("track", "--recipient", "gone@internet.example")[0]
        assert row["status"] == "bounced"
    finally:
        msa.stop()

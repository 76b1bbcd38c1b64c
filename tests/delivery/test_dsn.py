"""Delivery status notifications (RFC 3464): structure, status codes, and only the original's headers."""

from __future__ import annotations

import email
import email.policy

from continuity.delivery.dsn import build_dsn

ORIGINAL = b"From: alice@sender.example\r\nSubject: hello\r\nMessage-ID: <m1@x>\r\n\r\nsecret body\r\n"


def dsn(failures, original: bytes = ORIGINAL) -> email.message.EmailMessage:
    data = build_dsn(hostname="mx.example.test", queue_id="Q1", sender="alice@sender.example",
                     failures=failures, original=original, arrival=1_800_000_000.0, now=1_800_000_060.0)
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    return email.message_from_bytes(data, policy=email.policy.default)


def test_dsn_is_a_multipart_report_to_the_sender():
    """The DSN is multipart/report; report-type=delivery-status, from MAILER-DAEMON to the envelope sender."""
    report = dsn([("bob@example.com", "550 5.1.1 No such user (in reply to RCPT)")])
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"].addresses[0].addr_spec == "alice@sender.example"
    assert report["From"].addresses[0].username == "MAILER-DAEMON"
    assert report["Auto-Submitted"] == "auto-replied"
    assert [p.get_content_type() for p in report.iter_parts()] == ["text/plain", "message/delivery-status",
                                                                   "text/rfc822-headers"]


def test_each_failed_recipient_has_its_status_group():
    """Per recipient: Final-Recipient, Action failed, Status and the Diagnostic-Code of the reply."""
    report = dsn([("bob@example.com", "550 5.1.1 No such user"), ("carol@example.com", "552 5.2.2 Full")])
    status = list(report.iter_parts())[1].as_string()
    assert "Reporting-MTA: dns; mx.example.test" in status
    for recipient, code, diagnostic in (("bob@example.com", "5.1.1", "550 5.1.1 No such user"),
                                        ("carol@example.com", "5.2.2", "552 5.2.2 Full")):
        assert f"Final-Recipient: rfc822; {recipient}" in status
        assert f"Status: {code}" in status
        assert f"Diagnostic-Code: smtp; {diagnostic}" in status
    assert status.count("Action: failed") == 2


def test_a_temporary_reason_is_reported_as_permanent():
    """An expired 4.x.x failure is a final failure: its status is reported as 5.x.x."""
    status = list(dsn([("bob@example.com", "expired: 451 4.3.0 busy")]).iter_parts())[1].as_string()
    assert "Status: 5.3.0" in status


def test_a_reason_without_a_code_gets_5_0_0():
    """A failure with no enhanced code in its text is reported as 5.0.0."""
    status = list(dsn([("bob@example.com", "no mail exchanger")]).iter_parts())[1].as_string()
    assert "Status: 5.0.0" in status


def test_only_the_original_headers_are_returned():
    """The third part holds the original's header section, never its body."""
    third = list(dsn([("bob@example.com", "550 5.1.1 x")]).iter_parts())[2]
    assert "Subject: hello" in third.as_string()
    assert b"secret body" not in third.as_bytes()

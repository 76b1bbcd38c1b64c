"""Delivery status notifications (RFC 3464) for mail that cannot be delivered.

A DSN is a ``multipart/report; report-type=delivery-status`` with a human
explanation, the machine-readable per-recipient status, and the original
headers (``text/rfc822-headers``). It is sent from the null sender ``<>`` so it
can never cause another DSN (RFC 5321 6.1).
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Sequence

from continuity.envelope import header_section


def _status_of(detail: str) -> str:
    for word in detail.split():
        parts = word.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in ("4", "5"):
            return "5" + word[1:] if parts[0] == "4" else word
    return "5.0.0"


def build_dsn(*, hostname: str, queue_id: str, sender: str, failures: Sequence[tuple[str, str]],
              original: bytes, arrival: float, now: float) -> bytes:
    """The DSN message (CRLF line endings) reporting ``failures`` [(recipient, detail)]."""
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{hostname}"
    date = email.utils.formatdate(now)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {date}",
        f"Message-ID: <{queue_id}.{secrets.token_hex(4)}@{hostname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "",
        f"This is the mail system at host {hostname}.",
        "",
        "I'm sorry to have to inform you that your message could not",
        "be delivered to one or more recipients.",
        "",
    ]
    for recipient, detail in failures:
        lines.append(f"<{recipient}>: {detail}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {hostname}",
        f"X-Continuity-Queue-ID: {queue_id}",
        f"Arrival-Date: {email.utils.formatdate(arrival)}",
    ]
    for recipient, detail in failures:
        one_line = " ".join(detail.split())
        lines += [
            "",
            f"Final-Recipient: rfc822; {recipient}",
            "Action: failed",
            f"Status: {_status_of(one_line)}",
            f"Diagnostic-Code: smtp; {one_line}",
            f"Last-Attempt-Date: {date}",
        ]
    lines += [
        "",
        f"--{boundary}",
        "Content-Description: Undelivered Message Headers",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = header_section(original).replace(b"\r\n", b"\n").rstrip(b"\n").split(b"\n")
    body = "\r\n".join(lines).encode("utf-8") + b"\r\n" + b"\r\n".join(head) + b"\r\n"
    return body + f"\r\n--{boundary}--\r\n".encode("ascii")

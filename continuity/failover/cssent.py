"""CS-SENT: copies of the mail users sent during an outage, for their own mailbox upstream.

While a user's domain is in ``emergency`` (or ``recovering``) mode, every
message they submit is delivered to its recipients *and* recorded here, in
``data_dir/cs-sent/messages/<queue_id>``: the same durable file format as the
spool (:class:`~continuity.spool.store.MessageSpool`: an envelope line, then
the message), written before the submission is answered ``250``. During
recovery :class:`~continuity.failover.recovery.Recovery` relays each copy to
the upstream, addressed to the user, with the subject prefixed ``(CS-SENT) ``
(:func:`prefix_subject`), journalled like the INBOX redelivery, and then
removes it. Copies the user saved in ``Sent`` are never read: the record here
is the one source, so nothing is sent twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from continuity import tracking
from continuity.db import Database
from continuity.envelope import header_section
from continuity.spool.store import MessageSpool, SpoolEnvelope

PREFIX = b"(CS-SENT)"
_SUBJECT = re.compile(rb"^Subject:[ \t]*", re.IGNORECASE | re.MULTILINE)


def prefix_subject(message: bytes) -> bytes:
    """``message`` with its subject prefixed ``(CS-SENT) `` (or a ``Subject: (CS-SENT)`` added).

    The prefix goes in front of the field body as it is, so an RFC 2047 encoded
    word stays a separate, valid encoded word (RFC 2047 5: it must be separated
    from other text by white space, which the prefix's space is). A folded
    subject stays folded. Only the first ``Subject:`` of the header section is
    touched; a body line that looks like one is not.
    """
    headers = header_section(message)
    match = _SUBJECT.search(headers)
    if match is None:
        newline = b"\r\n" if b"\r\n" in headers or not headers else b"\n"
        return b"Subject: " + PREFIX + newline + message
    rest = message[match.end():]
    if rest.startswith(PREFIX + b" ") or rest.startswith(PREFIX + b"\r") or rest.startswith(PREFIX + b"\n"):
        return message
    if rest[:1] in (b"\r", b"\n"):
        # An empty subject (possibly folded onto the next line) gets the bare prefix.
        return message[:match.start()] + b"Subject: " + PREFIX + rest
    return message[:match.start()] + b"Subject: " + PREFIX + b" " + rest


class SentCopies:
    """The CS-SENT records on disk (synchronous: call it on the I/O threads)."""

    def __init__(self, root: str):
        self._spool = MessageSpool(root)

    def prepare(self) -> None:
        self._spool.prepare()

    def record(self, queue_id: str, address: str, domain: str, sender: str, received: float,
               message_id: str | None, chunks: Iterable[bytes]) -> None:
        """Keep a durable copy of what ``address`` submitted as ``queue_id``."""
        envelope = SpoolEnvelope(queue_id=queue_id, sender=sender, recipients=(address,), received=received,
                                 direction="inbound", origin="cs-sent", auth_user=address, message_id=message_id,
                                 extra={"domain": domain})
        self._spool.write(envelope, chunks)

    def discard(self, queue_id: str) -> None:
        """Forget a record whose submission was not accepted after all."""
        self._spool.remove(queue_id)

    def pending(self, domain: str) -> list[SpoolEnvelope]:
        """The records of ``domain``'s users, oldest first."""
        found = []
        for queue_id in sorted(self._spool.queue_ids()):
            try:
                envelope = self._spool.read_envelope(queue_id)
            except FileNotFoundError:
                continue  # removed meanwhile
            if envelope.extra.get("domain") == domain:
                found.append(envelope)
        return found

    def read(self, queue_id: str) -> bytes:
        """The message as submitted (with our ``Received:``), without the envelope line."""
        return self._spool.read(queue_id)[1]

    def remove(self, queue_id: str) -> bool:
        return self._spool.remove(queue_id)


def record_cs_sent_tracking(db: Database, queue_id: str, message_id: str | None, sender: str, address: str,
                            now: float) -> None:
    """A tracking row for the CS-SENT copy, ``delayed`` until recovery redelivers it."""
    with db.transaction() as conn:
        tracking.create(conn, queue_id=queue_id, message_id=message_id, sender=sender, recipient=address,
                        direction="inbound", status="delayed", now=now,
                        detail="CS-SENT copy kept for the upstream until recovery", mailbox_ref=cs_sent_ref(queue_id))


def cs_sent_ref(queue_id: str) -> str:
    """The tracking ``mailbox_ref`` of a CS-SENT copy (never contains ``@``, unlike a mailbox's)."""
    return f"cs-sent:{queue_id}"

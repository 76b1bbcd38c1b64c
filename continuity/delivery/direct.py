"""Mail for continuity mailboxes written before the ``250``, without a spool file (emergency mode).

While a domain is in emergency mode, the spool is a detour for its covered
users' mail: the message would be written and fsync'ed to the spool, indexed,
claimed, written and fsync'ed again into the Maildir, and its queue rows
finished and its spool file removed. When every recipient goes to a continuity
mailbox, :class:`DirectDelivery` writes the Maildir copies at once - the durable
copy behind the ``250`` is then the Maildir file itself - and records their
tracking rows (``received``, then ``delayed`` with the mailbox reference that
recovery works from) a moment later, in a commit shared with other messages'
(:meth:`~continuity.db.SQLThread.run_batched`): half the fsyncs and a fifth
of the thread trips of the spool path.

The caller (the SMTP policy) routes each recipient from its one-second
directory cache, as it answered RCPT. What must be current at the write is
the mode, and that is checked under the domain's emergency mark
(:class:`~continuity.directory.fence.EmergencyFence`): a domain that has
left emergency mode gets no copy, and leaving waits for the copies being
written, so recovery, which lists the INBOX after the switch, finds every
one. A user removed or excluded within that second may still get the copy
RCPT accepted for them. A domain no longer in emergency mode, like a copy
that fails first, is left to the spool (:meth:`DirectDelivery.deliver`
answers None, having written nothing), whose runner routes from the store.

A crash after a copy is written and before its tracking rows commit costs a
duplicate when the client sends again (it had no ``250``), as a crash of the
spool path does after an upstream's ``250``: delivery is at-least-once.

In an SMTP worker the tracking rows are the service process's to write
(:attr:`DirectDelivery.hand_over`, a line on the worker's pipe), so that the
worker never writes the store: two writers took turns on its lock and each
threw away the other's cached pages, at 25% of the CPU of emergency mode. In
either process the copy is durable before the ``250`` and its rows are
written a moment after; a service killed in that moment loses the rows (the
copy stays, and recovery redelivers it as any other), never mail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from continuity import tracking
from continuity.db import SQLThread
from continuity.delivery.agents import deliver_copy
from continuity.directory.store import Directory
from continuity.envelope import parse_address
from continuity.mailstore import MaildirStore

# (recipient as given, the mailbox's address, the Maildir base name of the copy)
Copy = tuple[str, str, str]


class DirectDelivery:
    """Writes a message straight into continuity mailboxes when that is where all of it goes."""

    log = Logger()

    def __init__(self, clock: IReactorTime, sql: SQLThread, io: Callable, directory: Directory,
                 mailstore: MaildirStore):
        self._clock = clock
        self._sql = sql
        self._io = io
        self._directory = directory
        self._mailstore = mailstore
        #: Set in an SMTP worker: ``hand_over(queue_id, message_id, sender, client, now, copies)`` passes the
        #: tracking rows to the service process instead of writing them here (:meth:`record` there).
        self.hand_over: Callable[..., None] | None = None

    async def deliver(self, *, queue_id: str, sender: str, copies: Sequence[tuple[str, str]],
                      chunks: Sequence[bytes], client: str | None, message_id: str | None) -> list[str] | None:
        """Deliver a copy of the message for each ``(recipient, mailbox address)`` of ``copies`` and track them.

        ``copies`` has every recipient of the message, each routed to a continuity mailbox (aliases
        resolved). Returns None when nothing was written (a recipient's domain is no longer in emergency
        mode, or the first copy failed): the spool takes the whole message. Otherwise the recipients the
        spool must still take: none, or those from a copy that failed on (its runner retries them), so that
        a client sending again after a 4xx never duplicates the copies already written.
        """
        written, left = await self._io(self._write_copies, queue_id, sender, copies, chunks)
        if not written:
            return None
        if self.hand_over is not None:
            self.hand_over(queue_id, message_id, sender, client, self._clock.seconds(), written)
        else:
            # Not waited for, as a worker's are not: the copies are what the 250 stands for.
            self.record(queue_id, message_id, sender, client, self._clock.seconds(), written).addErrback(
                lambda failure: self.log.failure("tracking {queue_id} failed", failure, queue_id=queue_id))
        for _, mailbox, _ in written:
            self.log.info("{queue_id} delivered to the continuity mailbox of {address}", queue_id=queue_id,
                          address=mailbox)
        return left

    def _write_copies(self, queue_id: str, sender: str, copies: Sequence[tuple[str, str]],
                      chunks: Sequence[bytes]) -> tuple[list[Copy], list[str]]:
        """On an I/O worker: each copy, fsync'ed, if every recipient's domain is in emergency mode now."""
        recipients = [recipient for recipient, _ in copies]
        with self._directory.fence.writing(parse_address(r).domain for r in recipients) as emergency:
            if not emergency:
                return [], recipients
            written: list[Copy] = []
            for number, (recipient, mailbox) in enumerate(copies):
                try:
                    base = deliver_copy(self._mailstore, mailbox, sender, recipient, chunks)
                except Exception:
                    self.log.failure("{queue_id}: writing the copy for {address} failed; the spool takes it and"
                                     " the rest", queue_id=queue_id, address=mailbox)
                    return written, recipients[number:]
                written.append((recipient, mailbox, base))
            return written, []

    def record(self, queue_id: str, message_id: str | None, sender: str, client: str | None, now: float,
               copies: Sequence[Copy]) -> "Deferred[None]":
        """Write the copies' tracking rows (those of an SMTP worker's copies too, in the service process), in a
        commit that may wait a moment for others (:meth:`~continuity.db.SQLThread.run_batched`)."""
        return self._sql.run_batched(self._track, queue_id, message_id, sender, client, now, copies)

    def _track(self, queue_id: str, message_id: str | None, sender: str, client: str | None, now: float,
               copies: Sequence[Copy]) -> None:
        """On the SQL thread: each copy's tracking row, received and delayed, with its mailbox reference."""
        with self._directory.db.transaction() as conn:
            for recipient, mailbox, ref in copies:
                # The row as received-then-delayed leaves it, written once: an update of a row moves it in
                # each of its indexes again.
                tracking_id = tracking.create(
                    conn, queue_id=queue_id, message_id=message_id, sender=sender, recipient=recipient,
                    direction="inbound", status="delayed", now=now, detail=None,
                    mailbox_ref=tracking.mailbox_ref(mailbox, ref), first_status="received",
                    first_detail=f"from {client or 'smtp'}")
                tracking.event(conn, tracking_id, "delayed", now, tracking.in_mailbox(mailbox))

"""The queue index: one row per spooled message and recipient, with its delivery state.

States: ``queued`` (due at ``next_attempt``), ``deferred`` (a temporary failure,
retried at ``next_attempt``), ``held`` (waiting for the domain's recovery: an
uncovered user's mail in emergency mode), ``done`` (delivered, bounced or in a
continuity mailbox). ``next_attempt`` is moved forward *before* an attempt
(:meth:`QueueIndex.claim`), so a crash mid-attempt retries later rather than
never: delivery is at-least-once. Each change writes its tracking event in the
same transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import attrs

from continuity import tracking
from continuity.db import Database
from continuity.spool.store import SpoolEnvelope

PENDING_STATES = ("queued", "deferred", "held")


@attrs.frozen
class QueueEntry:
    """One recipient of one spooled message."""

    id: int
    queue_id: str
    recipient: str
    domain: str
    direction: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    tracking_id: int
    sender: str
    received: float


_SELECT = ("SELECT q.*, m.sender AS sender, m.received AS received FROM queue q"
           " JOIN messages m ON m.queue_id = q.queue_id")


def _entry(row) -> QueueEntry:
    return QueueEntry(**{field.name: row[field.name] for field in attrs.fields(QueueEntry)})


def recipient_domain(recipient: str) -> str:
    return recipient.rpartition("@")[2].lower()


class QueueIndex:
    """Queries and updates of the ``messages``, ``queue`` and tracking tables."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self._clock = clock

    # -- adding ----------------------------------------------------------

    def add(self, envelope: SpoolEnvelope, size: int, directions: Sequence[str] | None = None) -> list[QueueEntry]:
        """Index a spooled message: one queued row and one tracking row per recipient; return the rows."""
        now = self._clock()
        entries = []
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM messages WHERE queue_id = ?", (envelope.queue_id,)).fetchone():
                return []
            conn.execute(
                "INSERT INTO messages (queue_id, message_id, sender, size, received, direction, origin, client,"
                " auth_user) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (envelope.queue_id, envelope.message_id, envelope.sender, size, envelope.received,
                 envelope.direction, envelope.origin, envelope.client, envelope.auth_user),
            )
            for number, recipient in enumerate(envelope.recipients):
                direction = directions[number] if directions else envelope.direction
                tracking_id = tracking.create(
                    conn, queue_id=envelope.queue_id, message_id=envelope.message_id, sender=envelope.sender,
                    recipient=recipient, direction=direction, status="received", now=now,
                    detail=f"from {envelope.client or envelope.origin}",
                )
                domain = recipient_domain(recipient)
                cursor = conn.execute(
                    "INSERT INTO queue (queue_id, recipient, domain, direction, state, next_attempt, tracking_id)"
                    " VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                    (envelope.queue_id, recipient, domain, direction, now, tracking_id),
                )
                entries.append(QueueEntry(
                    id=cursor.lastrowid, queue_id=envelope.queue_id, recipient=recipient, domain=domain,
                    direction=direction, state="queued", attempts=0, next_attempt=now, last_error=None,
                    tracking_id=tracking_id, sender=envelope.sender, received=envelope.received))
        return entries

    def record_rejection(self, sender: str, recipient: str, detail: str, direction: str = "inbound") -> None:
        """Track a recipient refused during the SMTP dialogue (no message was spooled)."""
        with self.db.transaction() as conn:
            tracking.create(conn, queue_id=None, message_id=None, sender=sender, recipient=recipient,
                            direction=direction, status="rejected", now=self._clock(), detail=detail)

    # -- reading ---------------------------------------------------------

    def due(self, now: float, limit: int = 500) -> list[QueueEntry]:
        """Queued or deferred recipients whose next attempt has come, oldest first."""
        rows = self.db.read(
            f"{_SELECT} WHERE q.state IN ('queued', 'deferred') AND q.next_attempt <= ?"
            " ORDER BY q.next_attempt, q.id LIMIT ?",
            (now, limit),
        )
        return [_entry(r) for r in rows]

    def next_due(self) -> float | None:
        row = self.db.read("SELECT MIN(next_attempt) FROM queue WHERE state IN ('queued', 'deferred')")
        return row[0][0]

    def has_pending(self, queue_id: str) -> bool:
        """Whether any recipient of the message is not done yet (else its spool file can go)."""
        return bool(self.db.read("SELECT 1 FROM queue WHERE queue_id = ? AND state != 'done' LIMIT 1", (queue_id,)))

    def pending(self, queue_id: str) -> list[QueueEntry]:
        return [_entry(r) for r in self.db.read(
            f"{_SELECT} WHERE q.queue_id = ? AND q.state != 'done' ORDER BY q.id", (queue_id,))]

    def recipients(self, queue_id: str) -> list[QueueEntry]:
        """Every recipient of a message, delivered ones too."""
        return [_entry(r) for r in self.db.read(f"{_SELECT} WHERE q.queue_id = ? ORDER BY q.id", (queue_id,))]

    def for_domain(self, domain: str, states: Iterable[str] = PENDING_STATES) -> list[QueueEntry]:
        states = tuple(states)
        marks = ",".join("?" * len(states))
        return [_entry(r) for r in self.db.read(
            f"{_SELECT} WHERE q.domain = ? AND q.state IN ({marks}) ORDER BY q.id", (domain, *states))]

    def listing(self, domain: str | None = None) -> list[QueueEntry]:
        """Pending recipients (for ``queue list``)."""
        if domain is None:
            rows = self.db.read(f"{_SELECT} WHERE q.state != 'done' ORDER BY q.next_attempt, q.id")
        else:
            rows = self.db.read(f"{_SELECT} WHERE q.state != 'done' AND q.domain = ? ORDER BY q.next_attempt, q.id",
                                (domain,))
        return [_entry(r) for r in rows]

    def depth(self, domain: str) -> int:
        """Recipients of ``domain`` not yet delivered (queued, deferred or held)."""
        row = self.db.read(
            "SELECT COUNT(*) FROM queue WHERE domain = ? AND state IN ('queued', 'deferred', 'held')", (domain,)
        )
        return row[0][0]

    def counts(self) -> dict[str, int]:
        """Recipients per pending state, across all domains."""
        rows = self.db.read(
            "SELECT state, COUNT(*) FROM queue WHERE state IN ('queued', 'deferred', 'held') GROUP BY state"
        )
        counts = dict.fromkeys(PENDING_STATES, 0)
        counts.update({row[0]: row[1] for row in rows})
        return counts

    def known_queue_ids(self) -> set[str]:
        return {row[0] for row in self.db.read("SELECT queue_id FROM messages")}

    def finished_queue_ids(self) -> list[str]:
        """Messages all of whose recipients are done (their spool file can go)."""
        rows = self.db.read(
            "SELECT m.queue_id FROM messages m WHERE NOT EXISTS"
            " (SELECT 1 FROM queue q WHERE q.queue_id = m.queue_id AND q.state != 'done')"
        )
        return [r[0] for r in rows]

    # -- changing --------------------------------------------------------

    def claim(self, ids: Sequence[int], next_attempt: float, now: float) -> set[int]:
        """Before an attempt: count it and move the next one forward (crash -> retried then); return the ids claimed.

        A recipient is claimed only while it is due at ``now`` (queued or
        deferred, its next attempt not ahead): the check and the claim are one
        statement, so of two runners reading it due only one gets it.
        """
        claimed = set()
        with self.db.transaction() as conn:
            for row_id in ids:
                cursor = conn.execute(
                    "UPDATE queue SET attempts = attempts + 1, next_attempt = ? WHERE id = ?"
                    " AND state IN ('queued', 'deferred') AND next_attempt <= ?", (next_attempt, row_id, now))
                if cursor.rowcount:
                    claimed.add(row_id)
        return claimed

    def finish(self, entries: Sequence[QueueEntry], status: str, detail: str,
               mailbox_refs: Sequence[str | None] | None = None) -> None:
        """Mark recipients done with a final tracking status (relayed, delayed, bounced, sent...)."""
        now = self._clock()
        with self.db.transaction() as conn:
            for number, entry in enumerate(entries):
                conn.execute("UPDATE queue SET state = 'done', last_error = NULL WHERE id = ?", (entry.id,))
                ref = mailbox_refs[number] if mailbox_refs else None
                tracking.record(conn, entry.tracking_id, status, now, detail, mailbox_ref=ref)

    def defer(self, entries: Sequence[QueueEntry], error: str, next_attempt: float, state: str = "deferred",
              status: str = "deferred") -> None:
        """A temporary failure (or a hold until recovery): keep the recipient with its reason."""
        now = self._clock()
        with self.db.transaction() as conn:
            for entry in entries:
                conn.execute("UPDATE queue SET state = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                             (state, next_attempt, error, entry.id))
                tracking.record(conn, entry.tracking_id, status, now, error)

    def release(self, entries: Sequence[QueueEntry], now: float) -> None:
        """Make held or deferred recipients due now (after recovery, or on ``queue flush``)."""
        with self.db.transaction() as conn:
            # Only what is still pending: a recipient delivered since it was read stays done.
            conn.executemany("UPDATE queue SET state = 'queued', next_attempt = ? WHERE id = ? AND state != 'done'",
                             [(now, e.id) for e in entries])

    def release_stale_claims(self, started: float, now: float) -> int:
        """At start-up: make due now what attempts of an earlier run claimed (mail received before ``started``).

        Those attempts ended with that run; claims of this run, which may
        already be at work, are on newer mail and stay.
        """
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "UPDATE queue SET next_attempt = ? WHERE state = 'queued' AND next_attempt > ?"
                " AND queue_id IN (SELECT queue_id FROM messages WHERE received < ?)", (now, now, started))
            return cursor.rowcount

    def release_all(self, domain: str | None, now: float, states: Sequence[str] = ("deferred", "held")) -> int:
        """Make every recipient in ``states`` (of ``domain``, or of all) due now; return how many."""
        marks = ",".join("?" * len(states))
        sql = f"UPDATE queue SET state = 'queued', next_attempt = ? WHERE state IN ({marks})"
        params: tuple = (now, *states)
        if domain is not None:
            sql, params = sql + " AND domain = ?", (*params, domain)
        with self.db.transaction() as conn:
            return conn.execute(sql, params).rowcount

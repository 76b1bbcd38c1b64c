"""The queue index: one row per spooled message and recipient, with its delivery state.

States: ``queued`` (due at ``next_attempt``), ``deferred`` (a temporary failure,
retried at ``next_attempt``), ``held`` (waiting for the domain's recovery: an
uncovered user's mail in emergency mode), ``done`` (delivered, bounced or in a
continuity mailbox). ``next_attempt`` is set *before* an attempt so a crash
mid-attempt retries later rather than never (at-least-once).
"""

from __future__ import annotations

from continuity.db import Database

PENDING_STATES = ("queued", "deferred", "held")


class QueueIndex:
    """Queries and updates of the ``queue`` table."""

    def __init__(self, db: Database):
        self.db = db

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

"""Message tracking: one row per message and recipient, with its history of events.

Statuses (CONTRACT section 3): ``received``, ``relayed``, ``deferred``,
``delayed`` (delivered to a continuity mailbox), ``redelivered``, ``deleted``,
``moved``, ``bounced``, ``rejected``, ``sent``. The row's ``status`` is the
latest event's; ``tracking_events`` keeps them all. Functions taking ``conn``
run inside the caller's transaction, so a state change and its tracking event
commit together.
"""

from __future__ import annotations

import datetime
import sqlite3
from typing import Any

from continuity.db import Database

STATUSES = ("received", "relayed", "deferred", "delayed", "redelivered", "deleted", "moved", "bounced",
            "rejected", "sent")


def create(conn: sqlite3.Connection, *, queue_id: str | None, message_id: str | None, sender: str,
           recipient: str, direction: str, status: str, now: float, detail: str | None = None,
           mailbox_ref: str | None = None, first_status: str | None = None,
           first_detail: str | None = None) -> int:
    """A new tracking row with its first event; returns its id.

    :param first_status: the first event's status when it is not the row's: a row created as it will be
        after later events (:func:`event` adds them), ``first_detail`` then that event's detail.
    """
    cursor = conn.execute(
        "INSERT INTO tracking (queue_id, message_id, sender, recipient, direction, status, time, mailbox_ref)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (queue_id, message_id, sender, recipient, direction, status, now, mailbox_ref),
    )
    tracking_id = cursor.lastrowid
    if first_status is not None:
        event(conn, tracking_id, first_status, now, first_detail)
    else:
        event(conn, tracking_id, status, now, detail)
    return tracking_id


def event(conn: sqlite3.Connection, tracking_id: int, status: str, now: float, detail: str | None) -> None:
    """An event in a row's history, leaving the row as it is (:func:`record` makes it the row's status)."""
    conn.execute("INSERT INTO tracking_events (tracking_id, time, status, detail) VALUES (?, ?, ?, ?)",
                 (tracking_id, now, status, detail))


def record(conn: sqlite3.Connection, tracking_id: int, status: str, now: float, detail: str | None = None,
           mailbox_ref: str | None = None) -> None:
    """Append an event and make it the row's current status."""
    conn.execute("UPDATE tracking SET status = ?, time = ?, mailbox_ref = COALESCE(?, mailbox_ref) WHERE id = ?",
                 (status, now, mailbox_ref, tracking_id))
    event(conn, tracking_id, status, now, detail)


def mailbox_ref(address: str, base: str) -> str:
    """The ``mailbox_ref`` of a copy in a continuity mailbox: recovery finds its rows by it."""
    return f"{address}/{base}"


def in_mailbox(address: str) -> str:
    """The ``delayed`` event's detail of a copy in the continuity mailbox of ``address``."""
    return f"in the continuity mailbox of {address}"


def iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")


def query(db: Database, *, sender: str | None = None, recipient: str | None = None, since: float | None = None,
          status: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Tracking rows, newest first, each with its events (CONTRACT section 3 ``track``)."""
    where, params = [], []
    if sender is not None:
        where.append("sender = ?")
        params.append(sender)
    if recipient is not None:
        where.append("recipient = ?")
        params.append(recipient)
    if since is not None:
        where.append("time >= ?")
        params.append(since)
    if status is not None:
        where.append("status = ?")
        params.append(status)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = db.read(f"SELECT * FROM tracking {clause} ORDER BY time DESC, id DESC LIMIT ?", (*params, limit))
    events_of: dict[int, list] = {row["id"]: [] for row in rows}
    if events_of:  # one query for the events of every row, not one per row
        marks = ",".join("?" * len(events_of))
        for event in db.read(f"SELECT tracking_id, time, status, detail FROM tracking_events"
                             f" WHERE tracking_id IN ({marks}) ORDER BY id", tuple(events_of)):
            events_of[event["tracking_id"]].append(event)
    result = []
    for row in rows:
        events = events_of[row["id"]]
        result.append({
            "queue_id": row["queue_id"],
            "message_id": row["message_id"],
            "sender": row["sender"],
            "recipient": row["recipient"],
            "direction": row["direction"],
            "status": row["status"],
            "time": iso(row["time"]),
            "events": [{"time": iso(e["time"]), "status": e["status"], "detail": e["detail"]} for e in events],
        })
    return result

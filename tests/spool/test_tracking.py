"""Message tracking: one row per message and recipient, its current status and the history of events."""

from __future__ import annotations

import pytest

from continuity import tracking
from continuity.db import Database

NOW = 1_800_000_000.0


@pytest.fixture
def db(tmp_path) -> Database:
    """A fresh store."""
    db = Database(str(tmp_path / "store.sqlite3")).open()
    yield db
    db.close()


def new_row(db: Database, recipient: str = "bob@example.com", sender: str = "alice@sender.example",
            now: float = NOW, status: str = "received") -> int:
    with db.transaction() as conn:
        return tracking.create(conn, queue_id="Q1", message_id="<m1@x>", sender=sender, recipient=recipient,
                               direction="inbound", status=status, now=now, detail="from 192.0.2.1")


def test_statuses_are_the_contracts():
    """The statuses are exactly CONTRACT section 3's."""
    assert set(tracking.STATUSES) == {"received", "relayed", "deferred", "delayed", "redelivered", "deleted",
                                      "moved", "bounced", "rejected", "sent"}


@pytest.mark.parametrize("status", tracking.STATUSES)
def test_each_status_becomes_the_rows_status_and_an_event(db, status):
    """Recording any status makes it the row's current status and appends it to the history."""
    row_id = new_row(db)
    with db.transaction() as conn:
        tracking.record(conn, row_id, status, NOW + 1, f"now {status}")
    (row,) = tracking.query(db, status=status)
    assert row["status"] == status
    assert row["time"] == tracking.iso(NOW + 1)
    assert [(e["status"], e["detail"]) for e in row["events"]] == [("received", "from 192.0.2.1"),
                                                                    (status, f"now {status}")]


def test_a_row_holds_what_the_contract_names(db):
    """Each row has queue_id, message_id, sender, recipient, status, time (ISO) and events with ISO times."""
    new_row(db)
    (row,) = tracking.query(db)
    assert {"queue_id", "message_id", "sender", "recipient", "status", "time", "events"} <= set(row)
    assert row["time"] == "2027-01-15T08:00:00+00:00"
    assert row["events"][0]["time"] == "2027-01-15T08:00:00+00:00"


def test_mailbox_ref_is_kept_for_continuity_deliveries(db):
    """A delayed event can name the mailbox message, for recovery to find it later."""
    row_id = new_row(db)
    with db.transaction() as conn:
        tracking.record(conn, row_id, "delayed", NOW, "in the mailbox", mailbox_ref="bob@example.com/1.M1.h")
        tracking.record(conn, row_id, "redelivered", NOW + 1, "250 ok")
    assert db.read("SELECT mailbox_ref FROM tracking")[0][0] == "bob@example.com/1.M1.h"


def test_query_filters_by_sender_recipient_time_and_status(db):
    """track --sender, --recipient, --since and --status each narrow the rows; newest first."""
    new_row(db, "bob@example.com", "alice@sender.example", NOW)
    new_row(db, "carol@example.com", "", NOW + 10)
    new_row(db, "bob@example.com", "", NOW + 20, status="rejected")
    assert [r["recipient"] for r in tracking.query(db)] == ["bob@example.com", "carol@example.com",
                                                            "bob@example.com"]
    assert len(tracking.query(db, recipient="bob@example.com")) == 2
    assert [r["recipient"] for r in tracking.query(db, sender="")] == ["bob@example.com", "carol@example.com"]
    assert len(tracking.query(db, since=NOW + 10)) == 2
    assert [r["time"] for r in tracking.query(db, status="rejected")] == [tracking.iso(NOW + 20)]
    assert tracking.query(db, sender="nobody@x.example") == []

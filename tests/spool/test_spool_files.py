"""Spool files: the envelope line and the message, written durably, never replaced, listed and removed."""

from __future__ import annotations

import os

import pytest

from continuity.spool.store import MessageSpool, SpoolEnvelope, new_queue_id


def envelope(queue_id: str = "0000ABCDEF0001", **changes) -> SpoolEnvelope:
    values = dict(queue_id=queue_id, sender="alice@sender.example", recipients=("bob@example.com",),
                  received=1_800_000_000.5, direction="inbound", origin="smtp", client="192.0.2.1",
                  message_id="<m1@sender.example>", extra={"user": "bob@example.com"})
    values.update(changes)
    return SpoolEnvelope(**values)


@pytest.fixture
def spool(tmp_path) -> MessageSpool:
    """A prepared spool under tmp_path."""
    spool = MessageSpool(str(tmp_path / "spool"))
    spool.prepare()
    return spool


def test_a_spool_file_holds_the_envelope_and_the_exact_message(spool):
    """read() gives back the envelope and the message bytes as written, chunk boundaries and all."""
    message = b"Received: x\r\n", b"Subject: s\r\n\r\nbody with a bare\nLF and \x00 kept\r\n"
    size = spool.write(envelope(), message)
    assert size == len(b"".join(message))
    got, data = spool.read("0000ABCDEF0001")
    assert got == envelope()
    assert data == b"".join(message)
    assert spool.read_envelope("0000ABCDEF0001") == envelope()


def test_the_null_sender_round_trips(spool):
    """An envelope from <> is kept as the empty sender."""
    spool.write(envelope(sender=""), [b"x\r\n"])
    assert spool.read_envelope("0000ABCDEF0001").sender == ""


def test_an_existing_spool_file_is_never_replaced(spool):
    """Writing a queue id that exists raises and leaves the first file as it was."""
    spool.write(envelope(), [b"first\r\n"])
    with pytest.raises(FileExistsError):
        spool.write(envelope(), [b"second\r\n"])
    assert spool.read("0000ABCDEF0001")[1] == b"first\r\n"
    assert os.listdir(spool.tmp_dir) == []


@pytest.mark.parametrize("queue_id", ["../escape", "a/b", "", "x y", "abc.tmp"])
def test_a_queue_id_that_is_not_alphanumeric_is_refused(spool, queue_id):
    """Only alphanumeric queue ids name spool files (no path tricks)."""
    with pytest.raises(ValueError):
        spool.path(queue_id)


def test_prepare_removes_half_written_files(tmp_path):
    """Files left in spool/tmp by a crash were never acknowledged: prepare() removes them."""
    spool = MessageSpool(str(tmp_path / "spool"))
    spool.prepare()
    with open(os.path.join(spool.tmp_dir, "0000DEAD"), "wb") as handle:
        handle.write(b"half")
    spool.write(envelope(), [b"whole\r\n"])
    spool.prepare()
    assert os.listdir(spool.tmp_dir) == []
    assert list(spool.queue_ids()) == ["0000ABCDEF0001"]


def test_queue_ids_lists_only_spool_files(spool):
    """Stray names in messages/ (editor backups, dot files) are not taken for queue ids."""
    spool.write(envelope(), [b"x\r\n"])
    for stray in (".hidden", "notes.txt"):
        with open(os.path.join(spool.messages_dir, stray), "wb"):
            pass
    assert list(spool.queue_ids()) == ["0000ABCDEF0001"]


def test_remove_says_whether_the_file_was_there(spool):
    """remove() is True for a spool file that existed and False after."""
    spool.write(envelope(), [b"x\r\n"])
    assert spool.exists("0000ABCDEF0001")
    assert spool.remove("0000ABCDEF0001") is True
    assert spool.remove("0000ABCDEF0001") is False
    assert not spool.exists("0000ABCDEF0001")


def test_queue_ids_sort_by_time_and_are_unique():
    """Queue ids sort in order of their time and two at the same microsecond differ."""
    early, late = new_queue_id(1_800_000_000.0), new_queue_id(1_800_000_001.0)
    assert early < late and early.isalnum()
    assert len({new_queue_id(1_800_000_000.0) for _ in range(20)}) == 20

"""Reading listed messages in batches (read_messages, as IMAP FETCH does): order, expunges, renames, sizes."""

from __future__ import annotations

import os

import pytest

from continuity.mailstore import MailstoreError, MessageExpunged
from continuity.mailstore import folder as folder_module
from continuity.mailstore.folder import MailFolder


def _deliver(store, address, count: int, folder: str = "INBOX") -> list:
    for number in range(count):
        store.deliver(address, b"Subject: %d\r\n\r\nbody %d\r\n" % (number, number), folder)
    return list(store.get_messages(address, folder))


def test_read_messages_returns_the_bodies_in_order(store, alice) -> None:
    """read_messages answers each listed message's bytes, in the order asked."""
    refs = _deliver(store, alice, 3)
    assert store.read_messages(refs[::-1]) == [b"Subject: %d\r\n\r\nbody %d\r\n" % (n, n) for n in (2, 1, 0)]


def test_read_messages_answers_none_for_an_expunged_message(store, alice) -> None:
    """A message removed since the listing is None; the others are read."""
    refs = _deliver(store, alice, 3)
    os.unlink(refs[1].path)
    first, gone, third = store.read_messages(refs)
    assert gone is None and first.startswith(b"Subject: 0") and third.startswith(b"Subject: 2")


def test_read_message_of_a_removed_file_raises(store, alice) -> None:
    """read_message (one message) still raises MessageExpunged for a file that is gone."""
    (ref,) = _deliver(store, alice, 1)
    os.unlink(ref.path)
    with pytest.raises(MessageExpunged):
        store.read_message(ref)


def test_read_messages_follows_renames_with_one_rescan(store, alice, monkeypatch) -> None:
    """Messages renamed by another session (flag changes) are read, with one folder scan for the batch."""
    refs = _deliver(store, alice, 4)
    cur = os.path.join(store.user_root(alice), "cur")
    for ref in refs[:3]:
        os.rename(ref.path, os.path.join(cur, ref.base + ":2,S"))
    scans = []
    original = MailFolder._scan
    monkeypatch.setattr(MailFolder, "_scan", lambda self: scans.append(1) or original(self))
    bodies = store.read_messages(refs)
    assert [body[:10] for body in bodies] == [b"Subject: %d" % n for n in range(4)] and len(scans) == 1


def test_read_messages_needs_no_scan_when_nothing_moved(store, alice, monkeypatch) -> None:
    """Files where the listing saw them are opened directly: no folder scan."""
    refs = _deliver(store, alice, 3)
    monkeypatch.setattr(MailFolder, "_scan", lambda self: pytest.fail("scanned"))
    assert len(store.read_messages(refs)) == 3


@pytest.mark.parametrize("listed_size", [3, 4096])
def test_read_messages_reads_the_whole_file_whatever_its_name_says(store, alice, drop_in, listed_size) -> None:
    """A foreign file whose ,S= size is too small or too big is still read whole."""
    store.ensure_mailbox(alice)
    content = b"Subject: foreign\r\n\r\n" + b"x" * 200 + b"\r\n"
    drop_in(store.user_root(alice), f"1700000000.M1P1.tool,S={listed_size}", content)
    (ref,) = store.get_messages(alice)
    assert ref.size == listed_size and store.read_messages([ref]) == [content]


def test_read_messages_reads_beyond_the_first_read(store, alice, monkeypatch) -> None:
    """A message bigger than the first read's limit is read to its end in further reads."""
    monkeypatch.setattr(folder_module, "_FIRST_READ_LIMIT", 10)
    monkeypatch.setattr(folder_module, "_READ_CHUNK", 7)
    body = b"Subject: big\r\n\r\n" + bytes(range(256)) * 4
    store.deliver(alice, body)
    (ref,) = store.get_messages(alice)
    assert store.read_messages([ref]) == [body]


def test_read_messages_of_several_folders_keeps_the_order(store, alice) -> None:
    """Refs of different folders, interleaved, come back in the order asked."""
    inbox = _deliver(store, alice, 2)
    sent = _deliver(store, alice, 2, "Sent")
    bodies = store.read_messages([inbox[0], sent[0], inbox[1], sent[1]])
    assert [body[9:10] for body in bodies] == [b"0", b"0", b"1", b"1"]
    assert store.read_messages([]) == []


def test_read_messages_of_a_deleted_folder_answers_none(store, alice) -> None:
    """When the whole folder is gone, every message of it is None (not an error)."""
    store.create_folder(alice, "Old")
    refs = _deliver(store, alice, 2, "Old")
    store.delete_folder(alice, "Old")
    assert store.read_messages(refs) == [None, None]


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_read_messages_of_new_and_cur_in_one_batch(store, alice) -> None:
    """Messages still in new/ and messages in cur/ are read in one batch, and no descriptor stays open."""
    store.deliver(alice, b"Subject: new\r\n\r\nx\r\n")
    store.deliver(alice, b"Subject: seen\r\n\r\ny\r\n", flags="S")
    refs = store.get_messages(alice)
    assert sorted(ref.path.split("/")[-2] for ref in refs) == ["cur", "new"]
    before = _open_descriptors()
    assert [body[:12] for body in store.read_messages(refs)] == [b"Subject: new", b"Subject: see"]
    assert _open_descriptors() == before


def test_read_messages_closes_its_descriptors_on_an_error(store, alice, monkeypatch) -> None:
    """A read that fails (a disk error) leaves no file or directory descriptor open."""
    refs = _deliver(store, alice, 3)
    before = _open_descriptors()

    def failing_read(fd, size):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(folder_module.os, "read", failing_read)
    with pytest.raises(MailstoreError):
        store.read_messages(refs)
    monkeypatch.undo()
    assert _open_descriptors() == before

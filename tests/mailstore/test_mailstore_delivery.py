"""Delivery into continuity mailboxes: durable, unique, never overwriting (Maildir)."""

from __future__ import annotations

import errno
import mailbox
import os

import pytest

from continuity.envelope import parse_address
from continuity.mailstore import InvalidFlags, MailboxNotFound, MaildirStore, MailstoreError
from continuity.mailstore.filenames import MaildirFilename, UniqueNames, base_size

MESSAGE = b"From: bob@example.net\r\nSubject: hello\r\n\r\nbody\r\n"


def test_delivery_lands_in_new_and_tmp_is_empty(store, alice) -> None:
    """A delivered message is a file in new/ with the exact bytes; nothing is left in tmp/."""
    ref = store.deliver(alice, MESSAGE)
    root = store.user_root(alice)
    assert os.listdir(os.path.join(root, "tmp")) == []
    assert os.listdir(os.path.join(root, "new")) == [os.path.basename(ref.path)]
    assert os.path.dirname(ref.path) == os.path.join(root, "new")
    with open(ref.path, "rb") as handle:
        assert handle.read() == MESSAGE
    assert ref.recent and ref.flags == "" and ref.uid is None


@pytest.fixture(params=["unnamed", "named"])
def staging(request, monkeypatch) -> str:
    """Both ways of writing a message before it has its name: without one (O_TMPFILE), and where the system
    cannot, under a name in tmp/."""
    import continuity.durable as durable_module

    if request.param == "named":
        monkeypatch.setattr(durable_module, "_naming_works", False)
    return request.param


def test_delivery_syncs_the_message_before_naming_it_and_new_after(store, alice, monkeypatch, staging) -> None:
    """The message's bytes are fsync'ed while it has no name in new/ (none at all, or one in tmp/ only), and
    new/ once the name is there: on return the message survives a crash, and a crash before never leaves a
    partial file in new/."""
    store.ensure_mailbox(alice)
    root = store.user_root(alice)
    new_dir = os.path.join(root, "new")

    def inodes(directory: str) -> set[int]:
        return {os.stat(os.path.join(directory, name)).st_ino for name in os.listdir(directory)}

    synced: list[tuple[int, int, set[int], set[int]]] = []  # inode, size, inodes in new/ and in tmp/ then
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        stat = os.fstat(fd)
        synced.append((stat.st_ino, stat.st_size, inodes(new_dir), inodes(os.path.join(root, "tmp"))))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    ref = store.deliver(alice, MESSAGE)
    message, new_inode = os.stat(ref.path).st_ino, os.stat(new_dir).st_ino
    message_syncs = [index for index, entry in enumerate(synced) if entry[0] == message]
    new_syncs = [index for index, entry in enumerate(synced) if entry[0] == new_inode]
    assert message_syncs and new_syncs
    for index in message_syncs:
        _, size, in_new, in_tmp = synced[index]
        assert size == len(MESSAGE) and message not in in_new
        assert (message in in_tmp) == (staging == "named")
    assert message in synced[new_syncs[-1]][2] and new_syncs[-1] > message_syncs[-1]
    assert os.listdir(os.path.join(root, "tmp")) == []


def test_delivery_accepts_chunks(store, alice) -> None:
    """A message given as an iterable of chunks is stored whole, size in the name."""
    ref = store.deliver(alice, iter([b"Subject: x\r\n", b"\r\n", b"a" * 100_000]))
    assert ref.size == 100_014
    assert base_size(ref.base) == 100_014
    assert store.read_message(ref) == b"Subject: x\r\n\r\n" + b"a" * 100_000


def test_name_has_maildir_shape_and_size(store, alice) -> None:
    """The base is <time>.M<usec>P<pid>Q<n>R<random>.<host>,S=<size>."""
    ref = store.deliver(alice, MESSAGE)
    seconds, rest = ref.base.split(".", 1)
    assert seconds.isdigit()
    assert rest.startswith("M") and f"P{os.getpid()}Q" in rest and "R" in rest
    assert ref.base.endswith(f".mx.example.test,S={len(MESSAGE)}")


def test_hostname_sanitised(mail_root, alice) -> None:
    """'/' and ':' in the host name are escaped as the Maildir spec says."""
    store = MaildirStore(mail_root, hostname="evil/host:name")
    ref = store.deliver(alice, MESSAGE)
    assert "/" not in ref.base and ":" not in ref.base
    assert "evil\\057host\\072name" in ref.base


def test_many_quick_deliveries_get_unique_names(store, alice) -> None:
    """Hundreds of deliveries within the same second all get distinct files."""
    refs = [store.deliver(alice, b"Subject: %d\r\n\r\n" % i) for i in range(300)]
    assert len({ref.base for ref in refs}) == 300
    assert len(os.listdir(os.path.join(store.user_root(alice), "new"))) == 300


class RepeatingNames(UniqueNames):
    """Hands out the same base a few times before unique ones: a forced collision."""

    def __init__(self, base: str, repeats: int):
        super().__init__("mx.example.test")
        self.base = base
        self.repeats = repeats

    def next_base(self) -> str:
        if self.repeats > 0:
            self.repeats -= 1
            return self.base
        return super().next_base()


def test_no_overwrite_on_name_collision(mail_root, alice) -> None:
    """When the chosen name exists already in new/, the old file is kept and a new name chosen."""
    names = RepeatingNames("1700000000.M000001P1Q1Rabcdef01.mx", repeats=1)
    store = MaildirStore(mail_root, names=names)
    store.ensure_mailbox(alice)
    root = store.user_root(alice)
    occupied = os.path.join(root, "new", "1700000000.M000001P1Q1Rabcdef01.mx,S=5")
    with open(occupied, "wb") as handle:
        handle.write(b"first")
    ref = store.deliver(alice, b"other")
    with open(occupied, "rb") as handle:
        assert handle.read() == b"first"
    assert ref.path != occupied
    assert store.read_message(ref) == b"other"
    assert sorted(m.size for m in store.get_messages(alice)) == [5, 5]
    assert os.listdir(os.path.join(root, "tmp")) == []


def test_no_overwrite_of_a_file_in_tmp(mail_root, alice) -> None:
    """A name taken in tmp/ (another writer's file) is skipped, never truncated."""
    names = RepeatingNames("1700000000.M000001P1Q1Rabcdef02.mx", repeats=2)
    store = MaildirStore(mail_root, names=names)
    store.ensure_mailbox(alice)
    foreign = os.path.join(store.user_root(alice), "tmp", "1700000000.M000001P1Q1Rabcdef02.mx")
    with open(foreign, "wb") as handle:
        handle.write(b"in progress")
    ref = store.deliver(alice, MESSAGE)
    with open(foreign, "rb") as handle:
        assert handle.read() == b"in progress"
    assert store.read_message(ref) == MESSAGE


def test_no_overwrite_with_assigned_uid(mail_root, alice) -> None:
    """Under the folder lock too, a taken name gets a fresh one."""
    names = RepeatingNames("1700000000.M000001P1Q1Rabcdef03.mx", repeats=1)
    store = MaildirStore(mail_root, names=names)
    first = store.deliver(alice, b"one", flags="S", assign_uid=True)
    names.repeats = 1
    second = store.deliver(alice, b"two", flags="S", assign_uid=True)
    assert first.base != second.base
    assert store.read_message(first) == b"one" and store.read_message(second) == b"two"


def test_flags_on_delivery_go_to_cur(store, alice) -> None:
    """Delivering with flags (IMAP APPEND) puts the message in cur/ with ':2,' and sorted flags."""
    ref = store.deliver(alice, MESSAGE, "Drafts", flags="SD")
    assert os.path.basename(os.path.dirname(ref.path)) == "cur"
    assert ref.path.endswith(":2,DS")
    assert ref.flags == "DS" and not ref.recent


def test_invalid_flags_refused(store, alice) -> None:
    """Flags outside DFPRST and a-z are refused before anything is written."""
    with pytest.raises(InvalidFlags):
        store.deliver(alice, MESSAGE, flags="X")
    assert not os.path.exists(os.path.join(store.user_root(alice), "new"))


def test_assign_uid_on_delivery(store, alice) -> None:
    """With assign_uid the returned ref carries the UID the listing shows (APPENDUID)."""
    first = store.deliver(alice, MESSAGE, assign_uid=True)
    second = store.deliver(alice, MESSAGE, assign_uid=True)
    assert (first.uid, second.uid) == (1, 2)
    listed = store.get_messages(alice)
    assert [(m.uid, m.base) for m in listed] == [(1, first.base), (2, second.base)]


def test_internal_date_kept(store, alice) -> None:
    """An APPEND date becomes the file's mtime and the listed internal date."""
    ref = store.deliver(alice, MESSAGE, "Sent", flags="S", internal_date=1_000_000_000)
    assert ref.internal_date == 1_000_000_000 and ref.uid == 1
    assert int(os.stat(ref.path).st_mtime) == 1_000_000_000
    assert store.get_messages(alice, "Sent")[0].internal_date == 1_000_000_000


def test_delivery_to_missing_folder_refused(store, alice) -> None:
    """Delivering into a folder that does not exist raises MailboxNotFound (APPEND: TRYCREATE)."""
    with pytest.raises(MailboxNotFound):
        store.deliver(alice, MESSAGE, "Nowhere")


def test_full_disk_is_temporary_error(store, alice, monkeypatch, staging) -> None:
    """A full disk is a temporary 452 4.3.1 and leaves no partial file."""
    store.ensure_mailbox(alice)

    def full(fd, buffers):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(MailstoreError) as caught:
        store.deliver(alice, MESSAGE)
    assert caught.value.code == 452 and caught.value.enhanced == "4.3.1" and caught.value.temporary
    root = store.user_root(alice)
    assert os.listdir(os.path.join(root, "tmp")) == [] and os.listdir(os.path.join(root, "new")) == []


def test_failing_body_leaves_nothing(store, alice, staging) -> None:
    """When the chunk source fails mid-way, the error propagates and tmp/ is cleaned."""
    store.ensure_mailbox(alice)

    def chunks():
        yield b"partial"
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        store.deliver(alice, chunks())
    root = store.user_root(alice)
    assert os.listdir(os.path.join(root, "tmp")) == [] and os.listdir(os.path.join(root, "new")) == []


def test_a_body_whose_source_is_gone_is_no_missing_folder(store, alice, staging) -> None:
    """A chunk source failing with FileNotFoundError (its own file gone) fails the delivery; it is not taken
    for a missing tmp/ and tried again with what is left of it, an empty message."""
    store.ensure_mailbox(alice)

    def chunks():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/spool/messages/gone")
        yield b""  # a generator, as a message read from its spool file is

    with pytest.raises(MailstoreError):
        store.deliver(alice, chunks())
    root = store.user_root(alice)
    assert os.listdir(os.path.join(root, "tmp")) == [] and os.listdir(os.path.join(root, "new")) == []


def test_maildir_tools_can_read_the_tree(store, alice) -> None:
    """Python's mailbox.Maildir reads INBOX, folders, sub-folders and flags we wrote."""
    store.deliver(alice, MESSAGE)
    store.deliver(alice, b"Subject: sent\r\n\r\nx\r\n", "Sent", flags="S")
    store.create_folder(alice, "Archiv/Entwürfe")
    store.deliver(alice, b"Subject: draft\r\n\r\ny\r\n", "Archiv/Entwürfe", flags="DF")
    tool = mailbox.Maildir(store.user_root(alice), factory=None, create=False)
    assert [message["subject"] for message in tool] == ["hello"]
    assert set(tool.list_folders()) == {"Sent", "Drafts", "Trash", "Junk", "Archiv.Entw&APw-rfe"}
    sent = tool.get_folder("Sent")
    (message,) = list(sent)
    assert message["subject"] == "sent" and message.get_flags() == "S" and message.get_subdir() == "cur"
    (draft,) = list(tool.get_folder("Archiv.Entw&APw-rfe"))
    assert draft.get_flags() == "DF"


def test_messages_from_maildir_tools_are_listed(store, alice) -> None:
    """A message added by Python's mailbox.Maildir (no ,S= in its name) is listed with its size."""
    store.ensure_mailbox(alice)
    tool = mailbox.Maildir(store.user_root(alice), factory=None, create=False)
    message = mailbox.MaildirMessage(b"Subject: tool\n\nbody\n")
    message.set_flags("RS")
    message.set_subdir("cur")
    tool.add(message)
    (listed,) = store.get_messages(alice)
    assert listed.flags == "RS" and listed.size == len(b"Subject: tool\n\nbody\n")
    assert store.read_message(listed) == b"Subject: tool\n\nbody\n"


def test_parse_of_foreign_file_names() -> None:
    """Hidden names and names with control characters are not messages; info flags are sorted."""
    assert MaildirFilename.parse(".nfs0001") is None
    assert MaildirFilename.parse("bad\nname") is None
    parsed = MaildirFilename.parse("123.abc:2,SR")
    assert parsed is not None and parsed.base == "123.abc" and parsed.flags == "RS" and parsed.time == 123


def test_address_validation_is_upstream(mail_root) -> None:
    """The store works with UTF-8 local parts that parse_address accepts."""
    store = MaildirStore(mail_root, hostname="mx")
    user = parse_address("jörg@example.com")
    ref = store.deliver(user, MESSAGE)
    assert ref.path.startswith(os.path.join(os.path.abspath(mail_root), "example.com", "jörg", "new"))


@pytest.mark.parametrize("iov_max", [1024, 2])
def test_chunks_are_written_whole_when_writev_writes_part(tmp_path, monkeypatch, iov_max) -> None:
    """write_chunks hands all chunks to one writev, and goes on from where a short write stopped."""
    from continuity import durable

    calls = []

    def short_writev(fd, buffers):
        calls.append(len(buffers))
        return os.write(fd, b"".join(bytes(buffer) for buffer in buffers)[:7])

    monkeypatch.setattr(durable.os, "writev", short_writev)
    monkeypatch.setattr(durable, "_IOV_MAX", iov_max)
    chunks = [b"Return-Path: <a@example.org>\r\n", b"", b"Subject: x\r\n\r\n", b"body" * 5]
    path = tmp_path / "message"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        assert durable.write_chunks(fd, chunks) == len(b"".join(chunks))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(chunks)
    assert max(calls) == min(3, iov_max)  # the empty chunk is no buffer


def test_chunks_from_a_file_are_written_a_mib_at_a_time(tmp_path) -> None:
    """A message read in chunks is written as it is read, never gathered whole (a copy of a large message)."""
    from continuity import durable

    taken = []

    def chunks():
        for number in range(40):
            taken.append(number)
            yield bytes([number]) * 65536

    seen_when_writing = []
    real_writev = os.writev

    def writev(fd, buffers):
        seen_when_writing.append(len(taken))
        return real_writev(fd, buffers)

    path = tmp_path / "large"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        import unittest.mock

        with unittest.mock.patch.object(durable.os, "writev", writev):
            assert durable.write_chunks(fd, chunks()) == 40 * 65536
    finally:
        os.close(fd)
    assert seen_when_writing[0] == 16  # 16 chunks of 64 KiB: a MiB, then written
    assert path.read_bytes() == b"".join(bytes([number]) * 65536 for number in range(40))


def test_a_missing_tmp_directory_is_made_again(store, alice) -> None:
    """tmp/ is looked for only when a write there fails: one removed by hand is made again, and the message lands."""
    store.ensure_mailbox(alice)
    root = store.user_root(alice)
    os.rmdir(os.path.join(root, "tmp"))
    ref = store.deliver(alice, MESSAGE)
    assert os.path.isdir(os.path.join(root, "tmp"))
    assert os.listdir(os.path.join(root, "new")) == [os.path.basename(ref.path)]


def test_a_folder_left_without_cur_is_no_mailbox(store, alice) -> None:
    """A folder with tmp/ but no cur/ or new/ (half removed) refuses the message as a missing mailbox, and
    leaves nothing in tmp/ (INBOX, the mailbox itself, is made again instead)."""
    import shutil

    store.ensure_mailbox(alice)
    store.create_folder(alice, "Archive")
    folder = os.path.dirname(os.path.dirname(store.deliver(alice, MESSAGE, "Archive").path))
    shutil.rmtree(os.path.join(folder, "cur"))
    shutil.rmtree(os.path.join(folder, "new"))
    with pytest.raises(MailboxNotFound):
        store.deliver(alice, MESSAGE, "Archive")
    assert os.listdir(os.path.join(folder, "tmp")) == []

"""Persistent UIDs: stable across restarts, shared by sessions and processes (RFC 3501 2.3.1.1)."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from continuity.envelope import parse_address
from continuity.mailstore import MaildirStore
from continuity.mailstore.folder import MailFolder
from continuity.mailstore.uidlist import UIDLIST_NAME, UidList, UidListCorrupt

MESSAGE = b"Subject: uid test\r\n\r\nbody\r\n"


def test_uids_ascend_in_delivery_order(store, alice) -> None:
    """Messages delivered one after the other get UIDs 1, 2, 3 in that order."""
    refs = [store.deliver(alice, b"Subject: %d\r\n\r\n" % i) for i in range(3)]
    listed = store.get_messages(alice)
    assert [m.uid for m in listed] == [1, 2, 3]
    assert [m.base for m in listed] == [ref.base for ref in refs]


def test_uids_stable_across_restart(store, alice, mail_root) -> None:
    """A new store object (a restarted process) sees the same UIDs and UIDVALIDITY."""
    for i in range(5):
        store.deliver(alice, b"Subject: %d\r\n\r\n" % i)
    before = store.snapshot(alice)
    store.expunge(alice, "INBOX", [2])
    store.add_flags(alice, "INBOX", [4], "S")
    after_changes = store.snapshot(alice)
    restarted = MaildirStore(mail_root, hostname="other.example.test").snapshot(alice)
    assert restarted.uidvalidity == before.uidvalidity
    assert [(m.uid, m.base, m.flags, m.modseq) for m in restarted.messages] == [
        (m.uid, m.base, m.flags, m.modseq) for m in after_changes.messages
    ]
    assert restarted.uid_next == 6 and restarted.highest_modseq == after_changes.highest_modseq


def test_uidvalidity_stable_and_chosen_once(store, alice, mail_root) -> None:
    """UIDVALIDITY is written once and survives restarts; every folder has its own."""
    inbox = store.folder_status(alice, "INBOX").uidvalidity
    sent = store.folder_status(alice, "Sent").uidvalidity
    assert inbox != sent
    again = MaildirStore(mail_root, hostname="mx")
    assert again.folder_status(alice, "INBOX").uidvalidity == inbox
    assert again.folder_status(alice, "Sent").uidvalidity == sent


def test_recreated_folder_gets_new_uidvalidity(store, alice) -> None:
    """A folder deleted and created again never reuses its UIDVALIDITY (RFC 3501 2.3.1.1)."""
    store.create_folder(alice, "Projects")
    first = store.folder_status(alice, "Projects").uidvalidity
    store.delete_folder(alice, "Projects")
    store.create_folder(alice, "Projects")
    assert store.folder_status(alice, "Projects").uidvalidity > first


def test_files_dropped_in_by_another_tool_get_higher_uids(store, alice, drop_in) -> None:
    """A file added by another Maildir tool is listed with the next UID, flags from its name."""
    store.deliver(alice, MESSAGE)
    store.deliver(alice, MESSAGE)
    assert [m.uid for m in store.get_messages(alice)] == [1, 2]
    root = store.user_root(alice)
    drop_in(root, "1600000000.P1.othertool")
    drop_in(root, "1600000001.P1.othertool:2,SF", subdir="cur")
    listed = store.get_messages(alice)
    assert [m.uid for m in listed] == [1, 2, 3, 4]
    assert [m.base for m in listed[2:]] == ["1600000000.P1.othertool", "1600000001.P1.othertool"]
    assert listed[3].flags == "FS" and listed[2].recent
    assert listed[2].internal_date == 1600000000
    assert listed[2].size == len(b"Subject: dropped\n\nx\n")


def test_files_removed_by_another_tool_vanish(store, alice) -> None:
    """A file deleted behind our back disappears from the listing; its UID is never reused."""
    refs = [store.deliver(alice, MESSAGE) for _ in range(3)]
    store.get_messages(alice)
    os.unlink(refs[1].path)
    listed = store.get_messages(alice)
    assert [m.uid for m in listed] == [1, 3]
    assert store.deliver(alice, MESSAGE, assign_uid=True).uid == 4


def test_flag_change_by_another_tool_gets_new_modseq(store, alice) -> None:
    """A rename by another tool is seen as a flag change with a higher modseq (RFC 7162)."""
    store.deliver(alice, MESSAGE)
    (before,) = store.get_messages(alice)
    os.rename(before.path, os.path.join(store.user_root(alice), "cur", before.base + ":2,S"))
    (after,) = store.get_messages(alice)
    assert after.uid == before.uid and after.flags == "S" and not after.recent
    assert after.modseq > before.modseq
    assert store.snapshot(alice).highest_modseq == after.modseq


def test_two_sessions_see_each_others_changes(mail_root, alice) -> None:
    """Two store objects on one folder agree on UIDs, flags and expunges."""
    one = MaildirStore(mail_root, hostname="one")
    two = MaildirStore(mail_root, hostname="two")
    one.deliver(alice, MESSAGE)
    two.deliver(alice, MESSAGE)
    assert [m.uid for m in one.get_messages(alice)] == [m.uid for m in two.get_messages(alice)] == [1, 2]
    one.add_flags(alice, "INBOX", [1], "S")
    assert two.get_messages(alice)[0].flags == "S"
    two.expunge(alice, "INBOX", [2])
    assert [m.uid for m in one.get_messages(alice)] == [1]
    third = one.deliver(alice, MESSAGE)
    assert [m.base for m in two.get_messages(alice)][-1] == third.base
    assert two.get_messages(alice)[-1].uid == 3


def test_unchanged_folder_is_not_rescanned(store, alice, monkeypatch, age_folder, restore_mtimes, drop_in) -> None:
    """With new/ and cur/ unchanged since the last scan, listing reuses it: no readdir, no rewrite."""
    store.deliver(alice, MESSAGE)
    root = store.user_root(alice)
    past = age_folder(root)
    first = store.snapshot(alice)  # a scan that can be trusted now
    scans = []
    real_scan = MailFolder._scan
    monkeypatch.setattr(MailFolder, "_scan", lambda self: (scans.append(self), real_scan(self))[1])
    uidlist_mtime = os.stat(os.path.join(root, UIDLIST_NAME)).st_mtime_ns
    # Another tool adds a file but the directory mtime is put back: the cache can't know.
    drop_in(root, "1600000000.P2.hidden")
    restore_mtimes(root, past)
    assert store.snapshot(alice) is first
    assert scans == []
    assert os.stat(os.path.join(root, UIDLIST_NAME)).st_mtime_ns == uidlist_mtime
    # A real change of the directory is noticed.
    os.utime(os.path.join(root, "new"))
    assert len(store.get_messages(alice)) == 2
    assert len(scans) == 1


def test_fresh_directory_mtime_is_not_trusted(store, alice, drop_in) -> None:
    """Right after a change the scan is repeated, so two changes in one mtime tick are both seen."""
    store.deliver(alice, MESSAGE)
    store.get_messages(alice)
    root = store.user_root(alice)
    mtime = os.stat(os.path.join(root, "new")).st_mtime_ns
    drop_in(root, "1600000000.P3.sametick")
    os.utime(os.path.join(root, "new"), ns=(mtime, mtime))  # as if in the same tick
    assert len(store.get_messages(alice)) == 2


def test_corrupt_uidlist_gets_greater_uidvalidity(store, alice) -> None:
    """A damaged uid list is replaced and UIDVALIDITY grows, so clients resynchronise."""
    store.deliver(alice, MESSAGE)
    old = store.snapshot(alice).uidvalidity
    path = os.path.join(store.user_root(alice), UIDLIST_NAME)
    with open(path, "ab") as handle:
        handle.write(b"garbage line\n")
    fresh = MaildirStore(os.path.dirname(os.path.dirname(store.user_root(alice))), hostname="mx")
    snapshot = fresh.snapshot(alice)
    assert snapshot.uidvalidity > old
    assert [m.uid for m in snapshot.messages] == [1]


def test_uidlist_format_round_trip() -> None:
    """The uid list serialises to the documented text and parses back equal."""
    uidlist = UidList(1700000000)
    uidlist.assign("1700000001.M1P1Q1R1.mx,S=10", 1700000001, 10, "")
    uidlist.assign("odd name with spaces :x", 1700000002, 20, "RS")
    uidlist.drop(1)
    text = uidlist.serialise().decode()
    assert text.splitlines() == [
        "1 V1700000000 N3 M4",
        "2 M3 T1700000002 S20 FRS :odd name with spaces :x",
    ]
    parsed = UidList.parse(text.encode())
    assert list(parsed) == list(uidlist)
    assert (parsed.uidvalidity, parsed.next_uid, parsed.highest_modseq) == (1700000000, 3, 4)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"2 V1 N1 M1\n",
        b"1 V1 N2 M1\n1 M1 T1 S1 F\n",
        b"1 V1 N3 M1\n2 M1 T1 S1 F :a\n1 M1 T1 S1 F :b\n",
        b"1 Vx N1 M1\n",
    ],
    ids=["empty", "unknown_version", "no_base", "descending_uids", "bad_number"],
)
def test_malformed_uidlist_refused(data: bytes) -> None:
    """A malformed uid list raises UidListCorrupt rather than yielding wrong UIDs."""
    with pytest.raises(UidListCorrupt):
        UidList.parse(data)


def test_concurrent_threads_unique_uids(store, alice) -> None:
    """Threads delivering with UIDs and listing at once never share a UID."""
    store.ensure_mailbox(alice)
    results: list[int] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(40):
                results.append(store.deliver(alice, MESSAGE, assign_uid=True).uid)
                store.get_messages(alice)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == list(range(1, 161))
    assert [m.uid for m in store.get_messages(alice)] == list(range(1, 161))


def _deliver_many(mail_root: str, worker: int, count: int, queue) -> None:
    """Child process: deliver ``count`` messages, some with UIDs, listing now and then."""
    store = MaildirStore(mail_root, hostname=f"worker{worker}")
    address = parse_address("alice@example.com")
    assigned = {}
    for i in range(count):
        body = b"Subject: %d/%d\r\n\r\nx\r\n" % (worker, i)
        ref = store.deliver(address, body, assign_uid=(i % 3 == 0))
        if ref.uid is not None:
            assigned[ref.base] = ref.uid
        if i % 10 == 0:
            store.get_messages(address)
        if i % 25 == 0 and i:
            store.add_flags(address, "INBOX", [1], "S")
    queue.put(assigned)


def test_concurrent_processes_unique_uids_no_lost_files(mail_root, alice) -> None:
    """4 processes delivering 200 messages each: 800 files, 800 distinct UIDs, none lost."""
    MaildirStore(mail_root, hostname="parent").ensure_mailbox(alice)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_deliver_many, args=(mail_root, n, 200, queue)) for n in range(4)]
    for worker in workers:
        worker.start()
    assigned = {}
    for _ in workers:
        assigned.update(queue.get(timeout=120))
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store = MaildirStore(mail_root, hostname="parent")
    listed = store.get_messages(alice)
    assert len(listed) == 800
    assert [m.uid for m in listed] == sorted({m.uid for m in listed})
    assert len({m.uid for m in listed}) == 800 and max(m.uid for m in listed) == 800
    root = store.user_root(alice)
    assert len(os.listdir(os.path.join(root, "new"))) + len(os.listdir(os.path.join(root, "cur"))) == 800
    assert os.listdir(os.path.join(root, "tmp")) == []
    by_base = {m.base: m.uid for m in listed}
    assert all(by_base[base] == uid for base, uid in assigned.items())
    bodies = {store.read_message(m) for m in listed}
    assert len(bodies) == 800


def test_uidvalidity_is_the_snapshots_without_a_new_listing(tmp_path):
    """store.uidvalidity names the folder's UIDVALIDITY, the same as a full snapshot's."""
    from continuity.envelope import parse_address
    from continuity.mailstore import MaildirStore

    store = MaildirStore(str(tmp_path / "mail"), hostname="test.example")
    address = parse_address("bob@example.com")
    ref = store.deliver(address, b"Subject: x\r\n\r\nbody\r\n", assign_uid=True)
    assert store.uidvalidity(address, "INBOX") == store.snapshot(address).uidvalidity and ref.uid == 1
    fresh = MaildirStore(str(tmp_path / "mail"), hostname="test.example")
    assert fresh.uidvalidity(address, "Sent") == fresh.snapshot(address, "Sent").uidvalidity

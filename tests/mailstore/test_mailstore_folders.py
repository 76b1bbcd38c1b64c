"""Folders (RFC 3501 6.3), move/copy/expunge (RFC 3501 6.4.7, RFC 6851, RFC 4315), recovery helpers."""

from __future__ import annotations

import os

import pytest

from continuity.envelope import Address, parse_address
from continuity.errors import InvalidAddress
from continuity.mailstore import (
    INBOX_NAME,
    FolderName,
    MailboxExists,
    MailboxNotFound,
    MailboxRefused,
    MaildirStore,
    count_messages,
    user_root,
)
from continuity.mailstore.uidlist import UidList

MESSAGE = b"Subject: folders\r\n\r\nbody\r\n"


def names(infos) -> list[str]:
    return [str(info.name) for info in infos]


def test_layout_is_maildir_plus_plus(store, alice, mail_root) -> None:
    """mail_root/DOMAIN/LOCALPART holds cur/new/tmp and .Folder directories with maildirfolder."""
    store.ensure_mailbox(alice)
    root = os.path.join(mail_root, "example.com", "alice")
    assert store.user_root(alice) == root
    for subdir in ("cur", "new", "tmp"):
        assert os.path.isdir(os.path.join(root, subdir))
    for folder in ("Sent", "Drafts", "Trash", "Junk"):
        assert os.path.isdir(os.path.join(root, "." + folder, "cur"))
        assert os.path.isfile(os.path.join(root, "." + folder, "maildirfolder"))
    assert not os.path.exists(os.path.join(root, "maildirfolder"))


def test_default_folders_have_special_use(store, alice) -> None:
    """Sent, Drafts, Trash and Junk exist on first access with their RFC 6154 attributes."""
    infos = store.list_folders(alice)
    assert names(infos) == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    special = {str(info.name): info.special_use for info in infos}
    assert special == {"INBOX": None, "Drafts": "\\Drafts", "Junk": "\\Junk", "Sent": "\\Sent", "Trash": "\\Trash"}
    assert all(info.subscribed and info.exists for info in infos)


def test_special_use_names_configurable(mail_root, alice) -> None:
    """Another set of default folders can be injected (e.g. localised names)."""
    store = MaildirStore(mail_root, hostname="mx", special_use={"Gesendet": "\\Sent"})
    infos = store.list_folders(alice)
    assert [(str(i.name), i.special_use) for i in infos] == [("INBOX", None), ("Gesendet", "\\Sent")]


def test_create_and_list_sub_folders(store, alice) -> None:
    """A sub-folder is listed with a non-existing parent that has children (\\Noselect)."""
    store.create_folder(alice, "Projects/2024")
    store.create_folder(alice, "Entwürfe")
    infos = {str(info.name): info for info in store.list_folders(alice)}
    assert infos["Projects"].exists is False and infos["Projects"].has_children
    assert infos["Projects/2024"].exists and not infos["Projects/2024"].has_children
    assert infos["Entwürfe"].exists
    assert os.path.isdir(os.path.join(store.user_root(alice), ".Entw&APw-rfe"))
    assert os.path.isdir(os.path.join(store.user_root(alice), ".Projects.2024"))


def test_create_existing_folder_refused(store, alice) -> None:
    """Creating a folder that exists (or INBOX) raises MailboxExists."""
    store.create_folder(alice, "Work")
    with pytest.raises(MailboxExists):
        store.create_folder(alice, "Work")
    with pytest.raises(MailboxExists):
        store.create_folder(alice, "inbox")


def test_delete_inbox_refused(store, alice) -> None:
    """INBOX cannot be deleted (RFC 3501 6.3.4)."""
    store.deliver(alice, MESSAGE)
    for spelling in ("INBOX", "inbox"):
        with pytest.raises(MailboxRefused, match="INBOX"):
            store.delete_folder(alice, spelling)
    assert len(store.get_messages(alice)) == 1


def test_delete_folder(store, alice) -> None:
    """Deleting a folder removes it with its messages; its sub-folders stay."""
    store.create_folder(alice, "Old")
    store.create_folder(alice, "Old/Child")
    store.deliver(alice, MESSAGE, "Old")
    store.delete_folder(alice, "Old")
    infos = {str(info.name): info for info in store.list_folders(alice)}
    assert infos["Old"].exists is False and infos["Old/Child"].exists
    with pytest.raises(MailboxNotFound):
        store.get_messages(alice, "Old")
    assert not [n for n in os.listdir(store.user_root(alice)) if n.startswith(".~")]


def test_delete_missing_folder(store, alice) -> None:
    """Deleting a folder that does not exist raises MailboxNotFound."""
    with pytest.raises(MailboxNotFound):
        store.delete_folder(alice, "Nothing")


def test_rename_folder_with_children(store, alice) -> None:
    """RENAME takes sub-folders along; messages, UIDs and UIDVALIDITY stay (RFC 3501 6.3.5)."""
    store.create_folder(alice, "Projects")
    store.create_folder(alice, "Projects/2024")
    store.create_folder(alice, "Projects/2024/Q1")
    store.create_folder(alice, "ProjectsOther")
    store.deliver(alice, MESSAGE, "Projects/2024")
    before = store.snapshot(alice, "Projects/2024")
    store.subscribe(alice, "Projects/2024")
    store.rename_folder(alice, "Projects", "Archive/Projects")
    listed = names(store.list_folders(alice))
    assert "Archive/Projects/2024/Q1" in listed and "Archive/Projects/2024" in listed
    assert not any(name.startswith("Projects/") or name == "Projects" for name in listed)
    assert "ProjectsOther" in listed
    after = store.snapshot(alice, "Archive/Projects/2024")
    assert after.uidvalidity == before.uidvalidity
    assert [(m.uid, m.base) for m in after.messages] == [(m.uid, m.base) for m in before.messages]
    assert FolderName.parse("Archive/Projects/2024") in store.subscriptions(alice)
    assert FolderName.parse("Projects/2024") not in store.subscriptions(alice)


def test_rename_onto_existing_refused(store, alice) -> None:
    """RENAME to an existing name, or to a name a sub-folder would collide with, is refused."""
    store.create_folder(alice, "A")
    store.create_folder(alice, "A/Sub")
    store.create_folder(alice, "B")
    store.create_folder(alice, "C/Sub")
    with pytest.raises(MailboxExists):
        store.rename_folder(alice, "A", "B")
    with pytest.raises(MailboxExists):
        store.rename_folder(alice, "A", "C")
    assert "A/Sub" in names(store.list_folders(alice))


def test_rename_into_own_child_refused(store, alice) -> None:
    """A folder cannot be renamed into its own sub-folder."""
    store.create_folder(alice, "A")
    with pytest.raises(MailboxRefused):
        store.rename_folder(alice, "A", "A/B")


def test_rename_missing_folder(store, alice) -> None:
    """Renaming a folder that does not exist raises MailboxNotFound."""
    with pytest.raises(MailboxNotFound):
        store.rename_folder(alice, "Ghost", "Spirit")


def test_rename_inbox_moves_messages(store, alice) -> None:
    """Renaming INBOX moves its messages into the new folder and leaves INBOX empty (RFC 3501 6.3.5)."""
    refs = [store.deliver(alice, MESSAGE) for _ in range(2)]
    store.rename_folder(alice, "INBOX", "Before outage")
    assert store.get_messages(alice) == ()
    moved = store.get_messages(alice, "Before outage")
    assert [m.base for m in moved] == [ref.base for ref in refs]


def test_subscriptions(store, alice) -> None:
    """SUBSCRIBE works for names that do not exist; UNSUBSCRIBE of an unknown name is refused."""
    store.subscribe(alice, "Later/Maybe")
    assert FolderName.parse("Later/Maybe") in store.subscriptions(alice)
    store.unsubscribe(alice, "Later/Maybe")
    assert FolderName.parse("Later/Maybe") not in store.subscriptions(alice)
    with pytest.raises(MailboxNotFound):
        store.unsubscribe(alice, "Later/Maybe")
    with open(os.path.join(store.user_root(alice), "subscriptions"), encoding="utf-8") as handle:
        assert handle.read().splitlines() == ["INBOX", "Sent", "Drafts", "Trash", "Junk"]


def test_subscription_kept_after_delete(store, alice) -> None:
    """Deleting a folder keeps its subscription (RFC 3501 6.3.6)."""
    store.create_folder(alice, "Gone")
    store.subscribe(alice, "Gone")
    store.delete_folder(alice, "Gone")
    assert FolderName.parse("Gone") in store.subscriptions(alice)


def test_expunge(store, alice) -> None:
    """EXPUNGE removes the files durably and reports the UIDs that existed."""
    refs = [store.deliver(alice, MESSAGE) for _ in range(3)]
    store.get_messages(alice)
    assert store.expunge(alice, "INBOX", [1, 3, 42]) == (1, 3)
    assert not os.path.exists(refs[0].path) and not os.path.exists(refs[2].path)
    assert [m.uid for m in store.get_messages(alice)] == [2]
    assert store.expunge(alice, "INBOX", [1]) == ()


def test_copy_reports_copyuid(store, alice) -> None:
    """COPY keeps flags and internal date; the result maps source to destination UIDs (RFC 4315)."""
    store.deliver(alice, MESSAGE)
    store.deliver(alice, b"second", flags="F")
    store.deliver(alice, MESSAGE, "Trash")
    result = store.copy(alice, "INBOX", [2, 1, 9], "Trash")
    trash = store.snapshot(alice, "Trash")
    assert result.uidvalidity == trash.uidvalidity
    assert result.mapping == ((1, 2), (2, 3))
    assert result.source_uids == (1, 2) and result.destination_uids == (2, 3)
    source = store.get_messages(alice)
    assert len(source) == 2
    assert trash.get(3).flags == "F" and store.read_message(trash.get(3)) == b"second"
    assert trash.get(2).internal_date == source[0].internal_date


def test_copy_within_one_folder(store, alice) -> None:
    """COPY into the same folder makes a second message with a new base name."""
    store.deliver(alice, MESSAGE)
    result = store.copy(alice, "INBOX", [1], "INBOX")
    assert result.mapping == ((1, 2),)
    first, second = store.get_messages(alice)
    assert first.base != second.base and store.read_message(second) == MESSAGE


def test_move(store, alice) -> None:
    """MOVE links into the destination, then unlinks the source; base names are kept."""
    ref = store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "S")
    result = store.move(alice, "INBOX", [1], "Junk")
    assert result.mapping == ((1, 1),)
    assert store.get_messages(alice) == ()
    (moved,) = store.get_messages(alice, "Junk")
    assert moved.base == ref.base and moved.flags == "S"
    assert store.read_message(moved) == MESSAGE


def test_move_to_missing_folder_refused(store, alice) -> None:
    """MOVE to a folder that does not exist raises MailboxNotFound and leaves the source alone."""
    store.deliver(alice, MESSAGE)
    with pytest.raises(MailboxNotFound):
        store.move(alice, "INBOX", [1], "Nowhere")
    assert len(store.get_messages(alice)) == 1


def test_moves_in_both_directions(store, alice) -> None:
    """Moves back and forth keep every message once."""
    for _ in range(3):
        store.deliver(alice, MESSAGE)
    store.move(alice, "INBOX", [1, 2], "Trash")
    store.move(alice, "Trash", [1], "INBOX")
    assert len(store.get_messages(alice)) == 2 and len(store.get_messages(alice, "Trash")) == 1


def test_inbox_messages_for_recovery(store, alice) -> None:
    """inbox_messages lists what is in INBOX now, whoever put it there; none without a mailbox."""
    bob = parse_address("bob@example.com")
    assert store.inbox_messages(bob) == ()
    assert not os.path.exists(store.user_root(bob))
    store.deliver(alice, MESSAGE)
    store.deliver(alice, MESSAGE, "Sent", flags="S")
    store.deliver(alice, MESSAGE, flags="S", assign_uid=True)  # e.g. an IMAP APPEND to INBOX
    assert len(store.inbox_messages(alice)) == 2


def test_recovery_tells_moved_from_deleted(store, alice) -> None:
    """After relaying, recovery removes by ref; a moved message is found elsewhere, a deleted one not."""
    kept, moved, deleted = (store.deliver(alice, b"Subject: %d\r\n\r\n" % i) for i in range(3))
    store.get_messages(alice)
    store.move(alice, "INBOX", [2], "Trash")
    store.expunge(alice, "INBOX", [3])
    inbox = store.inbox_messages(alice)
    assert [m.base for m in inbox] == [kept.base]
    assert store.remove_message(inbox[0]) is True
    assert store.remove_message(inbox[0]) is False
    assert store.inbox_messages(alice) == ()
    found = store.find_message(alice, moved.base)
    assert found is not None and found.folder == FolderName.parse("Trash")
    assert store.find_message(alice, deleted.base) is None


def test_remove_messages_writes_the_uid_list_once_per_folder(store, alice, monkeypatch) -> None:
    """remove_messages removes a batch in one transaction and returns what was there to remove."""
    refs = [store.deliver(alice, b"Subject: %d\r\n\r\n" % i) for i in range(4)]
    inbox = store.inbox_messages(alice)
    assert store.remove_message(inbox[0]) is True
    saves = []
    real_save = UidList.save
    monkeypatch.setattr(UidList, "save", lambda self, *a, **k: (saves.append(1), real_save(self, *a, **k))[1])
    removed = store.remove_messages(inbox)
    assert removed == {ref.base for ref in refs[1:]}
    assert len(saves) == 1
    assert store.inbox_messages(alice) == ()


def test_count_messages_in_all_folders(store, alice, mail_root) -> None:
    """count_messages counts every folder of every user of a domain (domain remove refusal)."""
    assert count_messages(mail_root, "example.com") == 0
    store.deliver(alice, MESSAGE)
    store.deliver(parse_address("bob@example.com"), MESSAGE, "Sent")
    store.create_folder(alice, "A/B")
    store.deliver(alice, MESSAGE, "A/B", flags="S")
    store.deliver(parse_address("carol@example.org"), MESSAGE)
    assert count_messages(mail_root, "example.com") == 3
    assert count_messages(mail_root, "EXAMPLE.com") == 3
    assert store.count_messages("example.org") == 1
    assert count_messages(mail_root, "example.net") == 0


def test_count_messages_refuses_path_tricks(mail_root) -> None:
    """A domain that is no domain cannot point count_messages elsewhere."""
    for bad in ("..", "../etc", "a/b.com"):
        with pytest.raises(InvalidAddress):
            count_messages(mail_root, bad)


def test_user_root_stays_inside_mail_root(mail_root) -> None:
    """Even a hand-built Address cannot place a mailbox outside mail_root."""
    assert user_root(mail_root, Address("alice", "example.com")) == os.path.join(
        os.path.abspath(mail_root), "example.com", "alice"
    )
    for local, domain in [("..", "example.com"), ("a/b", "example.com"), ("alice", ".."), (".x", "example.com")]:
        with pytest.raises(InvalidAddress):
            user_root(mail_root, Address(local, domain))


def test_folder_names_in_api_are_validated(store, alice) -> None:
    """Every store method validates its folder name."""
    from continuity.mailstore import InvalidMailboxName

    for call in (
        lambda: store.get_messages(alice, "../x"),
        lambda: store.deliver(alice, MESSAGE, "/abs"),
        lambda: store.move(alice, "INBOX", [1], "a/../b"),
        lambda: store.rename_folder(alice, "Sent", "~"),
        lambda: store.subscribe(alice, "a\nb"),
    ):
        with pytest.raises(InvalidMailboxName):
            call()


def test_inbox_name_constant() -> None:
    """INBOX_NAME is the INBOX folder."""
    assert INBOX_NAME.is_inbox and str(INBOX_NAME) == "INBOX"


def test_copy_without_hard_links(store, alice, monkeypatch) -> None:
    """Where the file system refuses a hard link between folders, the bytes are copied durably."""
    import errno

    import continuity.mailstore.transaction as transaction_module

    store.deliver(alice, MESSAGE, internal_date=1_500_000_000)
    real_link = os.link

    def no_cross_links(source, target):
        if os.path.basename(os.path.dirname(source)) != "tmp":
            raise OSError(errno.EPERM, "Operation not permitted")
        return real_link(source, target)

    monkeypatch.setattr(transaction_module.os, "link", no_cross_links)
    result = store.copy(alice, "INBOX", [1], "Trash")
    monkeypatch.undo()
    (copied,) = store.get_messages(alice, "Trash")
    assert result.mapping == ((1, copied.uid),)
    assert store.read_message(copied) == MESSAGE
    assert copied.internal_date == 1_500_000_000
    assert os.stat(copied.path).st_ino != os.stat(store.get_messages(alice)[0].path).st_ino
    assert os.listdir(os.path.join(store.user_root(alice), ".Trash", "tmp")) == []


def test_first_access_from_many_threads(store, alice) -> None:
    """Concurrent first accesses create the mailbox once, without errors."""
    import threading

    errors: list[BaseException] = []

    def access() -> None:
        try:
            MaildirStore(store.mail_root, hostname="mx").list_folders(alice)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=access) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert names(store.list_folders(alice)) == ["INBOX", "Drafts", "Junk", "Sent", "Trash"]
    assert not [n for n in os.listdir(store.user_root(alice)) if n.startswith(".~")]


def test_stale_staging_directories_removed(mail_root, alice) -> None:
    """What a crash left of a folder creation is removed on first access, and never listed."""
    store = MaildirStore(mail_root, hostname="mx")
    store.ensure_mailbox(alice)
    leftover = os.path.join(store.user_root(alice), ".~creating-abc")
    os.makedirs(os.path.join(leftover, "cur"))
    assert "~creating-abc" not in names(store.list_folders(alice))
    os.utime(leftover, (1, 1))
    MaildirStore(mail_root, hostname="mx").ensure_mailbox(alice)
    assert not os.path.exists(leftover)


def test_move_of_flagged_file_from_new(store, alice, drop_in) -> None:
    """A file another tool left in new/ with info flags is moved into cur/ with them (never new/ with info)."""
    store.ensure_mailbox(alice)
    drop_in(store.user_root(alice), "1600000000.P1.tool:2,S")
    store.move(alice, "INBOX", [1], "Trash")
    (moved,) = store.get_messages(alice, "Trash")
    assert moved.flags == "S" and os.path.basename(os.path.dirname(moved.path)) == "cur"
    assert moved.path.endswith("1600000000.P1.tool:2,S")

"""Flags in the Maildir info ':2,FLAGS': round trip, renames, concurrent tools, \\Recent."""

from __future__ import annotations

import os

import pytest

from continuity.mailstore import IMAP_FLAGS, InvalidFlags, MessageExpunged

MESSAGE = b"Subject: flags\r\n\r\nbody\r\n"


def test_flags_round_trip(store, alice) -> None:
    """Flags set on a message are listed back, sorted, and are in the file name."""
    store.deliver(alice, MESSAGE)
    (ref,) = store.set_flags(alice, "INBOX", [1], "TSRFDab")
    assert ref.flags == "DFRSTab"
    assert ref.path.endswith(":2,DFRSTab")
    assert os.path.exists(ref.path)
    (listed,) = store.get_messages(alice)
    assert listed.flags == "DFRSTab" and listed.path == ref.path


def test_setting_flags_moves_new_to_cur(store, alice) -> None:
    """A message in new/ given a flag is renamed into cur/ and is no longer recent."""
    delivered = store.deliver(alice, MESSAGE)
    (ref,) = store.add_flags(alice, "INBOX", [1], "S")
    assert not os.path.exists(delivered.path)
    assert os.path.dirname(ref.path) == os.path.join(store.user_root(alice), "cur")
    assert ref.path == os.path.join(store.user_root(alice), "cur", delivered.base + ":2,S")
    assert not ref.recent


def test_add_and_remove_flags(store, alice) -> None:
    """+FLAGS adds to and -FLAGS removes from the current flags; the empty info stays ':2,'."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "S")
    (ref,) = store.add_flags(alice, "INBOX", [1], ["F", "R"])
    assert ref.flags == "FRS"
    (ref,) = store.remove_flags(alice, "INBOX", [1], "SF")
    assert ref.flags == "R"
    (ref,) = store.remove_flags(alice, "INBOX", [1], "R")
    assert ref.flags == "" and ref.path.endswith(":2,")


def test_set_flags_keeps_unknown_letters(store, alice, drop_in) -> None:
    """Uppercase letters another tool uses (not ours) survive STORE FLAGS."""
    store.ensure_mailbox(alice)
    drop_in(store.user_root(alice), "1600000000.P1.tool:2,SX", subdir="cur")
    (ref,) = store.set_flags(alice, "INBOX", [1], "F")
    assert ref.flags == "FX"


def test_modseq_grows_with_each_change(store, alice) -> None:
    """Every flag change gives the message a new, higher modseq; a no-op does not (RFC 7162)."""
    store.deliver(alice, MESSAGE)
    (first,) = store.get_messages(alice)
    (second,) = store.add_flags(alice, "INBOX", [1], "S")
    (third,) = store.add_flags(alice, "INBOX", [1], "S")
    assert second.modseq > first.modseq
    assert third.modseq == second.modseq
    assert store.folder_status(alice, "INBOX").highest_modseq == second.modseq


def test_invalid_flag_letters_refused(store, alice) -> None:
    """Letters outside DFPRST and a-z are refused with InvalidFlags."""
    store.deliver(alice, MESSAGE)
    for bad in ("X", "1", ":", "\\Seen"):
        with pytest.raises(InvalidFlags):
            store.add_flags(alice, "INBOX", [1], bad)


def test_imap_flag_mapping() -> None:
    """The IMAP system flags map onto the Maildir letters Dovecot uses."""
    assert IMAP_FLAGS == {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S", "\\Deleted": "T"}


def test_unknown_uids_are_ignored(store, alice) -> None:
    """STORE on UIDs that do not exist changes nothing and returns only existing messages."""
    store.deliver(alice, MESSAGE)
    refs = store.add_flags(alice, "INBOX", [1, 7, 99], "S")
    assert [ref.uid for ref in refs] == [1]


def test_flags_survive_rename_by_another_session(store, alice, age_folder, restore_mtimes) -> None:
    """When another tool renamed the file since our scan, the change finds it again and applies."""
    store.deliver(alice, MESSAGE)
    root = store.user_root(alice)
    past = age_folder(root)
    (listed,) = store.get_messages(alice)  # cached and trusted from here
    moved = os.path.join(root, "cur", listed.base + ":2,R")
    os.rename(listed.path, moved)
    restore_mtimes(root, past)  # the cache cannot see the rename: the retry must
    (ref,) = store.add_flags(alice, "INBOX", [1], "S")
    assert ref.flags == "RS"
    assert os.path.exists(os.path.join(root, "cur", listed.base + ":2,RS"))
    assert not os.path.exists(moved)


def test_vanished_file_counts_as_expunged(store, alice, age_folder, restore_mtimes) -> None:
    """A file removed by another session before our rename is treated as expunged."""
    store.deliver(alice, MESSAGE)
    store.deliver(alice, MESSAGE)
    root = store.user_root(alice)
    past = age_folder(root)
    first, second = store.get_messages(alice)
    os.unlink(first.path)
    restore_mtimes(root, past)
    refs = store.add_flags(alice, "INBOX", [1, 2], "S")
    assert [ref.uid for ref in refs] == [2]
    assert [m.uid for m in store.get_messages(alice)] == [2]


def test_read_follows_a_rename(store, alice) -> None:
    """A listed ref whose file was renamed since is still readable."""
    store.deliver(alice, MESSAGE)
    (listed,) = store.get_messages(alice)
    os.rename(listed.path, os.path.join(store.user_root(alice), "cur", listed.base + ":2,S"))
    assert store.read_message(listed) == MESSAGE


def test_read_of_expunged_message_raises(store, alice) -> None:
    """Reading a message that is gone raises MessageExpunged."""
    store.deliver(alice, MESSAGE)
    (listed,) = store.get_messages(alice)
    store.expunge(alice, "INBOX", [1])
    with pytest.raises(MessageExpunged):
        store.read_message(listed)


def test_claim_recent(store, alice) -> None:
    """claim_recent moves new/ messages to cur/ once: the first session reports them \\Recent."""
    store.deliver(alice, MESSAGE)
    store.deliver(alice, MESSAGE, flags="S")
    assert store.folder_status(alice, "INBOX").recent == 1
    assert store.claim_recent(alice, "INBOX") == (1,)
    assert store.claim_recent(alice, "INBOX") == ()
    (first, _) = store.get_messages(alice)
    assert not first.recent and first.path.endswith(":2,") and first.flags == ""


def test_snapshot_says_whether_a_message_is_recent(store, alice) -> None:
    """A snapshot tells at once whether any message is still in new/ (IMAP claims them on SELECT)."""
    store.deliver(alice, MESSAGE, flags="S")
    assert not store.snapshot(alice).has_recent
    store.deliver(alice, MESSAGE)
    assert store.snapshot(alice).has_recent
    store.claim_recent(alice, "INBOX")
    assert not store.snapshot(alice).has_recent


def test_status_counts(store, alice) -> None:
    """STATUS numbers: messages, recent, unseen, uidnext, size."""
    store.deliver(alice, b"12345")
    store.deliver(alice, b"123", flags="S")
    status = store.folder_status(alice, "INBOX")
    assert (status.messages, status.recent, status.unseen, status.uid_next, status.size) == (2, 1, 1, 3, 8)

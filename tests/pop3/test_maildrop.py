"""The maildrop of a POP3 session: the cross-process lock, sizes, numbering, UPDATE."""

from __future__ import annotations

import subprocess
import sys

from continuity.envelope import parse_address
from continuity.mailstore.sessionlock import lock_mailbox_session, try_session_lock
from continuity.pop3.maildrop import Maildrop, MaildropInUse, MessageDeleted, NoSuchMessage, SizeCache

import pytest

from .conftest import ADDRESS

HOLD_LOCK = """
import sys, time
from continuity.mailstore.sessionlock import try_session_lock
lock = try_session_lock(sys.argv[1], "pop3")
print("held" if lock else "busy", flush=True)
sys.stdin.readline()
"""


def test_session_lock_is_exclusive_within_a_process(tmp_path):
    """A second try on the same mailbox gets None until the first is released."""
    first = try_session_lock(str(tmp_path), "pop3")
    assert first is not None and try_session_lock(str(tmp_path), "pop3") is None
    first.release()
    first.release()  # idempotent
    assert try_session_lock(str(tmp_path), "pop3") is not None


def test_session_lock_works_across_processes(tmp_path):
    """A lock held by another process refuses this one; its death frees it."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert try_session_lock(str(tmp_path), "pop3") is None
    finally:
        holder.kill()
        holder.wait()
    assert try_session_lock(str(tmp_path), "pop3") is not None


def test_session_lock_kind_must_be_a_word(tmp_path):
    """The lock kind becomes part of a file name: only letters and digits."""
    with pytest.raises(ValueError):
        try_session_lock(str(tmp_path), "../x")


def test_lock_mailbox_session_creates_the_mailbox(store):
    """Locking a user's maildrop creates the mailbox first."""
    lock = lock_mailbox_session(store, parse_address(ADDRESS), "pop3")
    assert lock is not None and store.mailbox(parse_address(ADDRESS)).exists()


def test_open_twice_is_in_use(store):
    """A second Maildrop of the same user cannot open while the first holds the lock."""
    first, second = Maildrop(store, ADDRESS), Maildrop(store, ADDRESS)
    first.open(SizeCache())
    with pytest.raises(MaildropInUse):
        second.open(SizeCache())
    first.release()
    second.open(SizeCache())


def test_numbers_and_marks(store, deliver):
    """Messages are numbered from 1; marked ones are out of STAT and refused by get()."""
    deliver(b"a\r\n", b"bb\r\n")
    maildrop = Maildrop(store, ADDRESS)
    maildrop.open(SizeCache())
    assert maildrop.stat() == (2, 7)
    maildrop.delete(1)
    assert maildrop.stat() == (1, 4)
    with pytest.raises(MessageDeleted):
        maildrop.get(1)
    with pytest.raises(NoSuchMessage):
        maildrop.get(3)
    maildrop.reset()
    assert maildrop.stat() == (2, 7)


def test_size_cache_uses_dovecot_virtual_size_field(store, tmp_path):
    """A base name with Dovecot's ,W= field is not read to know its size."""
    from continuity.mailstore import MessageRef

    ref = MessageRef(address=parse_address(ADDRESS), folder=None, uid=1, base="1.M1P1.host,S=10,W=12",
                     path=str(tmp_path / "missing"), flags="", size=10, internal_date=0, modseq=None, recent=False)
    assert SizeCache().lookup(store, ref)[0] == 12
    assert SizeCache().lookup(store, ref) == (12, False)  # not read: not known to be plain


def test_size_cache_remembers_whether_a_message_is_plain(store, deliver, monkeypatch):
    """A measured message is known plain (its own wire form) or not, without reading it again."""
    plain, bare_lf = deliver(b"a\r\n", b"b\n")
    cache = SizeCache()
    assert cache.lookup(store, plain) == (3, True) and cache.lookup(store, bare_lf) == (3, False)
    monkeypatch.setattr(store, "open_message", lambda ref: 1 / 0)
    assert cache.lookup(store, plain) == (3, True) and cache.lookup(store, bare_lf) == (3, False)


def test_read_ahead_reads_small_messages_and_follows_a_rename(store, deliver):
    """Read-ahead has each file's octets, also after another session renamed it (a flag change)."""
    from continuity.pop3.readahead import read_replies

    deliver(b"one\r\n", b"two\r\n")
    maildrop = Maildrop(store, ADDRESS)
    maildrop.open(SizeCache())
    first, second = maildrop.messages
    store.add_flags(parse_address(ADDRESS), "INBOX", [second.ref.uid], "F")  # renames the file
    replies = read_replies(maildrop, [first, second])
    assert replies[1].endswith(b"\r\none\r\n.\r\n") and replies[2].endswith(b"\r\ntwo\r\n.\r\n")
    maildrop.release()


def test_read_ahead_leaves_out_a_removed_message(store, deliver):
    """A message another tool removed is not read ahead: RETR answers for it the normal way."""
    from continuity.pop3.readahead import read_replies

    first, _ = deliver(b"one\r\n", b"two\r\n")
    maildrop = Maildrop(store, ADDRESS)
    maildrop.open(SizeCache())
    store.remove_message(first)
    assert list(read_replies(maildrop, maildrop.messages)) == [2]
    maildrop.release()


def test_size_cache_measures_once(store, deliver, monkeypatch):
    """A measured size is remembered by base name: the file is not read again."""
    (ref,) = deliver(b"x\n")
    cache = SizeCache()
    assert cache.lookup(store, ref)[0] == 3
    monkeypatch.setattr(store, "open_message", lambda ref: 1 / 0)
    assert cache.lookup(store, ref)[0] == 3


def test_size_cache_is_bounded(store, deliver):
    """The cache forgets the least recently used sizes beyond its bound."""
    refs = deliver(b"a\n", b"b\n", b"c\n")
    cache = SizeCache(entries=2)
    for ref in refs:
        cache.lookup(store, ref)[0]
    assert len(cache._sizes) == 2

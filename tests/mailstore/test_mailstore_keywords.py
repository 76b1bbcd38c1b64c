"""IMAP keywords as Maildir letters a-z named in the folder's ``dovecot-keywords`` file (Dovecot's format)."""

from __future__ import annotations

import os

import pytest

from continuity.mailstore import (
    KEYWORDS_NAME,
    MAX_KEYWORDS,
    InvalidKeyword,
    KeywordLimit,
    MaildirStore,
)
from continuity.mailstore.keywords import MAX_KEYWORD_LENGTH, KeywordList

MESSAGE = b"Subject: keywords\r\n\r\nbody\r\n"
MANY = [f"$label{n}" for n in range(MAX_KEYWORDS)]


def keyword_file(store: MaildirStore, alice, folder: str = "") -> str:
    root = store.user_root(alice)
    return os.path.join(root, f".{folder}" if folder else "", KEYWORDS_NAME)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


# -- the file ----------------------------------------------------------------------------------------


def test_keyword_file_parse_and_serialise_in_dovecot_format() -> None:
    """'N name' lines with holes round-trip; malformed lines (no space, bad slot, empty name) are skipped."""
    data = b"0 $Forwarded\n2 Junk\nnospace\n26 $TooFar\nx1 $Bad\n5 \n3 $label1\r\n"
    keywords = KeywordList.parse(data)
    assert keywords.defined == ("$Forwarded", "Junk", "$label1")
    assert (keywords.letter("$forwarded"), keywords.letter("JUNK"), keywords.letter("$label1")) == ("a", "c", "d")
    assert keywords.letter("$MDNSent") is None
    assert keywords.serialise() == b"0 $Forwarded\n2 Junk\n3 $label1\n"


def test_keyword_names_of_letters_skip_orphans() -> None:
    """Letters map to names in slot order; a letter without a name gives none."""
    keywords = KeywordList.parse(b"0 $Forwarded\n2 Junk\n")
    assert keywords.names_of("RSabc") == ("$Forwarded", "Junk")
    assert keywords.names_of("S") == ()


def test_name_that_is_no_atom_holds_its_slot_but_is_not_served() -> None:
    """A name another tool wrote with a space or a special keeps its slot and is never put on the wire."""
    keywords = KeywordList.parse(b"0 bad name\n1 Good\n")
    assert keywords.defined == ("Good",)
    assert keywords.names_of("ab") == ("Good",)
    assert keywords.extended(["New"]).letter("New") == "c"


# -- storing keywords -----------------------------------------------------------------------------------


def test_add_keyword_creates_the_file_and_the_letter(store, alice) -> None:
    """+FLAGS $Forwarded writes '0 $Forwarded' to dovecot-keywords and names the file ':2,a'."""
    store.deliver(alice, MESSAGE)
    (ref,) = store.add_flags(alice, "INBOX", [1], "S", ["$Forwarded"])
    assert ref.flags == "Sa" and ref.keywords == ("$Forwarded",) and ref.path.endswith(":2,Sa")
    assert read(keyword_file(store, alice)) == "0 $Forwarded\n"
    (listed,) = store.get_messages(alice)
    assert listed.keywords == ("$Forwarded",)


def test_keywords_survive_a_restart(store, alice, mail_root) -> None:
    """A new store (a restarted process) reads the keyword file and serves the same keywords."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "", ["$Junk", "NonJunk"])
    restarted = MaildirStore(mail_root, hostname="other.example.test")
    (listed,) = restarted.get_messages(alice)
    assert listed.keywords == ("$Junk", "NonJunk")
    assert restarted.snapshot(alice).keywords == ("$Junk", "NonJunk")


def test_keyword_match_ignores_case_and_keeps_stored_spelling(store, alice) -> None:
    """A keyword given in another case reuses the existing letter and keeps the spelling first stored."""
    store.deliver(alice, MESSAGE)
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "", ["$Junk"])
    (ref,) = store.add_flags(alice, "INBOX", [2], "", ["$JUNK", "$junk"])
    assert ref.flags == "a" and ref.keywords == ("$Junk",)
    assert read(keyword_file(store, alice)) == "0 $Junk\n"


def test_remove_keyword(store, alice) -> None:
    """-FLAGS removes the keyword's letter; the name stays in the file (slots are never reused)."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "S", ["$Junk", "$Forwarded"])
    (ref,) = store.remove_flags(alice, "INBOX", [1], "", ["$junk"])
    assert ref.flags == "Sb" and ref.keywords == ("$Forwarded",)
    assert read(keyword_file(store, alice)) == "0 $Junk\n1 $Forwarded\n"


def test_removing_an_unknown_keyword_creates_nothing(store, alice) -> None:
    """-FLAGS of a keyword the folder never had changes nothing and writes no keyword file."""
    store.deliver(alice, MESSAGE)
    (ref,) = store.remove_flags(alice, "INBOX", [1], "", ["$Phishing"])
    assert ref.flags == "" and not os.path.exists(keyword_file(store, alice))


def test_set_flags_replaces_keywords(store, alice) -> None:
    """FLAGS (replace) sets exactly the given system flags and keywords."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "FS", ["$Junk", "$label1"])
    (ref,) = store.set_flags(alice, "INBOX", [1], "S", ["NonJunk"])
    assert ref.flags == "Sc" and ref.keywords == ("NonJunk",)


def test_keyword_change_bumps_the_modseq(store, alice) -> None:
    """Adding a keyword gives the message a new modseq (RFC 7162 3.1.1); adding it again does not."""
    store.deliver(alice, MESSAGE)
    (first,) = store.get_messages(alice)
    (second,) = store.add_flags(alice, "INBOX", [1], "", ["$MDNSent"])
    (third,) = store.add_flags(alice, "INBOX", [1], "", ["$mdnsent"])
    assert second.modseq > first.modseq and third.modseq == second.modseq


def test_deliver_with_keywords(store, alice) -> None:
    """A delivery (IMAP APPEND) with keywords gets their letters and a UID at once."""
    ref = store.deliver(alice, MESSAGE, "Drafts", "S", keywords=["$label2"])
    assert ref.uid == 1 and ref.flags == "Sa" and ref.keywords == ("$label2",)
    assert read(keyword_file(store, alice, "Drafts")) == "0 $label2\n"


def test_keyword_not_created_for_expunged_messages(store, alice) -> None:
    """STORE on UIDs that no longer exist creates no keyword."""
    store.deliver(alice, MESSAGE)
    assert store.add_flags(alice, "INBOX", [7], "", ["$Junk"]) == ()
    assert not os.path.exists(keyword_file(store, alice))


@pytest.mark.parametrize("bad", ["", "a b", "a(b", "a)b", "a{b", "a%b", "a*b", 'a"b', "a\\b", "a]b", "\x01x", "café"])
def test_keyword_names_must_be_atoms(store, alice, bad) -> None:
    """A keyword that is no RFC 3501 atom (specials, CTL, 8-bit, empty) is refused with InvalidKeyword."""
    store.deliver(alice, MESSAGE)
    with pytest.raises(InvalidKeyword):
        store.add_flags(alice, "INBOX", [1], "", [bad])


def test_new_keyword_longer_than_the_limit_refused(store, alice) -> None:
    """A new keyword longer than 50 characters (Dovecot's mail_max_keyword_length) is refused."""
    store.deliver(alice, MESSAGE)
    with pytest.raises(InvalidKeyword):
        store.add_flags(alice, "INBOX", [1], "", ["k" * (MAX_KEYWORD_LENGTH + 1)])
    (ref,) = store.add_flags(alice, "INBOX", [1], "", ["k" * MAX_KEYWORD_LENGTH])
    assert ref.flags == "a"


# -- the limit of 26 ------------------------------------------------------------------------------------


def test_twenty_six_keywords_fit_the_twenty_seventh_is_refused(store, alice) -> None:
    """A folder takes keywords a-z; a new 27th raises KeywordLimit and changes nothing."""
    store.deliver(alice, MESSAGE)
    (ref,) = store.add_flags(alice, "INBOX", [1], "", MANY)
    assert ref.flags == "abcdefghijklmnopqrstuvwxyz" and len(ref.keywords) == MAX_KEYWORDS
    assert store.snapshot(alice).keywords_full
    before = read(keyword_file(store, alice))
    with pytest.raises(KeywordLimit):
        store.add_flags(alice, "INBOX", [1], "S", ["$Junk"])
    (listed,) = store.get_messages(alice)
    assert listed.flags == ref.flags and read(keyword_file(store, alice)) == before
    (again,) = store.add_flags(alice, "INBOX", [1], "S", ["$LABEL0"])  # existing ones still work
    assert "S" in again.flags


def test_keywords_that_do_not_all_fit_are_none_created(store, alice) -> None:
    """Two new keywords with one free slot: KeywordLimit, and neither is created."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "", MANY[:-1])
    with pytest.raises(KeywordLimit):
        store.add_flags(alice, "INBOX", [1], "", ["$Junk", "$NotJunk"])
    assert "$Junk" not in store.snapshot(alice).keywords
    assert not store.snapshot(alice).keywords_full


# -- other tools ----------------------------------------------------------------------------------------


def test_orphan_letters_are_served_without_keywords_and_kept(store, alice, drop_in) -> None:
    """Letters with no entry in dovecot-keywords are not served, survive FLAGS replace, and keep their slot."""
    store.ensure_mailbox(alice)
    root = store.user_root(alice)
    drop_in(root, "1600000000.P1.tool:2,Sab", subdir="cur")
    write(os.path.join(root, KEYWORDS_NAME), "1 $Forwarded\n")
    (listed,) = store.get_messages(alice)
    assert listed.flags == "Sab" and listed.keywords == ("$Forwarded",)
    (ref,) = store.set_flags(alice, "INBOX", [1], "F", ["$Junk"])
    assert "a" in ref.flags and "b" not in ref.flags  # the orphan stays, the named one is replaced
    assert ref.keywords == ("$Junk",) and store.snapshot(alice).keywords == ("$Forwarded", "$Junk")
    assert read(os.path.join(root, KEYWORDS_NAME)) == "1 $Forwarded\n2 $Junk\n"  # slot 0 ('a') not reused


def test_keyword_refused_when_only_orphan_slots_are_free(store, alice, drop_in) -> None:
    """When every free slot's letter is still on a message, a new keyword is refused, not mixed up with it."""
    store.ensure_mailbox(alice)
    root = store.user_root(alice)
    drop_in(root, "1600000000.P1.tool:2,z", subdir="cur")
    write(os.path.join(root, KEYWORDS_NAME), "".join(f"{n} k{n}\n" for n in range(MAX_KEYWORDS - 1)))
    with pytest.raises(KeywordLimit):
        store.add_flags(alice, "INBOX", [1], "", ["$Junk"])


def test_keyword_file_written_by_another_tool_is_read_at_next_listing(store, alice, age_folder) -> None:
    """A dovecot-keywords replaced by Dovecot is noticed even while the folder listing is cached."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "", ["$Junk"])
    root = store.user_root(alice)
    age_folder(root)
    assert store.snapshot(alice).keywords == ("$Junk",)
    path = os.path.join(root, KEYWORDS_NAME)
    write(path + ".new", "0 $Junk\n1 $Forwarded\n")
    os.rename(path + ".new", path)
    assert store.snapshot(alice).keywords == ("$Junk", "$Forwarded")


def test_keyword_file_rewrite_moves_mtime_a_whole_second_on(store, alice) -> None:
    """Each rewrite gives dovecot-keywords a later mtime in whole seconds (Dovecot rereads by st_mtime)."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "", ["$Junk"])
    path = keyword_file(store, alice)
    first = int(os.stat(path).st_mtime)
    store.add_flags(alice, "INBOX", [1], "", ["$Forwarded"])
    assert int(os.stat(path).st_mtime) > first
    assert not [name for name in os.listdir(os.path.dirname(path)) if name.startswith(KEYWORDS_NAME + ".")]


# -- copy and move ---------------------------------------------------------------------------------------


def test_copy_maps_keywords_to_the_destination_letters(store, alice) -> None:
    """COPY carries keywords by name: the destination's own letters, new names added to its file."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "S", ["$Junk", "$Forwarded"])  # INBOX: a=$Junk b=$Forwarded
    store.deliver(alice, MESSAGE, "Trash", keywords=["$Forwarded"])  # Trash: a=$Forwarded
    store.copy(alice, "INBOX", [1], "Trash")
    copied = store.get_messages(alice, "Trash")[-1]
    assert copied.flags == "Sab" and set(copied.keywords) == {"$Junk", "$Forwarded"}
    assert read(keyword_file(store, alice, "Trash")) == "0 $Forwarded\n1 $Junk\n"


def test_move_carries_keywords_and_drops_orphans(store, alice, drop_in) -> None:
    """MOVE keeps named keywords; an orphan letter (meaning nothing) does not travel."""
    store.ensure_mailbox(alice)
    root = store.user_root(alice)
    drop_in(root, "1600000000.P1.tool:2,RSbc", subdir="cur")
    write(os.path.join(root, KEYWORDS_NAME), "2 $MDNSent\n")
    store.move(alice, "INBOX", [1], "Junk")
    (moved,) = store.get_messages(alice, "Junk")
    assert moved.flags == "RSa" and moved.keywords == ("$MDNSent",)
    assert store.get_messages(alice) == ()


def test_copy_refused_when_keywords_do_not_fit_the_destination(store, alice) -> None:
    """COPY into a folder with no room for the keywords raises KeywordLimit before copying anything."""
    store.deliver(alice, MESSAGE)
    store.add_flags(alice, "INBOX", [1], "", ["$Junk"])
    store.deliver(alice, MESSAGE, "Trash", keywords=MANY)
    with pytest.raises(KeywordLimit):
        store.move(alice, "INBOX", [1], "Trash")
    assert len(store.get_messages(alice, "Trash")) == 1 and len(store.get_messages(alice)) == 1

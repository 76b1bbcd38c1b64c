"""IMAP keywords in memory (RFC 3501 2.3.2, 6.4.6, 7.2.6): SELECT, STORE, FETCH, APPEND, COPY/MOVE, SEARCH."""

from __future__ import annotations

import os
import re

from continuity.mailstore import KEYWORDS_NAME, MAX_KEYWORDS

from .conftest import Client

MESSAGE = b"Subject: kw\r\n\r\nbody\r\n"
SYSTEM = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft"


def selected(client: Client, store, address, count: int = 1, folder: str = "INBOX") -> list[bytes]:
    for _ in range(count):
        store.deliver(address, MESSAGE, folder)
    return client.command(f"s SELECT {folder}")


def test_select_announces_keywords_and_permanentflags_with_star(logged_in, store, address):
    """SELECT lists the folder's keywords in FLAGS, and in PERMANENTFLAGS with \\* (new ones allowed)."""
    store.deliver(address, MESSAGE, keywords=["$Forwarded", "$Junk"])
    reply = logged_in.command("s SELECT INBOX")
    assert reply[0] == b"* FLAGS (" + SYSTEM + b" $Forwarded $Junk)"
    assert reply[1] == b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Forwarded $Junk \\*)] Flags permitted"


def test_examine_has_empty_permanentflags(logged_in, store, address):
    """EXAMINE lists the keywords in FLAGS but permits nothing: PERMANENTFLAGS ()."""
    store.deliver(address, MESSAGE, keywords=["$Junk"])
    reply = logged_in.command("s EXAMINE INBOX")
    assert reply[:2] == [b"* FLAGS (" + SYSTEM + b" $Junk)", b"* OK [PERMANENTFLAGS ()] Flags permitted"]


def test_store_new_keyword_announces_flags_before_fetch(logged_in, store, address):
    """STORE of a new keyword sends * FLAGS and PERMANENTFLAGS first, then FETCH with it (RFC 3501 7.2.6)."""
    selected(logged_in, store, address)
    reply = logged_in.command("a STORE 1 +FLAGS ($Forwarded \\Seen)")
    assert reply == [
        b"* FLAGS (" + SYSTEM + b" $Forwarded)",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Forwarded \\*)] Flags permitted",
        b"* 1 FETCH (FLAGS (\\Seen $Forwarded \\Recent))",
        b"a OK STORE completed",
    ]
    assert logged_in.command("b STORE 1 +FLAGS ($forwarded)") == [
        b"* 1 FETCH (FLAGS (\\Seen $Forwarded \\Recent))", b"b OK STORE completed"]


def test_fetch_flags_returns_stored_keywords(logged_in, store, address):
    """FETCH FLAGS shows the keywords stored on the message, in their stored spelling."""
    store.deliver(address, MESSAGE, "INBOX", "S", keywords=["$Junk"])
    logged_in.command("s SELECT INBOX")
    assert logged_in.command("f FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Seen $Junk))"
    [ref] = store.get_messages(address)
    assert ref.path.endswith(":2,Sa")


def test_store_minus_flags_and_replace(logged_in, store, address):
    """-FLAGS removes a keyword; FLAGS replaces system flags and keywords at once."""
    selected(logged_in, store, address)
    logged_in.command("a STORE 1 +FLAGS.SILENT ($Junk $label1 \\Flagged)")
    assert logged_in.command("b STORE 1 -FLAGS ($JUNK)")[0] == b"* 1 FETCH (FLAGS (\\Flagged $label1 \\Recent))"
    assert logged_in.command("c STORE 1 FLAGS (NonJunk)")[-2:] == [
        b"* 1 FETCH (FLAGS (NonJunk \\Recent))", b"c OK STORE completed"]
    [ref] = store.get_messages(address)
    assert ref.keywords == ("NonJunk",)


def test_store_silent_sends_no_fetch(logged_in, store, address):
    """STORE .SILENT of a known keyword answers with no FETCH."""
    store.deliver(address, MESSAGE, keywords=["$Junk"])
    store.deliver(address, MESSAGE)
    logged_in.command("s SELECT INBOX")
    assert logged_in.command("a STORE 2 +FLAGS.SILENT ($Junk)") == [b"a OK STORE completed"]
    assert store.get_messages(address)[1].keywords == ("$Junk",)


def test_store_unchangedsince_and_modseq_with_keywords(logged_in, store, address):
    """A keyword change bumps MODSEQ; UNCHANGEDSINCE below it refuses the next change ([MODIFIED])."""
    selected(logged_in, store, address)
    logged_in.command("e ENABLE CONDSTORE")
    reply = logged_in.command("a STORE 1 +FLAGS ($MDNSent)")
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", reply[-2]).group(1))
    assert reply[-2].startswith(b"* 1 FETCH (FLAGS ($MDNSent \\Recent) MODSEQ (")
    reply = logged_in.command(f"b STORE 1 (UNCHANGEDSINCE {modseq - 1}) +FLAGS ($Junk)")
    assert reply[-1].startswith(b"b OK [MODIFIED 1]")
    assert store.get_messages(address)[0].keywords == ("$MDNSent",)
    reply = logged_in.command(f"c STORE 1 (UNCHANGEDSINCE {modseq}) +FLAGS ($Junk)")
    assert reply[-1] == b"c OK STORE completed" and b"$Junk" in reply[-2]


def test_store_beyond_twenty_six_keywords_answers_no_limit(logged_in, store, address):
    """A 27th keyword in a folder is refused with NO [LIMIT], not dropped; PERMANENTFLAGS then lacks \\*."""
    store.deliver(address, MESSAGE, keywords=[f"k{n}" for n in range(MAX_KEYWORDS)])
    reply = logged_in.command("s SELECT INBOX")
    assert reply[1].endswith(b" k25)] Flags permitted")
    reply = logged_in.command("a STORE 1 +FLAGS ($Junk)")
    assert reply[-1].startswith(b"a NO [LIMIT]")
    assert "$Junk" not in store.get_messages(address)[0].keywords
    assert logged_in.command("b STORE 1 -FLAGS (k0)")[-1] == b"b OK STORE completed"


def test_invalid_keyword_is_bad(logged_in, store, address):
    """A keyword with an atom-special (here ']') is a BAD; nothing is stored."""
    selected(logged_in, store, address)
    assert logged_in.command("a STORE 1 +FLAGS (a]b)")[-1].startswith(b"a BAD")
    assert logged_in.command('b STORE 1 +FLAGS ("a b")')[-1].startswith(b"b BAD")
    assert not os.path.exists(os.path.join(store.user_root(address), KEYWORDS_NAME))


def test_append_with_keywords(logged_in, store, address):
    """APPEND with keywords stores them; the selected folder's session gets the new FLAGS."""
    logged_in.command("s SELECT INBOX")
    assert logged_in.command(b"a APPEND INBOX (\\Seen $label1 Junk) {%d}" % len(MESSAGE)) == [
        b"+ Ready for literal data"]
    reply = logged_in.send(MESSAGE + b"\r\n")
    assert reply[0] == b"* FLAGS (" + SYSTEM + b" $label1 Junk)"
    assert reply[-1].startswith(b"a OK [APPENDUID ")
    [ref] = store.get_messages(address)
    assert ref.flags == "Sab" and ref.keywords == ("$label1", "Junk")


def test_append_beyond_the_limit_is_refused(logged_in, store, address):
    """APPEND with a keyword that does not fit answers NO [LIMIT] and stores nothing."""
    store.deliver(address, MESSAGE, "Drafts", keywords=[f"k{n}" for n in range(MAX_KEYWORDS)])
    logged_in.command(b"a APPEND Drafts ($Junk) {%d}" % len(MESSAGE))
    assert logged_in.send(MESSAGE + b"\r\n")[-1].startswith(b"a NO [LIMIT]")
    assert len(store.get_messages(address, "Drafts")) == 1


def test_copy_and_move_carry_keywords(logged_in, store, address):
    """COPY and MOVE keep keywords, re-lettered for the destination folder."""
    store.deliver(address, MESSAGE, "Trash", keywords=["$Forwarded"])
    store.deliver(address, MESSAGE, keywords=["$Junk", "$Forwarded"])
    store.deliver(address, MESSAGE, keywords=["$label3"])
    logged_in.command("s SELECT INBOX")
    assert logged_in.command("a COPY 1 Trash")[-1].startswith(b"a OK [COPYUID ")
    assert logged_in.command("b MOVE 2 Junk")[-1] == b"b OK MOVE completed"
    trash = store.get_messages(address, "Trash")
    assert set(trash[1].keywords) == {"$Junk", "$Forwarded"} and trash[1].flags == "ab"
    assert store.get_messages(address, "Junk")[0].keywords == ("$label3",)
    reply = logged_in.command("e EXAMINE Trash")
    assert reply[0] == b"* FLAGS (" + SYSTEM + b" $Forwarded $Junk)"


def test_move_into_a_folder_without_room_answers_no_limit(logged_in, store, address):
    """MOVE whose keywords do not fit the destination answers NO [LIMIT] and moves nothing."""
    store.deliver(address, MESSAGE, "Trash", keywords=[f"k{n}" for n in range(MAX_KEYWORDS)])
    store.deliver(address, MESSAGE, keywords=["$Junk"])
    logged_in.command("s SELECT INBOX")
    reply = logged_in.command("a MOVE 1 Trash")
    assert reply == [b"a NO [LIMIT] no room for 1 more keyword(s) in this folder (at most 26 per folder)"]
    assert len(store.get_messages(address)) == 1 and len(store.get_messages(address, "Trash")) == 1


def test_search_keyword_and_unkeyword(logged_in, store, address):
    """SEARCH KEYWORD matches any case of a stored keyword; UNKEYWORD the others."""
    store.deliver(address, MESSAGE, keywords=["$Junk"])
    store.deliver(address, MESSAGE, keywords=["$NotJunk"])
    store.deliver(address, MESSAGE)
    logged_in.command("s SELECT INBOX")
    assert logged_in.command("a SEARCH KEYWORD $junk")[0] == b"* SEARCH 1"
    assert logged_in.command("b SEARCH UNKEYWORD $Junk")[0] == b"* SEARCH 2 3"
    assert logged_in.command("c UID SEARCH KEYWORD $Phishing")[0] == b"* SEARCH"
    assert logged_in.command("d SEARCH OR KEYWORD $Junk KEYWORD $NotJunk")[0] == b"* SEARCH 1 2"


def test_other_session_is_told_of_a_new_keyword(factory, store, address):
    """A session with the folder selected gets * FLAGS with the new keyword and the FETCH on NOOP."""
    store.deliver(address, MESSAGE)
    a, b = Client(factory), Client(factory, ip="192.0.2.8")
    a.login()
    b.login()
    a.command("s SELECT INBOX")
    b.command("s SELECT INBOX")
    a.command("x STORE 1 +FLAGS.SILENT ($Forwarded)")
    reply = b.command("n NOOP")
    assert reply[:3] == [
        b"* FLAGS (" + SYSTEM + b" $Forwarded)",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Forwarded \\*)] Flags permitted",
        b"* 1 FETCH (UID 1 FLAGS ($Forwarded))",
    ]
    assert b.command("m NOOP") == [b"m OK NOOP completed"]


def test_letters_without_a_name_are_not_served(logged_in, store, address):
    """Keyword letters with no dovecot-keywords entry (another tool's) are left out of FLAGS, not a crash."""
    root = store.user_root(address)
    with open(os.path.join(root, "cur", "1600000000.P1.tool:2,Sbd"), "wb") as handle:
        handle.write(MESSAGE)
    with open(os.path.join(root, KEYWORDS_NAME), "w") as handle:
        handle.write("1 $Forwarded\n")
    reply = logged_in.command("s SELECT INBOX")
    assert reply[0] == b"* FLAGS (" + SYSTEM + b" $Forwarded)"
    assert logged_in.command("f FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Seen $Forwarded))"

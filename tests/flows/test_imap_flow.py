"""IMAP against the real service with Python's imaplib: the protocol surface, STARTTLS, imaps, IDLE and
two sessions on one folder. One service serves the module; each test uses its own user."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import threading
import time

import pytest
from imap_service import PASSWORD, IMAPService, insecure_context, message

USERS = ("surface", "tls", "folders", "idle", "race", "store", "condstore", "search", "keywords")


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    service = IMAPService(tmp_path_factory.mktemp("imap"), USERS).start()
    yield service
    service.stop()


def ok(result):
    typ, data = result
    assert typ == "OK", data
    return data


def test_starttls_then_login_on_the_imap_listener(mx):
    """On the imap port LOGIN is disabled until STARTTLS; then the user logs in and sees the default folders."""
    client = imaplib.IMAP4("127.0.0.1", mx.imap_port, timeout=20)
    assert "LOGINDISABLED" in client.capabilities and "STARTTLS" in client.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        client.login("tls@example.com", PASSWORD)
    ok(client.starttls(insecure_context()))
    ok(client.login("tls@example.com", PASSWORD))
    folders = b"\n".join(ok(client.list()))
    for name, use in ((b"Sent", b"\\Sent"), (b"Drafts", b"\\Drafts"), (b"Trash", b"\\Trash"), (b"Junk", b"\\Junk")):
        assert re.search(rb"\(\\HasNoChildren " + re.escape(use) + rb'\) "/" "' + name + b'"', folders), folders
    client.logout()


def test_wrong_password_is_refused_on_imaps(mx):
    """A wrong password over imaps gets NO [AUTHENTICATIONFAILED]."""
    client = imaplib.IMAP4_SSL("127.0.0.1", mx.imaps_port, ssl_context=insecure_context(), timeout=20)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        client.login("surface@example.com", "Wrong1234")
    client.shutdown()


def test_protocol_surface_append_fetch_store_copy_move_expunge(mx):
    """APPEND (APPENDUID), FETCH items and sections, STORE, COPY (COPYUID), MOVE, UID EXPUNGE, STATUS, ID."""
    client = mx.imaps("surface")
    data = ok(client.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(760000000), message("one")))
    assert re.match(rb"\[APPENDUID \d+ 1\]", data[0])
    ok(client.append("INBOX", None, None, message("two", "Second body.")))
    assert ok(client.select("INBOX")) == [b"2"]
    fetched = ok(client.fetch("1", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE BODYSTRUCTURE)"))[0]
    assert b"UID 1 FLAGS (\\Flagged)" in fetched and b'ENVELOPE ("Mon, 7 Feb 1994' in fetched
    assert b'(("Alice" NIL "alice" "sender.example"))' in fetched and b'BODYSTRUCTURE ("TEXT" "PLAIN"' in fetched
    assert b"INTERNALDATE" in fetched and b"RFC822.SIZE %d" % len(message("one")) in fetched
    part = ok(client.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[TEXT]<0.6> BODY.PEEK[1])"))
    assert part[0][1] == b"Subject: two\r\n\r\n" and part[1][1] == b"Second" and part[2][1] == b"Second body.\r\n"
    assert ok(client.fetch("2", "(FLAGS)"))[0] == b"2 (FLAGS (\\Recent))"
    body = ok(client.fetch("2", "(BODY[])"))
    assert body[0][1] == message("two", "Second body.") and b"\\Seen" in body[1] + body[0][0]
    assert ok(client.store("1", "+FLAGS", "(\\Deleted)"))[0] == b"1 (FLAGS (\\Flagged \\Deleted))"
    copied = ok(client.copy("2", "Trash"))
    assert re.match(rb"\[COPYUID \d+ 2 1\]", copied[0])
    typ, data = client.uid("MOVE", "2", "Archive")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    ok(client.create("Archive"))
    ok(client.uid("MOVE", "2", "Archive"))
    assert client.untagged_responses.get("EXPUNGE") == [b"2"]
    ok(client.uid("EXPUNGE", "1"))
    assert ok(client.status("Archive", "(MESSAGES UIDNEXT UNSEEN)"))[0] == b'"Archive" (MESSAGES 1 UIDNEXT 2 UNSEEN 0)'
    assert ok(client.select("INBOX")) == [b"0"]
    typ, data = client.xatom("ID", '("name" "pytest")')
    assert typ == "OK" and client.untagged_responses.get("ID") == [b'("name" "continuity")']
    ok(client.xatom("UNSELECT"))
    client.logout()


def test_folders_create_rename_delete_subscribe_and_names(mx):
    """CREATE with children (CHILDREN attributes), RENAME, DELETE, SUBSCRIBE/LSUB, modified UTF-7, unsafe names."""
    client = mx.imaps("folders")
    ok(client.create("Projects/2024"))
    ok(client.create('"Entw&APw-rfe"'))
    listing = b"\n".join(ok(client.list('""', "Projects*")))
    assert b'(\\Noselect \\HasChildren) "/" "Projects"' in listing
    assert b'(\\HasNoChildren) "/" "Projects/2024"' in listing
    assert b'"Entw&APw-rfe"' in b"\n".join(ok(client.list('""', "%")))
    ok(client.rename("Projects/2024", "Projects/2025"))
    ok(client.subscribe("Projects/2025"))
    assert b'"Projects/2025"' in b"\n".join(ok(client.lsub('""', "*")))
    ok(client.delete("Projects/2025"))
    for bad in ('"../../etc"', '"~root"', '"a/../../b"', '"&Jjo"'):
        typ, data = client.create(bad)
        assert typ == "NO", (bad, data)
    typ, data = client.select("Nowhere")
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    typ, data = client.delete("INBOX")
    assert typ == "NO"
    client.logout()


def test_condstore_modseq_changedsince_unchangedsince(mx):
    """ENABLE CONDSTORE, HIGHESTMODSEQ on SELECT, FETCH MODSEQ and CHANGEDSINCE, STORE UNCHANGEDSINCE."""
    for n in range(3):
        mx.deliver("condstore", message(f"c{n}"))
    client = mx.imaps("condstore")
    ok(client.enable("CONDSTORE"))
    ok(client.select("INBOX"))
    highest = int(client.untagged_responses["HIGHESTMODSEQ"][0])
    ok(client.store("2", "+FLAGS", "(\\Answered)"))
    changed = ok(client.fetch("1:*", f"(UID FLAGS) (CHANGEDSINCE {highest})"))
    assert len(changed) == 1 and changed[0].startswith(b"2 (UID 2 FLAGS (\\Answered \\Recent) MODSEQ (")
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", changed[0]).group(1))
    assert modseq > highest
    typ, data = client._simple_command("STORE", "1:2", f"(UNCHANGEDSINCE {highest})", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and data[-1].startswith(b"[MODIFIED 2]"), data  # the tagged reply's code
    typ, data = client.uid("SEARCH", None, "MODSEQ", str(highest + 1))
    assert typ == "OK" and data[0].startswith(b"1 2 (MODSEQ "), data
    client.logout()


def test_search_keys(mx):
    """SEARCH by flags, header, body, size, dates, UID, NOT/OR and CHARSET; BADCHARSET for others."""
    mx.deliver("search", message("apples", "red fruit"), flags="S")
    mx.deliver("search", message("pears", "green fruit", sender="carol@other.example"))
    mx.deliver("search", message("plums", "=?utf-8?q?pr=C3=BCfen?="))
    client = mx.imaps("search")
    ok(client.select("INBOX"))
    assert ok(client.search(None, "UNSEEN")) == [b"2 3"]
    assert ok(client.search(None, "FROM", "carol")) == [b"2"]
    assert ok(client.search(None, "OR", "SUBJECT", "apples", "BODY", "green")) == [b"1 2"]
    assert ok(client.search(None, "NOT", "SEEN", "LARGER", "10")) == [b"2 3"]
    assert ok(client.search(None, "SENTON", "7-Feb-1994")) == [b"1 2 3"]
    assert ok(client.search(None, "SINCE", "1-Jan-2000", "UID", "2:*")) == [b"2 3"]
    assert ok(client.uid("SEARCH", "CHARSET", "UTF-8", "TEXT", "fruit")) == [b"1 2"]
    typ, data = client.search("KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]
    client.logout()


def test_idle_announces_a_maildir_delivery_within_a_second(mx):
    """A message written into the Maildir by another tool during IDLE is announced within a second."""
    client = mx.imaps("idle")
    ok(client.select("INBOX"))
    sock = client.socket()
    sock.sendall(b"i1 IDLE\r\n")
    reader = sock.makefile("rb")
    assert reader.readline() == b"+ idling\r\n"
    started = time.monotonic()
    mx.deliver("idle", message("during idle"))
    assert reader.readline() == b"* 1 EXISTS\r\n"
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert reader.readline() == b"* 1 RECENT\r\n"
    sock.sendall(b"DONE\r\n")
    assert reader.readline() == b"i1 OK IDLE terminated\r\n"
    sock.sendall(b"i2 LOGOUT\r\n")
    sock.close()


def test_two_sessions_one_expunging_while_the_other_fetches(mx):
    """While A expunges messages B keeps fetching; B never gets a BAD or broken data, and after NOOP both agree."""
    for n in range(200):
        mx.deliver("race", message(f"m{n}", "x" * 2000))
    a, b = mx.imaps("race"), mx.imaps("race")
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    stop = threading.Event()
    answers = []

    def fetch_loop():
        while not stop.is_set():
            typ, data = b.fetch("1:200", "(UID BODY.PEEK[])")
            answers.append(typ)
            for item in data:
                if isinstance(item, tuple):
                    assert item[1].startswith(b"From: Alice") and item[1].endswith(b"\r\n")

    worker = threading.Thread(target=fetch_loop)
    worker.start()
    for start in range(1, 200, 20):
        ok(a.uid("STORE", f"{start}:{start + 9}", "+FLAGS", "(\\Deleted)"))
        ok(a.expunge())
    stop.set()
    worker.join(60)
    assert set(answers) <= {"OK", "NO"} and answers
    ok(b.noop())
    ok(a.noop())
    uids_a, uids_b = ok(a.uid("SEARCH", None, "ALL")), ok(b.uid("SEARCH", None, "ALL"))
    assert uids_a == uids_b and len(uids_a[0].split()) == 100
    b.untagged_responses.clear()  # FETCH FLAGS of messages A flagged before expunging them
    assert ok(b.fetch("100", "(UID)"))[0].startswith(b"100 (UID ")
    a.logout()
    b.logout()


def test_store_flags_are_seen_by_other_sessions_and_tools(mx):
    """A flag set in one session reaches another as FETCH FLAGS on NOOP, and lands in the Maildir file name."""
    mx.deliver("store", message("flags"))
    a, b = mx.imaps("store"), mx.imaps("store")
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    ok(a.store("1", "+FLAGS.SILENT", "(\\Seen \\Answered)"))
    ok(b.noop())
    assert b.untagged_responses.get("FETCH") == [b"1 (UID 1 FLAGS (\\Answered \\Seen))"]
    files = list((mx.data_dir / "mail" / "example.com" / "store" / "cur").iterdir())
    assert len(files) == 1 and files[0].name.endswith(":2,RS")
    a.logout()
    b.logout()


def test_keywords_persist_across_sessions(mx):
    """$Forwarded and $Junk stored in one session are in FLAGS, FETCH and SEARCH after reconnecting, and on disk."""
    mx.deliver("keywords", message("forwarded and junk"))
    mx.deliver("keywords", message("plain"))
    client = mx.imaps("keywords")
    ok(client.select("INBOX"))
    assert b"\\*" in client.untagged_responses["PERMANENTFLAGS"][0]
    stored = ok(client.store("1", "+FLAGS", "($Forwarded $Junk)"))
    assert stored[0] == b"1 (FLAGS ($Forwarded $Junk \\Recent))"
    client.logout()
    again = mx.imaps("keywords")
    ok(again.select("INBOX"))
    assert again.untagged_responses["FLAGS"][0].endswith(b" $Forwarded $Junk)")
    assert again.untagged_responses["PERMANENTFLAGS"][0].endswith(b" $Forwarded $Junk \\*)")
    assert ok(again.fetch("1:2", "(FLAGS)")) == [b"1 (FLAGS ($Forwarded $Junk))", b"2 (FLAGS ())"]
    assert ok(again.search(None, "KEYWORD", "$junk")) == [b"1"]
    again.logout()
    root = mx.data_dir / "mail" / "example.com" / "keywords"
    assert (root / "dovecot-keywords").read_text() == "0 $Forwarded\n1 $Junk\n"
    assert sorted(path.name.rsplit(":2,", 1)[1] for path in (root / "cur").iterdir()) == ["", "ab"]


def test_bad_input_over_the_wire_keeps_the_service_serving(mx):
    """Garbage, nesting bombs and an oversized APPEND get protocol errors; the service keeps serving."""
    raw = ssl.create_default_context()
    raw.check_hostname, raw.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", mx.imaps_port), timeout=20) as plain:
        with raw.wrap_socket(plain) as sock:
            reader = sock.makefile("rb")
            assert reader.readline().startswith(b"* OK [CAPABILITY")
            sock.sendall(b"a LOGIN surface@example.com Secret123\r\n")
            assert reader.readline().startswith(b"a OK")
            sock.sendall(b"b LIST " + b"(" * 1000 + b"\r\n")
            assert reader.readline().startswith(b"b BAD")
            sock.sendall(b"c APPEND INBOX {99999999999}\r\n")
            assert reader.readline().startswith(b"c BAD")
            sock.sendall(b"d APPEND INBOX {60000000}\r\n")
            assert reader.readline() == b"d NO [TOOBIG] Message too big (APPENDLIMIT=52428800)\r\n"
            sock.sendall(b"e NOOP\r\n")
            assert reader.readline() == b"e OK NOOP completed\r\n"

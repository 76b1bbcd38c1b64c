"""Keywords shared with a real Dovecot serving the same Maildir: each side reads what the other stored.

Our store writes the tree, an isolated Dovecot (the benchmarks' launcher,
``scripts/bench/dovecot.py``) serves it over IMAP; ``dovecot-keywords`` and the
letters in the file names are the only thing the two have in common.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import free_port

from continuity.envelope import parse_address
from continuity.mailstore import KEYWORDS_NAME, MaildirStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "bench"))
from dovecot import Dovecot  # noqa: E402

# No skips: scripts/test installs dovecot-imapd, and CI runs as root (Dovecot serves the tree as nobody,
# handed over with chown). Anywhere else this test fails, loudly.

ADDRESS = "bob@example.com"
PASSWORD = "Secret123"


def hand_over(mail_root: Path) -> None:
    subprocess.run(["chown", "-R", "nobody:nogroup", str(mail_root)], check=True)


def dovecot_session(dovecot: Dovecot) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", dovecot.imap_port, timeout=20)
    client.login(ADDRESS, PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    return client


@pytest.fixture
def open_root():
    """A directory Dovecot's unprivileged processes can reach (pytest's tmp_path is root's alone)."""
    root = Path(tempfile.mkdtemp(prefix="continuity-dovecot-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_keywords_round_trip_between_continuity_and_dovecot(open_root):
    """Keywords we store are Dovecot's FLAGS; a keyword Dovecot adds is ours; one we add later is Dovecot's."""
    dovecot = Dovecot(open_root / "dovecot", free_port(), free_port(), {ADDRESS: PASSWORD})
    store = MaildirStore(str(dovecot.mail_root), hostname="continuity.test")
    bob = parse_address(ADDRESS)
    dovecot.mail_root.mkdir(parents=True)
    store.deliver(bob, b"Subject: one\r\n\r\nx\r\n")
    store.deliver(bob, b"Subject: two\r\n\r\nx\r\n")
    store.add_flags(bob, "INBOX", [1], "S", ["$Forwarded", "$Junk"])
    hand_over(dovecot.mail_root)
    dovecot.start()
    try:
        client = dovecot_session(dovecot)
        assert client.untagged_responses["FLAGS"][-1].endswith(b" $Forwarded $Junk)")
        assert client.fetch("1", "(FLAGS)")[1][0] == b"1 (FLAGS (\\Seen \\Recent $Forwarded $Junk))"
        assert client.store("2", "+FLAGS", "($label1 $JUNK)")[0] == "OK"
        assert client.store("1", "-FLAGS", "($Forwarded)")[0] == "OK"
        client.logout()
        first, second = store.get_messages(bob)
        assert first.keywords == ("$Junk",) and second.keywords == ("$Junk", "$label1")
        store.add_flags(bob, "INBOX", [1], "", ["NonJunk"])  # within the second Dovecot last read the file
        hand_over(dovecot.mail_root)
        client = dovecot_session(dovecot)
        assert client.fetch("1", "(FLAGS)")[1][0] == b"1 (FLAGS (\\Seen $Junk NonJunk))"
        assert client.search(None, "KEYWORD", "NonJunk")[1] == [b"1"]
        client.logout()
    finally:
        dovecot.stop()
    keywords = (Path(store.user_root(bob)) / KEYWORDS_NAME).read_text()
    assert keywords == "0 $Forwarded\n1 $Junk\n2 $label1\n3 NonJunk\n"

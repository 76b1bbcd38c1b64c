"""Real IMAP clients against the real service: curl (imap:// with STARTTLS and imaps://), mbsync (a two-way
sync of INBOX and Sent with flags) and mutt (reading a message, driven in tmux). One service for the module."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from imap_service import PASSWORD, IMAPService, message

from continuity.envelope import parse_address

USERS = ("curl", "sync", "mutt")


@pytest.fixture(scope="module")
def mx(tmp_path_factory):
    service = IMAPService(tmp_path_factory.mktemp("imap-clients"), USERS).start()
    yield service
    service.stop()


def curl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", "--insecure", "--max-time", "20", *args],
                          capture_output=True, timeout=60)


def test_curl_lists_folders_over_starttls_and_fetches_a_message(mx):
    """curl imap:// with --ssl-reqd (STARTTLS) lists the folders; imaps:// fetches a message by UID."""
    mx.deliver("curl", message("for curl", "Fetched by curl."))
    user = f"curl@example.com:{PASSWORD}"
    listing = curl("--ssl-reqd", "--user", user, f"imap://127.0.0.1:{mx.imap_port}/")
    assert listing.returncode == 0, listing.stderr
    for folder in (b"INBOX", b"Sent", b"Drafts", b"Trash", b"Junk"):
        assert folder in listing.stdout
    fetched = curl("--user", user, f"imaps://127.0.0.1:{mx.imaps_port}/INBOX;UID=1")
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.replace(b"\r\n", b"\n") == message("for curl", "Fetched by curl.").replace(b"\r\n", b"\n")


def test_curl_refused_without_tls(mx):
    """curl without TLS cannot log in on the imap port (LOGINDISABLED)."""
    result = curl("--user", f"curl@example.com:{PASSWORD}", f"imap://127.0.0.1:{mx.imap_port}/")
    assert result.returncode != 0


def _maildir(path: Path) -> Path:
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def test_mbsync_two_way_sync_of_inbox_and_sent_with_flags(mx, tmp_path):
    """mbsync pulls INBOX, pushes a locally sent message into Sent, and carries \\Seen and \\Flagged both ways."""
    address = parse_address("sync@example.com")
    mx.deliver("sync", message("server one"))
    mx.deliver("sync", message("server two"))
    local = tmp_path / "local"
    _maildir(local / "INBOX")
    _maildir(local / "Sent")
    (local / "Sent" / "cur" / "1700000000.1.localhost:2,S").write_bytes(message("sent offline"))
    config = tmp_path / "mbsyncrc"
    config.write_text(f"""IMAPAccount continuity
Host 127.0.0.1
Port {mx.imaps_port}
User sync@example.com
Pass {PASSWORD}
SSLType IMAPS
CertificateFile {mx.certificate}

IMAPStore remote
Account continuity

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel mail
Far :remote:
Near :local:
Patterns INBOX Sent
Create Both
Sync All
SyncState *
""")

    def sync():
        result = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr

    sync()
    pulled = sorted((local / "INBOX" / "cur").iterdir()) + sorted((local / "INBOX" / "new").iterdir())
    assert len(pulled) == 2
    sent = mx.store.get_messages(address, "Sent")
    assert len(sent) == 1 and sent[0].flags == "S"
    assert b"Subject: sent offline\r\n" in mx.store.read_message(sent[0])  # mbsync adds an X-TUID field
    # Flag locally (rename with :2,F) and on the server (another session), then sync again.
    first = pulled[0]
    flagged = first.parent.parent / "cur" / (first.name.split(":")[0] + ":2,F")
    first.rename(flagged)
    inbox = mx.store.get_messages(address)
    mx.store.add_flags(address, "INBOX", [inbox[1].uid], "S")
    sync()
    server_flags = {ref.uid: ref.flags for ref in mx.store.get_messages(address)}
    assert "F" in server_flags[inbox[0].uid] or "F" in server_flags[inbox[1].uid]
    local_flags = [path.name.rsplit(",", 1)[-1] for path in (local / "INBOX" / "cur").iterdir()]
    assert any("S" in flags for flags in local_flags), local_flags


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=30).stdout


def _wait_for_screen(session: str, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not on the screen:\n{screen}")


def test_mutt_reads_a_message(mx, tmp_path):
    """mutt opens INBOX over imaps, shows the subject in the index, displays the body; the message becomes \\Seen."""
    mx.deliver("mutt", message("for mutt", "Read me in mutt."))
    muttrc = tmp_path / "muttrc"
    certificates = tmp_path / "certificates"
    shutil.copy(mx.certificate, certificates)
    muttrc.write_text(f"""set imap_user = "mutt@example.com"
set imap_pass = "{PASSWORD}"
set folder = "imaps://127.0.0.1:{mx.imaps_port}/"
set spoolfile = "+INBOX"
set certificate_file = "{certificates}"
set ssl_verify_host = no
set ssl_verify_dates = no
set header_cache = ""
set message_cachedir = ""
set mail_check = 60
set pager_stop = yes
set sort = date
set wait_key = no
""")
    session = f"mutt-{os.getpid()}"
    env_home = tmp_path / "home"
    env_home.mkdir()
    _tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "30",
          f"env HOME={env_home} TERM=xterm mutt -n -F {muttrc}")
    try:
        _wait_for_screen(session, "for mutt")
        _tmux("send-keys", "-t", session, "Enter")
        _wait_for_screen(session, "Read me in mutt.")
        _tmux("send-keys", "-t", session, "q")
        _tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        flags = ""
        while time.monotonic() < deadline:
            [ref] = mx.store.get_messages(parse_address("mutt@example.com"))
            flags = ref.flags
            if "S" in flags:
                break
            time.sleep(0.2)
        assert "S" in flags
    finally:
        _tmux("kill-session", "-t", session)

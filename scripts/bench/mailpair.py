"""Our service and an isolated Dovecot serving the same Maildir content, for the IMAP and POP3 benchmarks.

The messages are generated once per run (:func:`pristine`): 4 KB each, CRLF
line ends and a ``,S=`` size in the name, as our SMTP delivery leaves them,
in ``cur/`` with no flags. Each benchmark gets its own copy for each server
(:func:`clone`: new directories, the message files hard-linked), so neither
server's uid list, indexes, renames (``\\Seen``) or page-cache warming touches
the other's folder, and both read the same bytes. Dovecot's copy is owned by
``nobody``, its mail user.

Both servers verify the same kind of credential: an Argon2id hash made by our
own :func:`continuity.directory.passwords.hash_password` (Dovecot's
``{ARGON2ID}`` scheme), so both pay the same Argon2id cost per login,
whatever our defaults are (now RFC 9106's t=3, m=64 MiB, p=4), and both
verify it with libsodium.
Both listen on plain loopback with plaintext logins allowed (ours:
``require_tls_for_auth = false``; Dovecot: ``disable_plaintext_auth = no``):
the benchmarks measure mail serving, not TLS.

:class:`MailPair` starts both with one user whose INBOX holds the messages,
and warms both up (a login, ``SELECT``, ``FETCH 1:* (RFC822)`` and a POP3
``LIST``), so every round measures the steady state: uid list and indexes
built, sizes known, every message already ``\\Seen``, and the folders
unchanged for a few seconds. The IMAP and POP3
benchmarks share one pair per run (:func:`shared_pair`): none of them changes
the folder once the warm-up marked everything seen, and the 10,000-message
set-up and warm-up are then paid once. It runs until the end of the run.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from continuity.directory.passwords import hash_password
from dovecot import Dovecot
from lab import Lab, free_port
from ours import Ours

PASSWORD = "Bench-Secret-1"
SIZE = 4096
SENDER = "sender@source.bench.test"
#: An upstream nothing listens on: these domains stay in normal mode and no mail is relayed.
NO_UPSTREAM = "127.0.0.1:9"
SETTLE = 2.5  # seconds after the warm-up
_FIRST_DATE = 1_700_000_000


def message(number: int, recipient: str, size: int = SIZE) -> bytes:
    """A plain-text message of exactly ``size`` octets with CRLF line ends."""
    head = (f"Return-Path: <{SENDER}>\r\nDelivered-To: {recipient}\r\n"
            f"From: Sender <{SENDER}>\r\nTo: <{recipient}>\r\nSubject: benchmark message {number}\r\n"
            f"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <{number}.fixture@source.bench.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog; continuity benchmark text line.\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    data = head + body[: size - len(head) - 2] + b"\r\n"
    assert len(data) == size
    return data


_PRISTINE: dict[tuple[Path, int], Path] = {}


def pristine(lab: Lab, count: int) -> Path:
    """A Maildir of ``count`` messages, made once per run (files owned by ``nobody``, mode 0600)."""
    key = (lab.root, count)
    if key in _PRISTINE:
        return _PRISTINE[key]
    root = lab.path("mail-fixture", str(count))
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(exist_ok=True)
    for number in range(1, count + 1):
        data = message(number, "reader@bench.test")
        name = f"{_FIRST_DATE + number}.M{number:06d}P1Q{number}.fixture.bench.test,S={len(data)}:2,"
        path = root / "cur" / name
        path.write_bytes(data)
        os.chmod(path, 0o600)
        shutil.chown(path, "nobody", "nogroup")
    _PRISTINE[key] = root
    return root


def clone(source: Path, maildir: Path, owner: str | None = None) -> None:
    """``maildir`` becomes a copy of ``source``: fresh directories, message files hard-linked.

    :param owner: the mail user that gets the Maildir and its parents up to the ``mail`` root (group ``nogroup``).
    """
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(source / sub):
            os.link(source / sub / name, maildir / sub / name)
    if owner is not None:
        for sub in ("cur", "new", "tmp"):
            shutil.chown(maildir / sub, owner, "nogroup")
        directory = maildir
        while directory.name != "mail" and directory != directory.parent:
            shutil.chown(directory, owner, "nogroup")
            directory = directory.parent


def dovecot_hashes(addresses: list[str]) -> dict[str, str]:
    """Dovecot ``passwd-file`` credentials: our own Argon2id hash of :data:`PASSWORD` for each address."""
    stored = hash_password(PASSWORD)  # one salt for all: the cost per login is what matters here
    return {address: "{ARGON2ID}" + stored for address in addresses}


def add_users(service: Ours, addresses: list[str], parallel: int = 8) -> None:
    """Register users with :data:`PASSWORD`, a few ``continuityctl`` at a time (each hashes with 64 MiB)."""
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda a: service.ctl("user", "add", a, "--password-stdin", stdin=f"{PASSWORD}\n"), addresses))


_SHARED: dict[tuple[Path, int], MailPair] = {}


def shared_pair(lab: Lab, count: int) -> MailPair:
    """The run's started :class:`MailPair` of ``count`` messages (started by the first caller)."""
    key = (lab.root, count)
    if key not in _SHARED:
        _SHARED[key] = MailPair(lab, "mail-pair", count).start()
    return _SHARED[key]


class MailPair:
    """Ours and Dovecot, each with ``address``'s INBOX holding the same ``count`` messages."""

    def __init__(self, lab: Lab, name: str, count: int, local: str = "reader", domain: str = "mail.bench.test"):
        self.lab = lab
        self.name = name
        self.count = count
        self.address = f"{local}@{domain}"
        self.domain = domain
        self.local = local

    def start(self) -> MailPair:
        lab = self.lab
        source = pristine(lab, self.count)
        self.ours = lab.cleanup.enter_context(
            Ours(lab.path(self.name, "ours"), {"imap": free_port(), "pop3": free_port()},
                 tls={"require_tls_for_auth": False}).started())
        self.ours.add_domain(self.domain, NO_UPSTREAM, users=[self.local], password=PASSWORD)
        clone(source, self.ours.maildir(self.address))
        self.dovecot = Dovecot(lab.path(self.name, "dovecot"), free_port(), free_port(), {self.address: PASSWORD},
                               hashes=dovecot_hashes([self.address]))
        clone(source, self.dovecot.maildir(self.address), owner="nobody")
        lab.cleanup.enter_context(self.dovecot.started())
        for imap_port, pop3_port in self.ports():
            self.warm_up(imap_port, pop3_port)
        # A folder changed in the last seconds is rescanned on every look (ours: SYNC_SLACK = 2 s; Dovecot's
        # maildir sync has the same idea); the warm-up's \Seen renames must age first, for both alike.
        time.sleep(SETTLE)
        return self

    def ports(self) -> list[tuple[int, int]]:
        """(IMAP, POP3) ports of ours, then of Dovecot."""
        return [(self.ours.ports["imap"], self.ours.ports["pop3"]), (self.dovecot.imap_port, self.dovecot.pop3_port)]

    def warm_up(self, imap_port: int, pop3_port: int) -> None:
        imap = self.imap(imap_port)
        try:
            fetched = fetched_messages(imap.fetch("1:*", "(RFC822)"))
            if fetched != self.count:
                raise RuntimeError(f"warm-up FETCH on port {imap_port} returned {fetched} of {self.count} messages")
        finally:
            imap.logout()
        pop = self.pop3(pop3_port)
        try:
            pop.list()
            pop.uidl()
        finally:
            pop.quit()

    def imap(self, port: int) -> imaplib.IMAP4:
        """A logged-in imaplib session with INBOX selected."""
        imap = imaplib.IMAP4("127.0.0.1", port, timeout=300)
        imap.login(self.address, PASSWORD)
        status, data = imap.select("INBOX")
        if status != "OK" or int(data[0]) != self.count:
            raise RuntimeError(f"SELECT INBOX on port {port}: {status} {data} (expected {self.count} messages)")
        return imap

    def pop3(self, port: int) -> poplib.POP3:
        pop = poplib.POP3("127.0.0.1", port, timeout=300)
        pop.user(self.address)
        pop.pass_(PASSWORD)
        return pop


def fetched_messages(response: tuple) -> int:
    """How many messages an imaplib ``FETCH`` of message bodies returned."""
    status, data = response
    if status != "OK":
        raise RuntimeError(f"FETCH answered {status} {data[:1]}")
    return sum(1 for item in data if isinstance(item, tuple))


"""An isolated Dovecot for the IMAP and POP3 benchmarks: its own config, base_dir, users and Maildirs.

``dovecot -F -c ROOT/dovecot.conf`` (foreground, a child of the harness) with
every path under ``ROOT``: ``base_dir`` (sockets, pid), ``state_dir``,
``log_path``; IMAP and POP3 on 127.0.0.1 ports, no TLS, plaintext logins
allowed (the benchmarks run on loopback). Users come from a ``passwd-file``
(``address:{PLAIN}password``); each one's mail is the Maildir
``ROOT/mail/DOMAIN/LOCAL`` (``mail_location``), owned by ``nobody``, the
same layout as our continuity mailboxes, so a benchmark fills both the same
way. Written for Dovecot 2.3 (Debian 12); the system instance and
``/etc/dovecot`` are never read or touched.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import shutil
import subprocess
from pathlib import Path

from lab import Process, wait_for_port

DOVECOT = "/usr/sbin/dovecot"


class Dovecot(Process):
    """One Dovecot under ``root``; ``users`` maps full addresses to passwords."""

    def __init__(self, root: Path, imap_port: int, pop3_port: int, users: dict[str, str], extra: str = "",
                 hashes: dict[str, str] | None = None):
        """
        :param extra: more configuration appended verbatim (``service imap-login { ... }``...).
        :param hashes: stored credentials by address, with their scheme (``{ARGON2ID}$argon2id$...``),
            so Dovecot verifies the same kind of hash as our service; others get ``{PLAIN}password``.
        """
        self.root = root
        self.imap_port = imap_port
        self.pop3_port = pop3_port
        self.users = dict(users)
        self.extra = extra
        self.hashes = dict(hashes or {})
        self.config = root / "dovecot.conf"
        self.mail_root = root / "mail"
        self.log_path = root / "dovecot.log"
        self.process: subprocess.Popen | None = None

    def maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        return self.mail_root / domain / local

    def config_text(self) -> str:
        root = self.root
        return f"""\
base_dir = {root}/run
state_dir = {root}/state
instance_name = dovecot-bench-{self.imap_port}
log_path = {self.log_path}
protocols = imap pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:{self.mail_root}/%d/%n
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.mail_root}/%d/%n
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
{self.extra}
"""

    def start(self, timeout: float = 30.0) -> "Dovecot":
        for directory in (self.root, self.root / "run", self.root / "state", self.mail_root):
            directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        shutil.chown(self.mail_root, "nobody", "nogroup")
        users = self.root / "users"
        users.write_text("".join(f"{address}:{self.hashes.get(address) or '{PLAIN}' + password}\n"
                                 for address, password in self.users.items()))
        os.chmod(users, 0o644)  # read by the auth process, which runs as the dovecot user
        self.config.write_text(self.config_text())
        with open(self.root / "dovecot.out", "wb") as out:
            self.process = subprocess.Popen([DOVECOT, "-F", "-c", str(self.config)], stdout=out,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for port in (self.imap_port, self.pop3_port):
            wait_for_port(port, timeout, what=f"dovecot (log: {self.log_path})", process=self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def check(self) -> str:
        """Log in over IMAP and POP3 as the first user; one line saying what each answered."""
        address, password = next(iter(self.users.items()))
        with imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=10) as imap:
            imap.login(address, password)
            status, data = imap.select("INBOX")
            if status != "OK":
                raise RuntimeError(f"dovecot: SELECT INBOX answered {status} {data}")
            messages = int(data[0])
            imap.logout()
        pop = poplib.POP3("127.0.0.1", self.pop3_port, timeout=10)
        try:
            pop.user(address)
            pop.pass_(password)
            count, _ = pop.stat()
        finally:
            pop.quit()
        return f"Dovecot IMAP login and SELECT ok ({messages} in INBOX), POP3 login ok ({count} messages)"

"""An isolated Postfix instance for the benchmarks: its own config, queue and data under a work dir.

``postfix -c CONFDIR start`` with a ``main.cf`` and ``master.cf`` written here:
own ``queue_directory`` and ``data_directory``, ``inet_interfaces =
loopback-only``, ``smtpd`` on an unprivileged 127.0.0.1 port, no chroot, its
own ``syslog_name`` and a ``maillog_file`` (through ``postlogd``) so nothing
reaches the system log or the system instance. Debian's package provides the
programs, the ``postfix`` user and the ``postdrop`` group; the system Postfix
need not run (and is never touched).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

from lab import Process, wait_for_port

POSTFIX = "/usr/sbin/postfix"

# Every service the queue needs (Debian's master.cf without chroot and the
# services these benchmarks never use). Columns: service type private unpriv
# chroot wakeup maxproc command.
_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix(Process):
    """One Postfix instance under ``root``; ``settings`` are added to (or override) ``main.cf``."""

    def __init__(self, root: Path, smtp_port: int, settings: dict[str, str] | None = None,
                 maps: dict[str, str] | None = None):
        """
        :param maps: files to write into the config directory (name -> text), e.g. a
            ``texthash:`` table; ``settings`` refer to them as ``{conf}/NAME``.
        """
        self.root = root
        self.smtp_port = smtp_port
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.settings = dict(settings or {})
        self.maps = dict(maps or {})

    def main_cf(self) -> str:
        base = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "peer.bench.test",
            "mydestination": "",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "syslog_name": f"postfix-bench-{self.smtp_port}",
            "maillog_file_prefixes": str(self.root),
            "maillog_file": str(self.maillog),
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtpd_banner": "$myhostname ESMTP",
            # The benchmarks' sources and sinks are on loopback: no DNS.
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
        }
        base.update(self.settings)
        return "".join(f"{key} = {value.format(conf=self.conf)}\n" for key, value in base.items())

    def master_cf(self) -> str:
        return f"127.0.0.1:{self.smtp_port} inet n - n - - smtpd\n{_SERVICES}"

    def start(self, timeout: float = 30.0) -> "Postfix":
        for directory in (self.conf, self.queue, self.data):
            directory.mkdir(parents=True, exist_ok=True)
        owner = pwd.getpwnam("postfix")
        os.chown(self.data, owner.pw_uid, owner.pw_gid)  # master.lock and caches: written as postfix
        for name, text in self.maps.items():
            (self.conf / name).write_text(text)
        (self.conf / "main.cf").write_text(self.main_cf())
        (self.conf / "master.cf").write_text(self.master_cf())
        self._postfix("start")
        wait_for_port(self.smtp_port, timeout, what=f"postfix ({self.maillog})")
        return self

    def _postfix(self, command: str) -> None:
        result = subprocess.run([POSTFIX, "-c", str(self.conf), command], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, timeout=120)
        if result.returncode != 0:
            log = self.maillog.read_text(errors="replace")[-2000:] if self.maillog.exists() else ""
            raise RuntimeError(f"postfix {command} failed: {result.stdout}{result.stderr}{log}")

    def master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def queue_empty(self) -> bool:
        """No message left in the incoming, active or deferred queues."""
        for name in ("incoming", "active", "deferred", "maildrop"):
            for _, _, files in os.walk(self.queue / name):
                if files:
                    return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.master_pid()
        if pid is None:
            return
        try:
            self._postfix("stop")
        except RuntimeError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

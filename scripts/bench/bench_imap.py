"""IMAP against Dovecot on the same Maildir content (issues 4 and 6).

Every benchmark here but ``idle-imap`` runs on the run's :class:`~mailpair.MailPair`
(shared with :mod:`bench_pop3`): our service and an isolated Dovecot, each
serving its own copy of one INBOX of
10,000 messages of 4 KB (``--quick``: 200), over plain loopback, after a
warm-up that built both servers' indexes and marked every message ``\\Seen``.
The client is :mod:`imaplib`, as issue 6 says, on the same machine (so a
faster server leaves more of the two cores to the client).

- **imap-fetch**: ``FETCH 1:* (RFC822)`` of the whole INBOX on a session
  already logged in with INBOX selected; messages per second from the
  command to its tagged ``OK``. A round runs it 3 times on that session
  (``--quick``: once), so it lasts long enough to be measured on a busy
  machine.
- **imap-flags**: the same with ``UID FETCH 1:* (FLAGS)`` (5 times a round).
- **imap-login**: connect, read the greeting, ``LOGIN`` (Argon2id on both
  sides, see :mod:`mailpair`), ``SELECT INBOX`` of the 10,000 folder, until
  its ``OK``; the median of 20 sessions one after the other (``--quick``: 3),
  in milliseconds. Our CPU column is per session.
- **idle-imap**: memory per idle connection. 1,000 sessions (``--quick``:
  10) of 101 users (10 each: both servers allow 10 per user and IP), each
  logged in with INBOX (10 messages) selected and in ``IDLE``, as a mail
  client leaves it. As :mod:`bench_idle_smtp` does for Postfix, each round
  starts both servers afresh, runs one session (so both loaded what a session
  needs), takes the baseline, opens the sessions, waits a second and measures
  again; the figure is the growth per connection in KiB of PSS
  (:mod:`procstat`). Ours: the one ``twistd`` process. Dovecot: the master
  and all its children (``imap`` processes, one per session by Dovecot's
  default ``client_limit = 1``, ``imap-login``, ``auth``, ``anvil``...).
  Dovecot's process limits are raised so every session is served. Here
  Dovecot's users have ``{PLAIN}`` passwords: verifying a password leaves
  nothing resident, and Dovecot's single ``auth`` process would otherwise
  spend some 100 s a round on 1,000 Argon2id logins. Ours still verifies
  Argon2id (a round takes about two minutes).
"""

from __future__ import annotations

import abc
import imaplib
import math
import statistics
import time

from dovecot import Dovecot
from imaptools import close_all, open_idle_sessions
from lab import Benchmark, Lab, Load, Sample, free_port
from mailpair import NO_UPSTREAM, PASSWORD, add_users, clone, fetched_messages, pristine, shared_pair
from ours import Ours
from procstat import cpu_seconds, pss_kib, tree_pss_kib
from profiling import recording

MESSAGES = Load(full=10000, quick=200)
LOGINS = Load(full=20, quick=3)
FETCHES = Load(full=3, quick=1)  # FETCH commands a round, one after the other
FLAG_FETCHES = Load(full=5, quick=1)
CONNECTIONS = Load(full=1000, quick=10)
PER_USER = 10  # sessions per user and client IP that both servers allow by default
IDLE_INBOX = 10
IDLE_DOMAIN = "idle.bench.test"
SETTLE = Load(full=1000, quick=200)  # milliseconds before each measurement


class _PairBenchmark(Benchmark):
    """A benchmark on the shared :class:`~mailpair.MailPair`; subclasses implement :meth:`measure`."""

    peer_label = "Dovecot"

    def start(self, lab: Lab) -> None:
        self.pair = shared_pair(lab, MESSAGES.size(lab.quick))

    def ours(self, lab: Lab, round_number: int) -> Sample:
        service = self.pair.ours
        with recording(service.pid, lab.profile_file(f"{self.name}-{round_number}")):
            return self.measure(lab, service.ports["imap"], service.pid)

    def peer(self, lab: Lab, round_number: int) -> Sample:
        return self.measure(lab, self.pair.dovecot.imap_port, None)

    @abc.abstractmethod
    def measure(self, lab: Lab, port: int, pid: int | None) -> Sample:
        """One round against ``port``; ``pid`` is our server's (for its CPU), None for the peer."""


class _FetchBenchmark(_PairBenchmark):
    unit = "msg/s"
    repeat = FETCHES

    @abc.abstractmethod
    def command(self, imap: imaplib.IMAP4) -> int:
        """Run the timed command; return how many messages it answered for."""

    def measure(self, lab: Lab, port: int, pid: int | None) -> Sample:
        imap = self.pair.imap(port)
        try:
            repeat = self.repeat.size(lab.quick)
            cpu = cpu_seconds(pid) if pid else 0.0
            started = time.monotonic()
            answered = [self.command(imap) for _ in range(repeat)]
            elapsed = time.monotonic() - started
            spent = cpu_seconds(pid) - cpu if pid else None
        finally:
            imap.logout()
        if answered != [self.pair.count] * repeat:
            raise RuntimeError(f"{self.name}: {answered} messages answered on port {port}, not {self.pair.count}")
        return Sample(sum(answered) / elapsed, sum(answered), spent)


class FetchBodies(_FetchBenchmark):
    name = "imap-fetch"
    figure = "IMAP FETCH 1:* (RFC822), 10,000 x 4 KB"
    bar = 0.5

    def command(self, imap: imaplib.IMAP4) -> int:
        return fetched_messages(imap.fetch("1:*", "(RFC822)"))


class FetchFlags(_FetchBenchmark):
    name = "imap-flags"
    figure = "IMAP UID FETCH 1:* (FLAGS), 10,000"
    bar = 0.3
    repeat = FLAG_FETCHES

    def command(self, imap: imaplib.IMAP4) -> int:
        status, data = imap.uid("FETCH", "1:*", "(FLAGS)")
        if status != "OK":
            raise RuntimeError(f"UID FETCH answered {status} {data[:1]}")
        return sum(1 for item in data if isinstance(item, bytes) and b"FLAGS" in item)


class LoginSelect(_PairBenchmark):
    name = "imap-login"
    figure = "IMAP connect + LOGIN + SELECT of 10,000"
    unit = "ms"
    higher_is_better = False
    bar = 1.0

    def start(self, lab: Lab) -> None:
        super().start(lab)
        self.sessions = LOGINS.size(lab.quick)

    def measure(self, lab: Lab, port: int, pid: int | None) -> Sample:
        times = []
        cpu = cpu_seconds(pid) if pid else 0.0
        for _ in range(self.sessions):
            started = time.monotonic()
            imap = self.pair.imap(port)  # connect, greeting, LOGIN, SELECT INBOX (checks the count)
            times.append(time.monotonic() - started)
            imap.logout()
        spent = cpu_seconds(pid) - cpu if pid else None
        return Sample(1000 * statistics.median(times), self.sessions, spent,
                      note=f"min {1000 * min(times):.1f} ms, max {1000 * max(times):.1f} ms")


class IdleMemory(Benchmark):
    name = "idle-imap"
    figure = "memory per idle IMAP connection (PSS)"
    unit = "KiB"
    higher_is_better = False
    bar = 0.1
    peer_label = "Dovecot"

    def start(self, lab: Lab) -> None:
        self.connections = CONNECTIONS.size(lab.quick)
        self.settle = SETTLE.size(lab.quick) / 1000
        users = [f"idle{number}@{IDLE_DOMAIN}" for number in range(math.ceil(self.connections / PER_USER))]
        self.logins = [(users[index // PER_USER], PASSWORD) for index in range(self.connections)]
        self.warm = f"warm@{IDLE_DOMAIN}"
        addresses = [*users, self.warm]
        inbox = pristine(lab, IDLE_INBOX)
        self.service = Ours(lab.path(self.name, "ours"), {"imap": free_port()}, tls={"require_tls_for_auth": False},
                            limits={"connections_per_ip": self.connections + 100})
        with self.service.started():
            self.service.add_domain(IDLE_DOMAIN, NO_UPSTREAM)
            add_users(self.service, addresses)
        limit = self.connections + 100
        self.dovecot = Dovecot(lab.path(self.name, "dovecot"), free_port(), free_port(),
                               {address: PASSWORD for address in addresses}, extra=(
                                   f"default_process_limit = {limit}\n"
                                   f"default_client_limit = {2 * limit + 1000}\n"
                                   f"mail_max_userip_connections = {PER_USER}\n"))
        for address in addresses:
            clone(inbox, self.service.maildir(address))
            clone(inbox, self.dovecot.maildir(address), owner="nobody")

    def _growth(self, port: int, measure) -> float:
        warm = open_idle_sessions(port, [(self.warm, PASSWORD)])
        close_all(warm)
        time.sleep(self.settle)
        before = measure()
        sessions = open_idle_sessions(port, self.logins)
        try:
            time.sleep(self.settle)
            after = measure()
        finally:
            close_all(sessions)
        return (after - before) / len(sessions)

    def ours(self, lab: Lab, round_number: int) -> Sample:
        with self.service.started():
            return Sample(self._growth(self.service.ports["imap"], lambda: pss_kib(self.service.pid)))

    def peer(self, lab: Lab, round_number: int) -> Sample:
        with self.dovecot.started():
            return Sample(self._growth(self.dovecot.imap_port, lambda: tree_pss_kib(self.dovecot.pid)))


BENCHMARKS = [FetchBodies(), FetchFlags(), LoginSelect(), IdleMemory()]

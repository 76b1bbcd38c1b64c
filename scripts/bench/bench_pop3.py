"""POP3 against Dovecot: ``RETR`` of every message of a 10,000 x 4 KB INBOX with poplib (issues 4 and 6).

Same setup as :mod:`bench_imap`, whose :class:`~mailpair.MailPair` it shares
(each server its own copy of the same Maildir, warmed up, plain loopback,
Argon2id logins).
Each round logs in with ``USER``/``PASS`` (untimed), then times ``RETR 1`` to
``RETR N``, one after the other as :mod:`poplib` sends them, until the last
message's terminating dot; ``QUIT`` follows untimed (it changes nothing: the
warm-up already marked every message seen). The figure is messages per second.
"""

from __future__ import annotations

import time

from lab import Benchmark, Lab, Load, Sample
from mailpair import shared_pair
from procstat import cpu_seconds
from profiling import recording

MESSAGES = Load(full=10000, quick=200)


class RetrieveAll(Benchmark):
    name = "pop3-retr"
    figure = "POP3 RETR of all 10,000"
    unit = "msg/s"
    bar = 1.0
    peer_label = "Dovecot"

    def start(self, lab: Lab) -> None:
        self.pair = shared_pair(lab, MESSAGES.size(lab.quick))

    def _round(self, port: int, pid: int | None) -> Sample:
        pop = self.pair.pop3(port)
        try:
            count, _ = pop.stat()
            if count != self.pair.count:
                raise RuntimeError(f"STAT on port {port}: {count} messages, expected {self.pair.count}")
            cpu = cpu_seconds(pid) if pid else 0.0
            started = time.monotonic()
            for number in range(1, count + 1):
                pop.retr(number)
            elapsed = time.monotonic() - started
            spent = cpu_seconds(pid) - cpu if pid else None
        finally:
            pop.quit()
        return Sample(count / elapsed, count, spent)

    def ours(self, lab: Lab, round_number: int) -> Sample:
        service = self.pair.ours
        with recording(service.pid, lab.profile_file(f"{self.name}-{round_number}")):
            return self._round(service.ports["pop3"], service.pid)

    def peer(self, lab: Lab, round_number: int) -> Sample:
        return self._round(self.pair.dovecot.pop3_port, None)


BENCHMARKS = [RetrieveAll()]

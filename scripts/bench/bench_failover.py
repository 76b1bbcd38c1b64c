"""Failover latency: the upstream starts answering 4xx -> the message is visible in IMAP (issue 6).

Ours only: no peer product switches a domain to local mailboxes. The upstream
is :class:`FlakyUpstream`, a small SMTP server in this process that accepts
everything until told to fail, then answers ``421`` to new connections and
``451`` to every command of open ones (our relay keeps idle sessions).

Each failover, with the domain in normal mode (``--activation auto``): a
first message is relayed to the healthy upstream (so the relay has a session
open, as in production); an IMAP client logs in, selects INBOX and enters
``IDLE``; then the upstream starts failing, the clock starts, and an
``smtplib`` client sends a message for the covered user to our ``smtp``
listener. The clock stops when the IDLE session is told ``* N EXISTS``. So
the figure holds the SMTP transaction (spool, fsync), the relay attempt and
its ``451``, the switch to emergency, the Maildir delivery and the IDLE
notice, as a user's client sees it. Our IDLE polls folders every half second
from the moment a session starts idling, so the failovers of a round start
at evenly spread moments of that half second (0, 0.1, ... 0.4 s after
``IDLE``); a round's figure is their median, and the log line gives the part
until the file was in the Maildir. Afterwards the upstream is healthy again
and the failover waits for the recovery (``probe_interval = 1``) back to
normal mode.

The table needs a peer column: it holds the bar itself (1 s, label
``limit``), so the ratio is our median over 1 s and passes at <= 1.
"""

from __future__ import annotations

import os
import smtplib
import socket
import statistics
import socketserver
import threading
import time

from imaptools import RawIMAP, login_command
from lab import Benchmark, Lab, Load, Sample, free_port, wait_until
from mailpair import PASSWORD, SENDER, message
from ours import Ours
from procstat import cpu_seconds
from profiling import recording

DOMAIN = "failover.bench.test"
USER = f"user0@{DOMAIN}"
LIMIT = 1.0  # seconds, the bar
FAILOVERS = Load(full=5, quick=1)  # per round
POLL = 0.5  # our IDLE poll interval (continuity.imap.idle.POLL_INTERVAL)


class _Session(socketserver.StreamRequestHandler):
    """One SMTP session of :class:`FlakyUpstream` (lockstep or pipelined: a reply per command line)."""

    server: "_Server"

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _reply(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def handle(self) -> None:
        upstream = self.server.upstream
        if upstream.failing:
            self._reply("421 4.3.2 flaky.bench.test Service not available")
            return
        self._reply("220 flaky.bench.test ESMTP")
        while True:
            line = self.rfile.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self._reply("250 flaky.bench.test")
            elif verb == b"QUIT":
                self._reply("221 2.0.0 Bye")
                return
            elif verb in (b"RSET", b"NOOP"):
                self._reply("250 2.0.0 Ok")
            elif upstream.failing:
                self._reply("451 4.3.0 Temporarily unable to accept mail")
            elif verb in (b"MAIL", b"RCPT"):
                self._reply("250 2.1.0 Ok")
            elif verb == b"DATA":
                self._reply("354 End data with <CR><LF>.<CR><LF>")
                while True:
                    data = self.rfile.readline(65536)
                    if not data or data == b".\r\n":
                        break
                if upstream.failing:
                    self._reply("451 4.3.0 Temporarily unable to accept mail")
                else:
                    upstream.received += 1
                    self._reply("250 2.0.0 Ok: queued")
            else:
                self._reply("502 5.5.2 Command not recognised")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    upstream: "FlakyUpstream"


class FlakyUpstream:
    """The customer's server on 127.0.0.1:``port``: healthy until ``failing`` is set."""

    def __init__(self, port: int):
        self.port = port
        self.failing = False
        self.received = 0
        self._server: _Server | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> FlakyUpstream:
        self._server = _Server(("127.0.0.1", self.port), _Session)
        self._server.upstream = self
        threading.Thread(target=self._server.serve_forever, name="flaky-upstream", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _inbox_files(maildir) -> int:
    return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur") if (maildir / sub).is_dir())


def send(port: int, number: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="source.bench.test", timeout=30) as client:
        client.sendmail(SENDER, [USER], message(number, USER, 2048))


class FailoverLatency(Benchmark):
    name = "failover"
    figure = "failover latency: upstream 4xx -> visible in IMAP"
    unit = "s"
    higher_is_better = False
    bar = 1.0
    peer_label = "limit"

    def start(self, lab: Lab) -> None:
        self.upstream = FlakyUpstream(free_port()).start()
        lab.benchmark_cleanup.callback(self.upstream.stop)
        self.service = lab.benchmark_cleanup.enter_context(Ours(
            lab.path(self.name, "ours"), {"smtp": free_port(), "imap": free_port()},
            relay={"probe_interval": 1, "timeout": 5}, tls={"require_tls_for_auth": False}).started())
        self.service.add_domain(DOMAIN, self.upstream.address, "--activation", "auto", users=["user0"],
                                password=PASSWORD)
        self.sent = 0

    def _wait_normal(self) -> None:
        wait_until(lambda: self.service.mode(DOMAIN) == "normal", 60, "normal mode again", poll=0.2)
        wait_until(lambda: self.service.spool_count() == 0, 60, "our spool to empty")

    def _failover(self, delay: float) -> tuple[float, float, float]:
        """One failover ``delay`` seconds after IDLE starts.

        :returns: seconds until EXISTS, seconds until the file was in the Maildir, our CPU seconds meanwhile.
        """
        service, upstream = self.service, self.upstream
        upstream.failing = False
        self._wait_normal()
        relayed = upstream.received
        self.sent += 1
        send(service.ports["smtp"], self.sent)
        wait_until(lambda: upstream.received > relayed, 30, "the upstream to receive the first message")
        imap = RawIMAP(service.ports["imap"])
        try:
            imap.command(login_command(USER, PASSWORD))
            imap.command("SELECT INBOX")
            idle = imap.start_idle()
            time.sleep(delay)
            cpu = cpu_seconds(service.pid)
            upstream.failing = True
            started = time.monotonic()
            self.sent += 1
            send(service.ports["smtp"], self.sent)
            # The file comes before the IDLE notice (which waits in the socket meanwhile).
            written = wait_until(lambda: _inbox_files(service.maildir(USER)) > 0, 30, "the Maildir delivery",
                                 poll=0.001) - started
            imap.read_until(lambda line: line.startswith(b"* ") and line.rstrip().endswith(b" EXISTS"))
            latency = time.monotonic() - started
            spent = cpu_seconds(service.pid) - cpu
            imap.stop_idle(idle)
            imap.command("LOGOUT")
        finally:
            imap.close()
        upstream.failing = False
        self._wait_normal()  # recovery: the probe succeeds, INBOX goes to the upstream
        return latency, written, spent

    def ours(self, lab: Lab, round_number: int) -> Sample:
        count = FAILOVERS.size(lab.quick)
        with recording(self.service.pid, lab.profile_file(f"{self.name}-{round_number}")):
            results = [self._failover(POLL * index / count) for index in range(count)]
        latencies = [latency for latency, _, _ in results]
        lab.say(f"failover round {round_number}: visible in IMAP after "
                + ", ".join(f"{latency:.3f}" for latency in latencies) + " s; the file was in the Maildir after "
                + ", ".join(f"{written:.3f}" for _, written, _ in results) + " s")
        return Sample(statistics.median(latencies), count, sum(spent for _, _, spent in results))

    def peer(self, lab: Lab, round_number: int) -> Sample:
        return Sample(LIMIT)


BENCHMARKS = [FailoverLatency()]

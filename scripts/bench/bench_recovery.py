"""Recovery: INBOX mail redelivered to the upstream after ``emergency stop`` (issue 6).

Each round puts the domain in emergency mode (``emergency start``), fills 10
covered users' INBOXes with 10,000 messages of 2 KB (``--quick``: 200) the
way any Maildir tool may (CONTRACT: anything in INBOX counts), runs
``continuityctl emergency stop`` and counts until the ``smtp-sink`` upstream
has them all. The clock starts when ``emergency stop`` has returned, so it
includes the up to 2 seconds the service takes to notice the change.

There is no peer product for this job; the bar is our own inbound relay
rate, so the "peer" side of each round is the relay load of
:mod:`bench_smtp_inbound` through the same service to the same sink.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from bench_smtp_inbound import MESSAGES as RELAY_MESSAGES
from bench_smtp_inbound import RELAY_DOMAIN, SENDER, SIZE, USERS, maildir_files, ours_relay_round
from lab import Benchmark, Lab, Load, Sample, free_port, wait_until
from ours import Ours
from procstat import cpu_seconds
from profiling import recording
from smtptools import Sink

MESSAGES = Load(full=10000, quick=200)
RECOVERY_DOMAIN = "recovery.bench.test"
TIMEOUT = 900.0


def message(number: int, round_number: int, recipient: str) -> bytes:
    """A 2 KB message as a continuity delivery left it: our Return-Path and Delivered-To first."""
    head = (f"Return-Path: <{SENDER}>\r\nDelivered-To: {recipient}\r\nFrom: <{SENDER}>\r\nTo: <{recipient}>\r\n"
            f"Subject: recovery {round_number}/{number}\r\nMessage-ID: <{round_number}.{number}@source.bench.test>"
            f"\r\n\r\n").encode()
    line = b"x" * 78 + b"\r\n"
    return head + line * (SIZE // len(line))


def fill_inboxes(maildirs: dict[str, Path], count: int, round_number: int) -> None:
    """Put ``count`` messages into the INBOXes, spread evenly (``tmp/`` then ``new/``, as Maildir wants)."""
    for sub in ("tmp", "new", "cur"):
        for maildir in maildirs.values():
            (maildir / sub).mkdir(parents=True, exist_ok=True)
    addresses = list(maildirs)
    now = int(time.time())
    for number in range(count):
        address = addresses[number % len(addresses)]
        data = message(number, round_number, address)
        base = f"{now}.M{number}P{os.getpid()}Q{round_number}.bench.test,S={len(data)}"
        tmp = maildirs[address] / "tmp" / base
        tmp.write_bytes(data)
        os.rename(tmp, maildirs[address] / "new" / base)


class Recovery(Benchmark):
    name = "recovery"
    figure = "recovery: INBOX mail redelivered to the upstream"
    unit = "msg/s"
    bar = 1.0
    peer_label = "ours: inbound relay"

    def start(self, lab: Lab) -> None:
        self.messages = MESSAGES.size(lab.quick) // len(USERS) * len(USERS)
        self.relay_messages = RELAY_MESSAGES.size(lab.quick)
        self.sink = lab.benchmark_cleanup.enter_context(Sink(lab.path("recovery", "sink"), free_port()).started())
        self.service = lab.benchmark_cleanup.enter_context(
            Ours(lab.path("recovery", "ours"), {"smtp": free_port()}).started())
        self.service.add_domain(RECOVERY_DOMAIN, self.sink.address, "--activation", "manual", users=USERS)
        self.service.add_domain(RELAY_DOMAIN, self.sink.address)
        self.maildirs = {f"{user}@{RECOVERY_DOMAIN}": self.service.maildir(f"{user}@{RECOVERY_DOMAIN}")
                         for user in USERS}

    def ours(self, lab: Lab, round_number: int) -> Sample:
        service = self.service
        service.ctl("emergency", "start", RECOVERY_DOMAIN)
        wait_until(lambda: service.mode(RECOVERY_DOMAIN) == "emergency", 30, "emergency mode", poll=0.2)
        fill_inboxes(self.maildirs, self.messages, round_number)
        base = self.sink.messages()
        cpu = cpu_seconds(service.pid)
        with recording(service.pid, lab.profile_file(f"{self.name}-{round_number}")):
            service.ctl("emergency", "stop", RECOVERY_DOMAIN)
            started = time.monotonic()
            finished = self.sink.wait_messages(base + self.messages, TIMEOUT)
            wait_until(lambda: maildir_files(self.maildirs.values()) == 0, 60, "empty INBOXes")
            wait_until(lambda: service.mode(RECOVERY_DOMAIN) == "normal", 60, "normal mode", poll=0.2)
        return Sample(self.messages / (finished - started), self.messages, cpu_seconds(service.pid) - cpu)

    def peer(self, lab: Lab, round_number: int) -> Sample:
        return ours_relay_round(lab, self.service, self.sink, self.relay_messages,
                                f"{self.name}-relay-{round_number}")


BENCHMARKS = [Recovery()]

"""Inbound SMTP: relay to the upstream in normal mode, Maildir delivery in emergency mode (issues 3 and 6).

Load: ``smtp-source`` with 10 parallel sessions, 2,000 messages of 2 KB
(``--quick``: 100), one session per message as an MX sees them.

- **relay**: ours relays ``relay.bench.test`` to an ``smtp-sink``; Postfix
  relays the same domain (``relay_domains``, ``relay_transport``) to a sink of
  its own. The figure is messages per second from the start of the load until
  the sink counted the last one.
- **emergency**: ours has the domain in emergency mode (its upstream answers
  4xx) with 10 covered users; Postfix delivers to the same 10 addresses with
  its ``virtual`` agent into Maildirs. Ten ``smtp-source -s 1`` (one per
  user) make the same 10 sessions. The figure runs until every message is a
  file in a Maildir. Between rounds both sides' delivered files are moved
  aside (renamed into a directory of their own), not removed, and the first
  round waits for the relay benchmark's removals to age (:meth:`Lab.settle`):
  on this machine's ext4 a freed inode slows file creation for a minute
  (:func:`lab.spread`). With the Maildirs emptied between rounds, that took
  23% of our processes' CPU samples and 18% of Postfix's (``perf``).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from lab import SHORT_ROUNDS, Benchmark, Lab, Load, Sample, free_port, wait_until
from ours import Ours
from postfix import Postfix
from procstat import cpu_seconds
from profiling import recording
from smtptools import Sink, finish_sources, smtp_source

MESSAGES = Load(full=2000, quick=100)
SESSIONS = 10
SIZE = 2048
SENDER = "sender@source.bench.test"
RELAY_DOMAIN = "relay.bench.test"
EMERGENCY_DOMAIN = "emergency.bench.test"
USERS = [f"user{number}" for number in range(10)]
TIMEOUT = 600.0


def maildir_files(maildirs: Iterable[Path]) -> int:
    """Messages in ``new/`` and ``cur/`` of each Maildir."""
    total = 0
    for maildir in maildirs:
        for sub in ("new", "cur"):
            try:
                total += len(os.listdir(maildir / sub))
            except FileNotFoundError:
                pass
    return total


def set_aside(maildirs: Iterable[Path], into: Path) -> None:
    """Move the messages of ``maildirs`` into the directory ``into`` (same file system: renames, no inode
    is freed)."""
    for number, maildir in enumerate(maildirs):
        for sub in ("new", "cur"):
            directory = maildir / sub
            if directory.is_dir():
                for name in os.listdir(directory):
                    os.rename(directory / name, into / f"{number}-{sub}-{name}")


def ours_relay_round(lab: Lab, ours: Ours, sink: Sink, messages: int, profile: str) -> Sample:
    """Our inbound relay of ``messages`` to ``sink``: msg/s and our CPU (shared with the recovery benchmark)."""
    base = sink.messages()
    cpu = cpu_seconds(ours.pid)
    with recording(ours.pid, lab.profile_file(profile)):
        started = time.monotonic()
        source = smtp_source(ours.ports["smtp"], messages=messages, sessions=SESSIONS, size=SIZE, sender=SENDER,
                             recipient=f"someone@{RELAY_DOMAIN}")
        finished = sink.wait_messages(base + messages, TIMEOUT)
        finish_sources([source], TIMEOUT)
        wait_until(lambda: ours.spool_count() == 0, 60, "our spool to empty")
    return Sample(messages / (finished - started), messages, cpu_seconds(ours.pid) - cpu)


class InboundRelay(Benchmark):
    name = "relay"
    rounds = SHORT_ROUNDS
    figure = "inbound relay, normal mode"
    unit = "msg/s"
    bar = 1.0

    def start(self, lab: Lab) -> None:
        self.messages = MESSAGES.size(lab.quick)
        keep = lab.benchmark_cleanup.enter_context
        self.our_sink = keep(Sink(lab.path("relay", "sink-ours"), free_port()).started())
        self.peer_sink = keep(Sink(lab.path("relay", "sink-peer"), free_port()).started())
        self.service = keep(Ours(lab.path("relay", "ours"), {"smtp": free_port()}).started())
        self.service.add_domain(RELAY_DOMAIN, self.our_sink.address)
        self.postfix = keep(Postfix(lab.path("relay", "postfix"), free_port(), {
            "relay_domains": RELAY_DOMAIN,
            "relay_transport": f"smtp:[127.0.0.1]:{self.peer_sink.port}",
        }).started())

    def ours(self, lab: Lab, round_number: int) -> Sample:
        return ours_relay_round(lab, self.service, self.our_sink, self.messages, f"{self.name}-{round_number}")

    def peer(self, lab: Lab, round_number: int) -> Sample:
        base = self.peer_sink.messages()
        started = time.monotonic()
        source = smtp_source(self.postfix.smtp_port, messages=self.messages, sessions=SESSIONS, size=SIZE,
                             sender=SENDER, recipient=f"someone@{RELAY_DOMAIN}")
        finished = self.peer_sink.wait_messages(base + self.messages, TIMEOUT)
        finish_sources([source], TIMEOUT)
        wait_until(self.postfix.queue_empty, 60, "Postfix's queue to empty")
        return Sample(self.messages / (finished - started), self.messages)


class InboundEmergency(Benchmark):
    name = "emergency"
    rounds = SHORT_ROUNDS
    figure = "inbound, emergency mode (Maildir delivery)"
    unit = "msg/s"
    bar = 1.2
    peer_label = "Postfix virtual"

    def start(self, lab: Lab) -> None:
        self.messages = MESSAGES.size(lab.quick) // len(USERS) * len(USERS)
        # The customer's server is down: it answers every connection with 4xx.
        failing = lab.benchmark_cleanup.enter_context(
            Sink(lab.path("emergency", "sink"), free_port(), options=("-r", "CONNECT")).started())
        self.service = lab.benchmark_cleanup.enter_context(
            Ours(lab.path("emergency", "ours"), {"smtp": free_port()}).started())
        self.service.add_domain(EMERGENCY_DOMAIN, failing.address, "--activation", "auto", users=USERS)
        self.service.ctl("emergency", "start", EMERGENCY_DOMAIN)
        wait_until(lambda: self.service.mode(EMERGENCY_DOMAIN) == "emergency", 30, "emergency mode", poll=0.2)
        self.our_maildirs = [self.service.maildir(f"{user}@{EMERGENCY_DOMAIN}") for user in USERS]
        root = lab.path("emergency", "postfix")
        self.mail_base = root / "mail"
        self.mail_base.mkdir(exist_ok=True)
        shutil.chown(self.mail_base, "nobody", "nogroup")  # the virtual agent writes as virtual_uid_maps says
        mailboxes = "".join(f"{user}@{EMERGENCY_DOMAIN} {EMERGENCY_DOMAIN}/{user}/\n" for user in USERS)
        self.postfix = lab.benchmark_cleanup.enter_context(Postfix(root, free_port(), {
            "virtual_mailbox_domains": EMERGENCY_DOMAIN,
            "virtual_mailbox_maps": "texthash:{conf}/vmailbox",
            "virtual_mailbox_base": str(self.mail_base),
            "virtual_uid_maps": "static:65534",
            "virtual_gid_maps": "static:65534",
        }, maps={"vmailbox": mailboxes}).started())
        self.peer_maildirs = [self.mail_base / EMERGENCY_DOMAIN / user for user in USERS]
        self.our_aside = lab.path("emergency", "delivered-ours")
        self.peer_aside = lab.path("emergency", "delivered-postfix")
        lab.settle()

    def _load(self, port: int) -> list:
        per_user = self.messages // len(USERS)
        return [smtp_source(port, messages=per_user, sessions=1, size=SIZE, sender=SENDER,
                            recipient=f"{user}@{EMERGENCY_DOMAIN}") for user in USERS]

    def _round(self, port: int, maildirs: list[Path], aside: Path) -> float:
        set_aside(maildirs, aside)
        started = time.monotonic()
        sources = self._load(port)
        finished = wait_until(lambda: maildir_files(maildirs) >= self.messages, TIMEOUT, "Maildir deliveries")
        finish_sources(sources, TIMEOUT)
        return self.messages / (finished - started)

    def ours(self, lab: Lab, round_number: int) -> Sample:
        cpu = cpu_seconds(self.service.pid)
        with recording(self.service.pid, lab.profile_file(f"{self.name}-{round_number}")):
            rate = self._round(self.service.ports["smtp"], self.our_maildirs, self.our_aside)
            wait_until(lambda: self.service.spool_count() == 0, 60, "our spool to empty")
        return Sample(rate, self.messages, cpu_seconds(self.service.pid) - cpu)

    def peer(self, lab: Lab, round_number: int) -> Sample:
        rate = self._round(self.postfix.smtp_port, self.peer_maildirs, self.peer_aside)
        wait_until(self.postfix.queue_empty, 60, "Postfix's queue to empty")
        return Sample(rate, self.messages)


BENCHMARKS = [InboundRelay(), InboundEmergency()]

"""Postfix's SMTP test programs as benchmark load and upstream: ``smtp-source`` and ``smtp-sink``.

``smtp-sink`` stands in for the customer's server. It runs with ``-c``
(running counters on standard output, updated at each ``.``) and without
``-d``: nothing is written per message, so the sink costs the same whoever
sends to it. ``smtp-source`` is the sending Internet; without ``-d`` each
message is a session of its own (connect, greeting, HELO, MAIL, RCPT, DATA,
QUIT), the load of an MX.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from lab import Process, wait_for_port

SMTP_SINK = "/usr/sbin/smtp-sink"
SMTP_SOURCE = "/usr/sbin/smtp-source"
_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class SinkTimeout(Exception):
    """The sink did not receive what was expected in time."""


class Sink(Process):
    """``smtp-sink`` on 127.0.0.1:``port``; ``messages()`` counts what it received."""

    stop_timeout = 5.0

    def __init__(self, workdir: Path, port: int, options: Sequence[str] = ()):
        self.workdir = workdir
        self.port = port
        self.options = tuple(options)
        self.process: subprocess.Popen | None = None
        self._out = workdir / f"smtp-sink-{port}.out"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> "Sink":
        self.workdir.mkdir(parents=True, exist_ok=True)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []  # it refuses to run as root otherwise
        with open(self._out, "wb") as out:
            self.process = subprocess.Popen([SMTP_SINK, *user, "-c", *self.options, self.address, "1024"],
                                            stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout, what="smtp-sink", process=self.process)
        return self

    def messages(self) -> int:
        """Messages received since the start (the ``mesg=`` counter)."""
        try:
            found = _COUNTERS.findall(self._out.read_bytes()[-200:])
        except OSError:
            return 0
        return int(found[-1][2]) if found else 0

    def wait_messages(self, count: int, timeout: float, poll: float = 0.01) -> float:
        """Wait until ``count`` messages arrived in total; return ``time.monotonic()`` then."""
        deadline = time.monotonic() + timeout
        while True:
            if self.messages() >= count:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise SinkTimeout(f"smtp-sink on {self.port}: {self.messages()} of {count} messages after {timeout}s")
            time.sleep(poll)



def smtp_source(port: int, *, messages: int, sessions: int, size: int, sender: str, recipient: str,
                helo: str = "source.bench.test") -> subprocess.Popen:
    """Start ``smtp-source -s SESSIONS -m MESSAGES -l SIZE`` against 127.0.0.1:``port``."""
    return subprocess.Popen(
        [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-M", helo, "-f", sender,
         "-t", recipient, f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def finish_sources(sources: Sequence[subprocess.Popen], timeout: float) -> None:
    """Wait for every ``smtp-source``; raise with its output if one failed."""
    deadline = time.monotonic() + timeout
    for source in sources:
        try:
            output, _ = source.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            source.kill()
            output, _ = source.communicate()
            raise RuntimeError(f"smtp-source did not finish in {timeout}s: {output.decode(errors='replace')[-500:]}")
        if source.returncode != 0:
            raise RuntimeError(f"smtp-source failed ({source.returncode}): {output.decode(errors='replace')[-500:]}")


"""Memory per idle SMTP connection: 1,000 sessions left open after the greeting (issue 6).

Each round starts both servers afresh, opens one connection and closes it
(both have then loaded what a session needs), takes the baseline, opens
``CONNECTIONS`` connections and reads each ``220`` greeting, waits a second
and measures again. The figure is the growth divided by the connections, in
KiB of PSS (:mod:`procstat`): for ours the one ``twistd`` process, for
Postfix the master and all its children (one ``smtpd`` per connection, whose
shared pages PSS divides among them). Postfix's ``default_process_limit``
and ``smtpd_client_connection_count_limit`` and our ``connections_per_ip``
are raised so every connection is served.
"""

from __future__ import annotations

import socket
import time

from lab import Benchmark, Lab, Load, Sample, free_port
from ours import Ours
from postfix import Postfix
from procstat import tree_pss_kib

CONNECTIONS = Load(full=1000, quick=50)
SETTLE = 1.0


def greeted(port: int, timeout: float = 30.0) -> socket.socket:
    """A connection to 127.0.0.1:``port`` that has read the server's ``220`` greeting."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    reply = b""
    while not reply.endswith(b"\r\n") or reply[3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    if not reply.startswith(b"220"):
        sock.close()
        raise RuntimeError(f"127.0.0.1:{port} greeted with {reply[:200]!r}")
    return sock


def growth_per_connection(port: int, measure, count: int) -> float:
    """KiB that ``measure()`` grows by per idle connection."""
    greeted(port).close()
    time.sleep(SETTLE)
    before = measure()
    sockets = []
    try:
        for _ in range(count):
            sockets.append(greeted(port))
        time.sleep(SETTLE)
        after = measure()
    finally:
        for sock in sockets:
            sock.close()
    return (after - before) / count


class IdleSMTPMemory(Benchmark):
    name = "idle-smtp"
    figure = "memory per idle SMTP connection (PSS)"
    unit = "KiB"
    higher_is_better = False
    bar = 0.1
    peer_label = "Postfix smtpd"

    def start(self, lab: Lab) -> None:
        self.connections = CONNECTIONS.size(lab.quick)

    def ours(self, lab: Lab, round_number: int) -> Sample:
        port = free_port()
        service = Ours(lab.path("idle-smtp", f"ours-{round_number}"), {"smtp": port},
                       limits={"connections_per_ip": self.connections + 100})
        with service.started():
            value = growth_per_connection(port, lambda: tree_pss_kib(service.pid), self.connections)
        return Sample(value)

    def peer(self, lab: Lab, round_number: int) -> Sample:
        port = free_port()
        limit = str(self.connections + 100)
        postfix = Postfix(lab.path("idle-smtp", f"postfix-{round_number}"), port, {
            "default_process_limit": limit,
            "smtpd_client_connection_count_limit": limit,
        })
        with postfix.started():
            value = growth_per_connection(port, lambda: tree_pss_kib(postfix.master_pid()), self.connections)
        return Sample(value)


BENCHMARKS = [IdleSMTPMemory()]

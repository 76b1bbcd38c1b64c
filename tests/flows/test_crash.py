"""A kill -9 or a SIGTERM during a load loses no acknowledged message (CONTRACT 1 and 4: durable spool).

Several smtplib clients send to the real service while it relays to a slow
``smtp-sink`` (it waits a second before answering DATA, so mail piles up in the
spool); the service is SIGKILLed, or stopped with SIGTERM, mid-load and started
again on the same data_dir. Every message that got its ``250`` must reach the sink; duplicates
are allowed (delivery is at-least-once), losses are not.
"""

from __future__ import annotations

import re
import smtplib
import threading
import time

import pytest

from service import MX, wait_until
from support import free_port

from continuity.testing.sink import smtp_sink  # noqa: F401 (fixture)

CLIENTS = 6
KILL_AFTER = 90  # acknowledged messages before the stop
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


class Client(threading.Thread):
    """Sends numbered messages over reused sessions until told to stop or the service goes away."""

    def __init__(self, number: int, port: int, stop: threading.Event, acked: list[str], lock: threading.Lock):
        super().__init__(daemon=True)
        self.number, self.port, self.stop, self.acked, self.lock = number, port, stop, acked, lock

    def run(self) -> None:
        sent = 0
        try:
            while not self.stop.is_set():
                with smtplib.SMTP("127.0.0.1", self.port, timeout=10) as client:
                    client.ehlo("load.sender.example")
                    for _ in range(5):
                        if self.stop.is_set():
                            return
                        message_id = f"c{self.number}.n{sent}@load.sender.example"
                        sent += 1
                        client.sendmail("load@sender.example", ["bob@example.com"],
                                        f"Message-ID: <{message_id}>\r\nSubject: load {message_id}\r\n\r\n"
                                        f"{'x' * 2000}\r\n".encode())
                        with self.lock:  # sendmail returned: the service answered 250
                            self.acked.append(message_id)
        except (OSError, smtplib.SMTPException):
            return  # the service was killed under us: what was not acknowledged may be lost


def arrived(sink) -> set[str]:
    ids = set()
    for message in sink.messages():
        match = _MESSAGE_ID.search(message.content)
        if match:
            ids.add(match.group(1).decode())
    return ids


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_stop_during_a_load_loses_no_acknowledged_message(tmp_path, smtp_sink, stop):
    """Every message acknowledged before a SIGKILL, or a SIGTERM (which stops cleanly), reaches the upstream."""
    upstream = smtp_sink("-w", "1")
    mx = MX(tmp_path, relay={"timeout": 5, "retry_intervals": [1, 2]}).start()
    mx.add_domain(upstream.address, "--activation", "manual")
    stopped, lock, acked = threading.Event(), threading.Lock(), []
    clients = [Client(n, mx.port, stopped, acked, lock) for n in range(CLIENTS)]
    for client in clients:
        client.start()
    try:
        wait_until(lambda: len(acked) >= KILL_AFTER, timeout=60, what=f"{KILL_AFTER} acknowledged messages")
        if stop == "SIGKILL":
            mx.kill()
        else:
            # A clean stop lets the deliveries in flight finish, and every acknowledged message may
            # be in flight: with the upstream unreachable, what comes now is spooled and waiting at the stop.
            assert mx.cli("domain", "set", "example.com", "--upstream", f"127.0.0.1:{free_port()}").returncode == 0
            more = len(acked) + 30
            wait_until(lambda: len(acked) >= more, timeout=60, what="messages acknowledged after the switch")
            time.sleep(2)  # the service sees the new upstream within 2 s (CONTRACT 1)
            mx.stop()  # within 30 s, cleanly: in-flight deliveries finish, waiting ones stay spooled
    finally:
        stopped.set()
        for client in clients:
            client.join(15)
    with lock:
        acknowledged = set(acked)
    pending = acknowledged - arrived(upstream)
    assert pending, "every message had arrived before the stop: the test proved nothing"
    assert mx.cli("domain", "set", "example.com", "--upstream", upstream.address).returncode == 0
    mx.start()
    try:
        # The sink answers each DATA after 1 s (-w 1) and the service opens at most 20 sessions to it
        # (ConnectionPool.max_sessions, as Postfix): the clients acknowledged ~1,400 messages by the stop.
        wait_until(lambda: not acknowledged - arrived(upstream), timeout=90 + len(pending) / 20,
                   what=f"{len(pending)} acknowledged messages that were spooled at the stop")
    finally:
        mx.stop()

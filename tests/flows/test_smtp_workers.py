"""SMTP worker processes (``[server] smtp_workers``) with the real ``twistd``: they accept on the service's
port and spool what they accept, the service process indexes and delivers it (failover included), a killed
one is started again, and none outlives the service."""

from __future__ import annotations

import os
import signal
import smtplib
import time

import pytest

from service import MESSAGE, MX, wait_until

from continuity.testing.sink import smtp_sink  # noqa: F401 (fixture)


def workers_of(pid: int) -> list[int]:
    """Live child processes of ``pid`` running ``continuity.workers``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"continuity.workers" in command:
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def mx(tmp_path, smtp_sink):
    upstream = smtp_sink()
    mx = MX(tmp_path, server={"smtp_workers": 1}).start()
    mx.add_domain(upstream.address)
    mx.upstream = upstream
    mx.pid = mx.service.process.pid
    wait_until(lambda: workers_of(mx.pid), what="the SMTP worker to start")
    yield mx
    if mx.service.process is not None:
        mx.stop()


class service_process_stopped:
    """With the service process frozen (SIGSTOP) only a worker can answer."""

    def __init__(self, mx):
        self.pid = mx.pid

    def __enter__(self):
        os.kill(self.pid, signal.SIGSTOP)

    def __exit__(self, *exc):
        os.kill(self.pid, signal.SIGCONT)


def send_numbered(mx, count: int) -> None:
    for number in range(count):
        mx.send(["bob@example.com"], MESSAGE.replace(b"<m1@", f"<w{number}@".encode()))


def test_a_worker_accepts_and_the_service_relays(mx):
    """The worker's 250 means spooled; the service process (frozen meanwhile) indexes and relays it after."""
    with service_process_stopped(mx):
        send_numbered(mx, 3)  # answered by the worker alone
        time.sleep(0.5)
        assert mx.upstream.messages(0) == []  # nobody relays while the service is frozen
    messages = mx.upstream.messages(3, timeout=20)
    assert sorted(m.recipients for m in messages) == [("bob@example.com",)] * 3
    wait_until(lambda: len([line for line in mx.service.log().splitlines()
                            if "smtp worker 1:" in line and "queued as" in line]) == 3,
               what="the worker's log lines in the service's log")
    statuses = [row["status"] for row in mx.cli.json("track", "--recipient", "bob@example.com")]
    assert statuses == ["relayed"] * 3


def test_mail_a_worker_accepted_fails_over_to_the_mailbox(mx, smtp_sink):
    """An upstream's 4xx for mail a worker took: the service switches the domain and delivers to the mailbox."""
    failing = smtp_sink("-r", "RCPT")
    assert mx.cli("domain", "set", "example.com", "--upstream", failing.address).returncode == 0
    time.sleep(2.5)  # both processes see the new upstream (the service polls every second, the cache lives 1 s)
    with service_process_stopped(mx):
        mx.send(["bob@example.com"])  # only the worker can take it
    files = wait_until(lambda: mx.inbox("bob@example.com"), timeout=15, what="the continuity delivery")
    assert b"Hi Bob." in files[0].read_bytes()
    assert mx.cli.json("domain", "show", "example.com")["mode"] == "emergency"
    (row,) = mx.cli.json("track", "--recipient", "bob@example.com")
    assert row["status"] == "delayed"


def test_a_killed_worker_is_started_again(mx):
    (worker,) = workers_of(mx.pid)
    os.kill(worker, signal.SIGKILL)
    (again,) = wait_until(lambda: [p for p in workers_of(mx.pid) if p != worker], timeout=15,
                          what="a new SMTP worker")
    assert "smtp worker 1 ended" in mx.service.log()
    time.sleep(1)  # the new worker adopts the port as it starts
    with service_process_stopped(mx):
        send_numbered(mx, 1)
    assert len(mx.upstream.messages(1, timeout=20)) == 1


def test_the_workers_end_with_a_killed_service_and_a_restart_gets_the_port(mx):
    (worker,) = workers_of(mx.pid)
    mx.kill()
    wait_until(lambda: not alive(worker), timeout=10, what="the worker to end with its service")
    mx.start()
    mx.send(["bob@example.com"])
    assert len(mx.upstream.messages(1, timeout=20)) == 1


def test_without_workers_the_service_accepts_alone(tmp_path, smtp_sink):
    upstream = smtp_sink()
    mx = MX(tmp_path, server={"smtp_workers": 0}).start()
    try:
        mx.add_domain(upstream.address)
        mx.send(["bob@example.com"])
        assert len(upstream.messages(1, timeout=20)) == 1
        assert workers_of(mx.service.process.pid) == []
        os.kill(mx.service.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises((smtplib.SMTPServerDisconnected, TimeoutError, OSError)):
                with smtplib.SMTP("127.0.0.1", mx.port, timeout=2) as client:
                    client.ehlo("client.sender.example")
        finally:
            os.kill(mx.service.process.pid, signal.SIGCONT)
    finally:
        mx.stop()


def test_in_emergency_a_worker_delivers_to_the_mailbox_itself(mx):
    """A message whose every copy goes to a continuity mailbox needs nothing of the service process."""
    assert mx.cli("domain", "set", "example.com", "--activation", "manual").returncode == 0  # no probe ends it
    assert mx.cli("emergency", "start", "example.com").returncode == 0
    time.sleep(2.5)  # the worker's directory answers are at most a second old; the service's poll is 1 s
    with service_process_stopped(mx):
        mx.send(["bob@example.com"])
        files = wait_until(lambda: mx.inbox("bob@example.com"), timeout=10, what="the worker's Maildir delivery")
    assert b"Hi Bob." in files[0].read_bytes()
    (row,) = mx.cli.json("track", "--recipient", "bob@example.com")
    assert row["status"] == "delayed"


def test_connections_per_ip_count_across_the_service_and_its_worker(tmp_path, smtp_sink):
    """CONTRACT 2: connections_per_ip per listener, then 421, whichever process the kernel gives each one."""
    import socket

    mx = MX(tmp_path, server={"smtp_workers": 1})
    mx.config.write_text(mx.config.read_text() + "\n[limits]\nconnections_per_ip = 3\n")
    mx.start()
    pid, opened = mx.service.process.pid, []

    def connect() -> bytes:
        conn = socket.create_connection(("127.0.0.1", mx.port), timeout=10)
        opened.append(conn)
        return conn.recv(200)[:3]

    try:
        (worker,) = wait_until(lambda: workers_of(pid), what="the SMTP worker to start")
        time.sleep(1)  # the worker adopts the socket as it starts
        os.kill(pid, signal.SIGSTOP)  # only the worker accepts
        try:
            assert [connect(), connect()] == [b"220", b"220"]
        finally:
            os.kill(pid, signal.SIGCONT)
        os.kill(worker, signal.SIGSTOP)  # only the service accepts
        try:
            assert [connect(), connect(), connect()] == [b"220", b"421", b"421"]
        finally:
            os.kill(worker, signal.SIGCONT)
    finally:
        for conn in opened:
            conn.close()
        mx.stop()


def test_a_worker_s_refusals_are_tracked_by_the_service(mx):
    """A worker writes nothing to the store: its 550s reach `track` through the service process."""
    with service_process_stopped(mx):
        with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
            client.ehlo("client.sender.example")
            client.mail("alice@sender.example")
            code, _ = client.rcpt("someone@elsewhere.example")
    assert code == 550
    rows = wait_until(lambda: mx.cli.json("track", "--recipient", "someone@elsewhere.example"), timeout=10,
                      what="the refusal's tracking row")
    assert [row["status"] for row in rows] == ["rejected"]

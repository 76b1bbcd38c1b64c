"""The pipes between the service process and its SMTP workers: lines, failover reports and their answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from continuity.workers import MAX_LINE, Lines, SMTPWorkers, _Parent, _Worker


def read_all(chunks: list[bytes]) -> list[str]:
    got: list[str] = []
    reader = Lines(got.append)
    for chunk in chunks:
        reader.feed(chunk)
    return got


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=20))
def test_lines_survive_any_split_of_the_stream(cuts):
    stream = "failed example.com 451 4.3.0 try later\nclear\nstored example.com\nstored b\u00fccher.example\n"
    data = stream.encode("utf-8")
    chunks, offset = [], 0
    for cut in cuts:
        chunks.append(data[offset:offset + cut])
        offset += cut
    chunks.append(data[offset:])
    assert read_all(chunks) == stream.splitlines()


def test_an_overlong_line_is_dropped_not_buffered():
    """A broken peer cannot make the other side buffer without limit."""
    assert read_all([b"x" * (MAX_LINE + 10), b"x" * 10, b"\nclear\n"]) == ["clear"]


class ServiceSide:
    """A stand-in for the service's failover monitor and the SMTP workers service around one worker."""

    def __init__(self):
        self.failures: list[tuple[str, str]] = []
        self.stored: Deferred[None] = Deferred()
        self.workers = SMTPWorkers(Clock(), "/etc/continuity.toml", 1, {}, self.upstream_failed)
        self.workers.running = True
        self.worker = _Worker(self.workers, 1)
        self.worker.transport = StringTransport()

    def upstream_failed(self, domain: str, reason: str) -> Deferred[None]:
        self.failures.append((domain, reason))
        return self.stored


def test_the_service_switches_the_domain_and_tells_the_worker_when_it_is_stored():
    service = ServiceSide()
    service.worker.childDataReceived(3, b"failed example.com 421 4.4.2 timeout after 30s\n")
    assert service.failures == [("example.com", "421 4.4.2 timeout after 30s (smtp worker 1)")]
    assert service.worker.transport.value() == b""
    service.stored.callback(None)
    assert service.worker.transport.value() == b"stored example.com\n"


def test_the_worker_waits_for_the_stored_mode_before_routing_again():
    clock = Clock()
    parent = _Parent(clock)
    parent.makeConnection(StringTransport())
    fired: list = []
    parent.upstream_failed("example.com", "451 4.3.0\r\n  try later").addCallback(fired.append)
    assert parent.transport.value() == b"failed example.com 451 4.3.0 try later\n"
    parent.dataReceived(b"stored other.example\n")
    assert fired == []
    parent.dataReceived(b"stored example.com\n")
    assert fired == [None]


def test_the_worker_routes_again_after_a_while_without_an_answer():
    """A service that never answers (stopping, say) must not hold a delivery for ever."""
    clock = Clock()
    parent = _Parent(clock)
    parent.makeConnection(StringTransport())
    fired: list = []
    parent.upstream_failed("example.com", "451").addCallback(fired.append)
    clock.advance(_Parent.wait)
    assert fired == [None]
    parent.dataReceived(b"stored example.com\n")  # too late: nothing fires twice
    assert fired == [None]


def test_clear_drops_the_worker_s_cached_directory_answers():
    parent = _Parent(Clock())
    cleared: list = []
    parent.cleared = lambda: cleared.append(True)
    parent.dataReceived(b"clear\n")
    assert cleared == [True]


class SpawningClock(Clock):
    """A Clock that records spawnProcess calls (the worker gets a transport with a pid)."""

    def __init__(self):
        super().__init__()
        self.spawned: list = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        protocol.transport = StringTransport()
        protocol.transport.pid = 1000 + len(self.spawned)
        self.spawned.append((protocol, args, childFDs))
        return protocol.transport


def test_a_worker_that_keeps_ending_is_started_again_ever_more_slowly():
    from twisted.python.failure import Failure
    from twisted.internet.error import ProcessTerminated

    clock = SpawningClock()
    workers = SMTPWorkers(clock, "/etc/continuity.toml", 1, {"smtp": lambda: 7}, lambda d, r: Deferred())
    workers.startService()
    (first, args, fds) = clock.spawned[0]
    assert fds[4] == 7 and "smtp=4" in args
    delays = []
    for _ in range(4):
        worker = clock.spawned[-1][0]
        worker.processEnded(Failure(ProcessTerminated(1)))
        before = len(clock.spawned)
        waited = 0.0
        while len(clock.spawned) == before:
            clock.advance(0.5)
            waited += 0.5
        delays.append(waited)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    clock.advance(120)  # this one lived: its next end is a first quick one again
    clock.spawned[-1][0].processEnded(Failure(ProcessTerminated(1)))
    clock.advance(1.0)
    assert len(clock.spawned) == 6


def test_connections_per_ip_are_counted_across_the_processes(tmp_path):
    """The service and a worker accept on one socket: the client's limit is one count for both."""
    from continuity.counters import SharedConnectionCounter

    service = SharedConnectionCounter(3, str(tmp_path), "smtp", 0, 2)
    worker = SharedConnectionCounter(3, str(tmp_path), "smtp", 1, 2)
    assert service.acquire("192.0.2.7") and service.acquire("192.0.2.7") and worker.acquire("192.0.2.7")
    assert not worker.acquire("192.0.2.7") and not service.acquire("192.0.2.7")
    assert worker.acquire("198.51.100.1")  # another client is counted apart
    service.release("192.0.2.7")
    assert worker.acquire("192.0.2.7")
    restarted = SharedConnectionCounter(3, str(tmp_path), "smtp", 1, 2)  # the worker ended with its connections
    assert restarted.acquire("192.0.2.7") and restarted.acquire("192.0.2.7")
    assert not service.acquire("192.0.2.7")
    again = SharedConnectionCounter(3, str(tmp_path), "smtp", 0, 2)  # the whole service starts again
    assert again.acquire("192.0.2.7") and again.acquire("192.0.2.7") and again.acquire("192.0.2.7")

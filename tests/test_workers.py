"""The pipes between the service process and its SMTP workers: lines and hand-overs of spooled mail."""

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
    stream = "spooled 0660EADDCE9E1DF97749\nclear\nunknown b\u00fccher.example\n"
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
    """The SMTP workers service around one worker, with the intake's ``adopt`` recorded."""

    def __init__(self, clock=None):
        self.clock = clock or Clock()
        self.adopted: list[str] = []
        self.results: list[Deferred] = []
        self.recorded: list[tuple] = []
        self.rejected: list[tuple] = []
        self.serving: list[bool] = []
        self.scans = 0
        self.workers = SMTPWorkers(self.clock, "/etc/continuity.toml", 1, {"smtp": lambda: 7}, self,
                                   self.record, lambda *row: self.rejected.append(row) or Deferred(),
                                   serving=self.serving.append)
        self.workers.running = True
        self.worker = _Worker(self.workers, 1)
        self.worker.transport = StringTransport()
        self.workers._workers[1] = self.worker

    def record(self, *row) -> Deferred[None]:
        self.recorded.append(row)
        return Deferred()

    def adopt(self, queue_id: str) -> Deferred[None]:
        self.adopted.append(queue_id)
        d: Deferred[None] = Deferred()
        self.results.append(d)
        return d

    async def index_strays(self) -> int:
        self.scans += 1
        return 0


def test_a_spooled_message_is_handed_to_the_service_s_intake():
    service = ServiceSide()
    service.worker.childDataReceived(3, b"spooled 0660EADDCE9E1DF97749\nspooled 0660EA")
    service.worker.childDataReceived(3, b"DDCE9E1DF97750\nspooled ../etc/passwd\n")
    assert service.adopted == ["0660EADDCE9E1DF97749", "0660EADDCE9E1DF97750"]


def test_a_hand_over_that_fails_is_tried_again_later():
    """Indexing can fail (the store's disk full): the file is durable, so the service tries again."""
    service = ServiceSide()
    service.worker.childDataReceived(3, b"spooled 0660EADDCE9E1DF97749\n")
    service.results[0].errback(OSError(28, "No space left on device"))
    assert service.adopted == ["0660EADDCE9E1DF97749"]
    service.clock.advance(SMTPWorkers.adopt_retry)
    assert service.adopted == ["0660EADDCE9E1DF97749"] * 2
    service.results[1].callback(None)
    service.clock.advance(SMTPWorkers.adopt_retry)
    assert len(service.adopted) == 2


def test_a_hand_over_of_a_file_not_in_the_spool_is_not_tried_again():
    service = ServiceSide()
    service.worker.childDataReceived(3, b"spooled 0660EADDCE9E1DF97749\n")
    service.results[0].errback(FileNotFoundError(2, "No such file or directory"))
    service.clock.advance(SMTPWorkers.adopt_retry * 3)
    assert service.adopted == ["0660EADDCE9E1DF97749"]


def test_when_a_worker_ends_the_service_looks_for_mail_it_did_not_hand_over():
    """A worker killed right after a 250 may not have written its hand-over: the spool has the message."""
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    service = ServiceSide()
    service.worker.processEnded(Failure(ProcessTerminated(None, signal=9)))
    assert service.scans == 1


def test_the_worker_hands_over_each_message():
    parent = _Parent(Clock())
    parent.makeConnection(StringTransport())
    parent.spooled("0660EADDCE9E1DF97749")
    parent.spooled("0660EADDCE9E1DF97750")
    assert parent.transport.value() == b"spooled 0660EADDCE9E1DF97749\nspooled 0660EADDCE9E1DF97750\n"


def test_a_worker_s_mailbox_copies_are_tracked_by_the_service_one_line_each():
    """Each copy is a line of its own (a thousand recipients must not make one line too long to read)."""
    parent = _Parent(Clock())
    parent.makeConnection(StringTransport())
    copies = [(f"user{n}@example.com", f"user{n}@example.com", f"1700000000.M1P2Q{n}R3.mx,S=99") for n in range(1000)]
    parent.delivered("0660EADDCE9E1DF97749", None, "alice@sender.example", "192.0.2.1", 1_800_000_000.5, copies)
    service = ServiceSide()
    service.worker.childDataReceived(3, parent.transport.value())
    assert len(service.recorded) == 1000
    assert service.recorded[7] == ("0660EADDCE9E1DF97749", None, "alice@sender.example", "192.0.2.1",
                                   1_800_000_000.5, [copies[7]])


def test_a_worker_s_refused_recipients_are_tracked_by_the_service():
    parent = _Parent(Clock())
    parent.makeConnection(StringTransport())
    parent.rejected("", "nobody@example.com", "user unknown in emergency mode (client 192.0.2.1)")
    service = ServiceSide()
    service.worker.childDataReceived(3, parent.transport.value())
    assert service.rejected == [("", "nobody@example.com", "user unknown in emergency mode (client 192.0.2.1)")]


def test_the_service_leaves_the_workers_only_listeners_to_its_workers_while_one_is_ready():
    """Told once when the first worker is ready, and when the last ready one ended (the service accepts again)."""
    from twisted.internet.error import ProcessTerminated
    from twisted.python.failure import Failure

    service = ServiceSide()
    parent = _Parent(Clock())
    parent.makeConnection(StringTransport())
    parent.ready()
    service.worker.childDataReceived(3, parent.transport.value() * 2)
    assert service.serving == [True]
    service.worker.processEnded(Failure(ProcessTerminated(None, signal=9)))
    assert service.serving == [True, False]
    assert [call.func for call in service.clock.getDelayedCalls()] == [service.workers._spawn]  # no silence check
    stale = _Worker(service.workers, 1)  # no longer the worker of that number: its word counts for nothing
    stale.transport = StringTransport()
    stale.childDataReceived(3, b"ready\n")
    assert service.serving == [True, False]


def test_a_worker_that_stops_answering_gives_the_listeners_back_to_the_service():
    """A stopped worker (SIGSTOP, a stuck reactor) is not an ended one: silence for 3 s is enough."""
    service = ServiceSide()
    for _ in range(5):  # a heartbeat a second
        service.worker.childDataReceived(3, b"ready\n")
        service.clock.advance(1)
    assert service.serving == [True]
    service.clock.advance(SMTPWorkers.silence)
    assert service.serving == [True, False]
    service.worker.childDataReceived(3, b"ready\n")
    assert service.serving == [True, False, True]


def test_a_garbled_delivery_report_is_logged_not_raised():
    service = ServiceSide()
    service.worker.childDataReceived(3, b'delivered ["only", "three", "fields"]\ndelivered {not json\n')
    assert service.recorded == []


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
    workers = SMTPWorkers(clock, "/etc/continuity.toml", 1, {"smtp": lambda: 7}, ServiceSide(),
                          lambda *row: Deferred(), lambda *row: Deferred())
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

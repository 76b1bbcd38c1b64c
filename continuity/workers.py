"""SMTP worker processes: more than one core for inbound mail (``[server] smtp_workers``).

One reactor runs Python on one core at a time. Taking a message in (the SMTP
dialogue and the spool write) and delivering it (the index, the queue runner,
the SMTP client) then share that core, and reaching Postfix's rate on a
2-core machine needs both. So the service process starts ``smtp_workers``
child processes that accept on the same listening socket as itself (the
kernel gives each connection to whichever process accepts first, so a busy
process takes fewer) and run the same MX policy. The submission listeners
are theirs alone while one is ready (``WORKERS_ONLY`` in
:mod:`continuity.app`); the service accepts there again when none is left.
What the listeners limit per IP or user is counted in tables the processes
share (:mod:`continuity.counters`). Past the ``250`` the work is
divided as Postfix divides it between ``smtpd`` and ``qmgr``: a worker writes
each message's spool file durably, answers ``250`` and hands the queue id
over; the service process indexes the file, claims it and delivers it, as it
does the mail it accepts itself. The store then has one writer for the relay
flow, so no process waits for another's write lock or re-reads pages another
wrote. In emergency mode each process writes the mail it accepts straight into
the continuity mailboxes (:mod:`continuity.delivery.direct`), which spreads
that work, the heaviest of all, over both.

The parent and a worker talk in lines over pipes:

- worker fd 3 -> parent: ``spooled QUEUE_ID`` for each message it
  acknowledged (the parent indexes and delivers it,
  :meth:`~continuity.spool.intake.MessageIntake.adopt`); ``delivered JSON``
  for each copy it wrote straight into a continuity mailbox in emergency
  mode (the parent writes its tracking rows,
  :meth:`~continuity.delivery.direct.DirectDelivery.record`); ``rejected
  JSON`` for each recipient it refused (the parent tracks it); ``ready``
  once it accepts, and every second after (the parent takes the
  connections of the listeners only workers serve when no worker has
  spoken for 3 s). A worker writes nothing to the store (the parent tracks
  a CS-SENT copy when it indexes the message).
- parent -> worker stdin: ``clear`` when a mode switch of ours landed (the
  worker's directory cache must not answer with the old mode); EOF when the
  parent is gone, and the worker stops.
- worker stdout and stderr: log lines, logged again by the parent, when the
  service logs to syslog; to a file or stdout the worker writes its own
  lines (:mod:`continuity.logs`), and only what it writes on stderr (a crash
  before its logging started) comes through the parent.

A file whose ``spooled`` line the parent never read (it was stopping, or
killed) is indexed at the next start, as after a crash
(:meth:`~continuity.spool.intake.MessageIntake.recover_spool`): what a worker
acknowledged is durable, what it had not, the client sends again. A worker is
killed when the parent dies (``PR_SET_PDEATHSIG``), so a killed service never
leaves a worker holding its port. The parent restarts a worker that exits
while the service runs, and stops them all (SIGTERM, then SIGKILL after
:attr:`SMTPWorkers.stop_timeout`) before its own listeners.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import sys
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import error, protocol, task
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger, eventAsText, globalLogBeginner
from twisted.python.failure import Failure

from continuity.logs import STDOUT, WorkerLog

log = Logger()

#: Seconds between a worker's ``ready`` lines.
HEARTBEAT = 1.0
REPORTS_FD = 3
FIRST_LISTEN_FD = 4
#: The longest line either side reads from the other (longer ones are dropped).
MAX_LINE = 8192


class Lines:
    """Splits a byte stream into lines (without the newline); an overlong line is dropped."""

    def __init__(self, received: Callable[[str], None]):
        self._received = received
        self._buffer = b""
        self._dropping = False  # within an overlong line, up to its newline

    def feed(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        for line in lines:
            if not self._dropping and len(line) <= MAX_LINE:
                self._received(line.decode("utf-8", "replace"))
            self._dropping = False
        if len(self._buffer) > MAX_LINE:
            self._buffer, self._dropping = b"", True


# -- the parent side ----------------------------------------------------------


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: "SMTPWorkers", number: int):
        self.pool = pool
        self.number = number
        self.ended: Deferred[None] = Deferred()
        self._reports = Lines(self._report)
        self._logs = {1: Lines(self._log), 2: Lines(self._log)}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == REPORTS_FD:
            self._reports.feed(data)
        elif fd in self._logs:
            self._logs[fd].feed(data)

    def _log(self, line: str) -> None:
        log.info("smtp worker {number}: {line}", number=self.number, line=line)

    def _report(self, line: str) -> None:
        kind, _, rest = line.partition(" ")
        if kind == "spooled" and rest.isalnum():
            self.pool.adopt(rest, self.number)
        elif kind == "delivered":
            self.pool.delivered(rest, self.number)
        elif kind == "rejected":
            self.pool.rejected(rest, self.number)
        elif kind == "ready" and not rest:
            self.pool.ready(self)
        else:
            log.warn("smtp worker {number} sent an unknown report: {line}", number=self.number, line=line)

    def processEnded(self, reason: Failure) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class SMTPWorkers(Service):
    """Starts, restarts and stops the worker processes sharing the ``listening`` sockets, and indexes and
    delivers what they spool (``adopt``)."""

    name = "smtp-workers"
    stop_timeout = 30.0
    #: Seconds before a worker that ended is started again, doubled for each quick end in a row.
    restart_delay = 1.0
    max_restart_delay = 60.0
    #: Seconds before a handed-over message whose indexing failed is tried again.
    adopt_retry = 30.0
    #: Seconds without a word from any ready worker before the service accepts where only workers did.
    silence = 3 * HEARTBEAT

    def __init__(self, reactor, config_path: str, count: int, listening: dict[str, Callable[[], int]],
                 intake, record: Callable[..., Deferred], reject: Callable[[str, str, str], Deferred],
                 logs: str | None = None,
                 serving: Callable[[bool], None] = lambda serving: None):
        """
        :param listening: name -> the file descriptor of the listening socket the workers share.
        :param intake: the service's :class:`~continuity.spool.intake.MessageIntake`: it indexes and delivers
            what a worker spooled (``adopt``), and what a worker that ended did not hand over
            (``index_strays``).
        :param record: write the tracking rows of a copy a worker delivered to a continuity mailbox.
        :param reject: write the tracking row of a recipient a worker refused (sender, recipient, detail).
        :param serving: told True when the first worker is ready to accept, False when none is left (the
            service accepts again where only workers did).
        :param logs: where the service logs (:func:`continuity.logs.destination`): a worker appends its own
            lines to that file, or writes them to the service's stdout; None: it sends them to the service.
        """
        self._reactor = reactor
        self._config_path = os.path.abspath(config_path)
        self._count = count
        self._listening = listening
        self._intake = intake
        self._record = record
        self._reject = reject
        self._logs = logs
        self._serving = serving
        self._workers: dict[int, _Worker] = {}
        self._ready: set[_Worker] = set()
        #: Fires when no ready worker has spoken for :attr:`silence` seconds; None while none is ready.
        self._silence: DelayedCall | None = None
        self._started: dict[int, float] = {}
        self._quick_ends: dict[int, int] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(1, self._count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        if not self.running:
            return
        worker = _Worker(self, number)
        child_fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r", REPORTS_FD: "r"}
        argv = [sys.executable, "-m", "continuity.workers", "--config", self._config_path,
                "--parent", str(os.getpid()), "--number", str(number)]
        if self._logs == STDOUT:
            child_fds[1] = 1
            argv += ["--log", STDOUT]
        elif self._logs is not None:
            argv += ["--log", self._logs]
        for offset, (name, fileno) in enumerate(sorted(self._listening.items())):
            child_fds[FIRST_LISTEN_FD + offset] = fileno()
            argv += ["--listen", f"{name}={FIRST_LISTEN_FD + offset}"]
        self._reactor.spawnProcess(worker, sys.executable, argv, env=dict(os.environ), childFDs=child_fds)
        self._workers[number] = worker
        self._started[number] = self._reactor.seconds()
        log.info("smtp worker {number} started (pid {pid})", number=number, pid=worker.transport.pid)

    def adopt(self, queue_id: str, number: int) -> None:
        d = self._intake.adopt(queue_id)

        def failed(failure: Failure) -> None:
            if failure.check(FileNotFoundError, ValueError, TypeError, KeyError):  # gone, or not a spool file
                log.error("smtp worker {number} handed over {queue_id}, which cannot be indexed: {error}",
                          queue_id=queue_id, number=number, error=failure.getErrorMessage())
                return
            log.failure("indexing {queue_id} from smtp worker {number} failed; trying again in {delay:g} s",
                        failure, queue_id=queue_id, number=number, delay=self.adopt_retry)
            if self.running:
                self._reactor.callLater(self.adopt_retry, self.adopt, queue_id, number)

        d.addErrback(failed)

    def delivered(self, payload: str, number: int) -> None:
        def record(queue_id, message_id, sender, client, now, recipient, mailbox, ref) -> Deferred:
            return self._record(queue_id, message_id, sender, client, now, [(recipient, mailbox, ref)])

        self._track("a delivery", payload, number, record)

    def rejected(self, payload: str, number: int) -> None:
        self._track("a rejection", payload, number, self._reject)

    def ready(self, worker: _Worker) -> None:
        """``worker`` accepts on the shared sockets (said at its start, then every :data:`HEARTBEAT` seconds)."""
        if not self.running or self._workers.get(worker.number) is not worker:
            return
        if worker not in self._ready:
            log.info("smtp worker {number} accepting on {listeners}", number=worker.number,
                     listeners=", ".join(sorted(self._listening)))
            self._ready.add(worker)
        if self._silence is not None and self._silence.active():
            self._silence.reset(self.silence)
            return
        if self._silence is not None:  # every worker was silent, and this one speaks again
            log.info("smtp worker {number} answers again", number=worker.number)
        self._silence = self._reactor.callLater(self.silence, self._silent)
        self._serving(True)

    def _silent(self) -> None:
        """No worker said it accepts for :attr:`silence` seconds (stopped, or its reactor stuck): the service
        takes the connections the workers alone served, until one speaks again."""
        log.warn("no smtp worker answered for {silence:g} s: the service accepts on {listeners} itself",
                 silence=self.silence, listeners=", ".join(sorted(self._listening)))
        self._serving(False)

    def _none_serving(self) -> None:
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
            self._serving(False)
        self._silence = None

    def _track(self, what: str, payload: str, number: int, record: Callable[..., Deferred]) -> None:
        """Write the tracking rows a worker reported (a JSON array of ``record``'s arguments)."""
        try:
            d = record(*json.loads(payload))
        except Exception:
            log.failure("smtp worker {number} sent {what} that could not be recorded: {payload}",
                        number=number, what=what, payload=payload)
            return
        d.addErrback(lambda f: log.failure("tracking {what} from smtp worker {number} failed", f, what=what,
                                           number=number))

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if worker in self._ready:
            self._ready.discard(worker)
            if not self._ready and self.running:
                self._none_serving()
        if self.running:
            # Its last hand-overs may be lost (a kill before its pipe was written): look for them (indexed,
            # the next queue pass delivers them).
            d = Deferred.fromCoroutine(self._intake.index_strays())
            d.addCallback(lambda found: log.info("{found} message(s) of smtp worker {number} found in the spool",
                                                 found=found, number=worker.number) if found else None)
            d.addErrback(lambda f: log.failure("looking for smtp worker {number}'s messages failed", f,
                                               number=worker.number))
        if self._workers.get(worker.number) is not worker:
            return
        del self._workers[worker.number]
        if self.running:
            number = worker.number
            lived = self._reactor.seconds() - self._started.get(number, 0.0)
            quick = self._quick_ends[number] = self._quick_ends.get(number, 0) + 1 if lived < 60 else 0
            delay = min(self.restart_delay * 2 ** max(quick - 1, 0), self.max_restart_delay)
            log.error("smtp worker {number} ended ({reason}); starting it again in {delay:g} s", number=number,
                      reason=reason.getErrorMessage(), delay=delay)
            self._reactor.callLater(delay, self._spawn, number)

    def directory_changed(self) -> None:
        """Our own mode switch landed: the workers' cached directory answers are stale."""
        for worker in self._workers.values():
            worker.transport.write(b"clear\n")

    def stopService(self):
        super().stopService()
        if self._silence is not None and self._silence.active():
            self._silence.cancel()  # the listeners close next
        workers = list(self._workers.values())
        self._workers.clear()
        for worker in workers:
            self._signal(worker, "TERM")
        if not workers:
            return None
        kill = self._reactor.callLater(self.stop_timeout, lambda: [self._signal(w, "KILL") for w in workers])
        done = DeferredList([w.ended for w in workers])
        done.addBoth(lambda _: kill.cancel() if kill.active() else None)
        return done

    @staticmethod
    def _signal(worker: _Worker, name: str) -> None:
        try:
            worker.transport.signalProcess(name)
        except error.ProcessExitedAlready:
            pass


# -- the worker side -----------------------------------------------------------


class _Parent(protocol.Protocol):
    """The worker's end of the pipes: reports out on fd 3 (``spooled``, ``delivered``, ``rejected``,
    ``ready``), lines in on stdin."""

    def __init__(self, reactor):
        self._reactor = reactor
        self.cleared: Callable[[], None] = lambda: None
        self._lines = Lines(self._line)

    def spooled(self, queue_id: str) -> None:
        """The message is durable in the spool: the service process indexes and delivers it."""
        self.transport.write(f"spooled {queue_id}\n".encode("ascii"))

    def delivered(self, queue_id: str, message_id: str | None, sender: str, client: str | None, now: float,
                  copies) -> None:
        """Copies written straight into continuity mailboxes: the service process writes their tracking rows."""
        for recipient, mailbox, ref in copies:  # a line each: many recipients must not make one too long
            line = json.dumps([queue_id, message_id, sender, client, now, recipient, mailbox, ref])
            self.transport.write(f"delivered {line}\n".encode("utf-8"))

    def rejected(self, sender: str, recipient: str, detail: str) -> None:
        """A recipient refused at RCPT: the service process writes its tracking row."""
        line = json.dumps([sender, recipient, detail[:1000]])  # well inside MAX_LINE, even all escaped
        self.transport.write(f"rejected {line}\n".encode("utf-8"))

    def ready(self) -> None:
        """This worker accepts on the sockets it was given (and its reactor turns: sent every
        :data:`HEARTBEAT` seconds)."""
        self.transport.write(b"ready\n")

    def dataReceived(self, data: bytes) -> None:
        self._lines.feed(data)

    def _line(self, line: str) -> None:
        if line == "clear":
            self.cleared()

    def connectionLost(self, reason: Failure = None) -> None:
        # The parent closed our stdin: it is stopping, or gone.
        try:
            self._reactor.stop()
        except error.ReactorNotRunning:
            pass  # stopping already


def _stop_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux); exit if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stdin's EOF stops the worker
    if os.getppid() != parent:
        raise SystemExit(0)


def _log_to_parent(event: dict) -> None:
    text = eventAsText(event, includeTimestamp=False, includeSystem=False)  # with a failure's traceback
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """``python -m continuity.workers --config PATH --parent PID --number N --listen smtp=FD``: SMTP worker N."""
    parser = argparse.ArgumentParser(prog="continuity.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--number", type=int, required=True)
    parser.add_argument("--log", metavar="PATH", help="append log lines to this file ('-': stdout) instead of "
                                                      "sending them to the service process")
    parser.add_argument("--listen", action="append", default=[], metavar="NAME=FD")
    args = parser.parse_args(argv)
    _stop_with_parent(args.parent)
    if args.log is None:
        observer = _log_to_parent
    else:
        observer = WorkerLog(args.number, None if args.log == STDOUT else args.log)
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    from twisted.internet import reactor, stdio

    from continuity.app import build_smtp_worker
    from continuity.config import load_config

    adopted = {name: int(fd) for name, _, fd in (item.partition("=") for item in args.listen)}
    parent = _Parent(reactor)
    root, components = build_smtp_worker(load_config(args.config), reactor, args.number, adopted, parent)
    parent.cleared = components.directory_cache.clear
    stdio.StandardIO(parent, stdin=0, stdout=REPORTS_FD, reactor=reactor)
    def start() -> None:
        root.startService()
        task.LoopingCall(parent.ready).start(HEARTBEAT, now=True)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()


if __name__ == "__main__":
    main()

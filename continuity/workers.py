"""SMTP worker processes: more than one core for inbound mail (``[server] smtp_workers``).

One reactor runs Python on one core at a time. Accepting a message (the SMTP
dialogue, the spool write, its index rows) and delivering it (the queue
runner, the SMTP client) then share that core, and reaching Postfix's rate on
a 2-core machine needs both. So the service process starts ``smtp_workers``
child processes that accept on the same listening socket as itself (the
kernel gives each connection to whichever process accepts first) and run the
same MX policy, spool and index over the same ``data_dir``. A message whose
every copy goes to a continuity mailbox (a domain in emergency mode) is
delivered by the worker itself, claimed in the transaction that indexes it;
every other one is handed to the service process. Everything else - queue
passes and retries, relaying, failover, recovery, IMAP, POP3, submission -
stays in the service process.

The parent and a worker talk over pipes:

- worker fd 3 -> parent: one frame per accepted message (a 4-byte length, then
  ``queue id NUL sender NUL message``; the message is empty when it is over
  :data:`~continuity.spool.intake.HANDOFF_LIMIT` and the runner reads the
  spool file). The parent kicks its queue runner, so delivery starts at once,
  as for a message it accepted itself. A lost frame costs only time: the
  runner's pass finds every due message in the index within a second.
- parent -> worker stdin: ``clear`` lines when a mode switch of ours landed
  (the worker's directory cache must not answer with the old mode); EOF when
  the parent is gone, and the worker stops.
- worker stdout and stderr: log lines, logged again by the parent.

A worker also gets SIGTERM when the parent dies (``PR_SET_PDEATHSIG``), so a
killed service never leaves a worker holding its port. The parent restarts a
worker that exits while the service runs, and stops them all (SIGTERM, then
SIGKILL after :attr:`SMTPWorkers.stop_timeout`) before its own listeners.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import struct
import sys
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger, formatEvent, globalLogBeginner
from twisted.python.failure import Failure

log = Logger()

_LENGTH = struct.Struct("!I")
#: The longest frame a parent accepts (the hand-off limit plus envelope room).
MAX_FRAME = 1024 * 1024 + 8192
MESSAGES_FD = 3
FIRST_LISTEN_FD = 4


def frame(queue_id: str, sender: str, message: bytes) -> bytes:
    payload = b"%s\0%s\0%s" % (queue_id.encode("ascii"), sender.encode("utf-8", "surrogateescape"), message)
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Splits a byte stream into the payloads of :func:`frame`."""

    def __init__(self, received: Callable[[str, str, bytes], None]):
        self._received = received
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        buffer = self._buffer + data
        offset = 0
        while len(buffer) - offset >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if length > MAX_FRAME:
                raise ValueError(f"frame of {length} bytes from an SMTP worker")
            end = offset + _LENGTH.size + length
            if end > len(buffer):
                break
            queue_id, sender, message = buffer[offset + _LENGTH.size:end].split(b"\0", 2)
            offset = end
            self._received(queue_id.decode("ascii"), sender.decode("utf-8", "surrogateescape"), message)
        self._buffer = buffer[offset:]


# -- the parent side ----------------------------------------------------------


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: "SMTPWorkers", number: int):
        self.pool = pool
        self.number = number
        self.ended: Deferred[None] = Deferred()
        self._frames = FrameReader(self._accepted)
        self._lines = {1: b"", 2: b""}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == MESSAGES_FD:
            try:
                self._frames.feed(data)
            except ValueError as exc:
                log.error("smtp worker {number}: {error}; restarting it", number=self.number, error=exc)
                self.transport.signalProcess("KILL")
            return
        lines = (self._lines.get(fd, b"") + data).split(b"\n")
        self._lines[fd] = lines.pop()
        for line in lines:
            log.info("smtp worker {number}: {line}", number=self.number, line=line.decode("utf-8", "replace"))

    def _accepted(self, queue_id: str, sender: str, message: bytes) -> None:
        self.pool.kick(queue_id, (sender, message) if message else None)

    def processEnded(self, reason: Failure) -> None:
        self.pool.ended(self, reason)
        self.ended.callback(None)


class SMTPWorkers(Service):
    """Starts, restarts and stops the worker processes sharing the ``listening`` sockets."""

    name = "smtp-workers"
    stop_timeout = 30.0
    restart_delay = 1.0

    def __init__(self, reactor, config_path: str, count: int, listening: dict[str, Callable[[], int]],
                 kick: Callable[[str, tuple[str, bytes] | None], None]):
        self._reactor = reactor
        self._config_path = os.path.abspath(config_path)
        self._count = count
        self._listening = listening
        self.kick = kick
        self._workers: dict[int, _Worker] = {}

    def startService(self) -> None:
        super().startService()
        for number in range(1, self._count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        if not self.running:
            return
        worker = _Worker(self, number)
        child_fds: dict[int, str | int] = {0: "w", 1: "r", 2: "r", MESSAGES_FD: "r"}
        argv = [sys.executable, "-m", "continuity.workers", "--config", self._config_path,
                "--parent", str(os.getpid())]
        for offset, (name, fileno) in enumerate(sorted(self._listening.items())):
            child_fds[FIRST_LISTEN_FD + offset] = fileno()
            argv += ["--listen", f"{name}={FIRST_LISTEN_FD + offset}"]
        self._reactor.spawnProcess(worker, sys.executable, argv, env=dict(os.environ), childFDs=child_fds)
        self._workers[number] = worker
        log.info("smtp worker {number} started (pid {pid})", number=number, pid=worker.transport.pid)

    def ended(self, worker: _Worker, reason: Failure) -> None:
        if self._workers.get(worker.number) is not worker:
            return
        del self._workers[worker.number]
        if self.running:
            log.error("smtp worker {number} ended ({reason}); starting it again", number=worker.number,
                      reason=reason.getErrorMessage())
            self._reactor.callLater(self.restart_delay, self._spawn, worker.number)

    def directory_changed(self) -> None:
        """Our own mode switch landed: the workers' cached directory answers are stale."""
        for worker in self._workers.values():
            worker.transport.write(b"clear\n")

    def stopService(self):
        super().stopService()
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
    """The worker's end of the pipes: frames out on fd 3, commands in on stdin."""

    def __init__(self, reactor, cleared: Callable[[], None]):
        self._reactor = reactor
        self._cleared = cleared
        self._buffer = b""

    def kick(self, queue_id: str, message: tuple[str, bytes] | None, claimed=None) -> None:
        sender, data = message if message is not None else ("", b"")
        self.transport.write(frame(queue_id, sender, data))

    def dataReceived(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if b"clear" in lines:
            self._cleared()

    def connectionLost(self, reason: Failure = None) -> None:
        # The parent closed our stdin: it is stopping, or gone.
        if self._reactor.running:
            self._reactor.stop()


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this process when the parent dies (Linux); exit if it already has."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: stdin's EOF stops the worker
    if os.getppid() != parent:
        raise SystemExit(0)


def _log_to_stdout(event: dict) -> None:
    text = formatEvent(event)
    if event.get("log_failure") is not None:
        text = f"{text}\n{event['log_failure'].getTraceback()}"
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    """``python -m continuity.workers --config PATH --parent PID --listen smtp=FD``: one SMTP worker."""
    parser = argparse.ArgumentParser(prog="continuity.workers")
    parser.add_argument("--config", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--listen", action="append", default=[], metavar="NAME=FD")
    args = parser.parse_args(argv)
    _stop_with_parent(args.parent)
    globalLogBeginner.beginLoggingTo([_log_to_stdout], redirectStandardIO=False)

    from twisted.internet import reactor, stdio

    from continuity.app import build_smtp_worker
    from continuity.config import load_config

    adopted = {name: int(fd) for name, _, fd in (item.partition("=") for item in args.listen)}
    parent = _Parent(reactor, lambda: components.directory_cache.clear())
    root, components = build_smtp_worker(load_config(args.config), reactor, adopted, parent.kick)
    stdio.StandardIO(parent, stdin=0, stdout=MESSAGES_FD, reactor=reactor)
    reactor.callWhenRunning(root.startService)
    reactor.addSystemEventTrigger("before", "shutdown", root.stopService)
    reactor.run()


if __name__ == "__main__":
    main()

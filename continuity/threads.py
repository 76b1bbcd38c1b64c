"""The worker thread pool for blocking file I/O (spool, Maildirs) and password hashing.

A lean pool rather than Twisted's ``ThreadPool``: the workers block on one
``queue.SimpleQueue`` (a put wakes exactly one idle worker) and hand each
result back with one ``callFromThread``. Per relayed message the service
makes several trips here; Twisted's pool spent more CPU on its coordination
(a team, a coordinator worker, a context per call) than the file operations
themselves took.

The pool for file I/O is small (:data:`IO_THREADS`). Every system call of a
job gives up the GIL and takes it back, so a job with ten of them (a durable
Maildir write) hands the GIL to and from the reactor up to ten times, and
the more jobs run side by side the more of the reactor's own calls turn into
such hand-offs, each a futex wait and a context switch. Eight threads spent
a quarter more CPU per message than three or four in A/Bs of the emergency
benchmark, and delivered 28% fewer messages per second (relay 9%,
submission 6%). Four still let four fsyncs of a process share one journal
commit. Password hashing (Argon2id, ~0.1 s with the GIL released) has its
own pool, so that a login storm never leaves the mail's writes waiting, and
so has mailbox access (IMAP, POP3): folder listings of every phone coming
back after a failover never hold up the writes behind a ``250``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

T = TypeVar("T")

_STOP = object()
log = Logger()

#: Threads of a process's pool for file I/O (see the module docstring).
IO_THREADS = 4


class WorkerThreads(Service):
    """A started/stopped thread pool; ``run(fn, *args)`` returns a Deferred of fn's result."""

    def __init__(self, reactor, name: str = "io", size: int = IO_THREADS):
        self.name = name
        self._reactor = reactor
        self._size = size
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    def startService(self) -> None:
        super().startService()
        self._threads = [threading.Thread(target=self._work, name=f"continuity-{self.name}-{number}", daemon=True)
                         for number in range(self._size)]
        for thread in self._threads:
            thread.start()

    def stopService(self) -> None:
        """Finish the jobs already submitted, then end the workers."""
        super().stopService()
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self._jobs.put((fn, args, kwargs, d))
        return d

    __call__ = run

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn`` on a worker with no result for the reactor (fn reports on its own, e.g. to the SQL thread).

        Saves the reactor a wake-up per job; an exception is only logged.
        """
        self._jobs.put((fn, args, kwargs, None))

    def _work(self) -> None:
        call_from_thread = self._reactor.callFromThread
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, kwargs, d = job
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                if d is None:
                    log.failure("{fn} failed on a worker thread", fn=fn)
                else:
                    call_from_thread(d.errback, Failure())
            else:
                if d is not None:
                    call_from_thread(d.callback, result)

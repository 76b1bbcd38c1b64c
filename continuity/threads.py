"""The worker thread pool for blocking file I/O (spool, Maildirs) and password hashing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


class WorkerThreads(Service):
    """A started/stopped thread pool; ``run(fn, *args)`` returns a Deferred of fn's result."""

    def __init__(self, reactor, name: str = "io", size: int = 8):
        self.name = name
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=size, name=f"continuity-{name}")

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, fn, *args, **kwargs)

    __call__ = run

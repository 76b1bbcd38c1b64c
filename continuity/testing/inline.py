"""Stand-ins for the service's thread pools in tests that drive time with ``task.Clock``.

The service runs SQL on :class:`~continuity.db.SQLThread` and file I/O on
:class:`~continuity.threads.WorkerThreads`; both hand back a Deferred. On a
``task.Clock`` nothing turns a real reactor, so a thread's result would never
arrive. :class:`InlineThread` runs the work at once on the calling thread and
returns a fired Deferred, so a coroutine of the service completes inside the
call that started it. :class:`QueuedThread` keeps the work until the test runs
it, in submission order, like the one SQL thread: a test sees what was *asked*
of the thread before anything of it happened (nothing ran on the caller).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

T = TypeVar("T")


class InlineThread:
    """Runs each job at once on the caller's thread (``run`` and calling it alike)."""

    def __init__(self) -> None:
        #: How many jobs ran, for tests that count trips to the thread.
        self.jobs = 0

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        self.jobs += 1
        try:
            return succeed(fn(*args, **kwargs))
        except BaseException:
            return fail()

    __call__ = run

    def submit(self, d: Deferred[T], fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        self.run(fn, *args, **kwargs).chainDeferred(d)

    # The SQL thread's jobs nobody waits for run at once here too.
    run_batched = run
    submit_batched = submit

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.jobs += 1
        fn(*args, **kwargs)


class QueuedThread:
    """Keeps jobs until :meth:`run_pending`, then runs them in the order they were submitted."""

    def __init__(self) -> None:
        self._jobs: list[tuple[Callable[..., Any], tuple, dict, Deferred]] = []

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        d: Deferred[T] = Deferred()
        self.submit(d, fn, *args, **kwargs)
        return d

    __call__ = run

    def submit(self, d: Deferred[T], fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        self._jobs.append((fn, args, kwargs, d))

    run_batched = run
    submit_batched = submit

    def spawn(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.submit(Deferred(), fn, *args, **kwargs)

    def run_pending(self) -> int:
        """Run jobs (also those their results submit) until none is left; return how many ran."""
        count = 0
        while self._jobs:
            fn, args, kwargs, d = self._jobs.pop(0)
            count += 1
            try:
                result = fn(*args, **kwargs)
            except BaseException:
                d.errback()
            else:
                d.callback(result)
        return count

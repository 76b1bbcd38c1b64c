"""Directory answers of the last second, kept on the reactor for the SMTP policies.

Every ``RCPT TO`` asks whether the domain is hosted, in which mode, and (out
of ``normal`` mode) whether the address is a user or an alias. Under load
those questions queued on the SQL thread behind group commits: an RCPT took
8 ms at 10 sessions. The answers barely change, so :class:`DirectoryCache`
keeps them for ``ttl`` seconds (1 s): CONTRACT 1 gives the running service 2
seconds to notice a ``continuityctl`` change, and our own mode switches drop
every answer at once (:meth:`DirectoryCache.clear`, called by the failover
monitor when a mode write has landed). Routing after a mode switch never
reads from here: the runner asks the store.

Concurrent misses for one key share one lookup, and a lookup that started
before a :meth:`~DirectoryCache.clear` answers its own callers but is not kept.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from continuity.db import SQLThread
from continuity.directory.store import Directory, Domain, User
from continuity.envelope import Address
from continuity.threads import WorkerThreads


class DirectoryCache:
    """Recent answers of :class:`Directory` lookups; each one is asked of the SQL thread at most once per ``ttl``."""

    def __init__(self, clock: IReactorTime, sql: SQLThread | WorkerThreads, directory: Directory, ttl: float = 1.0,
                 limit: int = 10000):
        """:param sql: runs the lookups (the SQL thread; an SMTP worker, which writes nothing, its I/O pool)."""
        self._clock = clock
        self._sql = sql
        self._directory = directory
        self._ttl = ttl
        self._limit = limit
        self._answers: dict[Hashable, Any] = {}
        self._waiting: dict[Hashable, list[Deferred]] = {}
        self._generation = 0
        self._since = clock.seconds()

    def clear(self) -> None:
        """Forget every answer (the directory changed); lookups under way are not kept either."""
        self._answers = {}
        self._waiting = {}
        self._generation += 1
        self._since = self._clock.seconds()

    def domain(self, name: str) -> Deferred[Domain | None]:
        """The hosted domain ``name``, or None."""
        return self._ask(("domain", name.lower()), self._directory.find_domain, name)

    def recipient(self, address: Address) -> Deferred[tuple[Domain | None, User | None]]:
        """The recipient's domain, and (outside ``normal`` mode) the user receiving its mail."""

        def look_up() -> tuple[Domain | None, User | None]:
            # One trip to the SQL thread: the domain, and the user when the mode needs one.
            domain = self._directory.find_domain(address.domain)
            user = self._directory.resolve(address) if domain is not None and domain.mode != "normal" else None
            return domain, user

        return self._ask(("recipient", str(address).lower()), look_up)

    def _ask(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Deferred:
        if self._clock.seconds() - self._since >= self._ttl or len(self._answers) >= self._limit:
            self.clear()
        if key in self._answers:
            return succeed(self._answers[key])
        d: Deferred = Deferred()
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(d)
            return d
        waiters = self._waiting[key] = [d]
        generation = self._generation

        def answered(result: Any) -> None:
            if self._waiting.get(key) is waiters:
                del self._waiting[key]
                if generation == self._generation and not isinstance(result, Failure):
                    self._answers[key] = result
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)

        self._sql.run(fn, *args).addBoth(answered)
        return d

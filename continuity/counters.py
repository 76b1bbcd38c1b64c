"""Per-key counters that the listeners share for their limits.

- :class:`ConnectionCounter`: simultaneous connections per key (a client IP
  for ``connections_per_ip``; address and IP for IMAP's per-user limit).
- :class:`SharedConnectionCounter`: the same across the processes that accept
  on one listening socket (the service and its SMTP workers).
- :class:`SlidingWindow`: events per key in the last ``window`` seconds (failed
  logins, messages sent per hour), bounded in the number of keys it remembers
  so a flood of made-up keys cannot grow memory without limit.
"""

from __future__ import annotations

import collections
import mmap
import os
import zlib
from collections.abc import Callable, Hashable

#: Keys a :class:`SlidingWindow` remembers at most; the least recently counted go first.
MAX_TRACKED = 100_000


class ConnectionCounter:
    """Simultaneous connections per key, at most ``limit`` each."""

    def __init__(self, limit: int):
        self.limit = limit
        self._open: collections.Counter[Hashable] = collections.Counter()

    def acquire(self, key: Hashable) -> bool:
        """Count one more connection for ``key``; False (and nothing counted) when it is at the limit."""
        if self._open[key] >= self.limit:
            return False
        self._open[key] += 1
        return True

    def release(self, key: Hashable) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]


class SharedConnectionCounter(ConnectionCounter):
    """Simultaneous connections per key across the processes sharing one listening socket.

    Each process counts its own connections as :class:`ConnectionCounter` does
    and publishes them in a table of its own: a memory-mapped file of
    :attr:`SLOTS` 16-bit counts, indexed by a CRC of the key. To decide, it adds
    the other processes' counts for that slot. Two keys on one slot share a
    count (rare with 65,536 slots), so they are refused sooner, never later.
    Process ``0`` (the service, started first) clears every table; a worker
    clears its own when it starts, so connections of a process that ended
    count no more.
    """

    SLOTS = 65536

    def __init__(self, limit: int, directory: str, name: str, process: int, processes: int):
        super().__init__(limit)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self._tables = []
        for number in range(processes):
            fd = os.open(os.path.join(directory, f"{name}-connections-{number}"),
                         os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                if process == 0 or number == process:
                    os.ftruncate(fd, 0)  # cleared: this process is new, or all are
                os.ftruncate(fd, self.SLOTS * 2)
                self._tables.append(memoryview(mmap.mmap(fd, self.SLOTS * 2)).cast("H"))
            finally:
                os.close(fd)
        self._own = self._tables[process]

    def _slot(self, key: Hashable) -> int:
        return zlib.crc32(str(key).encode("utf-8", "replace")) % self.SLOTS

    def acquire(self, key: Hashable) -> bool:
        slot = self._slot(key)
        elsewhere = sum(table[slot] for table in self._tables) - self._own[slot]
        if self._open[key] + elsewhere >= self.limit:
            return False
        self._open[key] += 1
        self._own[slot] = min(self._own[slot] + 1, 0xFFFF)
        return True

    def release(self, key: Hashable) -> None:
        super().release(key)
        slot = self._slot(key)
        if self._own[slot]:
            self._own[slot] -= 1


class SlidingWindow:
    """Times of events per key within the last ``window`` seconds of ``clock``."""

    def __init__(self, clock: Callable[[], float], window: float, max_tracked: int = MAX_TRACKED):
        self._clock = clock
        self._window = window
        self._max_tracked = max_tracked
        self._times: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()

    def count(self, key: str) -> int:
        """Events for ``key`` in the window."""
        times = self._times.get(key)
        if not times:
            return 0
        horizon = self._clock() - self._window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._times[key]
            return 0
        return len(times)

    def add(self, key: str) -> int:
        """Record an event for ``key`` now; return the count in the window, this one included."""
        times = self._times.pop(key, None) or collections.deque()
        times.append(self._clock())
        self._times[key] = times
        while len(self._times) > self._max_tracked:
            self._times.popitem(last=False)
        return self.count(key)

    def clear(self, key: str) -> None:
        self._times.pop(key, None)

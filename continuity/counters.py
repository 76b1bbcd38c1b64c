"""Per-key counters that the listeners share for their limits.

- :class:`ConnectionCounter`: simultaneous connections per key (a client IP
  for ``connections_per_ip``; address and IP for IMAP's per-user limit).
- :class:`SlidingWindow`: events per key in the last ``window`` seconds (failed
  logins, messages sent per hour), bounded in the number of keys it remembers
  so a flood of made-up keys cannot grow memory without limit.
"""

from __future__ import annotations

import collections
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

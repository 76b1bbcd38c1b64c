"""Per-key counters that the listeners share for their limits.

- :class:`ConnectionCounter`: simultaneous connections per key (a client IP
  for ``connections_per_ip``; address and IP for IMAP's per-user limit).
- :class:`SharedConnectionCounter`: the same across the processes that accept
  on one listening socket (the service and its SMTP workers).
- :class:`SlidingWindow`: events per key in the last ``window`` seconds (failed
  logins, messages sent per hour), bounded in the number of keys it remembers
  so a flood of made-up keys cannot grow memory without limit.
- :class:`SharedWindow`: the same across the service and its SMTP workers
  (:func:`sliding_window` picks one of the two).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import mmap
import os
import zlib
from collections.abc import Callable, Hashable
from typing import Protocol

from continuity import durable

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


def _shared_tables(directory: str, name: str, process: int, processes: int, size: int,
                   clear_own: bool) -> list[mmap.mmap]:
    """One memory-mapped file of ``size`` bytes per process, ``directory/name-N``.

    Process 0 (the service) clears every table: it starts before any worker. A worker started again clears
    its own only if ``clear_own`` (what it counted then ended with it: open connections), and through the
    mapping: a file shrunk under the service's mapping would kill the service (SIGBUS) at its next read.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tables = []
    for number in range(processes):
        fd = os.open(os.path.join(directory, f"{name}-{number}"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if process == 0:
                os.ftruncate(fd, 0)
            if os.fstat(fd).st_size != size:
                os.ftruncate(fd, size)
            table = mmap.mmap(fd, size)
            # Keys land anywhere in the table: no read-ahead around a touched page (it cost ~6 KiB per idle
            # IMAP connection in the benchmark, pages of zeros mapped around each key looked up).
            table.madvise(mmap.MADV_RANDOM)
        finally:
            os.close(fd)
        if process != 0 and number == process and clear_own:
            table[:] = bytes(size)
        tables.append(table)
    return tables


class SharedConnectionCounter(ConnectionCounter):
    """Simultaneous connections per key across the processes sharing one listening socket.

    Each process counts its own connections as :class:`ConnectionCounter` does
    and publishes them in a table of its own: a memory-mapped file of
    :attr:`SLOTS` 16-bit counts, indexed by a CRC of the key. To decide, it adds
    the other processes' counts for that slot. Two keys on one slot share a
    count (rare with 65,536 slots), so they are refused sooner, never later.
    Tables are cleared as :func:`_shared_tables` says, so connections of a
    worker that ended count no more.
    """

    SLOTS = 65536

    def __init__(self, limit: int, directory: str, name: str, process: int, processes: int):
        super().__init__(limit)
        self._tables = [memoryview(table).cast("H") for table in
                        _shared_tables(directory, f"{name}-connections", process, processes, self.SLOTS * 2,
                                       clear_own=True)]
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


class Window(Protocol):
    """What the login throttle and the sending rate count with (:class:`SlidingWindow`, :class:`SharedWindow`)."""

    def count(self, key: str) -> int: ...

    def add(self, key: str) -> int: ...

    def clear(self, key: str) -> None: ...


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


@functools.lru_cache(maxsize=4096)
def _key_hash(secret: bytes, key: str, slots: int) -> tuple[int, int]:
    """A key's 64-bit hash (never 0, which marks a free slot) and its home slot; the same in every process.

    Keyed with a secret of this run: nobody can pick keys that land beside another's to push it out.
    """
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8", "replace"), digest_size=8, key=secret).digest(),
                            "little", signed=True)
    return digest or 1, digest % slots


def _window_secret(path: str, new: bool) -> bytes:
    """The hash key the processes share: made anew by the service (``new``), read by its workers."""
    if new:
        durable.write_file(path, [os.urandom(16)], sync_dir=False)
    with open(path, "rb") as handle:
        return handle.read()


class SharedWindow:
    """Events per key in the last ``window`` seconds, counted across the processes of one service.

    Each process writes only its own table, a memory-mapped file
    (:func:`_shared_tables`), and reads the others'. An entry holds a 64-bit
    hash of the key (found by open addressing, at most :attr:`PROBES` slots
    from its home), the time the key was last cleared (milliseconds), and
    :attr:`BUCKETS` counters of ``window / BUCKETS`` seconds each (a bucket
    number and its count), as Postfix's anvil counts per time unit. A count
    is the sum, over every table, of the buckets still in the window and
    not older than the latest clear; a bucket that holds a clear counts
    whole in the other processes' tables, so a clear there forgets a little
    less, never more. When a table is full the entry counted longest ago
    gives its slot up: like :class:`SlidingWindow`, a flood of made-up keys
    costs a bounded space.
    """

    SLOTS = 8192
    BUCKETS = 30
    PROBES = 8
    _ENTRY = 2 + 2 * BUCKETS  # int64s: hash, cleared (ms), then (bucket number, count) pairs

    def __init__(self, clock: Callable[[], float], window: float, directory: str, name: str, process: int,
                 processes: int):
        self._clock = clock
        self._width = window / self.BUCKETS
        # Counts outlive a worker started again (they age out): failures and sends must not be forgotten.
        self._tables = [memoryview(table).cast("q") for table in
                        _shared_tables(directory, name, process, processes, self.SLOTS * self._ENTRY * 8,
                                       clear_own=False)]
        self._own = self._tables[process]
        self._secret = _window_secret(os.path.join(directory, f"{name}.key"), process == 0)

    def _hash(self, key: str) -> tuple[int, int]:
        return _key_hash(self._secret, key, self.SLOTS)

    def _find(self, table, tag: int, home: int) -> int | None:
        for probe in range(self.PROBES):
            offset = (home + probe) % self.SLOTS * self._ENTRY
            if table[offset] == tag:
                return offset
        return None

    def count(self, key: str) -> int:
        """Events for ``key`` in the window, in every process."""
        tag, home = self._hash(key)
        entries = []
        for table in self._tables:
            offset = self._find(table, tag, home)
            if offset is not None:
                entries.append(table[offset + 1:offset + self._ENTRY].tolist())
        if not entries:
            return 0
        now = int(self._clock() // self._width)
        cleared = int(max(entry[0] for entry in entries) / 1000 // self._width)
        oldest = max(now - self.BUCKETS + 1, cleared)
        return sum(entry[i + 1] for entry in entries for i in range(1, self._ENTRY - 1, 2) if entry[i] >= oldest)

    def add(self, key: str) -> int:
        """Record an event for ``key`` now; return the count in the window, this one included."""
        tag, home = self._hash(key)
        offset = self._claim(tag, home)
        now = int(self._clock() // self._width)
        at = offset + 2 + now % self.BUCKETS * 2
        own = self._own
        if own[at] != now:
            own[at + 1] = 0
            own[at] = now
        own[at + 1] += 1
        return self.count(key)

    def clear(self, key: str) -> None:
        """Forget the events for ``key`` so far, in every process."""
        tag, home = self._hash(key)
        if all(self._find(table, tag, home) is None for table in self._tables):
            return
        offset = self._claim(tag, home)
        own = self._own
        own[offset + 2:offset + self._ENTRY] = memoryview(bytes(8 * (self._ENTRY - 2))).cast("q")
        own[offset + 1] = int(self._clock() * 1000)

    def _claim(self, tag: int, home: int) -> int:
        """This process's entry for ``tag``, made in a free, stale or else the least recently counted slot."""
        own = self._own
        offset = self._find(own, tag, home)
        if offset is not None:
            return offset
        now = int(self._clock() // self._width)
        best, best_last = None, None
        for probe in range(self.PROBES):
            candidate = (home + probe) % self.SLOTS * self._ENTRY
            last = None
            if own[candidate]:
                cleared = int(own[candidate + 1] / 1000 // self._width)
                last = max(cleared, *own[candidate + 2:candidate + self._ENTRY:2])
            if last is None or last <= now - self.BUCKETS:
                best = candidate
                break
            if best_last is None or last < best_last:
                best, best_last = candidate, last
        own[best] = 0  # readers stop matching the old key before its counts go
        own[best + 1:best + self._ENTRY] = memoryview(bytes(8 * (self._ENTRY - 1))).cast("q")
        own[best] = tag
        return best


def sliding_window(clock: Callable[[], float], window: float, directory: str, name: str, process: int,
                   processes: int) -> SlidingWindow | SharedWindow:
    """A :class:`SlidingWindow` for a service alone, a :class:`SharedWindow` when ``processes`` (the service and
    its SMTP workers) count together; the tables are ``directory/name-N``."""
    if processes == 1:
        return SlidingWindow(clock, window)
    return SharedWindow(clock, window, directory, name, process, processes)

"""Exclusive locks between sessions, threads and processes sharing a Maildir.

``fcntl.flock`` on a lock file: the lock belongs to the open file description,
so two opens conflict whether they come from two processes or two threads of
one process. The lock files are never removed (removing them would let two
holders lock two different files).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    Blocks until the lock is free; closing the descriptor releases it, also when
    the process dies.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)

"""A lock a session holds on a whole mailbox for as long as it lasts (POP3's maildrop lock).

RFC 1939 4: once a POP3 session is authenticated, the server locks the
maildrop so that no other POP3 session changes it; a second session gets
``-ERR [IN-USE]`` (RFC 2449 8.1.1). Like :mod:`continuity.mailstore.locks`
it is an ``flock`` on a lock file in the user's Maildir++ root, so it works
between sessions of one process and between processes, and the kernel drops
it when the holder dies. Unlike the folder locks it never waits: a lock that
is taken is refused at once. IMAP and delivery do not take it (Dovecot's
POP3 locks only against POP3 too).

Blocking (``open``/``flock``): run it on the worker pool.
"""

from __future__ import annotations

import fcntl
import os
import threading

from continuity.envelope import Address
from continuity.mailstore.errors import MailstoreError, storage_error

#: The lock file is ``continuity-session-KIND.lock`` in the user's root (beside ``continuity-folders.lock``).
SESSION_LOCK_PREFIX = "continuity-session-"


class SessionLock:
    """A held session lock; :meth:`release` (or the holder's death) frees it."""

    def __init__(self, fd: int, path: str):
        self._fd: int | None = fd
        self.path = path
        self._guard = threading.Lock()  # released from the reactor or a worker thread, exactly once

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Free the lock (idempotent)."""
        with self._guard:
            fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def try_session_lock(user_root: str, kind: str) -> SessionLock | None:
    """Take the ``kind`` session lock (``"pop3"``) of the mailbox at ``user_root``, or None if held.

    ``user_root`` must exist (the caller ensured the mailbox); the lock file is
    created in it when missing and never removed (see :mod:`continuity.mailstore.locks`).
    """
    if not kind.isalnum():
        raise ValueError(f"bad session lock kind {kind!r}")
    path = os.path.join(user_root, SESSION_LOCK_PREFIX + kind + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return SessionLock(fd, path)


def lock_mailbox_session(store, address: Address, kind: str) -> SessionLock | None:
    """Ensure the mailbox of ``address`` in ``store`` (a :class:`MaildirStore`) and take its session lock.

    :raises MailstoreError: on disk trouble.
    """
    try:
        store.ensure_mailbox(address)
        return try_session_lock(store.user_root(address), kind)
    except MailstoreError:
        raise
    except OSError as exc:
        raise storage_error(exc, f"locking the mailbox of {address}") from exc

"""Whether a domain is in emergency mode, for direct delivery, without a query of the store.

Direct delivery (:mod:`continuity.delivery.direct`) writes Maildir copies
before the ``250`` only while the recipient's domain is in emergency mode. A
copy written after recovery listed the INBOX would wait there for the next
recovery, so the writer must know the mode *now*, not as the SMTP policies'
one-second cache had it. Reading the domain from the store on each delivery
cost a tenth of emergency mode's throughput (two read transactions per
message on the I/O threads, each re-reading what the tracking commits had
just changed, and a GIL hand-off at each of their steps).

Instead each domain has a file in ``data_dir/emergency/``: one octet long
while the domain is in emergency mode, empty (or absent) otherwise.

- A writer opens it, takes a shared ``flock``, and writes its copies only if
  the file is not empty, under the lock (:meth:`EmergencyFence.writing`).
- :meth:`Directory.set_mode <continuity.directory.store.Directory.set_mode>`
  sets the length, after its commit, under the exclusive lock
  (:meth:`EmergencyFence.mark`): leaving emergency mode waits for the copies
  being written and no copy is written after it returns, so recovery, which
  lists the INBOX after the switch, sees every copy. This is stricter than the
  store read it replaces, which a switch could still fall between the read
  and the write.
- The service makes every file agree with the store when it starts
  (:meth:`EmergencyFence.reconcile`) and at each poll of the failover
  monitor (:meth:`EmergencyFence.agree`), before it acts on a mode it read:
  a switch by ``continuityctl``, or a commit that failed after its mark, is
  fenced there at the latest. A wrong mark costs at worst the spool path
  (which reads the store) for a domain in emergency mode, until then.

The lock is per open file description, so each use opens the file: the I/O
threads of one process never share (and release) one another's lock. The
files are derived state, never fsync'ed. Several nodes sharing one store
(PostgreSQL) will have to carry mode switches to each node's files.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class EmergencyFence:
    """The per-domain emergency marks in directory ``path`` (made when first needed)."""

    def __init__(self, path: str):
        self.path = path

    def _open(self, domain: str) -> int:
        if not domain or "/" in domain or domain.startswith("."):
            raise ValueError(f"not a domain name: {domain!r}")
        try:
            return os.open(os.path.join(self.path, domain), _FLAGS, 0o600)
        except FileNotFoundError:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
            return os.open(os.path.join(self.path, domain), _FLAGS, 0o600)

    @contextmanager
    def writing(self, domains: Iterable[str]) -> Iterator[bool]:
        """Hold the domains' marks (shared) for the block; it gets True when every one says emergency.

        Blocking: call it on an I/O thread. Marks are taken in name order, so two writers never wait for
        each other.
        """
        held: list[int] = []
        try:
            emergency = True
            for domain in sorted(set(domains)):
                fd = self._open(domain)
                held.append(fd)
                fcntl.flock(fd, fcntl.LOCK_SH)
                if os.fstat(fd).st_size == 0:
                    emergency = False
                    break
            yield emergency
        finally:
            for fd in held:
                os.close(fd)  # releases its lock

    def mark(self, domain: str, emergency: bool) -> None:
        """Say whether ``domain`` is in emergency mode; waits for the copies being written under the old mark."""
        fd = self._open(domain)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if (os.fstat(fd).st_size > 0) != emergency:
                os.ftruncate(fd, 1 if emergency else 0)
        finally:
            os.close(fd)

    def says_emergency(self, domain: str) -> bool:
        """What the mark of ``domain`` says now (no lock: a look, not a fence)."""
        fd = self._open(domain)
        try:
            return os.fstat(fd).st_size > 0
        finally:
            os.close(fd)

    def agree(self, modes: Mapping[str, str]) -> None:
        """Correct each mark that disagrees with ``modes`` (hosted domain -> mode, as the store has it).

        Run where no other mode switch can commit meanwhile (in a write transaction), as the failover
        monitor's poll does: it fences a switch another process (``continuityctl``) committed before its
        own mark, before the service acts on the new mode.
        """
        for domain, mode in modes.items():
            if self.says_emergency(domain) != (mode == "emergency"):
                self.mark(domain, mode == "emergency")

    def reconcile(self, modes: Mapping[str, str]) -> None:
        """At the start: :meth:`agree`, and a file of a domain no longer hosted says no emergency."""
        self.agree(modes)
        for name in os.listdir(self.path) if os.path.isdir(self.path) else ():
            if name not in modes and not name.startswith("."):
                self.mark(name, False)

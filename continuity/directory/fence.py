"""Whether a domain is in emergency mode, for direct delivery, without a query of the store.

Direct delivery (:mod:`continuity.delivery.direct`) writes Maildir copies
before the ``250`` only while the recipient's domain is in emergency mode. A
copy written after recovery listed the INBOX would wait there for the next
recovery, so the writer must know the mode *now*, not as the SMTP policies'
one-second cache had it. Reading the domain and the user from the store on
each delivery took two read transactions per message on the I/O threads,
each re-reading what the tracking commits had just changed, with a GIL
hand-off at each of their steps: 24 of 135 system calls per message in a
serial run (14 of them futex), where the mark takes four.

Instead each domain has a file in ``data_dir/emergency/``: one octet long
while the domain is in emergency mode, empty (or absent) otherwise.

- A writer opens it, takes a shared ``flock``, and writes its copies only if
  the file is not empty, under the lock (:meth:`EmergencyFence.writing`).
- :meth:`Directory.set_mode <continuity.directory.store.Directory.set_mode>`
  leaving emergency mode empties the mark before it writes the new mode, and
  waits under the exclusive lock for the copies already being written
  (:meth:`EmergencyFence.close_gate`): no copy is written after it returns,
  so recovery, which lists the INBOX after the switch, sees every copy, and a
  mark that cannot be emptied leaves the mode as it was. This is stricter
  than the store read it replaces, which a switch could still fall between
  the read and the write. Entering emergency mode fills the mark after the
  write, from the store as it is then (:meth:`EmergencyFence.open_gate`); a
  failure there only sends the mail through the spool for a while.
- A recovery closes the gate once more before it lists the INBOXes, after
  the switch has committed, so a mark filled late by another process (which
  committed before the switch but marked after it) is emptied too.
- The service makes every file agree with the store when it starts
  (:meth:`EmergencyFence.reconcile`) and at each poll of the failover
  monitor (:meth:`EmergencyFence.agree`), before it acts on a mode it read:
  a switch by ``continuityctl``, or a commit that failed after its mark, is
  fenced there at the latest. A mark left empty costs the spool path (which
  reads the store) until then; one left full while the store says otherwise
  is emptied before the service acts on the switch, and again by the
  recovery before it lists.

The lock is per open file description, so each use opens the file: the I/O
threads of one process never share (and release) one another's lock. The
files are derived state, never fsync'ed. Several nodes sharing one store
(PostgreSQL) will have to carry mode switches to each node's files.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

from twisted.logger import Logger

_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)


class EmergencyFence:
    """The per-domain emergency marks in directory ``path`` (made when first needed)."""

    log = Logger()

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
        each other. A mark that cannot be read (no descriptor left, say) says no: the spool takes the
        message, and its runner routes from the store.
        """
        held: list[int] = []
        try:
            emergency = True
            for domain in sorted(set(domains)):
                try:
                    fd = self._open(domain)
                    held.append(fd)
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    emergency = os.fstat(fd).st_size > 0
                except OSError as error:
                    self.log.warn("emergency mark of {domain} unreadable ({error}): the spool takes the message",
                                  domain=domain, error=error)
                    emergency = False
                if not emergency:
                    break
            yield emergency
        finally:
            for fd in held:
                os.close(fd)  # releases its lock

    def close_gate(self, domain: str) -> None:
        """Say ``domain`` is not in emergency mode; return once no copy begun under the old mark is being written.

        The mark is emptied first, then the exclusive lock waits for the writers already past their
        check; new writers find it empty and let go at once (a shared ``flock`` is granted while an
        exclusive one waits, so waiting first could last as long as the load).
        """
        fd = self._open(domain)
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            os.close(fd)

    def open_gate(self, domain: str, still_emergency: Callable[[], bool]) -> bool:
        """Say ``domain`` is in emergency mode if ``still_emergency()`` (the store, read under the lock) agrees;
        return whether it did. Whoever marks last writes what the store says then, whatever order two
        processes committed and marked in."""
        fd = self._open(domain)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            emergency = still_emergency()
            os.ftruncate(fd, 1 if emergency else 0)
            return emergency
        finally:
            os.close(fd)

    def says_emergency(self, domain: str) -> bool:
        """What the mark of ``domain`` says now (no lock: a look, not a fence)."""
        fd = self._open(domain)
        try:
            return os.fstat(fd).st_size > 0
        finally:
            os.close(fd)

    def agree(self, modes: Mapping[str, str], mode_now: Callable[[str], str | None]) -> list[str]:
        """Correct each mark that disagrees with ``modes`` (hosted domain -> mode, as the store has it);
        return the domains whose mark could not be made to agree (the caller must not act on their mode).

        ``mode_now(domain)`` reads the store again under the mark's lock before it is opened. Run where
        no other mode switch can commit meanwhile (in a write transaction), as the failover monitor's poll
        does: it fences a switch another process (``continuityctl``) committed before its own mark, before
        the service acts on the new mode.
        """
        failed = []
        for domain, mode in modes.items():
            emergency = mode == "emergency"
            try:
                if self.says_emergency(domain) == emergency:
                    continue
                if emergency:
                    self.open_gate(domain, lambda domain=domain: mode_now(domain) == "emergency")
                else:
                    self.close_gate(domain)
            except OSError as error:
                self.log.error("emergency mark of {domain} cannot be set ({error}); its mode is not acted on",
                               domain=domain, error=error)
                failed.append(domain)
            else:
                self.log.info("emergency mark of {domain} corrected to {mode} mode", domain=domain, mode=mode)
        return failed

    def reconcile(self, modes: Mapping[str, str], mode_now: Callable[[str], str | None]) -> None:
        """At the start: :meth:`agree`, and the mark of a domain no longer hosted says no emergency."""
        self.agree(modes, mode_now)
        for name in os.listdir(self.path) if os.path.isdir(self.path) else ():
            if name not in modes and not name.startswith(".") and os.path.isfile(os.path.join(self.path, name)):
                self.close_gate(name)

"""IDLE (RFC 2177): notice changes to the folders that idling sessions watch.

One :class:`FolderWatcher` per service polls every watched folder every half
second in a single worker call: the mail store's snapshot is a stat of
``new/``, ``cur/`` and the uid list while nothing changed, so a delivery by our
SMTP side or by any other Maildir tool is announced within a second. A session
whose folder moved on (new UIDNEXT or HIGHESTMODSEQ) is told to sync itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from continuity.mailstore import FolderName, FolderSnapshot, MailstoreError

POLL_INTERVAL = 0.5


class Watching(Protocol):
    def folder_changed(self, snapshot: FolderSnapshot) -> None: ...


def snapshot_key(snapshot: FolderSnapshot) -> tuple[int, int, int, int]:
    """What changes whenever a folder does: a new message, a flag change or an expunge."""
    return snapshot.uidvalidity, snapshot.uid_next, snapshot.highest_modseq, len(snapshot.messages)


def _snapshots(store: Any, keys: set[tuple[Any, FolderName]]) -> dict:
    found = {}
    for address, name in keys:
        try:
            found[(address, name)] = store.snapshot(address, name)
        except MailstoreError:
            continue  # deleted meanwhile: the session learns it at its next command
    return found


class FolderWatcher:
    """Polls the folders of idling sessions; ``watch``/``unwatch`` as IDLE starts and ends."""

    log = Logger()

    def __init__(self, clock: IReactorTime, run: Callable[..., defer.Deferred], store: Any,
                 interval: float = POLL_INTERVAL):
        self._run = run
        self._store = store
        self._interval = interval
        self._sessions: dict[Watching, tuple[Any, FolderName, tuple]] = {}
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = clock
        self._busy = False

    def watch(self, session: Watching, address: Any, name: FolderName, current: FolderSnapshot) -> None:
        self._sessions[session] = (address, name, snapshot_key(current))
        if not self._loop.running:
            self._loop.start(self._interval, now=False)

    def unwatch(self, session: Watching) -> None:
        self._sessions.pop(session, None)
        if not self._sessions and self._loop.running:
            self._loop.stop()

    def seen(self, session: Watching, current: FolderSnapshot) -> None:
        """The session is up to date with ``current``."""
        if session in self._sessions:
            address, name, _ = self._sessions[session]
            self._sessions[session] = (address, name, snapshot_key(current))

    def _tick(self) -> None:
        if self._busy or not self._sessions:
            return
        self._busy = True
        keys = {(address, name) for address, name, _ in self._sessions.values()}
        d = self._run(_snapshots, self._store, keys)
        d.addCallback(self._compare)
        d.addErrback(lambda failure: self.log.failure("IDLE poll failed", failure))
        d.addBoth(self._done)

    def _done(self, _: object) -> None:
        self._busy = False

    def _compare(self, found: dict) -> None:
        for session, (address, name, key) in list(self._sessions.items()):
            snapshot = found.get((address, name))
            if snapshot is not None and snapshot_key(snapshot) != key:
                self._sessions[session] = (address, name, snapshot_key(snapshot))
                session.folder_changed(snapshot)

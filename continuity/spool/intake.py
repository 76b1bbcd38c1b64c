"""Taking a message into the spool: the one path behind every ``250`` and every generated message.

``accept()`` writes the spool file durably (on the I/O thread pool), indexes
its recipients (on the SQL thread, handed on by the I/O worker) and wakes the
queue runner. Only when it returns may the SMTP server answer ``250``. SMTP inbound, submission, DSNs and
CS-SENT copies all come through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from continuity.db import SQLThread
from continuity.envelope import HEADER_LIMIT, message_id_of
from continuity.spool.index import QueueEntry, QueueIndex
from continuity.spool.store import MessageSpool, SpoolEnvelope, new_queue_id

log = Logger()


# Messages up to this size are handed to the queue runner from memory.
HANDOFF_LIMIT = 1024 * 1024


def _raise(failure: Failure) -> None:
    failure.raiseException()


class MessageIntake:
    """Durable acceptance of new messages.

    The spool file is written on an I/O worker, which hands the index job
    straight to the SQL thread: the reactor hears back once, when both are
    durable. When the queue runner sets :attr:`claim`, the same transaction
    claims the new recipients and routes them, so the runner starts the
    delivery with no trip of its own.
    """

    def __init__(self, reactor: IReactorTime, sql: SQLThread, io, spool: MessageSpool,
                 index: QueueIndex, kick: Callable[..., None] | None = None):
        self._reactor = reactor
        self._sql = sql
        self._io = io
        self._spool = spool
        self._index = index
        #: ``kick(queue_id, message, claimed)``: deliver the new message now.
        self.kick = kick
        #: On the SQL thread, with the new rows: claim and route them (the result is passed to ``kick``).
        self.claim: Callable[[list[QueueEntry]], Any] | None = None
        #: In an SMTP worker: ``hand_over(queue_id)`` once the file is durable, and no index rows here; the
        #: service process indexes and delivers it (:meth:`adopt`).
        self.hand_over: Callable[[str], None] | None = None

    async def accept(self, *, sender: str, recipients: Sequence[str], chunks: Sequence[bytes], direction: str,
                     origin: str, client: str | None = None, auth_user: str | None = None,
                     queue_id: str | None = None, directions: Sequence[str] | None = None,
                     extra: dict | None = None) -> str:
        """Spool and index a message; return its queue id once it is durable."""
        now = self._reactor.seconds()
        queue_id = queue_id or new_queue_id(now)
        extra = dict(extra or {})
        if directions is not None and set(directions) != {direction}:
            extra["directions"] = list(directions)  # for whoever indexes the file: an SMTP worker's service
        envelope = SpoolEnvelope(
            queue_id=queue_id, sender=sender, recipients=tuple(recipients), received=now, direction=direction,
            origin=origin, client=client, auth_user=auth_user,
            # The header section is at most 64 KiB: never copy a whole message on the reactor to find it.
            message_id=message_id_of(b"".join(chunk[:HEADER_LIMIT] for chunk in chunks[:2])),
            extra=extra,
        )
        if self.hand_over is not None:
            # The file is the message: the service process indexes it from there.
            await self._io(self._spool.write, envelope, chunks)
            self.hand_over(queue_id)
            return queue_id
        indexed: Deferred[tuple[int, Any]] = Deferred()
        self._io.spawn(self._write_then_index, envelope, chunks, directions, indexed)
        size, claimed = await indexed
        if self.kick is not None:
            # A small message goes to the runner from memory (no read of the file just
            # written); a large one is read back on an I/O thread, not joined here.
            small = size <= HANDOFF_LIMIT
            self.kick(queue_id, (sender, b"".join(chunks)) if small else None, claimed)
        return queue_id

    def _write_then_index(self, envelope: SpoolEnvelope, chunks: Sequence[bytes], directions: Sequence[str] | None,
                          indexed: Deferred) -> None:
        """On an I/O worker: the durable spool file, then the index job handed to the SQL thread."""
        try:
            size = self._spool.write(envelope, chunks)
        except Exception:
            # Reported by the SQL thread as well, so ``indexed`` is fired from one place only.
            self._sql.submit(indexed, _raise, Failure())
            return
        self._sql.submit(indexed, self._index_job, envelope, size, directions)

    def _index_job(self, envelope: SpoolEnvelope, size: int, directions: Sequence[str] | None) -> tuple[int, Any]:
        entries = self._index.add(envelope, size, directions)
        if self.claim is None or not entries:
            return size, None
        try:
            return size, self.claim(entries)
        except Exception:
            # The message is spooled and indexed: a queue pass delivers it, and the client gets its 250.
            log.failure("claiming {queue_id} failed", queue_id=envelope.queue_id)
            return size, None

    def adopt(self, queue_id: str) -> Deferred[None]:
        """Index and deliver a message an SMTP worker spooled (and acknowledged) and handed over.

        One SQL job reads the file's envelope (and a small message, for the
        runner), indexes it and claims it. A message indexed already (by the
        start-up's :meth:`recover_spool`, or handed over twice) is not indexed
        again; the runner delivers whatever of it is due.
        """
        d = self._sql.run(self._adopt_job, queue_id)
        d.addCallback(self._adopted, queue_id)
        return d

    def _adopt_job(self, queue_id: str) -> tuple[tuple[str, bytes] | None, Any]:
        envelope, message, size = self._spool.read_if_small(queue_id, HANDOFF_LIMIT)
        _, claimed = self._index_job(envelope, size, envelope.extra.get("directions"))
        return ((envelope.sender, message) if message is not None else None), claimed

    def _adopted(self, result: tuple[tuple[str, bytes] | None, Any], queue_id: str) -> None:
        if self.kick is not None:
            message, claimed = result
            self.kick(queue_id, message, claimed)

    async def recover_spool(self) -> tuple[int, int]:
        """At start-up: index spool files a crash left unindexed, remove finished ones.

        The spool was prepared (its half-written files removed) before any
        listener started: not again here, while SMTP workers may be writing.
        """
        on_disk = set(await self._io(lambda: list(self._spool.queue_ids())))
        known = await self._sql.run(self._index.known_queue_ids)
        reindexed = 0
        for queue_id in sorted(on_disk - known):
            envelope, message = await self._io(self._spool.read, queue_id)
            await self._sql.run(self._index.add, envelope, len(message), envelope.extra.get("directions"))
            reindexed += 1
        removed = 0
        for queue_id in await self._sql.run(self._index.finished_queue_ids):
            if queue_id in on_disk and await self._io(self._spool.remove, queue_id):
                removed += 1
        return reindexed, removed

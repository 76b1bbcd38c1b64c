"""Taking a message into the spool: the one path behind every ``250`` and every generated message.

``accept()`` writes the spool file durably (on the I/O thread pool), indexes
its recipients (on the SQL thread, handed on by the I/O worker) and wakes the
queue runner. Only when it returns may the SMTP server answer ``250``. SMTP inbound, submission, DSNs and
CS-SENT copies all come through here. In an SMTP worker it only writes the
file and hands the queue id over (``hand_over``); the service process indexes
and delivers it (:meth:`MessageIntake.adopt`), and finds any file whose hand-over
was lost (:meth:`MessageIntake.index_strays`).
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
from continuity.failover.cssent import record_cs_sent_tracking
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
        """Spool and index a message (in an SMTP worker: spool and hand it over); return its queue id once
        it is durable."""
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
        indexed: Deferred[tuple[int, Any, bool]] = Deferred()
        self._io.spawn(self._write_then_index, envelope, chunks, directions, indexed)
        size, claimed, _ = await indexed
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

    def _index_job(self, envelope: SpoolEnvelope, size: int, directions: Sequence[str] | None,
                   claim: bool = True) -> tuple[int, Any, bool]:
        """On the SQL thread: index the file's recipients and (``claim``) claim them for the runner.

        Returns the size, what the claim returned (None if nothing was claimed) and whether the
        message was new to the index (a file handed over twice, or recovered meanwhile, is not).
        """
        entries = self._index.add(envelope, size, directions)
        if entries and envelope.extra.get("cs_sent"):
            # Mail a user sent in an outage: its CS-SENT copy (kept before the spool file was written) is
            # tracked with the message, whichever process accepted it, and after a crash too.
            record_cs_sent_tracking(self._index.db, envelope.queue_id, envelope.message_id, envelope.sender,
                                    envelope.auth_user, envelope.received)
        if not entries or not claim or self.claim is None:
            return size, None, bool(entries)
        try:
            return size, self.claim(entries), True
        except Exception:
            # The message is spooled and indexed: a queue pass delivers it, and the client gets its 250.
            log.failure("claiming {queue_id} failed", queue_id=envelope.queue_id)
            return size, None, True

    def adopt(self, queue_id: str, deliver: bool = True) -> Deferred[bool]:
        """Index (and ``deliver``) a spool file this process did not write: one an SMTP worker spooled and
        handed over, or one found unindexed (:meth:`recover_spool`, :meth:`index_strays`).

        An I/O worker reads the envelope (and a small message, for the runner)
        and hands the index job to the SQL thread, which claims the recipients
        too. Fires with whether the message was new to the index: one indexed
        already (handed over twice, or found by a listing meanwhile) is left to
        the attempt under way. A file that is gone fails with
        ``FileNotFoundError``.
        """
        indexed: Deferred = Deferred()
        self._io.spawn(self._read_then_index, queue_id, deliver, indexed)
        return indexed.addCallback(self._adopted, queue_id, deliver)

    def _read_then_index(self, queue_id: str, deliver: bool, indexed: Deferred) -> None:
        """On an I/O worker: the file, then the index job handed to the SQL thread (as :meth:`_write_then_index`)."""
        try:
            # Only what is delivered at once needs its message in memory.
            envelope, message, size = self._spool.read_if_small(queue_id, HANDOFF_LIMIT if deliver else 0)
        except Exception:
            self._sql.submit_batched(indexed, _raise, Failure())
            return
        # Its client had its 250 from the worker: the rows may wait a moment to share a commit.
        self._sql.submit_batched(indexed, self._adopt_job, envelope, message, size, deliver)

    def _adopt_job(self, envelope: SpoolEnvelope, message: bytes | None, size: int,
                   deliver: bool) -> tuple[tuple[str, bytes] | None, Any, bool]:
        _, claimed, new = self._index_job(envelope, size, envelope.extra.get("directions"), claim=deliver)
        return ((envelope.sender, message) if message is not None else None), claimed, new

    def _adopted(self, result: tuple[tuple[str, bytes] | None, Any, bool], queue_id: str, deliver: bool) -> bool:
        message, claimed, new = result
        if new and deliver and self.kick is not None:
            self.kick(queue_id, message, claimed)
        return new

    async def index_strays(self, on_disk: set[str] | None = None) -> int:
        """Index every spool file the index lacks; return how many. The queue passes deliver them.

        At start-up (:meth:`recover_spool`) those of a crash; while the service
        runs, those of an SMTP worker that ended before the service read its
        hand-overs. A file handed over meanwhile is indexed once
        (:meth:`adopt`); one removed meanwhile, delivered already, is skipped;
        one that cannot be read is logged and left in the spool. Nothing is
        claimed here: a stray may be mail of the last run, whose claims the
        start-up releases (:meth:`~continuity.spool.index.QueueIndex.release_stale_claims`)
        - a claim made here would be released under its attempt, and the
        message sent twice.

        :param on_disk: the spool's queue ids, when the caller listed them already.
        """
        if on_disk is None:
            on_disk = set(await self._io(lambda: list(self._spool.queue_ids())))
        known = await self._sql.run(self._index.known_queue_ids)
        found = 0
        for queue_id in sorted(on_disk - known):
            try:
                if await self.adopt(queue_id, deliver=False):
                    found += 1
            except FileNotFoundError:
                continue
            except Exception:
                log.failure("spool file {queue_id} cannot be indexed; it stays in the spool", queue_id=queue_id)
        return found

    async def recover_spool(self) -> tuple[int, int]:
        """At start-up: index spool files a crash left unindexed, remove finished ones.

        The spool was prepared (its half-written files removed) before any
        listener started: not again here, while SMTP workers may be writing.
        The files are only indexed: the start-up's queue pass delivers them,
        after the last run's claims are released.
        """
        on_disk = set(await self._io(lambda: list(self._spool.queue_ids())))
        reindexed = await self.index_strays(on_disk=on_disk)
        removed = 0
        for queue_id in await self._sql.run(self._index.finished_queue_ids):
            if queue_id in on_disk and await self._io(self._spool.remove, queue_id):
                removed += 1
        return reindexed, removed

"""Recovery: redeliver what is left in covered users' INBOXes to the upstream, then remove it.

For each message in a user's ``INBOX`` (``new/`` and ``cur/``, whoever put it
there) the journal gets a ``sending`` row *before* the relay; after the
upstream's ``250`` the row becomes ``sent`` and only then is the local file
removed (``removed``). After a crash, ``sent`` rows are removed without being
sent again; ``sending`` rows are sent again (at-least-once: the upstream may
see a duplicate only if the crash fell between its ``250`` and our commit).
Up to :data:`WINDOW` messages are under way at once, and accepted ones are
removed in batches (one uid list write per batch, not per message).
A temporary failure stops the recovery: the rest stays local and the domain
goes back to emergency. Then the CS-SENT copies of mail the domain's users
sent during the outage (:mod:`continuity.failover.cssent`) are relayed to each
user with the subject prefixed ``(CS-SENT) ``, journalled the same way (kind
``cs-sent``). Afterwards every continuity delivery still tracked as
``delayed`` gets its final state: ``redelivered``, ``moved`` or ``deleted``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from continuity import tracking
from continuity.db import Database, SQLThread
from continuity.directory.store import Directory
from continuity.envelope import parse_address
from continuity.failover.cssent import SentCopies, cs_sent_ref, prefix_subject
from continuity.mailstore import MaildirStore, MessageRef
from continuity.smtp.pool import ConnectionPool
from continuity.spool.store import SpoolEnvelope

# INBOX messages relayed at once (sessions to the upstream), and accepted ones removed per batch.
WINDOW = 10
REMOVE_BATCH = 200

_OUR_HEADERS = re.compile(rb"\A(?:(?:Return-Path|Delivered-To):[^\r\n]*\r?\n)+", re.IGNORECASE)
_RETURN_PATH = re.compile(rb"\AReturn-Path:[ \t]*<([^>\r\n]*)>", re.IGNORECASE)


def split_delivery_headers(message: bytes) -> tuple[str, bytes]:
    """The envelope sender from our ``Return-Path`` and the message without our two headers."""
    match = _RETURN_PATH.match(message)
    sender = match.group(1).decode("utf-8", "replace") if match else ""
    stripped = _OUR_HEADERS.sub(b"", message, count=1)
    return sender, stripped


class RecoveryJournal:
    """The ``recovery_journal`` table and the tracking updates of recovery (synchronous)."""

    def __init__(self, db: Database, clock: Callable[[], float]):
        self.db = db
        self._clock = clock

    def states(self, address: str, kind: str) -> dict[str, str]:
        """The journal state of each message of ``address`` of this kind, by key."""
        rows = self.db.read("SELECT message_key, state FROM recovery_journal WHERE address = ? AND kind = ?",
                            (address, kind))
        return {r[0]: r[1] for r in rows}

    def mark_many(self, domain: str, address: str, kind: str, keys: Sequence[str], state: str) -> None:
        with self.db.transaction() as conn:
            for key in keys:
                self._mark(conn, domain, address, kind, key, state)

    def state(self, address: str, kind: str, key: str) -> str | None:
        rows = self.db.read("SELECT state FROM recovery_journal WHERE address = ? AND kind = ? AND message_key = ?",
                            (address, kind, key))
        return rows[0][0] if rows else None

    def mark(self, domain: str, address: str, kind: str, key: str, state: str) -> None:
        self.mark_many(domain, address, kind, [key], state)

    def _mark(self, conn, domain: str, address: str, kind: str, key: str, state: str) -> None:
        conn.execute(
            "INSERT INTO recovery_journal (domain, address, kind, message_key, state, time)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (address, kind, message_key)"
            " DO UPDATE SET state = excluded.state, time = excluded.time",
            (domain, address, kind, key, state, self._clock()),
        )

    def sent(self, domain: str, address: str, kind: str, key: str, ref: str, detail: str) -> None:
        """Mark the entry ``sent`` and its ``delayed`` tracking rows (by ``mailbox_ref``) ``redelivered``,
        in one transaction: a crash cannot leave one without the other."""
        now = self._clock()
        with self.db.transaction() as conn:
            self._mark(conn, domain, address, kind, key, "sent")
            for (tracking_id,) in conn.execute("SELECT id FROM tracking WHERE mailbox_ref = ? AND status = 'delayed'",
                                               (ref,)).fetchall():
                tracking.record(conn, tracking_id, "redelivered", now, detail)

    def delayed_refs(self, domain: str) -> list[tuple[int, str]]:
        rows = self.db.read("SELECT id, mailbox_ref FROM tracking WHERE status = 'delayed' AND mailbox_ref LIKE ?",
                            (f"%@{domain}/%",))
        return [(r[0], r[1]) for r in rows]

    def settle(self, tracking_id: int, status: str, detail: str) -> None:
        with self.db.transaction() as conn:
            tracking.record(conn, tracking_id, status, self._clock(), detail)


class Recovery:
    """Runs the recovery of one domain; returns True when it finished, False when interrupted."""

    log = Logger()

    def __init__(self, sql: SQLThread, io: Callable, directory: Directory, journal: RecoveryJournal,
                 mailstore: MaildirStore, pool: ConnectionPool, sent_copies: SentCopies | None = None):
        self._sql = sql
        self._io = io
        self._directory = directory
        self._journal = journal
        self._mailstore = mailstore
        self._pool = pool
        self._sent_copies = sent_copies
        #: Asked before each message: False once the domain left ``recovering`` (an admin's
        #: ``emergency start`` during the recovery), which stops it like a failure does.
        self.still_recovering: Callable[[str], bool] = lambda domain: True

    async def __call__(self, domain_name: str) -> bool:
        domain = await self._sql.run(self._directory.find_domain, domain_name)
        if domain is None:
            return True
        users = await self._sql.run(self._directory.list_users, domain.name)
        sent = 0
        for user in users:
            refs = await self._io(self._mailstore.inbox_messages, parse_address(user.address))
            count, finished = await self._redeliver_inbox(domain.name, str(domain.upstream), user.address, refs)
            sent += count
            if not finished:
                self.log.warn("recovery of {domain} interrupted after {sent} message(s)", domain=domain.name,
                              sent=sent)
                return False
        if self._sent_copies is not None:
            # CS-SENT copies last: any recorded while the INBOXes were being redelivered are included.
            for envelope in await self._io(self._sent_copies.pending, domain.name):
                outcome = None
                if self.still_recovering(domain.name):
                    outcome = await self._redeliver_copy(domain.name, str(domain.upstream), envelope)
                if outcome is None:
                    self.log.warn("recovery of {domain} interrupted after {sent} message(s)", domain=domain.name,
                                  sent=sent)
                    return False
                sent += outcome
        await self._settle_tracking(domain.name)
        self.log.info("recovery of {domain} finished: {sent} message(s) redelivered", domain=domain.name, sent=sent)
        return True

    async def _redeliver_inbox(self, domain: str, upstream: str, address: str,
                               refs: Sequence[MessageRef]) -> tuple[int, bool]:
        """Relay the INBOX messages ``refs`` of ``address``, :data:`WINDOW` at a time.

        Accepted messages are removed in batches (one uid list write per batch);
        one already ``sent`` before a crash is removed without being sent again.
        A temporary failure starts no further message; those under way finish.

        :returns: how many were sent, and whether all were tried.
        """
        states = await self._sql.run(self._journal.states, address, "inbox")
        todo = iter(refs)
        accepted: list[MessageRef] = []
        sent = 0
        stop = False

        async def relay_some() -> None:
            nonlocal sent, stop
            for ref in todo:
                if stop:
                    return
                if not self.still_recovering(domain):
                    self.log.info("recovery of {domain} stopped: the domain left recovering mode", domain=domain)
                    stop = True
                    return
                if states.get(ref.base) in ("sent", "removed"):
                    accepted.append(ref)
                    continue
                try:
                    outcome = await self._redeliver(domain, upstream, address, ref)
                except BaseException:
                    stop = True
                    raise
                if outcome is None:
                    stop = True
                    return
                if outcome:
                    sent += 1
                    accepted.append(ref)
                if len(accepted) >= REMOVE_BATCH:
                    await self._remove(domain, address, accepted)

        results = await DeferredList([Deferred.fromCoroutine(relay_some()) for _ in range(WINDOW)],
                                     consumeErrors=True)
        await self._remove(domain, address, accepted)  # what the upstream has is removed even after a failure
        for ok, failure in results:
            if not ok:
                failure.raiseException()
        return sent, not stop

    async def _remove(self, domain: str, address: str, accepted: list[MessageRef]) -> None:
        """Remove the messages in ``accepted`` (emptying it) and journal them ``removed``."""
        batch, accepted[:] = list(accepted), []
        if batch:
            await self._io(self._mailstore.remove_messages, batch)
            await self._sql.run(self._journal.mark_many, domain, address, "inbox", [r.base for r in batch], "removed")

    async def _redeliver(self, domain: str, upstream: str, address: str, ref: MessageRef) -> int | None:
        """Send one INBOX message: 1 when sent, 0 when skipped, None when the upstream failed temporarily."""
        try:
            data = await self._io(self._mailstore.read_message, ref)
        except Exception:
            return 0  # expunged meanwhile: nothing to send
        sender, message = split_delivery_headers(data)
        return await self._relay(domain, upstream, address, "inbox", ref.base, tracking.mailbox_ref(address, ref.base), sender,
                                 message, f"redelivery of {ref.base}", "")

    async def _redeliver_copy(self, domain: str, upstream: str, envelope: SpoolEnvelope) -> int | None:
        """Relay one CS-SENT copy to its user; 1 sent, 0 skipped, None on a temporary failure."""
        key, address = envelope.queue_id, envelope.recipients[0]
        state = await self._sql.run(self._journal.state, address, "cs-sent", key)
        if state in ("sent", "removed"):
            await self._io(self._sent_copies.remove, key)
            await self._sql.run(self._journal.mark, domain, address, "cs-sent", key, "removed")
            return 0
        try:
            message = prefix_subject(await self._io(self._sent_copies.read, key))
        except FileNotFoundError:
            return 0
        sent = await self._relay(domain, upstream, address, "cs-sent", key, cs_sent_ref(key), envelope.sender,
                                 message, f"the CS-SENT copy {key}", "CS-SENT copy: ")
        if sent:
            await self._io(self._sent_copies.remove, key)
            await self._sql.run(self._journal.mark, domain, address, "cs-sent", key, "removed")
        return sent

    async def _relay(self, domain: str, upstream: str, address: str, kind: str, key: str, ref: str, sender: str,
                     message: bytes, what: str, detail_prefix: str) -> int | None:
        """Journal ``sending``, relay to the user's upstream mailbox, journal ``sent`` (tracking ``redelivered``
        by ``ref``): 1 sent, 0 refused for good (kept locally), None on a temporary failure."""
        await self._sql.run(self._journal.mark, domain, address, kind, key, "sending")
        result = await self._pool.deliver(upstream, sender, [address], message)
        reply = result.recipients[0]
        if reply.temporary:
            return None
        if reply.permanent:
            self.log.warn("upstream refused {what} to {address}: {reply}; kept locally", what=what,
                          address=address, reply=str(reply))
            return 0
        await self._sql.run(self._journal.sent, domain, address, kind, key, ref,
                            f"{detail_prefix}{result.upstream} said: {reply}")
        return 1

    async def _settle_tracking(self, domain: str) -> None:
        for tracking_id, mailbox_ref in await self._sql.run(self._journal.delayed_refs, domain):
            address, _, base = mailbox_ref.partition("/")
            found = await self._io(self._mailstore.find_message, parse_address(address), base)
            if found is None:
                await self._sql.run(self._journal.settle, tracking_id, "deleted", "deleted by the user during the outage")
            elif not found.folder.is_inbox:
                await self._sql.run(self._journal.settle, tracking_id, "moved", f"moved to {found.folder}")

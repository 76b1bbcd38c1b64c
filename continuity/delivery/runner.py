"""The queue runner: takes due recipients from the index and carries each copy where the router says.

A message is delivered as soon as it is spooled (:meth:`QueueRunner.kick`), and
due retries are picked up by a periodic pass. For each message the runner
claims its due recipients (counting the attempt and moving ``next_attempt``
forward first: a crash retries later), asks the router per recipient, and hands
the groups to the agents: the upstream relay (one transaction per domain), the
continuity mailbox, the outbound path. Outcomes: delivered -> ``done``;
permanent -> ``done`` + DSN; temporary -> an automatic failover when the domain
allows it (then routed again at once), else ``deferred`` with backoff and a
DSN at ``max_queue_age``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from continuity import tracking
from continuity.config import Config
from continuity.db import SQLThread
from continuity.delivery.agents import Agents, Outcome
from continuity.delivery.router import Decision, Route, route
from continuity.directory.store import Directory, Domain, fails_over_automatically
from continuity.spool.index import QueueEntry, QueueIndex
from continuity.spool.store import MessageSpool

HOLD_HORIZON = 10 * 365 * 86400.0  # held mail waits for recovery, not for a timer
# An attempt takes at most this many relay timeouts (connecting and each reply have one).
ATTEMPT_TIMEOUTS = 10


def current_route(directory: Directory, domain_name: str, recipient: str,
                  domains: dict[str, Domain | None]) -> tuple[Decision, Domain | None]:
    """Where ``recipient`` goes as the store has it now (off the reactor); ``domains`` caches lookups per batch."""
    if domain_name not in domains:
        domains[domain_name] = directory.find_domain(domain_name)
    domain = domains[domain_name]
    return route(domain, directory.resolve(recipient) if domain is not None else None), domain


class QueueRunner(Service):
    """Delivers spooled mail; one per service."""

    name = "queue-runner"
    log = Logger()
    pass_interval = 1.0

    def __init__(self, reactor: IReactorTime, config: Config, sql: SQLThread, io, index: QueueIndex,
                 spool: MessageSpool, directory: Directory, agents: Agents, failover=None,
                 concurrency: int = 32):
        self._reactor = reactor
        self._config = config
        self._sql = sql
        self._io = io
        self._index = index
        self._spool = spool
        self._directory = directory
        self._agents = agents
        self.failover = failover
        self._semaphore = DeferredSemaphore(concurrency)
        self._in_flight: set[str] = set()
        self._deliveries: set[Deferred] = set()
        self._call = None
        self._pass_running: Deferred | None = None
        self._again = False
        # queue id -> whether recipients of it were still pending after the last index change
        self._still_pending: dict[str, bool] = {}
        # Spool files of finished messages, removed in batches: one I/O trip each, not one per message.
        self._finished: list[str] = []
        self._removing: Deferred | None = None

    # -- service ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self):
        """Start no more deliveries; the Deferred fires once those in flight have finished.

        Messages still waiting for a delivery slot are left in the queue for
        the next start (they were not claimed, so nothing is lost or counted);
        so are those waiting for a session to their upstream (claimed: the next
        start releases the claim, as after a crash), however long the queue.
        """
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        withdrawn = self._agents.withdraw_waiting()
        if withdrawn:
            self.log.info("stopping: {count} messages waiting for a session to their upstream stay queued",
                          count=withdrawn)
        running = [d for d in (self._pass_running, self._removing, *self._deliveries) if d is not None]
        return DeferredList(running, consumeErrors=True) if running else None

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._call is not None and self._call.active():
            if self._call.getTime() <= self._reactor.seconds() + delay:
                return
            self._call.cancel()
        self._call = self._reactor.callLater(delay, self._run_pass)

    def _run_pass(self) -> None:
        self._call = None
        if self._pass_running is not None:
            self._again = True
            return
        self._pass_running = Deferred.fromCoroutine(self._pass())

        def done(result):
            self._pass_running = None
            if self._again:
                self._again = False
                self._schedule(0)
            else:
                self._schedule(self.pass_interval)
            return None

        self._pass_running.addErrback(lambda f: self.log.failure("queue pass failed", f))
        self._pass_running.addBoth(done)

    def kick(self, queue_id: str | None = None, message: tuple[str, bytes] | None = None,
             claimed: list | None = None) -> None:
        """Deliver ``queue_id`` now (just spooled), or run a pass soon.

        :param message: the sender and the message as spooled, when the caller
            has them in memory (the intake): no read of the spool file then.
        :param claimed: what :meth:`claim_new` returned for it in the intake's transaction.
        """
        if queue_id is None:
            self._schedule(0)
            return
        if queue_id in self._in_flight or not self.running:
            return
        d = self._start(queue_id, None, message, claimed)
        d.addErrback(self._failed, queue_id)

    def _failed(self, failure: Failure, queue_id: str) -> None:
        if not failure.check(CancelledError):  # withdrawn at the stop (stopService): it stays queued
            self.log.failure("delivery of {queue_id} failed", failure, queue_id=queue_id)

    def _start(self, queue_id: str, entries: Sequence[QueueEntry] | None,
               message: tuple[str, bytes] | None = None, claimed: list | None = None) -> Deferred:
        """Deliver one message; the Deferred is kept until it fires (stopService waits for it)."""
        d = Deferred.fromCoroutine(self._message(queue_id, entries, message, claimed))
        self._deliveries.add(d)

        def forget(result):
            self._deliveries.discard(d)
            return result

        return d.addBoth(forget)

    async def _pass(self) -> None:
        now = self._reactor.seconds()
        due = await self._sql.run(self._index.due, now)
        by_message: dict[str, list[QueueEntry]] = defaultdict(list)
        for entry in due:
            if entry.queue_id not in self._in_flight:
                by_message[entry.queue_id].append(entry)
        # Each delivery starts when a slot is free, from this loop: a delivery that ends at once (stopping,
        # say) frees its slot before the next starts, instead of starting the next inside its own end -
        # nested hundreds deep, that overflowed the stack.
        work = []
        for queue_id, entries in by_message.items():
            await self._semaphore.acquire()
            if not self.running:
                self._semaphore.release()
                break
            d = self._start(queue_id, entries)
            d.addErrback(self._failed, queue_id)
            d.addBoth(lambda _: self._semaphore.release())
            work.append(d)
        for d in work:
            await d

    # -- one message -----------------------------------------------------

    def _backoff(self, attempts: int) -> float:
        intervals = self._config.relay.retry_intervals
        return intervals[min(attempts, len(intervals) - 1)]

    def claim_new(self, entries: Sequence[QueueEntry]) -> list[tuple[QueueEntry, Decision, Domain | None]] | None:
        """On the SQL thread, in the transaction that indexes a new message: claim its recipients and route them.

        None (nothing claimed) when stopped: the message waits for a queue pass.
        """
        if not self.running:
            return None
        with self._index.db.transaction():  # a claim that fails leaves the message queued for a pass
            return self._lookups(self._claim(entries, self._reactor.seconds()))

    def _claim(self, due: Sequence[QueueEntry], now: float) -> list[QueueEntry]:
        """On the SQL thread: count the attempt, moving the next one forward first (a crash retries then).

        Only what is still due is claimed, and only that is returned: another
        attempt (a pass, a kick, ``queue flush``) may have claimed or finished
        it since it was read. The claim lasts at least as
        long as an attempt can (:data:`ATTEMPT_TIMEOUTS` relay timeouts).
        """
        attempts = max(e.attempts for e in due)
        lease = max(self._backoff(attempts), ATTEMPT_TIMEOUTS * self._config.relay.timeout)
        claimed = self._index.claim([e.id for e in due], now + lease, now)
        return [e for e in due if e.id in claimed]

    async def _message(self, queue_id: str, entries: Sequence[QueueEntry] | None,
                       spooled: tuple[str, bytes] | None = None, decisions: list | None = None) -> None:
        if queue_id in self._in_flight or not self.running:
            return  # being delivered already, or stopping: not started, so not claimed
        self._in_flight.add(queue_id)
        try:
            now = self._reactor.seconds()

            def claim_and_route() -> list[tuple[QueueEntry, Decision, Domain | None]]:
                # One trip to the SQL thread: what is due, the attempt counted, where each copy goes.
                due = entries if entries is not None else [
                    e for e in self._index.pending(queue_id) if e.state in ("queued", "deferred")]
                if not due:
                    return []
                return self._lookups(self._claim(due, now))

            if decisions is None:
                decisions = await self._sql.run_batched(claim_and_route)
            if not decisions:
                return
            if spooled is None:
                try:
                    envelope, message = await self._io(self._spool.read, queue_id)
                except FileNotFoundError:
                    self.log.error("spool file of {queue_id} is missing", queue_id=queue_id)
                    return
                spooled = (envelope.sender, message)
            sender, message = spooled
            await self._deliver(queue_id, sender, message, [entry for entry, _, _ in decisions], rerouted=False,
                                decisions=decisions)
            pending = self._still_pending.get(queue_id)
            if pending is None:
                pending = await self._sql.run(self._index.has_pending, queue_id)
            if not pending:
                self._remove(queue_id)
        finally:
            self._in_flight.discard(queue_id)
            self._still_pending.pop(queue_id, None)

    def _change(self, queue_id: str, fn: Callable[..., None], *args: Any) -> Deferred[None]:
        """An index change for one message, on the SQL thread; notes whether any of its recipients is left."""

        def change() -> bool:
            fn(*args)
            return self._index.has_pending(queue_id)

        # An outcome nobody waits for: it may wait a moment to share a commit (SQLThread.run_batched).
        return self._sql.run_batched(change).addCallback(
            lambda pending: self._still_pending.__setitem__(queue_id, pending))

    def _remove(self, queue_id: str) -> None:
        """Remove a finished message's spool file, in a batch with others finished meanwhile.

        A file left by a stop or a crash is removed at the next start
        (:meth:`~continuity.spool.intake.MessageIntake.recover_spool`): the index says it is done.
        """
        self._finished.append(queue_id)
        self._remove_batch()

    def _remove_batch(self) -> None:
        if self._removing is None and self.running and self._finished:
            batch, self._finished = self._finished, []
            self._removing = self._io(self._remove_files, batch)
            self._removing.addErrback(lambda f: self.log.failure("removing finished spool files failed", f))
            self._removing.addBoth(self._removed)

    def _remove_files(self, queue_ids: list[str]) -> None:
        for queue_id in queue_ids:
            self._spool.remove(queue_id)

    def _removed(self, _) -> None:
        self._removing = None
        self._remove_batch()

    def _lookups(self, entries: Sequence[QueueEntry]) -> list[tuple[QueueEntry, Decision, Domain | None]]:
        """The route of each recipient (on the SQL thread)."""
        domains: dict[str, Domain | None] = {}
        return [(entry, *current_route(self._directory, entry.domain, entry.recipient, domains))
                for entry in entries]

    async def _deliver(self, queue_id: str, sender: str, message: bytes, entries: list[QueueEntry],
                       rerouted: bool, decisions: list | None = None) -> None:
        if decisions is None:
            decisions = await self._sql.run(self._lookups, entries)
        relay: dict[str, list[QueueEntry]] = defaultdict(list)
        domains: dict[str, Domain] = {}
        outbound: list[QueueEntry] = []
        held: dict[str, list[QueueEntry]] = defaultdict(list)
        for entry, decision, domain in decisions:
            if decision.route is Route.RELAY:
                relay[domain.name].append(entry)
                domains[domain.name] = domain
            elif decision.route is Route.MAILBOX:
                await self._to_mailbox(queue_id, sender, message, entry, decision.mailbox)
            elif decision.route is Route.HOLD:
                held[decision.reason].append(entry)
            else:
                outbound.append(entry)
        for reason, group in held.items():
            await self._change(queue_id, self._index.defer, group, reason, self._reactor.seconds() + HOLD_HORIZON,
                               "held")
        for name, group in relay.items():
            await self._to_upstream(queue_id, sender, message, domains[name], group, rerouted)
        if outbound:
            outcomes = await self._agents.outbound(sender, outbound, message)
            await self._settle(queue_id, sender, message, outcomes, delivered_status="sent")

    async def _to_mailbox(self, queue_id: str, sender: str, message: bytes, entry: QueueEntry, address: str) -> None:
        try:
            ref = await self._agents.mailbox(address, sender, entry.recipient, message)
        except Exception as exc:
            self.log.failure("continuity delivery of {queue_id} to {address} failed", queue_id=queue_id,
                             address=address)
            await self._defer_or_expire(queue_id, sender, message, [entry], f"mailbox delivery failed: {exc}")
            return
        await self._change(queue_id, self._index.finish, [entry], "delayed",
                           tracking.in_mailbox(address), [tracking.mailbox_ref(address, ref)])
        self.log.info("{queue_id} delivered to the continuity mailbox of {address}", queue_id=queue_id,
                      address=address)

    async def _to_upstream(self, queue_id: str, sender: str, message: bytes, domain: Domain,
                           entries: list[QueueEntry], rerouted: bool) -> None:
        outcomes = await self._agents.upstream(domain, sender, entries, message)
        temporary = [o for o in outcomes if o.kind == "temporary"]
        if temporary and not rerouted and self.failover is not None and fails_over_automatically(domain):
            # Wait until the store says emergency: routing again must see the new mode.
            await self.failover.upstream_failed(domain.name, temporary[0].detail)
            await self._settle(queue_id, sender, message, [o for o in outcomes if o.kind != "temporary"],
                               delivered_status="relayed")
            # The domain is in emergency mode now: route the rest again, at once.
            await self._deliver(queue_id, sender, message, [o.entry for o in temporary], rerouted=True)
            return
        await self._settle(queue_id, sender, message, outcomes, delivered_status="relayed")

    async def _settle(self, queue_id: str, sender: str, message: bytes, outcomes: Sequence[Outcome],
                      delivered_status: str) -> None:
        delivered = [o for o in outcomes if o.kind == "delivered"]
        permanent = [o for o in outcomes if o.kind == "permanent"]
        temporary = [o for o in outcomes if o.kind == "temporary"]
        if delivered:
            def finish_all() -> None:
                for outcome in delivered:
                    self._index.finish([outcome.entry], delivered_status, outcome.detail)

            await self._change(queue_id, finish_all)
        for outcome in delivered:
            self.log.info("{queue_id} {status} for {recipient}: {detail}", queue_id=queue_id,
                          status=delivered_status, recipient=outcome.entry.recipient, detail=outcome.detail)
        if permanent:
            await self._bounce(queue_id, sender, message, [(o.entry, o.detail) for o in permanent])
        for outcome in temporary:
            await self._defer_or_expire(queue_id, sender, message, [outcome.entry], outcome.detail)

    async def _defer_or_expire(self, queue_id: str, sender: str, message: bytes, entries: list[QueueEntry],
                               detail: str) -> None:
        now = self._reactor.seconds()
        expired = [e for e in entries if now - e.received >= self._config.relay.max_queue_age]
        waiting = [e for e in entries if e not in expired]
        if expired:
            await self._bounce(queue_id, sender, message,
                               [(e, f"delivery time expired after {e.attempts} attempts: {detail}") for e in expired])
        if waiting:
            attempts = max(e.attempts for e in waiting)
            await self._change(queue_id, self._index.defer, waiting, detail, now + self._backoff(attempts))
            self.log.info("{queue_id} deferred for {count} recipient(s): {detail}", queue_id=queue_id,
                          count=len(waiting), detail=detail)

    async def _bounce(self, queue_id: str, sender: str, message: bytes,
                      failures: list[tuple[QueueEntry, str]]) -> None:
        await self._change(queue_id, self._index.finish, [e for e, _ in failures], "bounced",
                           "; ".join(sorted({d for _, d in failures})))
        self.log.info("{queue_id} bounced for {count} recipient(s)", queue_id=queue_id, count=len(failures))
        if sender:  # never a DSN to the null sender (RFC 5321 6.1)
            await self._agents.notify_sender(queue_id, sender, message, failures)

    # -- failover hooks --------------------------------------------------

    async def reroute(self, domain: str) -> None:
        """Make the domain's pending mail due now (a mode switch changes where it goes).

        Not what an attempt has claimed (queued, its next attempt ahead): that
        attempt routes it again itself, and
        releasing it too would deliver it twice. A claim a crash left behind
        comes due at its next attempt.
        """
        now = self._reactor.seconds()
        entries = await self._sql.run(self._index.for_domain, domain)
        unclaimed = [e for e in entries if not (e.state == "queued" and e.next_attempt > now)]
        await self._sql.run(self._index.release, unclaimed, now)
        self.kick()

    async def flush(self, domain: str | None = None) -> int:
        count = await self._sql.run(self._index.release_all, domain, self._reactor.seconds())
        self.kick()
        return count
